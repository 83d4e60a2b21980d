"""Reconstruction losses for autoencoders (:meth:`diffkit.Domain.reconstruction_loss`): each
returns one value per sample, ``(B,)``.

* :func:`mean_absolute_error`: the mean of ``|a - b|`` over each sample's entries (any state);
* :func:`laplacian_l1`: the L1 distance between Laplacian pyramids (Lap1 of Bojanowski et al.
  2018), a perceptual-like loss for pictures and other 2-D states: coarse structure counts as much
  as fine detail, where a pixel loss is dominated by the finest scale;
* :func:`multi_resolution_stft`: spectral convergence plus log-magnitude distance of STFTs at
  several resolutions (Yamamoto et al. 2020), for waveforms ``(B, C, T)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def mean_absolute_error(a: Tensor, b: Tensor) -> Tensor:
    """Each sample's mean of ``|a - b|``, ``(B, ...) -> (B,)`` (in float32 or wider)."""
    return (a.float() - b.float()).abs().reshape(a.shape[0], -1).mean(dim=1)


def _blur_down(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 2)


def _up(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


def laplacian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """The Laplacian pyramid of ``(B, C, H, W)`` states with ``levels`` bands: band ``j`` is
    ``G_j - up(G_{j+1})`` with ``G_0 = x`` and ``G_{j+1}`` the 2x2 means of ``G_j``, and the last
    band is the coarsest ``G`` itself; upsampling and adding the bands from the coarsest gives
    ``x`` back. Levels stop early where a side would drop below 2."""
    bands, current = [], x
    for _ in range(levels - 1):
        if min(current.shape[-2:]) < 4 or any(side % 2 for side in current.shape[-2:]):
            break
        coarser = _blur_down(current)
        bands.append(current - _up(coarser, current))
        current = coarser
    bands.append(current)
    return bands


def laplacian_l1(a: Tensor, b: Tensor, levels: int = 4) -> Tensor:
    """Each sample's Lap1 distance: ``sum_j 2^j mean|L_j(a) - L_j(b)|`` over the bands of
    :func:`laplacian_pyramid` (band ``j`` has ``4^-j`` of the entries: the weights let every
    scale count alike), divided by ``sum_j 2^j``."""
    total, weights = 0.0, 0.0
    for j, (band_a, band_b) in enumerate(zip(laplacian_pyramid(a.float(), levels), laplacian_pyramid(b.float(), levels))):
        total = total + 2.0 ** j * mean_absolute_error(band_a, band_b)
        weights += 2.0 ** j
    return total / weights


#: ``(n_fft, hop)`` of :func:`multi_resolution_stft` as fractions of ``n_fft`` at the finest: three
#: windows, each with a quarter of its length as hop (Parallel WaveGAN's 512/1024/2048 at 24 kHz).
STFT_RESOLUTIONS = ((1.0, 0.25), (2.0, 0.5), (0.5, 0.125))


def stft_magnitude(wave: Tensor, n_fft: int, hop: int) -> Tensor:
    """``|STFT|`` of waveforms ``(B, C, T) -> (B * C, freq, frames)`` with a Hann window."""
    flat = wave.float().reshape(-1, wave.shape[-1])
    window = torch.hann_window(n_fft, device=wave.device)
    return torch.stft(flat, n_fft, hop, window=window, center=True, return_complex=True).abs()


def multi_resolution_stft(a: Tensor, b: Tensor, n_fft: int, resolutions: Sequence[tuple[float, float]] = STFT_RESOLUTIONS,
                          floor: float = 1e-5) -> Tensor:
    """Each sample's mean over resolutions of spectral convergence ``||S_b - S_a||_F / ||S_b||_F``
    plus the mean ``|log S_a - log S_b|`` (magnitudes floored at ``floor``), for waveforms ``a``
    (the reconstruction) and ``b`` (the target), ``(B, C, T)``; ``resolutions`` are ``(n_fft,
    hop)`` as fractions of ``n_fft``."""
    batch = a.shape[0]
    total = 0.0
    for window_share, hop_share in resolutions:
        size, hop = max(8, round(n_fft * window_share)), max(1, round(n_fft * hop_share))
        spectrum_a = stft_magnitude(a, size, hop).reshape(batch, -1)
        spectrum_b = stft_magnitude(b, size, hop).reshape(batch, -1)
        convergence = (spectrum_b - spectrum_a).norm(dim=1) / spectrum_b.norm(dim=1).clamp(min=floor)
        log_distance = (spectrum_a.clamp(min=floor).log() - spectrum_b.clamp(min=floor).log()).abs().mean(dim=1)
        total = total + convergence + log_distance
    return total / len(resolutions)
