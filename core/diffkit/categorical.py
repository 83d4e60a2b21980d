"""Categorical (discrete) diffusion: class indices noised by transition matrices, a model that
returns logits over ``x_0``, its training loss and its samplers.

The maths is in :mod:`diffkit.categorical_process`, the samplers in
:mod:`diffkit.categorical_samplers`; :class:`CategoricalDiffusion` puts them together as a
:class:`~diffkit.contract.Process`, with the
same front end as :class:`diffkit.Diffusion`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .categorical_process import (
    CategoricalTransition,
    draw_categorical,
    elbo_weight,
    sample_times,
    signal,
    uniform_like,
)
from .categorical_samplers import CategoricalDenoiser, keep_padding, map_leaves, transition_of
from .contract import Process, leaf_mask, masked_mean, model_device
from .schedules import Schedule, make_schedule
from .tree import State, append_dims, draw_noise, leaves

WEIGHTINGS = ("auto", "elbo", "uniform")


class CategoricalDiffusion(Process):
    """Discrete diffusion with transitions ``Q_t = a(t) I + (1 - a(t)) 1 m^T`` per leaf.

    Args:
        num_classes: ``K``, the number of classes of every leaf, or a dict keyed like the state.
        transition: the stationary law ``m``: ``"uniform"``, ``"absorbing"`` (an extra mask state
            ``K``) or ``"marginal"`` (``m = marginal``); or a dict keyed like the state.
        marginal: the law over the classes for ``"marginal"`` transitions (a dict for dict states).
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

    Padding: entries where ``mask`` is 0 keep their value in every draw and sample.
    """

    kind = "categorical"
    sampler_kinds = ("categorical",)
    # discrete_flow: least KL per step in benchmarks/categorical.py
    defaults = {operation: {"sampler": "discrete_flow", "steps": 100, "spacing": "auto"}
                for operation in ("sample", "edit", "inpaint")}

    stepwise_sampler = "discrete_flow"

    def __init__(self, num_classes: int | dict, transition: str | dict = "uniform", marginal: Any = None,
                 schedule: str | Schedule | dict = "cosine", *, noise_fn: Callable = uniform_like,
                 weighting: str = "auto", vb_weight: float = 0.0, vb_steps: int = 1000,
                 samplers: dict[str, Callable] | None = None):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        if vb_weight < 0 or vb_steps < 1:
            raise ValueError(f"vb_weight must be >= 0 and vb_steps >= 1, got {vb_weight} and {vb_steps}")
        self.schedule = make_schedule(schedule)
        self.transitions = _build_transitions(num_classes, transition, marginal)
        self.noise_fn = noise_fn
        self.weighting = weighting
        self.vb_weight = vb_weight
        self.vb_steps = vb_steps
        self.samplers = samplers
        self._leaf_weighting(weighting)  # reject "elbo" on a non-absorbing leaf now

    @classmethod
    def from_config(cls, section: dict, *, noise_fn: Callable = uniform_like, samplers: dict | None = None,
                    schedules: dict | None = None, categories: Callable | None = None) -> "CategoricalDiffusion":
        """The diffusion a config's ``diffusion`` section describes, over the classes
        ``categories()`` gives as ``(num_classes, marginal)`` (:meth:`diffkit.Domain.categories`)."""
        if categories is None:
            raise ValueError("a categorical diffusion needs to know its classes (Domain.categories)")
        num_classes, marginal = categories()
        schedule = make_schedule(section["schedule"], schedules=schedules,
                                 zero_terminal_snr=section.get("zero_terminal_snr", False))
        return cls(num_classes, section["transition"], marginal, schedule, noise_fn=noise_fn,
                   vb_weight=section["vb_weight"], samplers=samplers)

    def __repr__(self) -> str:
        return (f"CategoricalDiffusion(transitions={self.transitions!r}, schedule={self.schedule!r}, "
                f"weighting={self.weighting!r}, vb_weight={self.vb_weight!r})")

    # -- the forward process ----------------------------------------------------------------

    def transition(self, t: Tensor | float, key: str | None = None) -> Tensor:
        """``Q_t`` in float64: ``(S, S)`` for a scalar ``t``, ``(B, S, S)`` for ``t`` of shape
        ``(B,)``, with ``q(x_t = j | x_0 = i) = Q_t[i, j]``; ``key`` names the leaf of a dict state."""
        return self._transition(key).matrix(signal(self.schedule, t))

    def num_states(self, key: str | None = None) -> int:
        """``S``: ``K``, plus one for the mask state under absorbing transitions."""
        return self._transition(key).num_states

    def example(self, model: Callable, shape: tuple[int, ...] | State) -> State:
        if isinstance(shape, (tuple, list, torch.Size)):
            return torch.zeros(tuple(shape), dtype=torch.long, device=model_device(model))
        return shape

    def q_sample(self, x0: State, t: Tensor, noise: State | None = None, *, generator=None,
                 model_kwargs: dict | None = None, mask: State | None = None) -> State:
        """A draw of ``x_t`` from ``q(x_t | x_0) = Q_t[x_0, :]``: the class whose CDF interval holds
        the entry's uniform in ``noise`` (drawn with ``noise_fn`` when not given). Entries where
        ``mask`` is 0 (padding) keep their value."""
        map_leaves(_check_classes, self.transitions_like(x0), x0)
        return self._draw_forward(x0, signal(self.schedule, t), noise, generator, model_kwargs, mask)

    def forward_step(self, x: State, s: Tensor | float, t: Tensor | float, *, noise: State | None = None,
                     generator=None, model_kwargs: dict | None = None, mask: State | None = None) -> State:
        """A draw from ``Q_{t|s}``, which keeps an entry with probability ``a_t / a_s``."""
        (a_t, _), (a_s, _) = signal(self.schedule, t), signal(self.schedule, s)
        kept = a_t / a_s.clamp(min=1e-300)
        return self._draw_forward(x, (kept, 1 - kept), noise, generator, model_kwargs, mask)

    def known_at(self, known: State, t: Tensor | float, *, generator=None, model_kwargs: dict | None = None) -> State:
        """The known classes themselves: each step is then the posterior with ``x_0`` known there.
        Under absorbing transitions a revealed entry is exactly what the forward process
        produces, so with an exact model the result follows the exact conditional law; under
        uniform or marginal ones the model reads a kept entry as noisy evidence of ``x_0``, which
        leaves a bias towards the unconditional law (``resample`` reduces it)."""
        return known

    def _draw_forward(self, x: State, at, noise: State | None, generator, model_kwargs: dict | None,
                      mask: State | None) -> State:
        """A draw from ``a I + (1 - a) 1 m^T`` applied to ``x`` per entry, ``at = (a, 1 - a)``: from
        ``x_0`` to ``x_t`` with ``a(t)``, from ``x_s`` to ``x_t`` with ``a_t / a_s``."""
        if noise is None:
            noise = draw_noise(self.noise_fn, x, generator, **(model_kwargs or {}))
        drawn = map_leaves(lambda _, transition, leaf, u: draw_categorical(transition.forward_probs(leaf, at), u),
                           self.transitions_like(x), x, noise)
        return keep_padding(mask, drawn, x)

    def prior_sample(self, like: State, generator=None, *, noise: State | None = None,
                     model_kwargs: dict | None = None, mask: State | None = None) -> State:
        """A draw from the law at ``t = 1``, ``m`` per entry, shaped like ``like`` (kept where ``mask`` is 0)."""
        if noise is None:
            noise = draw_noise(self.noise_fn, like, generator, **(model_kwargs or {}))
        drawn = map_leaves(lambda _, transition, leaf, u: draw_categorical(transition.prior_probs(leaf), u),
                           self.transitions_like(like), like, noise)
        return keep_padding(mask, drawn, like)

    # -- training ---------------------------------------------------------------------------

    def training_times(self, n: int, *, generator=None, device=None) -> Tensor:
        return self.schedule.training_times(n, generator=generator, device=device)

    def leaf_errors(self, output: State, x0: State, x_t: State, t: Tensor, noise: State, *,
                    mask: State | None = None, weighting: str | None = None) -> State:
        """Cross-entropy of the model's ``x_0`` logits, weighted over time, per leaf.

        Per sample and leaf: the mean over the entries ``mask`` marks (1 = counts) of
        ``w(t) c (-log p(x_0 | x_t))``, where under absorbing transitions ``c`` keeps masked
        entries only and ``w`` is the ELBO weight (``weighting="elbo"``) or 1; plus ``vb_weight``
        times the variational-bound term. Padding entries keep their value in ``x_t``.
        """
        weightings = self._leaf_weighting(weighting or self.weighting)

        def leaf_loss(key, transition, leaf_logits, leaf_x0, leaf_x_t):
            leaf_weighting = weightings[key] if isinstance(weightings, dict) else weightings
            return self._leaf_loss(transition, leaf_logits, leaf_x0, leaf_x_t, t, leaf_mask(mask, key), leaf_weighting)

        return map_leaves(leaf_loss, self.transitions_like(x0), _as_state(output, x0), x0, x_t)

    def _leaf_loss(self, transition: CategoricalTransition, logits: Tensor, x0: Tensor, x_t: Tensor, t: Tensor,
                   mask: Tensor | None, weighting: str) -> Tensor:
        expected = (*x0.shape, transition.num_classes)
        if tuple(logits.shape) != expected:
            raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}; expected {expected}")
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        log_p = torch.log_softmax(logits.to(dtype), dim=-1)
        cross_entropy = -log_p.gather(-1, x0.long().unsqueeze(-1)).squeeze(-1)
        if transition.kind == "absorbing":  # a revealed entry is x_0 itself: nothing to predict
            cross_entropy = torch.where(x_t == transition.mask_index, cross_entropy, torch.zeros((), dtype=dtype))
        if weighting == "elbo":
            cross_entropy = cross_entropy * append_dims(elbo_weight(self.schedule, t).to(dtype), cross_entropy.ndim)
        value = masked_mean(cross_entropy, mask)
        if self.vb_weight > 0:
            value = value + self.vb_weight * masked_mean(self._bound_term(transition, log_p, x0, x_t, t), mask)
        return value

    def _bound_term(self, transition: CategoricalTransition, log_p: Tensor, x0: Tensor, x_t: Tensor,
                    t: Tensor) -> Tensor:
        """``T KL(q(x_s | x_t, x_0) || p(x_s | x_t))`` per entry with ``s = t - 1/T``: an unbiased
        estimate, over ``t``, of the bound's sum over the ``T`` steps (Austin et al. 2021, eq. 3)."""
        steps = self.schedule.num_steps or self.vb_steps
        s = (t.double() - 1.0 / steps).clamp(min=0.0)
        at_t, at_s = signal(self.schedule, t), signal(self.schedule, s)
        exact = transition.posterior(transition.one_hot(x0, log_p.dtype), x_t, at_t, at_s)
        model = transition.posterior(log_p.exp(), x_t, at_t, at_s)
        ratio = torch.log(exact.clamp(min=1e-30)) - torch.log(model.clamp(min=1e-30))
        return steps * torch.where(exact > 0, exact * ratio, torch.zeros((), dtype=exact.dtype)).sum(-1)

    def _leaf_weighting(self, weighting: str) -> str | dict[str, str]:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")

        def resolve(key, transition):
            if weighting == "auto":
                return "elbo" if transition.kind == "absorbing" else "uniform"
            if weighting == "elbo" and transition.kind != "absorbing":
                where = f" (state key {key!r})" if key is not None else ""
                raise ValueError(f"weighting='elbo' needs absorbing transitions, not {transition.kind!r}{where}; "
                                 "use vb_weight for the bound under uniform or marginal transitions")
            return weighting

        if isinstance(self.transitions, CategoricalTransition):
            return resolve(None, self.transitions)
        return {key: resolve(key, transition) for key, transition in self.transitions.items()}

    # -- sampling ---------------------------------------------------------------------------

    def denoiser(self, model: Callable, like: State | None = None, *, cond: Any = None, guidance: float = 1.0,
                 uncond: Any = None, model_kwargs: dict | None = None,
                 mask: State | None = None) -> CategoricalDenoiser:
        """The logit model as the categorical samplers see it; ``like`` is a state of the leaves to
        sample (its keys pick the transitions), ``mask`` its padding."""
        if like is None:
            raise ValueError("a categorical denoiser needs like=, a state whose leaves it samples")
        return CategoricalDenoiser(model, self.schedule, self.transitions_like(like), cond=cond, guidance=guidance,
                                   uncond=uncond, model_kwargs=model_kwargs, noise_fn=self.noise_fn, mask=mask)

    def sample_times(self, steps: int, spacing: str = "uniform", *, t_max: float = 1.0) -> Tensor:
        """The schedule's spacings plus ``"signal"``, uniform in ``a(t)``
        (:func:`diffkit.categorical_process.sample_times`)."""
        return sample_times(self.schedule, steps, spacing, t_max=t_max)

    def auto_spacing(self, sampler: Callable, like: State) -> str:
        """The sampler's own spacing when it names one; else ``"signal"`` (uniform in ``a(t)``) when
        every leaf has absorbing transitions and ``"uniform"`` otherwise, the better of the two in
        benchmarks/categorical.py."""
        own = getattr(sampler, "spacing", None)
        if own:
            return own
        transitions = self.transitions_like(like)
        kinds = ({transitions.kind} if isinstance(transitions, CategoricalTransition)
                 else {transition.kind for transition in transitions.values()})
        return "signal" if kinds == {"absorbing"} else "uniform"

    # -- the conformance kit ----------------------------------------------------------------

    def check_state(self, x: State) -> list[str]:
        """Integer leaves holding classes in ``[0, K)``."""
        try:
            transitions = self.transitions_like(x)
        except (TypeError, ValueError) as error:
            return [f"categories() does not fit the state: {error}"]
        for key, leaf in _keyed(x):
            place = f"[{key!r}]" if key is not None else ""
            if leaf.is_floating_point() or leaf.is_complex() or leaf.dtype == torch.bool:
                return [f"state{place} leaves of categorical diffusion must hold class indices (an integer dtype), "
                        f"got {leaf.dtype}"]
            classes = transition_of(transitions, key).num_classes
            if leaf.numel() and (int(leaf.min()) < 0 or int(leaf.max()) >= classes):
                return [f"state{place} holds classes {int(leaf.min())}..{int(leaf.max())}, outside [0, {classes}) "
                        "that categories() gives"]
        return []

    def check_output(self, output: State, x: State) -> list[str]:
        """Logits shaped like each leaf plus a last axis of ``K``."""
        if isinstance(x, dict) != isinstance(output, dict) or (isinstance(x, dict) and set(output) != set(x)):
            found = sorted(output) if isinstance(output, dict) else type(output).__name__
            expected = sorted(x) if isinstance(x, dict) else "a tensor"
            return [f"model output (logits) should be keyed like the state ({expected}), got {found}"]
        problems, transitions = [], self.transitions_like(x)
        for key, leaf in _keyed(x):
            logits = output[key] if key is not None else output
            place = f"[{key!r}]" if key is not None else ""
            classes = transition_of(transitions, key).num_classes
            shape = (*leaf.shape, classes)
            if not isinstance(logits, Tensor) or tuple(logits.shape) != shape:
                got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                problems.append(f"model output{place} should be logits of shape {shape} (the state's shape plus "
                                f"{classes} classes), got {got}")
            elif not logits.is_floating_point():
                problems.append(f"model output{place} should be floating-point logits, got {logits.dtype}")
        return problems

    def check_noise(self, noise: State) -> list[str]:
        """The uniforms in ``[0, 1)`` of one draw per entry."""
        if not all(leaf.is_floating_point() for leaf in leaves(noise)):
            return ["noise() of a categorical state should be floating-point uniforms in [0, 1) "
                    "(diffkit.tree.standard_noise draws them)"]
        values = torch.cat([leaf.double().flatten() for leaf in leaves(noise)])
        if values.numel() and not (0 <= float(values.min()) and float(values.max()) < 1):
            return [f"noise() of a categorical state should lie in [0, 1); it spans "
                    f"{float(values.min()):.3f}..{float(values.max()):.3f}"]
        values = values[values != 0]  # padding may be zero
        # A uniform's std is 1/sqrt(12) = 0.289; Gaussian noise clipped into [0, 1) would be far off.
        if values.numel() > 100 and not (0.4 < values.mean() < 0.6 and 0.25 < values.std() < 0.33):
            return [f"noise() of a categorical state should be uniform in [0, 1) where it is not zero; its "
                    f"mean is {values.mean():.3f} and its std {values.std():.3f} (expected 0.5 and 0.289)"]
        return []

    def check_sample(self, x: State, example: State, mask: State | None) -> list[str]:
        """An integer example, and padding (``mask`` 0) kept as the example has it."""
        if any(leaf.is_floating_point() for leaf in leaves(example)):
            return ["prepare_sampling() should give an integer example state for categorical diffusion"]
        if mask is None:
            return []
        problems = []
        for key, leaf in _keyed(x):
            padding_of = leaf_mask(mask, key)
            expected = example[key] if key is not None else example
            if padding_of is not None and isinstance(leaf, Tensor) and leaf.shape == expected.shape:
                padding = ~padding_of.bool().expand_as(leaf)
                if not torch.equal(leaf[padding], expected[padding]):
                    place = f"[{key!r}]" if key is not None else ""
                    problems.append(f"sampling changed padding entries of the state{place} (where the batch's mask is 0)")
        return problems

    # -- leaves -----------------------------------------------------------------------------

    def transitions_like(self, state: State):
        """The transitions of every leaf of ``state``: one :class:`CategoricalTransition` for a
        Tensor state, a dict of them for a dict state."""
        if isinstance(state, Tensor):
            if isinstance(self.transitions, dict):
                raise ValueError(f"this diffusion has one transition per state key ({sorted(self.transitions)}), "
                                 "but the state is a single tensor")
            return self.transitions
        if not isinstance(state, dict):
            raise TypeError(f"a categorical state is a LongTensor or a dict of them, got {type(state).__name__}")
        if isinstance(self.transitions, CategoricalTransition):
            return {key: self.transitions for key in state}
        if state.keys() != self.transitions.keys():
            raise ValueError(f"the state has keys {sorted(state)}, the diffusion's transitions {sorted(self.transitions)}")
        return self.transitions

    def _transition(self, key: str | None) -> CategoricalTransition:
        if key is None and isinstance(self.transitions, dict):
            raise ValueError(f"this diffusion has one transition per state key; pass key= one of {sorted(self.transitions)}")
        return transition_of(self.transitions, key)


def _build_transitions(num_classes, transition, marginal):
    """One transition for all leaves, or a dict of them when any argument is a dict keyed like the state."""
    dicts = [arg for arg in (num_classes, transition, marginal) if isinstance(arg, dict)]
    if not dicts:
        return CategoricalTransition(num_classes, transition, marginal)
    keys = dicts[0].keys()
    for arg in dicts[1:]:
        if arg.keys() != keys:
            raise ValueError(f"num_classes, transition and marginal name different state keys: {sorted(keys)} vs {sorted(arg)}")
    pick = lambda arg, key: arg[key] if isinstance(arg, dict) else arg  # noqa: E731
    transitions = {}
    for key in keys:
        try:
            transitions[key] = CategoricalTransition(pick(num_classes, key), pick(transition, key), pick(marginal, key))
        except ValueError as error:
            raise ValueError(f"state key {key!r}: {error}") from None
    return transitions


def _check_classes(key: str | None, transition: CategoricalTransition, x0: Tensor) -> None:
    where = f" (state key {key!r})" if key is not None else ""
    if x0.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) or x0.is_complex():
        raise TypeError(f"categorical states hold class indices (an integer tensor){where}, got {x0.dtype}")
    if x0.numel() and (int(x0.min()) < 0 or int(x0.max()) >= transition.num_classes):
        raise ValueError(f"class indices must lie in [0, {transition.num_classes}){where}; "
                         f"found {int(x0.min())} to {int(x0.max())}")


def _as_state(logits: State, like: State) -> State:
    if isinstance(like, dict) and not isinstance(logits, dict):
        raise ValueError(f"the state has keys {sorted(like)}, so the model must return a dict of logits, "
                         f"got {type(logits).__name__}")
    return logits


def _keyed(x: State) -> list[tuple[str | None, Tensor]]:
    return [(None, x)] if isinstance(x, Tensor) else list(x.items())


__all__ = ["CategoricalDiffusion"]
