"""The contract of a process, and what every process shares.

A process carries data to a prior over a time ``t`` in [0, 1] (``t = 0`` data, ``t = 1`` the prior)
and learns to come back. :class:`Process` is what Gaussian diffusion (:class:`diffkit.Diffusion`),
flow matching (:class:`diffkit.FlowMatching`), categorical diffusion
(:class:`diffkit.CategoricalDiffusion`) and a state whose leaves use different ones
(:class:`diffkit.MixedProcess`) implement; generation, the runner, distillation, the pipeline and
the conformance kit speak only to it.

Each process defines

* the prior and the forward process: :meth:`~Process.prior_sample`, :meth:`~Process.q_sample`
  (``x_t`` given ``x_0``), :meth:`~Process.forward_step` (``x_t`` given ``x_s``, ``s < t``) and
  :meth:`~Process.known_at` (the known part of an inpainting as the model should see it at ``t``);
* training: :meth:`~Process.training_times` and :meth:`~Process.leaf_errors` (one error per sample
  and leaf), with :meth:`~Process.time_weight`;
* sampling: :meth:`~Process.denoiser` (the model as its samplers see it, guided),
  :attr:`~Process.sampler_kinds` (which samplers of the registry it runs),
  :meth:`~Process.sample_times` and :meth:`~Process.auto_spacing`;
* what the conformance kit checks: :meth:`~Process.check_state`, :meth:`~Process.check_output`,
  :meth:`~Process.check_noise`;

and shares from this class one loss (:meth:`~Process.loss`, reduced by :func:`reduce_loss`), one
sampling loop (:meth:`~Process.sample`), one RePaint loop (:meth:`~Process.inpaint`,
:func:`repaint`) and one SDEdit (:meth:`~Process.edit`). :class:`GaussianNoiseProcess` adds what
the processes on real-valued states with a standard normal prior (Gaussian diffusion, flow
matching) share: that prior, the example state, the known part and the conformance checks.

Words keep one meaning here and in every process: ``mask`` is the padding (loss) mask, 1 on a real
entry (it counts in the loss; a sampler may change it) and 0 on padding; ``keep`` is the part of an
inpainting that is kept (1) rather than generated (0); ``noise`` is a draw of the process's
randomness shaped like a state (standard normals, or the uniforms of categorical draws), and
``noise_fn(like, generator, **model_kwargs)`` is what draws it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .samplers import get_sampler
from .tree import State, batch_size, draw_noise, first_leaf, leaves, tree_map, where

REDUCTIONS = ("mean", "none")


class Process:
    """The contract; see the module docstring. Subclasses set the class attributes and implement
    the methods that raise :class:`NotImplementedError`."""

    #: ``diffusion.kind`` in a config: ``"gaussian"``, ``"flow"``, ``"categorical"`` or ``"mixed"``.
    kind: str = ""
    #: The kinds of registered samplers it runs (:func:`diffkit.register_sampler`).
    sampler_kinds: tuple[str, ...] = ()
    #: Defaults of :meth:`sample`, :meth:`inpaint` and :meth:`edit`: sampler, steps and spacing.
    defaults: dict[str, dict[str, Any]] = {}
    #: The stepwise sampler a leaf of a mixed state runs unless told otherwise (:mod:`diffkit.mixed`).
    stepwise_sampler: str = ""
    #: The prior draw is the noise itself, so noises between two draws (``slerp``) are draws too.
    noise_is_prior: bool = False
    #: A Gaussian path ``x_t = alpha x_0 + sigma eps`` with ``coefficients(t) -> (alpha, sigma)``,
    #: ``target(x0, noise, t)`` (what the model regresses) and ``clean_estimate(output, x_t, t)``;
    #: a few-step student can learn its sampler (:mod:`diffkit.distill`).
    distillable: bool = False

    noise_fn: Callable
    samplers: dict[str, Callable] | None = None  # where sampler names are looked up; None: the built-ins

    # -- what each process defines -----------------------------------------------------------

    def example(self, model: Callable, shape: tuple[int, ...] | State) -> State:
        """The example state a ``shape`` tuple stands for (a state passes through)."""
        raise NotImplementedError

    def prior_sample(self, like: State, generator=None, *, noise: State | None = None,
                     model_kwargs: dict | None = None, mask: State | None = None) -> State:
        """A draw from the law at ``t = 1``, shaped like ``like`` (from ``noise`` when given)."""
        raise NotImplementedError

    def q_sample(self, x0: State, t: Tensor, noise: State | None = None, *, generator=None,
                 model_kwargs: dict | None = None, mask: State | None = None) -> State:
        """A draw of ``x_t`` from ``q(x_t | x_0)`` for per-sample (or scalar) times ``t``."""
        raise NotImplementedError

    def forward_step(self, x: State, s: Tensor | float, t: Tensor | float, *, noise: State | None = None,
                     generator=None, model_kwargs: dict | None = None, mask: State | None = None) -> State:
        """A draw of ``x_t`` from ``q(x_t | x_s)``, ``s < t``: RePaint's way back."""
        raise NotImplementedError

    def known_at(self, known: State, t: Tensor | float, *, generator=None, model_kwargs: dict | None = None) -> State:
        """The known part of an inpainting as the model should see it at ``t``."""
        raise NotImplementedError

    def training_times(self, n: int, *, generator=None, device=None) -> Tensor:
        """``n`` times to train on."""
        raise NotImplementedError

    def leaf_errors(self, output: State, x0: State, x_t: State, t: Tensor, noise: State, *,
                    mask: State | None = None, weighting: str | None = None) -> State:
        """The loss of each sample, per leaf (a ``(B,)`` tensor, or a dict of them)."""
        raise NotImplementedError

    def time_weight(self, t: Tensor, weighting: str | None = None) -> Tensor | float:
        """A weight over time applied to the sum over leaves (1 unless the process weighs time)."""
        return 1.0

    def denoiser(self, model: Callable, like: State | None = None, *, cond: Any = None, guidance: float = 1.0,
                 uncond: Any = None, model_kwargs: dict | None = None, mask: State | None = None):
        """The model as this process's samplers see it (a :class:`~diffkit.denoiser.GuidedModel`)."""
        raise NotImplementedError

    def sample_times(self, steps: int, spacing: str = "uniform", *, t_max: float = 1.0) -> Tensor:
        """``steps + 1`` decreasing times from ``t_max`` to 0."""
        raise NotImplementedError

    def auto_spacing(self, sampler: Callable, like: State) -> str:
        """The spacing ``spacing="auto"`` stands for with this sampler: its own, when it names one."""
        return getattr(sampler, "spacing", None) or "uniform"

    def run_sampler(self, sampler: Callable, denoiser, x: State, times: Tensor, **kwargs) -> State:
        """Run ``sampler`` from ``x`` at ``times[0]`` through ``times``."""
        return sampler(denoiser, x, times, **kwargs)

    def check_state(self, x: State) -> list[str]:
        """Problems of a data state for this process (the conformance kit)."""
        return []

    def check_output(self, output: State, x: State) -> list[str]:
        """Problems of a model output at the state ``x`` (the conformance kit)."""
        return []

    def check_noise(self, noise: State) -> list[str]:
        """Problems of a draw of the domain's noise (the conformance kit)."""
        return []

    def check_sample(self, x: State, example: State, mask: State | None) -> list[str]:
        """Problems of a sample drawn for the example state ``example`` with padding ``mask``."""
        return []

    # -- shared --------------------------------------------------------------------------------

    def get_sampler(self, name: str) -> Callable:
        """The sampler registered under ``name`` (in :attr:`samplers`), of a kind this process runs."""
        return get_sampler(name, self.samplers, kind=self.sampler_kinds)

    def training_draws(self, x0: State, t: Tensor | None = None, noise: State | None = None, generator=None,
                       model_kwargs: dict | None = None) -> tuple[Tensor, State]:
        """A training loss's times and noise: as given, or drawn for ``x0`` where None."""
        if t is None:
            t = self.training_times(batch_size(x0), generator=generator, device=first_leaf(x0).device)
        if noise is None:
            noise = draw_noise(self.noise_fn, x0, generator, **(model_kwargs or {}))
        return t, noise

    def loss(self, model: Callable, x0: State, *, cond: Any = None, mask: State | None = None,
             model_kwargs: dict | None = None, t: Tensor | None = None, noise: State | None = None,
             generator: torch.Generator | None = None, weighting: str | None = None,
             leaf_weights: dict[str, float] | None = None, reduction: str = "mean") -> Tensor:
        """The training objective at ``x_t ~ q(x_t | x_0)``: ``t`` and ``noise`` are drawn when not
        given; the model is called once as ``model(x_t, t, cond=cond, **model_kwargs)``; each
        sample's loss is the sum over leaves of :meth:`leaf_errors` (weighted by ``leaf_weights``),
        times :meth:`time_weight`. ``mask`` (1 = counts) keeps padding out; ``reduction="none"``
        returns one value per sample."""
        model_kwargs = model_kwargs or {}
        t, noise = self.training_draws(x0, t, noise, generator, model_kwargs)
        x_t = self.q_sample(x0, t, noise, mask=mask)
        output = model(x_t, t, cond=cond, **model_kwargs)
        errors = self.leaf_errors(output, x0, x_t, t, noise, mask=mask, weighting=weighting)
        return reduce_loss(errors, leaf_weights, reduction, self.time_weight(t, weighting))

    @torch.no_grad()
    def sample(self, model: Callable, shape: tuple[int, ...] | State, *, sampler: str | None = None,
               steps: int | None = None, spacing: str = "auto", generator: torch.Generator | None = None,
               callback: Callable | None = None, cond: Any = None, guidance: float = 1.0, uncond: Any = None,
               model_kwargs: dict | None = None, mask: State | None = None, x_T: State | None = None,
               t_start: float = 1.0, progress: bool = False, **options) -> State:
        """Draw samples by running a sampler from the prior (or ``x_T``) at ``t_start`` to 0.

        ``shape`` is a tuple (a Tensor state) or an example state whose structure, dtype and
        device the samples copy. ``sampler`` and ``steps`` default to the process's
        (``defaults["sample"]``); ``spacing="auto"`` takes the sampler's own when it names one
        (:meth:`auto_spacing`). ``generator`` is a ``torch.Generator`` or a
        :class:`~diffkit.tree.SampleGenerators`, one per sample, which makes every sample
        independent of the batch it is drawn in. ``cond``/``guidance``/``uncond`` set
        classifier-free guidance; ``mask`` marks padding (see each process); ``options`` go to the
        sampler (e.g. ``eta`` for DDIM).

        Sampling runs without autograd (``torch.no_grad``), so no step keeps the graph of the
        steps before it; a model that needs gradients (guidance by a classifier's gradient) turns
        them on for its own computation with ``torch.enable_grad()``.
        """
        defaults = self.defaults["sample"]
        sample_fn = self.get_sampler(sampler or defaults["sampler"])
        steps = steps or defaults["steps"]
        example = self.example(model, shape)
        if spacing == "auto":
            spacing = self.auto_spacing(sample_fn, example)
        denoiser = self.denoiser(model, example, cond=cond, guidance=guidance, uncond=uncond,
                                 model_kwargs=model_kwargs, mask=mask)
        if x_T is None:
            x_T = self.prior_sample(example, generator, model_kwargs=model_kwargs, mask=mask)
        times = self.sample_times(steps, spacing, t_max=t_start)
        with progress_callback(progress, steps, callback) as observe:
            return self.run_sampler(sample_fn, denoiser, x_T, times, generator=generator, callback=observe, **options)

    @torch.no_grad()
    def inpaint(self, model: Callable, known: State, keep: State, *, sampler: str | None = None,
                steps: int | None = None, spacing: str | None = None, resample: int = 1,
                generator: torch.Generator | None = None, callback: Callable | None = None,
                cond: Any = None, guidance: float = 1.0, uncond: Any = None, model_kwargs: dict | None = None,
                mask: State | None = None, progress: bool = False, **options) -> State:
        """Generate the part of ``known`` where ``keep`` is 0, keeping the rest: :func:`repaint`
        from the prior, with ``sampler``, ``steps`` and ``spacing`` defaulting to the process's
        (``defaults["inpaint"]``). ``keep`` broadcasts against each leaf (a ``(B, 1, H, W)`` keep
        serves a ``(B, C, H, W)`` image; a dict may leave out leaves that are all generated).
        Like :meth:`sample`, it runs without autograd."""
        defaults = self.defaults["inpaint"]
        sampler = sampler or defaults["sampler"]
        sample_fn = self.get_sampler(sampler)
        options = {**defaults.get("options", {}).get(sampler, {}), **options}
        spacing = spacing or defaults["spacing"]
        if spacing == "auto":
            spacing = self.auto_spacing(sample_fn, known)
        denoiser = self.denoiser(model, known, cond=cond, guidance=guidance, uncond=uncond,
                                 model_kwargs=model_kwargs, mask=mask)
        steps = steps or defaults["steps"]
        times = self.sample_times(steps, spacing)
        x = self.prior_sample(known, generator, model_kwargs=model_kwargs, mask=mask)
        with progress_callback(progress, steps, callback) as observe:
            return repaint(self, sample_fn, denoiser, x, times, known, keep, resample=resample, generator=generator,
                           callback=observe, model_kwargs=model_kwargs, mask=mask, **options)

    def edit(self, model: Callable, x0: State, strength: float, *, sampler: str | None = None,
             steps: int | None = None, spacing: str | None = None, generator=None, mask: State | None = None,
             **kwargs) -> State:
        """SDEdit (Meng et al. 2022): draw ``x_t ~ q(x_t | x_0)`` at ``t = strength`` and sample from
        there with ``round(steps * strength)`` steps. ``strength`` near 0 returns the input almost
        unchanged, 1 ignores it; ``sampler``, ``steps`` and ``spacing`` default to the process's
        (``defaults["edit"]``); ``kwargs`` are those of :meth:`sample`."""
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        defaults = self.defaults["edit"]
        t = torch.full((batch_size(x0),), strength, device=first_leaf(x0).device)
        noised = self.q_sample(x0, t, generator=generator, model_kwargs=kwargs.get("model_kwargs"), mask=mask)
        return self.sample(model, x0, sampler=sampler or defaults["sampler"],
                           steps=max(1, round((steps or defaults["steps"]) * strength)),
                           spacing=spacing or defaults["spacing"], generator=generator, mask=mask, x_T=noised,
                           t_start=strength, **kwargs)



class GaussianNoiseProcess(Process):
    """A process on real-valued states whose prior is its noise, standard normal (the domain's:
    zeros on padding): what Gaussian diffusion and flow matching share."""

    noise_is_prior = True

    def example(self, model: Callable, shape: tuple[int, ...] | State) -> State:
        if isinstance(shape, (tuple, list, torch.Size)):
            return torch.zeros(tuple(shape), device=model_device(model))
        return shape

    def prior_sample(self, like: State, generator=None, *, noise: State | None = None,
                     model_kwargs: dict | None = None, mask: State | None = None) -> State:
        """Standard noise shaped like ``like`` (the domain's: zeros on padding)."""
        return draw_noise(self.noise_fn, like, generator, **(model_kwargs or {})) if noise is None else noise

    def known_at(self, known: State, t: Tensor | float, *, generator=None, model_kwargs: dict | None = None) -> State:
        """A fresh draw of ``q(x_t | known)``."""
        return self.q_sample(known, t, generator=generator, model_kwargs=model_kwargs)

    def check_state(self, x: State) -> list[str]:
        return float_state_problems(x, self.kind)

    def check_output(self, output: State, x: State) -> list[str]:
        return same_structure_problems("model output", output, x)

    def check_noise(self, noise: State) -> list[str]:
        return normal_noise_problems(noise)

def repaint(process: Process, sampler: Callable, denoiser, x: State, times: Tensor, known: State, keep: State, *,
            resample: int = 1, generator=None, callback: Callable | None = None, model_kwargs: dict | None = None,
            mask: State | None = None, **options) -> State:
    """Fill in the part of ``known`` where ``keep`` is 0, starting from ``x`` at ``times[0]``.

    Before every step the kept part of the state is replaced by ``process.known_at(known, t)``
    (for Gaussian paths a fresh draw of ``q(x_t | known)``, the replacement method of Song et al.
    2021; for categorical diffusion the known classes themselves). With ``resample = r > 1`` each
    step is taken ``r`` times, going back from ``s`` to ``t`` with ``process.forward_step`` in
    between (RePaint, Lugmayr et al. 2022), which lets the generated part agree with the kept one.
    The sampler runs one step at a time, so a multistep solver keeps no history here.
    """
    if resample < 1:
        raise ValueError(f"resample must be at least 1, got {resample}")
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        for r in range(resample):
            x = where(keep, process.known_at(known, t, generator=generator, model_kwargs=model_kwargs), x)
            x = process.run_sampler(sampler, denoiser, x, times[i:i + 2], generator=generator, **options)
            if r < resample - 1:
                x = process.forward_step(x, s, t, generator=generator, model_kwargs=model_kwargs, mask=mask)
        if callback is not None:
            callback({"step": i, "t": float(t), "x": x, "x0": x})
    return where(keep, known, x)


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Per-sample mean of ``values`` over all but the batch dimension, counting only ``mask == 1``."""
    if mask is None:
        return values.reshape(values.shape[0], -1).mean(dim=1)
    mask = mask.to(values.dtype).expand_as(values)
    total = (values * mask).reshape(values.shape[0], -1).sum(dim=1)
    count = mask.reshape(values.shape[0], -1).sum(dim=1).clamp(min=1.0)
    return total / count


def leaf_mask(mask: State | None, key: str | None) -> Tensor | None:
    """A leaf's mask: the dict entry of a dict mask, the mask itself otherwise (None: all counts)."""
    if isinstance(mask, dict):
        return mask.get(key)
    return mask


def squared_errors(output: State, wanted: State, mask: State | None) -> State:
    """Per leaf, each sample's mean squared error over the entries ``mask`` marks (in float32 or wider)."""
    squared = tree_map(lambda o, w: (o.float() - w.float()) ** 2, output, wanted)
    if isinstance(squared, Tensor):
        return masked_mean(squared, mask)
    return {key: masked_mean(error, leaf_mask(mask, key)) for key, error in squared.items()}


def reduce_loss(errors: State, leaf_weights: dict[str, float] | None = None, reduction: str = "mean",
                time_weight: Tensor | float = 1.0) -> Tensor:
    """Each sample's loss, the sum over leaves of ``errors`` (weighted by ``leaf_weights``) times
    ``time_weight``; its mean (``reduction="mean"``) or all of them (``"none"``)."""
    if isinstance(errors, Tensor):
        per_sample = errors
    else:
        per_sample = 0.0
        for key, value in errors.items():
            per_sample = per_sample + (leaf_weights or {}).get(key, 1.0) * value
    per_sample = per_sample * time_weight
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")


# -- what the conformance kit checks, shared by the processes ------------------------------------

def float_state_problems(x: State, kind: str) -> list[str]:
    """A continuous process's state holds floating-point leaves."""
    return [f"state leaves must be floating point for {kind} processes, got {leaf.dtype} (integer states need "
            "diffusion.kind = 'categorical')" for leaf in leaves(x) if not leaf.is_floating_point()][:1]


def normal_noise_problems(noise: State) -> list[str]:
    """Standard normal noise: unit variance where it is not zero (padding may be)."""
    values = torch.cat([leaf.flatten() for leaf in leaves(noise)])
    values = values[values != 0]
    if values.numel() > 100 and not (0.8 < values.std() < 1.2):
        return [f"noise() should be unit-variance where it is not zero; its std is {values.std():.3f}"]
    return []


def same_structure_problems(what: str, value: State, reference: State) -> list[str]:
    """``value`` has ``reference``'s keys, and each leaf its shape and (for floating leaves) its dtype."""
    if isinstance(reference, dict) != isinstance(value, dict):
        return [f"{what} is a {type(value).__name__} but the state is a {type(reference).__name__}"]
    if isinstance(reference, dict):
        if set(value) != set(reference):
            return [f"{what} has keys {sorted(value)} but the state has {sorted(reference)}"]
        return [problem for key in reference
                for problem in same_structure_problems(f"{what}[{key!r}]", value[key], reference[key])]
    if not isinstance(value, Tensor):
        return [f"{what} is a {type(value).__name__}, expected a tensor"]
    if value.shape != reference.shape:
        return [f"{what} has shape {tuple(value.shape)}, expected {tuple(reference.shape)}"]
    if value.dtype != reference.dtype and reference.is_floating_point():
        return [f"{what} has dtype {value.dtype}, expected {reference.dtype}"]
    return []



def model_device(model: Callable) -> torch.device:
    """Where ``model``'s parameters are (the CPU for a plain function)."""
    parameters = getattr(model, "parameters", None)
    if parameters is not None:
        for parameter in parameters():
            return parameter.device
    return torch.device("cpu")


class progress_callback:
    """A context giving a callback that advances a tqdm bar (when asked) and forwards to ``callback``."""

    def __init__(self, enabled: bool, total: int, callback: Callable | None):
        self.enabled, self.total, self.callback = enabled, total, callback
        self.bar = None

    def __enter__(self) -> Callable | None:
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc="sampling", unit="step", leave=False)
        if self.bar is None:
            return self.callback

        def observe(info: dict) -> None:
            self.bar.update(1)
            if self.callback is not None:
                self.callback(info)

        return observe

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = ["GaussianNoiseProcess", "Process", "masked_mean", "reduce_loss", "repaint", "squared_errors"]
