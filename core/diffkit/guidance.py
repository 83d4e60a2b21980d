"""Guidance and editing helpers: inpainting with a Gaussian denoiser, spherical interpolation between
noises, and condition dropout for classifier-free guidance."""

from __future__ import annotations

import torch
from torch import Tensor

from .contract import repaint
from .denoiser import Denoiser
from .diffusion import Diffusion
from .samplers import Sampler
from .tree import State, append_dims, combine, leaves, tree_map


def inpaint(sampler: Sampler, denoiser: Denoiser, x: State, times: Tensor, known: State, keep: State,
            *, resample: int = 1, generator=None, callback=None, **options) -> State:
    """Fill in the part of ``known`` where ``keep`` is 0 (1 = keep) with a Gaussian ``denoiser``.

    Gaussian diffusion's RePaint loop (:func:`diffkit.contract.repaint`, which
    :meth:`diffkit.Diffusion.inpaint` runs): before every step the kept part of the state is
    replaced by a draw of ``q(x_t | known)``; with ``resample = r > 1`` each step is taken ``r``
    times, re-noising back with ``q(x_t | x_s)`` in between. ``keep`` broadcasts against each leaf
    (a keep of ``(B, 1, H, W)`` serves a ``(B, C, H, W)`` image).
    """
    # Only the forward process of the denoiser's schedule is used (the prediction is the denoiser's).
    process = Diffusion(denoiser.schedule, "x0", noise_fn=denoiser.noise_fn)
    return repaint(process, sampler, denoiser, x, times, known, keep, resample=resample, generator=generator,
                   callback=callback, model_kwargs=denoiser.model_kwargs, **options)


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
