"""Editing and interpolation on top of any sampler: inpainting, SDEdit, spherical interpolation."""

from __future__ import annotations

import torch
from torch import Tensor

from .denoiser import Denoiser
from .process import q_sample, q_step
from .samplers import Sampler
from .tree import State, append_dims, combine, leaves, tree_map


def inpaint(sampler: Sampler, denoiser: Denoiser, x: State, times: Tensor, known: State, mask: State,
            *, resample: int = 1, generator=None, callback=None, **options) -> State:
    """Fill in the unknown part of ``known`` (``mask`` is 1 where known, 0 where generated).

    Before every step the known part of the state is replaced by a draw of ``q(x_t | known)``
    (the replacement method of Song et al. 2021). With ``resample = r > 1`` each step is taken
    ``r`` times, re-noising back with ``q(x_t | x_s)`` in between (RePaint, Lugmayr et al. 2022),
    which lets the generated part agree with the known part. The mask broadcasts against each
    leaf (a mask of ``(B, 1, H, W)`` serves a ``(B, C, H, W)`` image).
    """
    if resample < 1:
        raise ValueError(f"resample must be at least 1, got {resample}")
    schedule = denoiser.schedule
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        for r in range(resample):
            noised_known = q_sample(schedule, known, t, denoiser.noise_like(known, generator))
            x = _merge(mask, noised_known, x)
            x = sampler(denoiser, x, times[i:i + 2], generator=generator, **options)
            if r < resample - 1:
                ratio = schedule.alpha_bar(t) / schedule.alpha_bar(s)
                x = q_step(x, ratio, denoiser.noise_like(x, generator))
        if callback is not None:
            callback({"step": i, "t": float(t), "x": x, "x0": x})
    return _merge(mask, known, x)


def _merge(mask: State, known: State, generated: State) -> State:
    """``mask * known + (1 - mask) * generated``, leaf by leaf."""
    if isinstance(mask, Tensor) and not isinstance(known, Tensor):
        mask = tree_map(lambda _: mask, known)
    return tree_map(lambda m, k, g: torch.where(m.bool(), k, g), mask, known, generated)


def slerp(z0: State, z1: State, weight: float | Tensor) -> State:
    """Spherical interpolation between two noise states, per sample over all leaves together.

    At ``weight = 0`` it returns ``z0`` and at 1 ``z1``; in between the norm of Gaussian noise is
    kept, which linear interpolation would shrink.
    """
    dot = sum(_per_sample(a * b) for a, b in zip(leaves(z0), leaves(z1)))
    norm0 = sum(_per_sample(a * a) for a in leaves(z0)).sqrt()
    norm1 = sum(_per_sample(b * b) for b in leaves(z1)).sqrt()
    theta = torch.arccos((dot / (norm0 * norm1)).clamp(-1.0, 1.0))
    weight = torch.as_tensor(weight, dtype=theta.dtype, device=theta.device)
    sin_theta = torch.sin(theta)
    # Nearly parallel noises: fall back to linear interpolation to avoid 0 / 0.
    parallel = sin_theta.abs() < 1e-6
    safe_sin = torch.where(parallel, torch.ones_like(sin_theta), sin_theta)
    c0 = torch.where(parallel, 1 - weight, torch.sin((1 - weight) * theta) / safe_sin)
    c1 = torch.where(parallel, weight * torch.ones_like(theta), torch.sin(weight * theta) / safe_sin)
    return combine((c0, z0), (c1, z1))


def _per_sample(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).sum(dim=1)


def drop_condition(cond, uncond, probability: float, generator=None):
    """Replace each sample's condition by ``uncond`` with ``probability`` (training for guidance)."""
    if cond is None or probability <= 0:
        return cond
    n = leaves(cond)[0].shape[0]
    device = leaves(cond)[0].device
    drop = torch.rand(n, generator=generator).to(device) < probability
    return replace_condition(cond, uncond, drop)


def replace_condition(cond, uncond, drop: Tensor):
    """``uncond`` for the samples whose ``drop`` flag (shape ``(B,)``) is set, ``cond`` elsewhere."""
    return tree_map(lambda c, u: torch.where(append_dims(drop, c.ndim), u.expand_as(c), c), cond, uncond)
