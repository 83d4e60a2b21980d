"""Categorical samplers: short functions with one contract,

``sample_<name>(denoiser, x, times, *, generator=None, callback=None, **options) -> x_0``

``denoiser(x, t)`` returns the model's law of ``x_0`` given ``x_t = x``, per leaf a tensor of
class probabilities ``(..., K)`` (see :class:`CategoricalDenoiser`); ``x`` holds class indices at
``times[0]`` and ``times`` decreases to 0. ``callback``, when given, receives
``{"step", "t", "x", "x0"}`` after every step, ``x0`` being those probabilities. A step builds a
law over ``x_s`` for every entry from the denoiser's closed forms (``posterior``, ``jump``) and
draws from it with ``denoiser.draw``, which takes its randomness from the domain's noise (so
symmetric noise keeps symmetric states symmetric) and leaves padding untouched.

Every kernel here maps ``q(x_t | x_0)`` to ``q(x_s | x_0)`` exactly for each ``x_0``, so with an
exact model the only error of a step comes from drawing the entries independently, each from
its own marginal of ``x_0``; it vanishes as the steps shrink and fewer entries change per step.
They are registered with ``kind="categorical"`` (:func:`diffkit.register_sampler`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .categorical_process import CategoricalTransition, draw_categorical, signal, uniform_like
from .denoiser import GuidedModel
from .samplers import register_sampler
from .schedules import Schedule
from .tree import State, tree_map, where

Transitions = Any  # a CategoricalTransition for a Tensor state, or a dict of them keyed like the state


class CategoricalDenoiser(GuidedModel):
    """Wraps ``model(x_t, t, cond=None, **model_kwargs) -> logits`` (``(..., K)`` per leaf) for the
    categorical samplers.

    Calling it with a state ``x`` and a scalar time ``t`` returns the model's law of ``x_0`` per
    leaf, class probabilities. With ``guidance = w != 1`` it applies classifier-free guidance to
    the log-probabilities, ``log p_uncond + w (log p_cond - log p_uncond)``, renormalised (the
    batched guided call is :class:`~diffkit.denoiser.GuidedModel`'s). ``noise_fn(like, generator,
    **model_kwargs)`` gives the uniforms of each draw; ``mask`` (1 = a real entry) keeps padding
    as it is.
    """

    def __init__(self, model: Callable, schedule: Schedule, transitions: Transitions, *, cond: Any = None,
                 guidance: float = 1.0, uncond: Any = None, model_kwargs: dict | None = None,
                 noise_fn: Callable = uniform_like, mask: State | None = None):
        super().__init__(model, cond=cond, guidance=guidance, uncond=uncond, model_kwargs=model_kwargs,
                         noise_fn=noise_fn)
        self.schedule = schedule
        self.transitions = transitions
        self.mask = mask

    def __call__(self, x: State, t: Tensor | float) -> State:
        return tree_map(lambda log_probs: torch.softmax(log_probs, dim=-1), self.model_output(x, self._times(x, t)))

    def read(self, output: State, x: State) -> State:
        """Log-probabilities: what guidance combines."""
        return map_leaves(_log_probs, self.transitions, output, x)

    def signal(self, t: Tensor | float):
        return signal(self.schedule, t)

    def posterior(self, x0: State, x: State, t: Tensor | float, s: Tensor | float) -> State:
        """Per leaf ``sum_i p(x_0 = i) q(x_s | x_t, x_0 = i)`` (:meth:`CategoricalTransition.posterior`)."""
        at_t, at_s = self.signal(t), self.signal(s)
        return map_leaves(lambda _, leaf_transition, p, leaf: leaf_transition.posterior(p, leaf, at_t, at_s),
                          self.transitions, x0, x)

    def jump(self, x0: State, x: State, t: Tensor | float, s: Tensor | float, target_guidance: float = 0.0) -> State:
        """Per leaf the minimal-jump kernel averaged over ``x0`` (:meth:`CategoricalTransition.jump`)."""
        at_t, at_s = self.signal(t), self.signal(s)
        return map_leaves(lambda _, leaf_transition, p, leaf: leaf_transition.jump(p, leaf, at_t, at_s, target_guidance),
                          self.transitions, x0, x)

    def draw(self, laws: State, x: State, generator: torch.Generator | None = None) -> State:
        """One draw from ``laws`` per entry, keeping ``x`` where ``mask`` is 0 (padding)."""
        drawn = tree_map(draw_categorical, laws, self.noise_like(x, generator))
        return keep_padding(self.mask, drawn, x)


def map_leaves(fn: Callable, transitions: Transitions, *trees: State) -> State:
    """``fn(key, transition, *leaves)`` for every leaf (``key`` is None for a Tensor state)."""
    first = trees[0]
    if isinstance(first, Tensor):
        return fn(None, transitions, *trees)
    for tree in trees[1:]:
        if not isinstance(tree, dict) or tree.keys() != first.keys():
            raise ValueError(f"states differ in structure: keys {sorted(first)} vs "
                             f"{sorted(tree) if isinstance(tree, dict) else type(tree).__name__}")
    return {key: fn(key, transition_of(transitions, key), *(tree[key] for tree in trees)) for key in first}


def transition_of(transitions: Transitions, key: str | None) -> CategoricalTransition:
    """The transition of the leaf ``key``."""
    if isinstance(transitions, CategoricalTransition):
        return transitions
    if key not in transitions:
        raise ValueError(f"no categorical transition for the state key {key!r}; known keys: {sorted(transitions)}")
    return transitions[key]


def keep_padding(mask: State | None, new: State, old: State) -> State:
    """``new`` on real entries (``mask`` 1) and ``old`` on padding (``mask`` 0); a leaf without a
    mask (or no mask at all) is all real entries."""
    if mask is None:
        return new
    if isinstance(mask, dict):  # the leaves it leaves out are all real entries
        mask = {key: mask[key] if mask.get(key) is not None else torch.ones((), dtype=torch.bool, device=new[key].device) for key in new}
    return where(mask, new, old)


def _log_probs(key: str | None, transition: CategoricalTransition, logits: Tensor, x: Tensor) -> Tensor:
    expected = (*x.shape, transition.num_classes)
    if tuple(logits.shape) != expected:
        place = f" for the state key {key!r}" if key is not None else ""
        raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}{place}; expected {expected} "
                         f"(the state's shape plus {transition.num_classes} classes)")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    # Finite floor: guidance multiplies by (1 - w) < 0, which would turn -inf into +inf.
    return torch.log_softmax(logits.to(dtype), dim=-1).clamp(min=-1e4)


def _notify(callback, step: int, t: Tensor, x: State, x0: State) -> None:
    if callback is not None:
        callback({"step": step, "t": float(t), "x": x, "x0": x0})


@register_sampler("ancestral", kind="categorical", stepwise=True)
def sample_ancestral(denoiser: CategoricalDenoiser, x: State, times: Tensor, *, generator=None,
                     callback=None) -> State:
    """Ancestral sampling of discrete diffusion (Austin et al. 2021, D3PM; Sahoo et al. 2024 for
    masks): ``x_s ~ sum_i q(x_s | x_t, x_0 = i) p(x_0 = i | x_t)``, the exact posterior averaged
    over the model's law of ``x_0``."""
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        x0 = denoiser(x, t)
        x = denoiser.draw(denoiser.posterior(x0, x, t, s), x, generator)
        _notify(callback, i, t, x, x0)
    return x


@register_sampler("discrete_flow", kind="categorical", stepwise=True)
def sample_discrete_flow(denoiser: CategoricalDenoiser, x: State, times: Tensor, *, generator=None,
                         callback=None, eta: float = 0.0, target_guidance: float = 0.0) -> State:
    """Discrete flow sampling with tunable stochasticity (Campbell et al. 2024; DeFoG, Qin et al.
    2024): each step follows the kernel ``(1 - eta) J + eta P``, ``J`` the exact integral of the
    minimal rate towards ``x_0`` (an entry jumps to ``x_0`` with probability
    ``(a_s - a_t) / (1 - a_t)``) and ``P`` the posterior, averaged over the model's ``x_0``. As
    the steps shrink it is the rate ``R* + eta R_DB``, ``R_DB`` the detailed-balance part of the
    time reversal; ``eta = 1`` is ancestral sampling. Under absorbing noise ``J = P``.
    ``target_guidance`` (>= 0) makes ``J`` move to ``x_0`` sooner (:meth:`CategoricalTransition.jump`)."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if target_guidance < 0:
        raise ValueError(f"target_guidance must be at least 0, got {target_guidance}")
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        x0 = denoiser(x, t)
        laws = denoiser.jump(x0, x, t, s, target_guidance)
        if eta > 0:
            laws = tree_map(lambda j, p: (1 - eta) * j + eta * p, laws, denoiser.posterior(x0, x, t, s))
        x = denoiser.draw(laws, x, generator)
        _notify(callback, i, t, x, x0)
    return x
