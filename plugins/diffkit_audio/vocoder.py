"""A learned decoder from log-mel spectrograms to waveforms: the audio domain's autoencoder for
waveform states (``diffkit train --domain audio --stage autoencoder --set model.representation=waveform``).

The encoder is fixed: the normalised log-mel spectrogram of :class:`~diffkit_audio.mel.MelCodec`
(by default 128 bands, a 64 ms window and a 16 ms hop), so the latents a diffusion then runs on
are mel spectrograms ``(C, n_mels, frames)``. The decoder replaces Griffin-Lim: a stack of
ConvNeXt blocks over the frames (Liu et al. 2022, 1-D) predicts, per frame, the log-magnitude
and the phase of every STFT bin, and the inverse STFT (same window and hop as the encoder) makes
the waveform, as Vocos does (Siuzdak 2023). Working at the frame rate rather than the sample
rate keeps it cheap enough to train on a CPU.

Shapes: ``encode`` ``(B, C, T) -> Posterior((B, C, n_mels, frames))`` (a point: no KL),
``decode`` ``(B, C, n_mels, frames) -> (B, C, T)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffkit.nets.autoencoder import Posterior

from .mel import MelCodec

#: The largest log-magnitude the decoder may predict (``exp(7)`` ~ 1100, far above a clip's STFT
#: bins): an untrained decoder's outputs stay finite.
MAX_LOG_MAGNITUDE = 7.0


class ConvNeXtBlock(nn.Module):
    """``x + scale * MLP(LayerNorm(depthwise conv(x)))`` over ``(B, width, frames)``."""

    def __init__(self, width: int, kernel: int = 7, expansion: int = 3, layer_scale: float = 0.1):
        super().__init__()
        self.depthwise = nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=width)
        self.norm = nn.LayerNorm(width)
        self.expand = nn.Linear(width, expansion * width)
        self.project = nn.Linear(expansion * width, width)
        self.scale = nn.Parameter(torch.full((width,), layer_scale))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(self.depthwise(x).transpose(1, 2))
        h = self.project(F.gelu(self.expand(h)))
        return x + (self.scale * h).transpose(1, 2)


class MelVocoder(nn.Module):
    """The autoencoder of the module docstring.

    Args:
        codec: the mel encoder (its ``length``, ``n_fft`` and ``hop`` are the inverse STFT's too).
        channels: audio channels ``C`` (each decoded alone).
        width: channels of the ConvNeXt stack.
        layers: ConvNeXt blocks.
    """

    def __init__(self, codec: MelCodec, channels: int = 1, *, width: int = 256, layers: int = 8):
        super().__init__()
        self.codec, self.channels = codec, channels
        self.latent_shape = (channels, codec.n_mels, codec.frames)
        self.frames = codec.length // codec.hop + 1  # the frames of the clip; the rest is padding
        self.bins = codec.n_fft // 2 + 1
        self.input = nn.Conv1d(codec.n_mels, width, 7, padding=3)
        self.input_norm = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(ConvNeXtBlock(width) for _ in range(layers))
        self.output_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2 * self.bins)

    def encode(self, wave: Tensor) -> Posterior:
        return Posterior(self.codec.encode(wave.float()))

    def decode(self, z: Tensor) -> Tensor:
        lead = z.shape[:-2]
        h = z.reshape(-1, *z.shape[-2:])[..., :self.frames].float()          # (N, mels, frames)
        h = self.input_norm(self.input(h).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            h = block(h)
        log_magnitude, phase = self.head(self.output_norm(h.transpose(1, 2))).transpose(1, 2).chunk(2, dim=1)
        return self.synthesise(log_magnitude, phase).reshape(*lead, self.codec.length)

    def synthesise(self, log_magnitude: Tensor, phase: Tensor) -> Tensor:
        """Waveforms ``(N, T)`` from each STFT bin's log-magnitude and phase ``(N, bins, frames)``
        by the inverse STFT of the encoder's window and hop."""
        magnitude = torch.exp(log_magnitude.float().clamp(max=MAX_LOG_MAGNITUDE))
        spectrum = torch.polar(magnitude, phase.float())
        return torch.istft(spectrum, self.codec.n_fft, self.codec.hop, window=self.codec.window, center=True,
                           length=self.codec.length)

    def forward(self, wave: Tensor) -> Tensor:
        return self.decode(self.encode(wave).mean)
