"""Categorical (discrete) diffusion: class indices noised by transition matrices, a model that
returns logits over ``x_0``, its training loss and its samplers.

The maths is in :mod:`diffkit.categorical_process`, the samplers in
:mod:`diffkit.categorical_samplers`; :class:`CategoricalDiffusion` puts them together with the
same front end as :class:`diffkit.Diffusion`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .categorical_process import (
    CategoricalProcess,
    draw_categorical,
    elbo_weight,
    sample_times,
    signal,
    uniform_like,
)
from .categorical_samplers import CategoricalDenoiser, keep_masked, leaf_process, map_leaves, mask_for
from .diffusion import _model_device, _progress, masked_mean, training_draws
from .samplers import get_sampler
from .schedules import Schedule, make_schedule
from .tree import State, append_dims, batch_size, draw_noise, first_leaf

WEIGHTINGS = ("auto", "elbo", "uniform")
DEFAULT_SAMPLER = "discrete_flow"  # least KL per step in benchmarks/categorical.py
DEFAULT_STEPS = 100


class CategoricalDiffusion:
    """Discrete diffusion with transitions ``Q_t = a(t) I + (1 - a(t)) 1 m^T`` per leaf.

    Args:
        num_classes: ``K``, the number of classes of every leaf, or a dict keyed like the state.
        noise: the stationary law ``m``: ``"uniform"``, ``"absorbing"`` (an extra mask state ``K``)
            or ``"marginal"`` (``m = marginal``); or a dict keyed like the state.
        marginal: the law over the classes for ``"marginal"`` noise (a dict for dict states).
        schedule: a name (``"cosine"``, ``"linear"``, ``"sigmoid"``), a config dict or a
            :class:`~diffkit.schedules.Schedule`; ``a(t)`` is its ``alpha_bar`` rescaled to run
            from exactly 1 to exactly 0.
        noise_fn: ``noise_fn(like, generator, **model_kwargs) -> state`` of uniforms in
            ``[0, 1)``, one per entry, from which every draw is made by inverse CDF; a domain
            supplies a symmetric one for the edges of a graph.
        weighting: the loss's weight over time: ``"auto"`` (``"elbo"`` for absorbing leaves,
            ``"uniform"`` otherwise), ``"elbo"`` (the masked-diffusion bound's weight; absorbing
            leaves only) or ``"uniform"`` (plain cross-entropy).
        vb_weight: weight of the variational-bound term added to the cross-entropy (D3PM's hybrid
            loss, Austin et al. 2021); 0 leaves it out.
        vb_steps: the number of steps of that bound when the schedule is continuous (a discrete
            schedule uses its own).
        samplers: where sampler names are looked up (a plugin manager's ``Registry.samplers``);
            the built-in ones by default.
    """

    def __init__(self, num_classes: int | dict, noise: str | dict = "uniform", marginal: Any = None,
                 schedule: str | Schedule | dict = "cosine", *, noise_fn: Callable = uniform_like,
                 weighting: str = "auto", vb_weight: float = 0.0, vb_steps: int = 1000,
                 samplers: dict[str, Callable] | None = None):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        if vb_weight < 0 or vb_steps < 1:
            raise ValueError(f"vb_weight must be >= 0 and vb_steps >= 1, got {vb_weight} and {vb_steps}")
        self.schedule = make_schedule(schedule)
        self.processes = _build_processes(num_classes, noise, marginal)
        self.noise_fn = noise_fn
        self.weighting = weighting
        self.vb_weight = vb_weight
        self.vb_steps = vb_steps
        self.samplers = samplers  # where sampler names are looked up (a plugin manager's registry)
        self._leaf_weighting(weighting)  # reject "elbo" on a non-absorbing leaf now

    def __repr__(self) -> str:
        return (f"CategoricalDiffusion(processes={self.processes!r}, schedule={self.schedule!r}, "
                f"weighting={self.weighting!r}, vb_weight={self.vb_weight!r})")

    # -- the forward process ----------------------------------------------------------------

    def transition(self, t: Tensor | float, key: str | None = None) -> Tensor:
        """``Q_t`` in float64: ``(S, S)`` for a scalar ``t``, ``(B, S, S)`` for ``t`` of shape
        ``(B,)``, with ``q(x_t = j | x_0 = i) = Q_t[i, j]``; ``key`` names the leaf of a dict state."""
        return self._process(key).matrix(signal(self.schedule, t))

    def num_states(self, key: str | None = None) -> int:
        """``S``: ``K``, plus one for the mask state under absorbing noise."""
        return self._process(key).num_states

    def q_sample(self, x0: State, t: Tensor, noise: State | None = None, *, generator=None,
                 model_kwargs: dict | None = None, mask: State | None = None) -> State:
        """A draw of ``x_t`` from ``q(x_t | x_0) = Q_t[x_0, :]``: the class whose CDF interval holds
        the entry's uniform in ``noise`` (drawn with ``noise_fn`` when not given). Entries where
        ``mask`` is 0 (padding) keep their value."""
        map_leaves(_check_classes, self.processes_like(x0), x0)
        return self._draw_forward(x0, signal(self.schedule, t), noise, generator, model_kwargs, mask)

    def _draw_forward(self, x: State, at, noise: State | None, generator, model_kwargs: dict | None,
                      mask: State | None) -> State:
        """A draw from ``a I + (1 - a) 1 m^T`` applied to ``x`` per entry, ``at = (a, 1 - a)``: from
        ``x_0`` to ``x_t`` with ``a(t)``, from ``x_s`` to ``x_t`` with ``a_t / a_s``."""
        if noise is None:
            noise = draw_noise(self.noise_fn, x, generator, **(model_kwargs or {}))
        drawn = map_leaves(lambda _, process, leaf, u: draw_categorical(process.forward_probs(leaf, at), u),
                           self.processes_like(x), x, noise)
        return keep_masked(mask, drawn, x)

    def prior_sample(self, like: State, generator=None, *, model_kwargs: dict | None = None,
                     mask: State | None = None) -> State:
        """A draw from the law at ``t = 1``, ``m`` per entry, shaped like ``like`` (kept where ``mask`` is 0)."""
        noise = draw_noise(self.noise_fn, like, generator, **(model_kwargs or {}))
        drawn = map_leaves(lambda _, process, leaf, u: draw_categorical(process.prior_probs(leaf), u),
                           self.processes_like(like), like, noise)
        return keep_masked(mask, drawn, like)

    # -- training ---------------------------------------------------------------------------

    def loss(self, model: Callable, x0: State, *, cond: Any = None, mask: State | None = None,
             model_kwargs: dict | None = None, t: Tensor | None = None, noise: State | None = None,
             generator: torch.Generator | None = None, weighting: str | None = None,
             leaf_weights: dict[str, float] | None = None, reduction: str = "mean") -> Tensor:
        """Cross-entropy of the model's ``x_0`` logits at ``x_t ~ q(x_t | x_0)``, weighted over time.

        ``t`` and the uniforms ``noise`` are drawn when not given (``schedule.training_times``,
        ``noise_fn``). Per sample and leaf: the mean over the entries ``mask`` marks (1 = counts)
        of ``w(t) c (-log p(x_0 | x_t))``, where under absorbing noise ``c`` keeps masked entries
        only and ``w`` is the ELBO weight (``weighting="elbo"``) or 1; plus ``vb_weight`` times
        the variational-bound term. Padding entries keep their value in ``x_t``. Leaves are
        summed with ``leaf_weights``; ``reduction="none"`` returns one value per sample.
        """
        model_kwargs = model_kwargs or {}
        t, noise = training_draws(self.schedule, self.noise_fn, x0, t, noise, generator, model_kwargs)
        x_t = self.q_sample(x0, t, noise, mask=mask)
        logits = model(x_t, t, cond=cond, **model_kwargs)
        weightings = self._leaf_weighting(weighting or self.weighting)
        processes = self.processes_like(x0)

        def leaf_loss(key, process, leaf_logits, leaf_x0, leaf_x_t):
            leaf_weighting = weightings[key] if isinstance(weightings, dict) else weightings
            return self._leaf_loss(process, leaf_logits, leaf_x0, leaf_x_t, t, mask_for(mask, key), leaf_weighting)

        per_leaf = map_leaves(leaf_loss, processes, _as_state(logits, x0), x0, x_t)
        if isinstance(per_leaf, Tensor):
            per_sample = per_leaf
        else:
            per_sample = sum((leaf_weights or {}).get(key, 1.0) * value for key, value in per_leaf.items())
        if reduction == "none":
            return per_sample
        if reduction == "mean":
            return per_sample.mean()
        raise ValueError(f"unknown reduction {reduction!r}; valid: mean, none")

    def _leaf_loss(self, process: CategoricalProcess, logits: Tensor, x0: Tensor, x_t: Tensor, t: Tensor,
                   mask: Tensor | None, weighting: str) -> Tensor:
        expected = (*x0.shape, process.num_classes)
        if tuple(logits.shape) != expected:
            raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}; expected {expected}")
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        log_p = torch.log_softmax(logits.to(dtype), dim=-1)
        cross_entropy = -log_p.gather(-1, x0.long().unsqueeze(-1)).squeeze(-1)
        if process.kind == "absorbing":  # a revealed entry is x_0 itself: nothing to predict
            cross_entropy = torch.where(x_t == process.mask_index, cross_entropy, torch.zeros((), dtype=dtype))
        if weighting == "elbo":
            cross_entropy = cross_entropy * append_dims(elbo_weight(self.schedule, t).to(dtype), cross_entropy.ndim)
        value = masked_mean(cross_entropy, mask)
        if self.vb_weight > 0:
            value = value + self.vb_weight * masked_mean(self._bound_term(process, log_p, x0, x_t, t), mask)
        return value

    def _bound_term(self, process: CategoricalProcess, log_p: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """``T KL(q(x_s | x_t, x_0) || p(x_s | x_t))`` per entry with ``s = t - 1/T``: an unbiased
        estimate, over ``t``, of the bound's sum over the ``T`` steps (Austin et al. 2021, eq. 3)."""
        steps = self.schedule.num_steps or self.vb_steps
        s = (t.double() - 1.0 / steps).clamp(min=0.0)
        at_t, at_s = signal(self.schedule, t), signal(self.schedule, s)
        exact = process.posterior(process.one_hot(x0, log_p.dtype), x_t, at_t, at_s)
        model = process.posterior(log_p.exp(), x_t, at_t, at_s)
        ratio = torch.log(exact.clamp(min=1e-30)) - torch.log(model.clamp(min=1e-30))
        return steps * torch.where(exact > 0, exact * ratio, torch.zeros((), dtype=exact.dtype)).sum(-1)

    def _leaf_weighting(self, weighting: str) -> str | dict[str, str]:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")

        def resolve(key, process):
            if weighting == "auto":
                return "elbo" if process.kind == "absorbing" else "uniform"
            if weighting == "elbo" and process.kind != "absorbing":
                where = f" (state key {key!r})" if key is not None else ""
                raise ValueError(f"weighting='elbo' needs absorbing noise, not {process.kind!r}{where}; "
                                 "use vb_weight for the bound under uniform or marginal noise")
            return weighting

        if isinstance(self.processes, CategoricalProcess):
            return resolve(None, self.processes)
        return {key: resolve(key, process) for key, process in self.processes.items()}

    # -- sampling ---------------------------------------------------------------------------

    def denoiser(self, model: Callable, like: State, *, cond: Any = None, guidance: float = 1.0,
                 uncond: Any = None, model_kwargs: dict | None = None,
                 mask: State | None = None) -> CategoricalDenoiser:
        return CategoricalDenoiser(model, self.schedule, self.processes_like(like), cond=cond, guidance=guidance,
                                   uncond=uncond, model_kwargs=model_kwargs, noise=self.noise_fn, mask=mask)

    @torch.no_grad()
    def sample(self, model: Callable, shape: tuple[int, ...] | State, *, sampler: str | None = None,
               steps: int = DEFAULT_STEPS, spacing: str = "auto", generator: torch.Generator | None = None,
               callback: Callable | None = None, cond: Any = None, guidance: float = 1.0, uncond: Any = None,
               model_kwargs: dict | None = None, mask: State | None = None, x_T: State | None = None,
               t_start: float = 1.0, progress: bool = False, **options) -> State:
        """Draw samples by running a categorical sampler from ``t_start`` to 0.

        ``shape`` is a tuple (a Tensor state) or an example state (a LongTensor or a dict of them)
        whose structure, shapes and device the samples copy; entries where ``mask`` is 0
        (padding) keep the example's values. ``sampler`` defaults to ``"discrete_flow"``;
        ``spacing="auto"`` takes the sampler's own when it names one, else ``"signal"`` (uniform in
        ``a(t)``) when every leaf has absorbing noise and ``"uniform"`` otherwise, the better of
        the two in benchmarks/categorical.py (see :func:`categorical_process.sample_times`).
        ``cond``/``guidance``/``uncond`` set classifier-free guidance on the logits; ``options``
        go to the sampler (e.g. ``eta`` for ``discrete_flow``). Sampling runs without autograd,
        as :meth:`Diffusion.sample` does.
        """
        sample_fn, example, denoiser, times = self._sampling_plan(
            model, shape, sampler=sampler, steps=steps, spacing=spacing, t_start=t_start, cond=cond,
            guidance=guidance, uncond=uncond, model_kwargs=model_kwargs, mask=mask)
        if x_T is None:
            x_T = self.prior_sample(example, generator, model_kwargs=model_kwargs, mask=mask)
        with _progress(progress, steps, callback) as observe:
            return sample_fn(denoiser, x_T, times, generator=generator, callback=observe, **options)

    def _sampling_plan(self, model: Callable, shape, *, sampler: str | None, steps: int, spacing: str,
                       t_start: float, mask: State | None, **denoiser_options):
        """The sampler function, example state, denoiser and times of a sampling run."""
        sample_fn = get_sampler(sampler or DEFAULT_SAMPLER, self.samplers, kind="categorical")
        example = self._example(model, shape)
        if spacing == "auto":
            spacing = getattr(sample_fn, "spacing", None) or self._auto_spacing(example)
        denoiser = self.denoiser(model, example, mask=mask, **denoiser_options)
        return sample_fn, example, denoiser, sample_times(self.schedule, steps, spacing, t_max=t_start)

    @torch.no_grad()
    def inpaint(self, model: Callable, known: State, keep: State, *, mask: State | None = None,
                generator: torch.Generator | None = None, resample: int = 1, **kwargs) -> State:
        """Generate the entries of ``known`` where ``keep`` is 0, holding the rest at their known values.

        The kept entries stay at ``x_0`` in every ``x_t`` the model sees, so each step is the
        posterior with ``x_0`` known there. Under absorbing noise a revealed entry is exactly what
        the forward process produces, so with an exact model the result follows the exact
        conditional law; under uniform or marginal noise the model reads a kept entry as noisy
        evidence of ``x_0``, which leaves a bias towards the unconditional law. With ``resample =
        r > 1`` each step is taken ``r`` times, the generated entries re-noised from ``s`` back to
        ``t`` with ``Q_{t|s}`` in between (RePaint, Lugmayr et al. 2022), so that they can come to
        agree with the kept ones. ``kwargs`` are those of :meth:`sample`.
        """
        if resample < 1:
            raise ValueError(f"resample must be at least 1, got {resample}")
        free = _and_not(mask, keep, known)
        x = self.prior_sample(known, generator, model_kwargs=kwargs.get("model_kwargs"), mask=free)
        if resample == 1:
            x = self.sample(model, known, x_T=x, mask=free, generator=generator, **kwargs)
        else:
            x = self._resampled(model, known, x, free, resample, generator, **kwargs)
        return keep_masked(free, x, known)

    def _resampled(self, model: Callable, known: State, x: State, free: State, resample: int, generator, *,
                   sampler: str | None = None, steps: int = DEFAULT_STEPS, spacing: str = "auto",
                   callback: Callable | None = None, progress: bool = False, cond: Any = None,
                   guidance: float = 1.0, uncond: Any = None, model_kwargs: dict | None = None, **options) -> State:
        """RePaint's loop over the steps of :meth:`sample` (see :meth:`inpaint`)."""
        sample_fn, _, denoiser, times = self._sampling_plan(
            model, known, sampler=sampler, steps=steps, spacing=spacing, t_start=1.0, cond=cond,
            guidance=guidance, uncond=uncond, model_kwargs=model_kwargs, mask=free)
        with _progress(progress, steps, callback) as observe:
            for i in range(len(times) - 1):
                (a_t, _), (a_s, _) = signal(self.schedule, times[i]), signal(self.schedule, times[i + 1])
                kept = a_t / a_s.clamp(min=1e-300)  # Q_{t|s} keeps an entry with probability a_t / a_s
                for r in range(resample):
                    x = sample_fn(denoiser, x, times[i:i + 2], generator=generator, **options)
                    if r < resample - 1:
                        x = self._draw_forward(x, (kept, 1 - kept), None, generator, model_kwargs, free)
                if observe is not None:
                    observe({"step": i, "t": float(times[i]), "x": x, "x0": x})
        return x

    def edit(self, model: Callable, x0: State, strength: float, *, steps: int = DEFAULT_STEPS,
             generator: torch.Generator | None = None, mask: State | None = None, **kwargs) -> State:
        """SDEdit (Meng et al. 2022) for categories: draw ``x_t ~ q(x_t | x_0)`` at ``t = strength``
        and sample from there with ``round(steps * strength)`` steps. ``strength = 1`` ignores ``x0``."""
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        t = torch.full((batch_size(x0),), strength, device=first_leaf(x0).device)
        noised = self.q_sample(x0, t, generator=generator, model_kwargs=kwargs.get("model_kwargs"), mask=mask)
        return self.sample(model, x0, x_T=noised, t_start=strength, steps=max(1, round(steps * strength)),
                           generator=generator, mask=mask, **kwargs)

    def _auto_spacing(self, like: State) -> str:
        processes = self.processes_like(like)
        kinds = {processes.kind} if isinstance(processes, CategoricalProcess) else {p.kind for p in processes.values()}
        return "signal" if kinds == {"absorbing"} else "uniform"

    # -- leaves -----------------------------------------------------------------------------

    def processes_like(self, state: State):
        """The forward process of every leaf of ``state``: one :class:`CategoricalProcess` for a
        Tensor state, a dict of them for a dict state."""
        if isinstance(state, Tensor):
            if isinstance(self.processes, dict):
                raise ValueError(f"this diffusion has one process per state key ({sorted(self.processes)}), "
                                 "but the state is a single tensor")
            return self.processes
        if not isinstance(state, dict):
            raise TypeError(f"a categorical state is a LongTensor or a dict of them, got {type(state).__name__}")
        if isinstance(self.processes, CategoricalProcess):
            return {key: self.processes for key in state}
        if state.keys() != self.processes.keys():
            raise ValueError(f"the state has keys {sorted(state)}, the diffusion's processes {sorted(self.processes)}")
        return self.processes

    def _process(self, key: str | None) -> CategoricalProcess:
        if key is None and isinstance(self.processes, dict):
            raise ValueError(f"this diffusion has one process per state key; pass key= one of {sorted(self.processes)}")
        return leaf_process(self.processes, key)

    @staticmethod
    def _example(model: Callable, shape: tuple[int, ...] | State) -> State:
        if isinstance(shape, (tuple, list, torch.Size)):
            return torch.zeros(tuple(shape), dtype=torch.long, device=_model_device(model))
        return shape


def _build_processes(num_classes, noise, marginal):
    """One process for all leaves, or a dict of them when any argument is a dict keyed like the state."""
    dicts = [arg for arg in (num_classes, noise, marginal) if isinstance(arg, dict)]
    if not dicts:
        return CategoricalProcess(num_classes, noise, marginal)
    keys = dicts[0].keys()
    for arg in dicts[1:]:
        if arg.keys() != keys:
            raise ValueError(f"num_classes, noise and marginal name different state keys: {sorted(keys)} vs {sorted(arg)}")
    pick = lambda arg, key: arg[key] if isinstance(arg, dict) else arg  # noqa: E731
    processes = {}
    for key in keys:
        try:
            processes[key] = CategoricalProcess(pick(num_classes, key), pick(noise, key), pick(marginal, key))
        except ValueError as error:
            raise ValueError(f"state key {key!r}: {error}") from None
    return processes


def _check_classes(key: str | None, process: CategoricalProcess, x0: Tensor) -> None:
    where = f" (state key {key!r})" if key is not None else ""
    if x0.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) or x0.is_complex():
        raise TypeError(f"categorical states hold class indices (an integer tensor){where}, got {x0.dtype}")
    if x0.numel() and (int(x0.min()) < 0 or int(x0.max()) >= process.num_classes):
        raise ValueError(f"class indices must lie in [0, {process.num_classes}){where}; "
                         f"found {int(x0.min())} to {int(x0.max())}")


def _as_state(logits: State, like: State) -> State:
    if isinstance(like, dict) and not isinstance(logits, dict):
        raise ValueError(f"the state has keys {sorted(like)}, so the model must return a dict of logits, "
                         f"got {type(logits).__name__}")
    return logits


def _and_not(mask: State | None, keep: State, like: State) -> State:
    """Per leaf ``mask and not keep`` (``mask`` None: everything counts)."""
    if isinstance(like, Tensor):
        if not isinstance(keep, Tensor):
            raise TypeError(f"keep must be a tensor for a tensor state, got {type(keep).__name__}")
        allowed = ~keep.bool()
        return allowed if mask is None else allowed & mask.bool()
    out = {}
    for key in like:
        keep_leaf = mask_for(keep, key)
        allowed = torch.ones((), dtype=torch.bool, device=like[key].device) if keep_leaf is None else ~keep_leaf.bool()
        leaf_mask = mask_for(mask, key)
        out[key] = (allowed if leaf_mask is None else allowed & leaf_mask.bool()).expand_as(like[key])
    return out


__all__ = ["CategoricalDiffusion"]
