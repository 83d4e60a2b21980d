"""Mixed states: a dict state whose leaves use different processes, trained and sampled jointly by
one model with one time (as tabular generators, TabDDPM by Kotelnikov et al. 2023, and molecules
with coordinates and atom types need).

:class:`MixedProcess` is a :class:`~diffkit.contract.Process` over the leaves' own processes
(Gaussian diffusion or flow matching for numbers, categorical diffusion for classes). Every sample
has one time ``t``; the model sees the whole state ``x_t`` (each leaf noised by its own process)
and returns a dict of each leaf's prediction (a Gaussian prediction, a velocity or logits). The
loss is the sum of the leaves' own errors; sampling steps every leaf from ``t`` to ``s`` with its
own sampler after one model call on the whole state (lockstep). The forward processes of the
leaves are independent given ``x_0``, so the time reversal of the joint process is the sum of the
leaves' reverse dynamics, each conditioned on the whole current state: a deterministic step for
one leaf and a random one for another still carry the joint law, with a discretisation error that
vanishes as the steps shrink.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .contract import Process, leaf_mask
from .denoiser import GuidedModel
from .samplers import get_sampler, is_stepwise, sampler_kind
from .tree import State, standard_noise

SPACINGS = ("uniform", "quadratic")


class LeafNoise:
    """A state's noise function drawn for one leaf: ``noise_fn({key: like}, generator, **extra)[key]``."""

    def __init__(self, noise_fn: Callable, key: str):
        self.noise_fn, self.key = noise_fn, key

    def __call__(self, like: Tensor, generator=None, **extra: Any) -> Tensor:
        return self.noise_fn({self.key: like}, generator, **extra)[self.key]


class MixedProcess(Process):
    """A dict state whose leaves use the processes ``processes`` (a dict keyed like the state).

    Args:
        processes: one :class:`~diffkit.contract.Process` per leaf, each for a Tensor state (its
            noise drawn for that leaf alone, e.g. with :class:`LeafNoise`).
        noise_fn: the noise of the whole state (the domain's), for training draws.
        samplers: where sampler names are looked up.
        times_from: the leaf whose process draws the training times (the first one by default).

    A named sampler must be stepwise (:func:`diffkit.samplers.is_stepwise`): the leaves whose
    process runs its kind run it, with the options given; the others run their process's
    :attr:`~diffkit.contract.Process.stepwise_sampler`. A dict names each leaf's sampler.
    Sampling times are uniform or quadratic in ``t``.
    """

    kind = "mixed"
    defaults = {operation: {"sampler": None, "steps": 50, "spacing": "uniform"}
                for operation in ("sample", "edit", "inpaint")}

    def __init__(self, processes: dict[str, Process], *, noise_fn: Callable = standard_noise,
                 samplers: dict[str, Callable] | None = None, times_from: str | None = None):
        if not processes:
            raise ValueError("a mixed process needs at least one leaf")
        times_from = times_from or next(iter(processes))
        if times_from not in processes:
            raise ValueError(f"times_from={times_from!r} is not a leaf; leaves: {', '.join(processes)}")
        self.processes = dict(processes)
        self.noise_fn, self.samplers, self.times_from = noise_fn, samplers, times_from
        kinds = [kind for process in self.processes.values() for kind in process.sampler_kinds]
        self.sampler_kinds = tuple(dict.fromkeys(kinds))

    def __repr__(self) -> str:
        return f"MixedProcess({self.processes!r})"

    # -- the forward process, leaf by leaf ---------------------------------------------------

    def example(self, model: Callable, shape: tuple[int, ...] | State) -> State:
        if not isinstance(shape, dict):
            raise ValueError(f"a mixed state is a dict keyed {sorted(self.processes)}: pass an example state, not "
                             f"{shape!r}")
        self._check_keys(shape)
        return shape

    def prior_sample(self, like: State, generator=None, *, noise: State | None = None,
                     model_kwargs: dict | None = None, mask: State | None = None) -> State:
        return self._per_leaf(lambda key, process: process.prior_sample(
            like[key], generator, noise=_leaf(noise, key), model_kwargs=model_kwargs, mask=leaf_mask(mask, key)), like)

    def q_sample(self, x0: State, t: Tensor, noise: State | None = None, *, generator=None,
                 model_kwargs: dict | None = None, mask: State | None = None) -> State:
        return self._per_leaf(lambda key, process: process.q_sample(
            x0[key], t, _leaf(noise, key), generator=generator, model_kwargs=model_kwargs,
            mask=leaf_mask(mask, key)), x0)

    def forward_step(self, x: State, s: Tensor | float, t: Tensor | float, *, noise: State | None = None,
                     generator=None, model_kwargs: dict | None = None, mask: State | None = None) -> State:
        return self._per_leaf(lambda key, process: process.forward_step(
            x[key], s, t, noise=_leaf(noise, key), generator=generator, model_kwargs=model_kwargs,
            mask=leaf_mask(mask, key)), x)

    def known_at(self, known: State, t: Tensor | float, *, generator=None, model_kwargs: dict | None = None) -> State:
        return self._per_leaf(lambda key, process: process.known_at(
            known[key], t, generator=generator, model_kwargs=model_kwargs), known)

    # -- training ---------------------------------------------------------------------------

    def training_times(self, n: int, *, generator=None, device=None) -> Tensor:
        """One time per sample for all leaves, drawn by the process of the leaf ``times_from``."""
        return self.processes[self.times_from].training_times(n, generator=generator, device=device)

    def leaf_errors(self, output: State, x0: State, x_t: State, t: Tensor, noise: State, *,
                    mask: State | None = None, weighting: str | None = None) -> State:
        """Each leaf's error by its own process, times that process's weight over time."""
        if not isinstance(output, dict) or output.keys() != x0.keys():
            found = sorted(output) if isinstance(output, dict) else type(output).__name__
            raise ValueError(f"the model must return a dict keyed like the state ({sorted(x0)}), got {found}")

        def error(key, process):
            value = process.leaf_errors(output[key], x0[key], x_t[key], t, noise[key], mask=leaf_mask(mask, key))
            return value * process.time_weight(t)

        return self._per_leaf(error, x0)

    # -- sampling ---------------------------------------------------------------------------

    def get_sampler(self, name: str | dict[str, str] | None) -> "LeafSamplers":
        """Which sampler each leaf runs: a named one (which must be stepwise) where its process runs
        that kind, the process's :attr:`~diffkit.contract.Process.stepwise_sampler` elsewhere; or a
        dict naming each leaf's sampler (leaves it leaves out run their default)."""
        names = name if isinstance(name, dict) else {key: name for key in self.processes}
        unknown = set(names) - set(self.processes)
        if unknown:
            raise ValueError(f"samplers named for leaves {sorted(unknown)} this state does not have: {sorted(self.processes)}")
        plan = LeafSamplers()
        for key, process in self.processes.items():
            fn = _stepwise(names.get(key), self.samplers, self.sampler_kinds)
            if fn is not None and sampler_kind(fn) in process.sampler_kinds:
                plan[key] = fn
                plan.named.add(key)
            elif isinstance(name, dict) and fn is not None:
                raise ValueError(f"the leaf {key!r} runs {' or '.join(process.sampler_kinds)} samplers, not "
                                 f"{names[key]!r} ({sampler_kind(fn)})")
            else:
                plan[key] = process.get_sampler(process.stepwise_sampler)
        return plan

    def denoiser(self, model: Callable, like: State | None = None, *, cond: Any = None, guidance: float = 1.0,
                 uncond: Any = None, model_kwargs: dict | None = None, mask: State | None = None) -> "MixedDenoiser":
        if like is None:
            raise ValueError("a mixed denoiser needs like=, an example of the state")
        leaves = {key: process.denoiser(LeafOutput(key), like[key], model_kwargs=model_kwargs,
                                        mask=leaf_mask(mask, key)) for key, process in self.processes.items()}
        return MixedDenoiser(model, leaves, cond=cond, guidance=guidance, uncond=uncond, model_kwargs=model_kwargs,
                             noise_fn=self.noise_fn)

    def sample_times(self, steps: int, spacing: str = "uniform", *, t_max: float = 1.0) -> Tensor:
        """``uniform`` or ``quadratic`` (denser near the data) in ``t``: the leaves share their times."""
        if spacing not in SPACINGS:
            raise ValueError(f"a mixed state is sampled at times {' or '.join(SPACINGS)} in t, not {spacing!r}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        return (u * t_max if spacing == "uniform" else u**2 * t_max).float()

    def auto_spacing(self, sampler: Callable, like: State) -> str:
        return "uniform"

    def run_sampler(self, sampler: "LeafSamplers", denoiser: "MixedDenoiser", x: State, times: Tensor, *,
                    generator=None, callback: Callable | None = None, **options) -> State:
        """Lockstep: per step one (guided) model call on the whole state, then each leaf steps with
        its own sampler and process; ``options`` go to the leaves running a named sampler."""
        for i in range(len(times) - 1):
            denoiser.fill(x, times[i])
            x = {key: process.run_sampler(sampler[key], denoiser.leaves[key], x[key], times[i:i + 2], generator=generator,
                                          **(options if key in sampler.named else {}))
                 for key, process in self.processes.items()}
            if callback is not None:
                callback({"step": i, "t": float(times[i]), "x": x, "x0": x})
        return x

    # -- the conformance kit ----------------------------------------------------------------

    def check_state(self, x: State) -> list[str]:
        try:
            self._check_keys(x)
        except ValueError as error:
            return [str(error)]
        return [f"[{key!r}] {problem}" for key, process in self.processes.items() for problem in process.check_state(x[key])]

    def check_output(self, output: State, x: State) -> list[str]:
        if not isinstance(output, dict) or output.keys() != x.keys():
            found = sorted(output) if isinstance(output, dict) else type(output).__name__
            return [f"model output should be a dict keyed like the state ({sorted(x)}), got {found}"]
        return [f"[{key!r}] {problem}" for key, process in self.processes.items()
                for problem in process.check_output(output[key], x[key])]

    def check_noise(self, noise: State) -> list[str]:
        return [f"[{key!r}] {problem}" for key, process in self.processes.items()
                for problem in process.check_noise(noise[key])]

    def check_sample(self, x: State, example: State, mask: State | None) -> list[str]:
        return [f"[{key!r}] {problem}" for key, process in self.processes.items()
                for problem in process.check_sample(x[key], example[key], leaf_mask(mask, key))]

    # -- helpers ----------------------------------------------------------------------------

    def _per_leaf(self, fn: Callable[[str, Process], Tensor], like: State) -> dict:
        self._check_keys(like)
        return {key: fn(key, process) for key, process in self.processes.items()}

    def _check_keys(self, state: State) -> None:
        if not isinstance(state, dict) or state.keys() != self.processes.keys():
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"a mixed state has the leaves {sorted(self.processes)}, got {found}")


class LeafSamplers(dict):
    """The sampler of each leaf of a mixed state; ``named`` holds the leaves that run one asked for."""

    stepwise = True  # each leaf's sampler is

    def __init__(self):
        super().__init__()
        self.named: set[str] = set()


def _stepwise(name: str | None, samplers: dict | None, kinds: tuple[str, ...]) -> Callable | None:
    if name is None:
        return None
    fn = get_sampler(name, samplers, kind=kinds)
    if not is_stepwise(fn):
        raise ValueError(f"{name!r} is not a stepwise sampler: the leaves of a mixed state step together, one model call "
                         "a step; choose one such as ddpm, ddim, euler, flow_euler, ancestral or discrete_flow")
    return fn


class LeafOutput:
    """The model as one leaf's denoiser sees it in a mixed state: the leaf of the joint output of
    the current step, which :meth:`MixedDenoiser.fill` computed (one call a step)."""

    def __init__(self, key: str):
        self.key, self.value = key, None

    def __call__(self, x: Tensor, t: Tensor, cond: Any = None, **model_kwargs) -> Tensor:
        if self.value is None:
            raise RuntimeError(f"the leaf {self.key!r} of a mixed state asked for a second model call in one step; "
                               "its sampler must be stepwise")
        value, self.value = self.value, None
        return value


class MixedDenoiser(GuidedModel):
    """The joint model of a mixed state: one guided call on the whole state per step (:meth:`fill`),
    whose leaves the leaf denoisers (``leaves``, each its process's) then read."""

    def __init__(self, model: Callable, leaves: dict[str, GuidedModel], **options):
        super().__init__(model, **options)
        self.leaves = leaves

    def read(self, output: State, x: State) -> State:
        if not isinstance(output, dict) or output.keys() != x.keys():
            found = sorted(output) if isinstance(output, dict) else type(output).__name__
            raise ValueError(f"the model must return a dict keyed like the state ({sorted(x)}), got {found}")
        return {key: self.leaves[key].read(output[key], x[key]) for key in x}

    def fill(self, x: State, t: Tensor | float) -> None:
        """Call the model once at ``(x, t)`` and hand each leaf denoiser its part."""
        output = self.model_output(x, self._times(x, t))
        for key, leaf in self.leaves.items():
            leaf.model.value = output[key]


def _leaf(state: State | None, key: str) -> Tensor | None:
    return None if state is None else state[key]


__all__ = ["LeafNoise", "MixedProcess"]
