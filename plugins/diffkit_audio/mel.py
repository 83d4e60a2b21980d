"""The ``mel`` representation: waveforms in and out, normalised log-mel spectrograms inside.

Encoding (``(..., T) -> (..., n_mels, frames)``): the magnitude STFT (Hann window ``n_fft``,
hop ``hop``, centred frames), a mel filterbank (Slaney scale and area normalisation), then the
fixed map

    x = 2 * (log(max(mel, floor)) - log(floor)) / (log(ceiling) - log(floor)) - 1

which sends the floor (digital silence, about 90 dB below the loudest band of a peak-normalised
note) to -1 and the ceiling to +1. Louder bands go above 1; the map is exactly invertible above
the floor. The frames are padded with silence (-1) to a multiple the denoiser needs.

Decoding inverts the map, takes the frames back to linear frequency by non-negative least
squares (the multiplicative updates of Lee & Seung 2001, which keep a tone's energy in the bins
it came from, where the filterbank's pseudo-inverse, clipped at zero as torchaudio's
``InverseMelScale`` does, spreads it and moves a tone's peak by up to a bin), and estimates a
phase with Griffin-Lim (Griffin & Lim 1984) with the momentum of Perraudin et al. 2013,
started from zero phase so that decoding is deterministic. The floor is subtracted before the
inversion, so that -1 decodes to zeros. A clean floor is what keeps the background silent: a
state near -1 decodes to audio about 90 dB down, where a waveform model leaves a hiss at the
level of its error.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn

MEL_FLOOR = 1e-4      # about 90 dB below the loudest band of a peak-normalised note (about 4 with these filters)
MEL_CEILING = 10.0
INVERSE_ITERS = 100   # multiplicative updates of the mel -> linear inversion


def normalise_log_mel(mel: Tensor, floor: float = MEL_FLOOR, ceiling: float = MEL_CEILING) -> Tensor:
    """Mel magnitudes ``(...)`` -> the model's state: ``floor`` -> -1, ``ceiling`` -> +1, log in between."""
    low, high = math.log(floor), math.log(ceiling)
    return 2.0 * (mel.clamp(min=floor).log() - low) / (high - low) - 1.0


def denormalise_log_mel(x: Tensor, floor: float = MEL_FLOOR, ceiling: float = MEL_CEILING) -> Tensor:
    """The inverse of :func:`normalise_log_mel` (values below -1 decode to the floor)."""
    low, high = math.log(floor), math.log(ceiling)
    return torch.exp(low + (x.clamp(min=-1.0) + 1.0) * 0.5 * (high - low))


def mel_to_linear(mel: Tensor, filterbank: Tensor, iters: int = INVERSE_ITERS) -> Tensor:
    """Non-negative ``s`` with ``filterbank.T @ s`` close to ``mel`` in least squares:
    ``(..., n_mels, frames), (freq, n_mels) -> (..., freq, frames)``, by multiplicative updates
    ``s <- s * (F m) / (F F^T s)`` (Lee & Seung 2001), which never leave ``s >= 0``."""
    target = filterbank @ mel
    linear = torch.ones_like(target)
    for _ in range(iters):
        linear = linear * target / (filterbank @ (filterbank.T @ linear)).clamp(min=1e-12)
    return linear


def frames_for(length: int, hop: int, multiple: int = 1) -> int:
    """Frames of a centred STFT of ``length`` samples (``length // hop + 1``), rounded up to ``multiple``."""
    frames = length // hop + 1
    return -(-frames // multiple) * multiple


class MelCodec(nn.Module):
    """Waveform <-> normalised log-mel. Shapes: ``encode`` ``(..., T) -> (..., n_mels, frames)``,
    ``decode`` the reverse, with ``T = length``. Holds the window and the filterbank
    as (non-persistent) buffers; nothing here is learned.

    Args:
        sample_rate: Hz.
        length: samples per clip.
        n_fft: STFT size (window length).
        hop: samples between frames.
        n_mels: mel bands (from 0 Hz to half the sample rate).
        frame_multiple: pad the frames with silence to a multiple of this (what the denoiser needs).
        griffin_lim_iters: Griffin-Lim iterations when decoding.
    """

    def __init__(self, sample_rate: int, length: int, *, n_fft: int = 512, hop: int = 64, n_mels: int = 64,
                 frame_multiple: int = 1, griffin_lim_iters: int = 64, momentum: float = 0.99):
        super().__init__()
        if hop < 1 or n_fft < hop or n_mels < 1 or griffin_lim_iters < 1:
            raise ValueError(f"mel settings need 1 <= model.mel_hop ({hop}) <= model.mel_fft ({n_fft}), "
                             f"model.mel_bins ({n_mels}) >= 1 and model.griffin_lim_iters ({griffin_lim_iters}) >= 1")
        self.sample_rate, self.length, self.n_fft, self.hop, self.n_mels = sample_rate, length, n_fft, hop, n_mels
        self.frames = frames_for(length, hop, frame_multiple)
        self.griffin_lim_iters, self.momentum = griffin_lim_iters, momentum
        filterbank = AF.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate,
                                        norm="slaney", mel_scale="slaney")          # (freq, mels)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filterbank", filterbank, persistent=False)

    def mel(self, wave: Tensor) -> Tensor:
        """Mel magnitudes ``(..., T) -> (..., n_mels, T // hop + 1)``."""
        lead = wave.shape[:-1]
        spectrum = torch.stft(wave.reshape(-1, wave.shape[-1]).float(), self.n_fft, self.hop, window=self.window,
                              center=True, return_complex=True).abs()
        return (spectrum.transpose(1, 2) @ self.filterbank).transpose(1, 2).reshape(*lead, self.n_mels, -1)

    def encode(self, wave: Tensor) -> Tensor:
        mel = self.mel(fit(wave, self.length))
        mel = F.pad(mel, (0, self.frames - mel.shape[-1]), value=MEL_FLOOR)
        return normalise_log_mel(mel)

    def decode(self, x: Tensor) -> Tensor:
        lead = x.shape[:-2]
        # The floor is taken off, so that the silence of the encoding (-1) decodes to zeros.
        mel = (denormalise_log_mel(x.reshape(-1, *x.shape[-2:]).float()) - MEL_FLOOR).clamp(min=0.0)
        # Padding frames are dropped: Griffin-Lim compares against the STFT of `length` samples.
        linear = mel_to_linear(mel[..., :self.length // self.hop + 1], self.filterbank)   # (N, freq, frames)
        wave = AF.griffinlim(linear, self.window, self.n_fft, self.hop, self.n_fft, power=1.0,
                             n_iter=self.griffin_lim_iters, momentum=self.momentum, length=self.length,
                             rand_init=False)
        return wave.reshape(*lead, self.length)

    def forward(self, wave: Tensor) -> Tensor:
        return self.encode(wave)

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, length={self.length}, n_fft={self.n_fft}, hop={self.hop}, "
                f"n_mels={self.n_mels}, frames={self.frames}, griffin_lim_iters={self.griffin_lim_iters}")


def fit(wave: Tensor, length: int) -> Tensor:
    """Crop or zero-pad the last dimension to ``length``."""
    if wave.shape[-1] >= length:
        return wave[..., :length]
    return F.pad(wave, (0, length - wave.shape[-1]))
