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

from .categorical_process import CategoricalProcess, draw_categorical, signal, uniform_like
from .denoiser import Denoiser
from .samplers import register_sampler
from .schedules import Schedule
from .tree import State, batch_size, first_leaf, tree_map

Processes = Any  # a CategoricalProcess for a Tensor state, or a dict of them keyed like the state


class CategoricalDenoiser(Denoiser):
    """Wraps ``model(x_t, t, cond=None, **model_kwargs) -> logits`` (``(..., K)`` per leaf) for the
    categorical samplers.

    Calling it with a state ``x`` and a scalar time ``t`` returns the law of ``x_0`` per leaf. With
    ``guidance = w != 1`` it applies classifier-free guidance to the log-probabilities,
    ``log p_uncond + w (log p_cond - log p_uncond)``, renormalised; the batched guided call is
    :class:`diffkit.Denoiser`'s. ``noise(like, generator, **model_kwargs)`` gives the uniforms of
    each draw; ``mask`` (1 = may change) marks the entries a sampler may change: padding and
    the known part of an inpainting keep their values.
    """

    def __init__(self, model: Callable, schedule: Schedule, processes: Processes, *, cond: Any = None,
                 guidance: float = 1.0, uncond: Any = None, model_kwargs: dict | None = None,
                 noise: Callable = uniform_like, mask: State | None = None):
        # Only the guided model call of the Gaussian Denoiser is shared; its conversions are unused.
        super().__init__(model, schedule, "x0", cond=cond, guidance=guidance, uncond=uncond,
                         model_kwargs=model_kwargs, noise=noise)
        self.processes = processes
        self.mask = mask

    def __call__(self, x: State, t: Tensor | float) -> State:
        t_batch = torch.full((batch_size(x),), float(t), device=first_leaf(x).device)
        return tree_map(lambda log_probs: torch.softmax(log_probs, dim=-1), self.model_output(x, t_batch))

    def _call(self, x: State, t: Tensor, cond: Any, model_kwargs: dict) -> State:
        output = self.model(x, t, cond=cond, **model_kwargs)
        return map_leaves(_log_probs, self.processes, output, x)

    def signal(self, t: Tensor | float):
        return signal(self.schedule, t)

    def posterior(self, x0: State, x: State, t: Tensor | float, s: Tensor | float) -> State:
        """Per leaf ``sum_i p(x_0 = i) q(x_s | x_t, x_0 = i)`` (:meth:`CategoricalProcess.posterior`)."""
        at_t, at_s = self.signal(t), self.signal(s)
        return map_leaves(lambda _, process, p, leaf: process.posterior(p, leaf, at_t, at_s), self.processes, x0, x)

    def jump(self, x0: State, x: State, t: Tensor | float, s: Tensor | float, target_guidance: float = 0.0) -> State:
        """Per leaf the minimal-jump kernel averaged over ``x0`` (:meth:`CategoricalProcess.jump`)."""
        at_t, at_s = self.signal(t), self.signal(s)
        return map_leaves(lambda _, process, p, leaf: process.jump(p, leaf, at_t, at_s, target_guidance),
                          self.processes, x0, x)

    def draw(self, laws: State, x: State, generator: torch.Generator | None = None) -> State:
        """One draw from ``laws`` per entry, keeping ``x`` where ``mask`` is 0."""
        drawn = tree_map(draw_categorical, laws, self.noise_like(x, generator))
        return keep_masked(self.mask, drawn, x)


def map_leaves(fn: Callable, processes: Processes, *trees: State) -> State:
    """``fn(key, process, *leaves)`` for every leaf (``key`` is None for a Tensor state)."""
    first = trees[0]
    if isinstance(first, Tensor):
        return fn(None, processes, *trees)
    for tree in trees[1:]:
        if not isinstance(tree, dict) or tree.keys() != first.keys():
            raise ValueError(f"states differ in structure: keys {sorted(first)} vs "
                             f"{sorted(tree) if isinstance(tree, dict) else type(tree).__name__}")
    return {key: fn(key, leaf_process(processes, key), *(tree[key] for tree in trees)) for key in first}


def leaf_process(processes: Processes, key: str | None) -> CategoricalProcess:
    if isinstance(processes, CategoricalProcess):
        return processes
    if key not in processes:
        raise ValueError(f"no categorical process for the state key {key!r}; known keys: {sorted(processes)}")
    return processes[key]


def mask_for(mask: State | None, key: str | None) -> Tensor | None:
    """A leaf's mask: the dict entry for dict masks, the mask itself otherwise (None: everything counts)."""
    if isinstance(mask, dict):
        return mask.get(key)
    return mask


def keep_masked(mask: State | None, new: State, old: State) -> State:
    """``new`` where ``mask`` is 1, ``old`` where it is 0 (per leaf, broadcast)."""
    if mask is None:
        return new
    if isinstance(new, Tensor):
        return torch.where(mask.bool(), new, old)
    return {key: new[key] if mask_for(mask, key) is None
            else torch.where(mask_for(mask, key).bool(), new[key], old[key]) for key in new}


def _log_probs(key: str | None, process: CategoricalProcess, logits: Tensor, x: Tensor) -> Tensor:
    expected = (*x.shape, process.num_classes)
    if tuple(logits.shape) != expected:
        where = f" for the state key {key!r}" if key is not None else ""
        raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}{where}; expected {expected} "
                         f"(the state's shape plus {process.num_classes} classes)")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    # Finite floor: guidance multiplies by (1 - w) < 0, which would turn -inf into +inf.
    return torch.log_softmax(logits.to(dtype), dim=-1).clamp(min=-1e4)


def _notify(callback, step: int, t: Tensor, x: State, x0: State) -> None:
    if callback is not None:
        callback({"step": step, "t": float(t), "x": x, "x0": x0})


@register_sampler("ancestral", kind="categorical")
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


@register_sampler("discrete_flow", kind="categorical")
def sample_discrete_flow(denoiser: CategoricalDenoiser, x: State, times: Tensor, *, generator=None,
                         callback=None, eta: float = 0.0, target_guidance: float = 0.0) -> State:
    """Discrete flow sampling with tunable stochasticity (Campbell et al. 2024; DeFoG, Qin et al.
    2024): each step follows the kernel ``(1 - eta) J + eta P``, ``J`` the exact integral of the
    minimal rate towards ``x_0`` (an entry jumps to ``x_0`` with probability
    ``(a_s - a_t) / (1 - a_t)``) and ``P`` the posterior, averaged over the model's ``x_0``. As
    the steps shrink it is the rate ``R* + eta R_DB``, ``R_DB`` the detailed-balance part of the
    time reversal; ``eta = 1`` is ancestral sampling. Under absorbing noise ``J = P``.
    ``target_guidance`` (>= 0) makes ``J`` move to ``x_0`` sooner (:meth:`CategoricalProcess.jump`)."""
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
