"""Autoencoders for the latent stage (:mod:`diffkit.autoencoder`, :mod:`diffkit.latent`).

An autoencoder for diffkit is a module with

* ``encode(x) -> Posterior``: the law of the latent given a state ``x`` of shape ``(B, *state_shape)``;
* ``decode(z) -> x``: a state from latents ``z`` of shape ``(B, *latent_shape)``;
* ``latent_shape``: the shape of one latent, a tuple.

:class:`ConvAutoencoder` is the core's: the KL-regularised convolutional autoencoder of latent
diffusion (Rombach et al. 2022, without attention) for states ``(B, C, L)`` or ``(B, C, H, W)``,
whose every level after the first halves each side. :class:`PatchDiscriminator` scores patches
of a state as real or reconstructed, for the optional adversarial term (Isola et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .unet import group_norm

#: ``logvar`` is clamped to this range, as latent diffusion's autoencoder does: the variance of an
#: untrained encoder stays finite and a posterior never collapses to exactly nothing.
LOGVAR_RANGE = (-30.0, 20.0)


@dataclass
class Posterior:
    """The law of a latent given a state: ``N(mean, exp(logvar))`` per entry, or the point
    ``mean`` when ``logvar`` is None (a deterministic encoder)."""

    mean: Tensor
    logvar: Tensor | None = None

    def sample(self, noise: Tensor | None = None) -> Tensor:
        """``mean + exp(logvar / 2) * noise`` (standard normal ``noise``); the mean when deterministic."""
        if self.logvar is None or noise is None:
            return self.mean
        return self.mean + torch.exp(0.5 * self.logvar) * noise.to(self.mean.dtype)

    def kl(self) -> Tensor:
        """Each sample's ``KL(q(z | x) || N(0, I))`` per latent entry (its mean over the entries):
        ``(mean^2 + var - 1 - logvar) / 2`` in closed form; zero for a deterministic encoder."""
        if self.logvar is None:
            return torch.zeros(self.mean.shape[0], device=self.mean.device)
        mean, logvar = self.mean.float(), self.logvar.float()
        per_entry = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)
        return per_entry.reshape(per_entry.shape[0], -1).mean(dim=1)


def convolution(dims: int) -> type[nn.Module]:
    """``nn.Conv1d`` or ``nn.Conv2d`` for states with 1 or 2 dimensions after the channels."""
    if dims not in (1, 2):
        raise ValueError(f"convolutional autoencoders take states (C, L) or (C, H, W), i.e. 1 or 2 dimensions "
                         f"after the channels; got {dims}")
    return nn.Conv1d if dims == 1 else nn.Conv2d


class ResidualBlock(nn.Module):
    """``x + f(x)``: group norm, SiLU and a 3-wide convolution, twice."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        conv = convolution(dims)
        self.norm1, self.conv1 = group_norm(in_channels, groups), conv(in_channels, out_channels, 3, padding=1)
        self.norm2, self.conv2 = group_norm(out_channels, groups), conv(out_channels, out_channels, 3, padding=1)
        self.skip = conv(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Upsample(nn.Module):
    """Nearest-neighbour doubling of every side, then a convolution."""

    def __init__(self, dims: int, channels: int):
        super().__init__()
        self.conv = convolution(dims)(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ConvAutoencoder(nn.Module):
    """A convolutional autoencoder for states ``state_shape = (C, L)`` or ``(C, H, W)``.

    Args:
        state_shape: the shape of one state; each side must be divisible by ``2 ** (levels - 1)``.
        latent_channels: channels of the latent.
        base_channels: feature channels at full resolution.
        channel_mults: multipliers of ``base_channels``, one per level; every level after the
            first halves the sides, so latents are ``2 ** (len(channel_mults) - 1)`` times smaller
            per side.
        blocks_per_level: residual blocks per level.
        groups: group-norm groups.
        posterior: ``"gaussian"`` (the encoder gives a mean and a log-variance: KL-regularised)
            or ``"deterministic"`` (a mean only).
    """

    POSTERIORS = ("gaussian", "deterministic")

    def __init__(self, state_shape: Sequence[int], *, latent_channels: int = 4, base_channels: int = 32,
                 channel_mults: Sequence[int] = (1, 2, 2), blocks_per_level: int = 1, groups: int = 8,
                 posterior: str = "gaussian"):
        super().__init__()
        channels, *sides = (int(size) for size in state_shape)
        dims, levels = len(sides), len(channel_mults)
        conv = convolution(dims)
        if posterior not in self.POSTERIORS:
            raise ValueError(f"autoencoder.posterior must be one of {', '.join(self.POSTERIORS)}, got {posterior!r}")
        factor = 2 ** (levels - 1)
        if any(side % factor for side in sides):
            raise ValueError(f"the state's sides {'x'.join(map(str, sides))} must be divisible by {factor} for "
                             f"autoencoder.channel_mults={list(channel_mults)} (each level after the first halves them)")
        self.state_shape = (channels, *sides)
        self.latent_shape = (latent_channels, *(side // factor for side in sides))
        self.posterior_kind = posterior
        widths = [base_channels * mult for mult in channel_mults]

        encoder: list[nn.Module] = [conv(channels, widths[0], 3, padding=1)]
        now = widths[0]
        for level, width in enumerate(widths):
            for _ in range(blocks_per_level):
                encoder.append(ResidualBlock(dims, now, width, groups))
                now = width
            if level < levels - 1:
                encoder.append(conv(now, now, 3, stride=2, padding=1))
        outputs = 2 * latent_channels if posterior == "gaussian" else latent_channels
        encoder += [ResidualBlock(dims, now, now, groups), group_norm(now, groups), nn.SiLU(), conv(now, outputs, 3, padding=1)]
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = [conv(latent_channels, widths[-1], 3, padding=1), ResidualBlock(dims, widths[-1], widths[-1], groups)]
        now = widths[-1]
        for level in reversed(range(levels)):
            for _ in range(blocks_per_level + 1):
                decoder.append(ResidualBlock(dims, now, widths[level], groups))
                now = widths[level]
            if level > 0:
                decoder.append(Upsample(dims, now))
        decoder += [group_norm(now, groups), nn.SiLU(), conv(now, channels, 3, padding=1)]
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: Tensor) -> Posterior:
        h = self.encoder(x)
        if self.posterior_kind == "deterministic":
            return Posterior(h)
        mean, logvar = h.chunk(2, dim=1)
        return Posterior(mean, logvar.clamp(*LOGVAR_RANGE))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        """``decode(encode(x).mean)``: the reconstruction at the posterior's mean."""
        return self.decode(self.encode(x).mean)


class PatchDiscriminator(nn.Module):
    """Real-or-reconstructed logits for patches of a state ``(B, C, *sides) -> (B, 1, *sides / 2**layers)``:
    ``layers`` stride-2 convolutions of width ``base_channels * 2**i`` (at most 8x) with group norm
    and leaky ReLU, then a 1-channel convolution."""

    def __init__(self, channels: int, dims: int, *, base_channels: int = 32, layers: int = 3, groups: int = 8):
        super().__init__()
        conv = convolution(dims)
        body: list[nn.Module] = []
        now = channels
        for i in range(layers):
            width = base_channels * min(2 ** i, 8)
            body += [conv(now, width, 4, stride=2, padding=1), *([group_norm(width, groups)] if i else []),
                     nn.LeakyReLU(0.2)]
            now = width
        body.append(conv(now, 1, 3, padding=1))
        self.body = nn.Sequential(*body)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def downsampling(state_shape: Sequence[int], latent_shape: Sequence[int]) -> tuple[int, ...] | None:
    """How many entries of the state each latent entry covers along each side, when the latent's
    sides divide the state's (``(64, 64)`` and ``(16, 16)``: ``(4, 4)``); None when they do not
    tile it (other ranks, or sides that do not divide)."""
    sides, latent_sides = tuple(state_shape[1:]), tuple(latent_shape[1:])
    if len(sides) != len(latent_sides) or not sides:
        return None
    if any(small < 1 or side % small for side, small in zip(sides, latent_sides)):
        return None
    return tuple(side // small for side, small in zip(sides, latent_sides))


__all__ = ["ConvAutoencoder", "PatchDiscriminator", "Posterior", "downsampling"]
