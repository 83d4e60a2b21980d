"""The waveform denoiser: a DiffWave-style stack (Kong et al. 2021) of dilated residual
convolutions with gated activations, conditioned on the diffusion time and a class label.

Shapes: the state is ``(B, C, T)`` (channels, samples), ``t`` is ``(B,)`` in [0, 1] and the
label ``(B,)`` long, where a negative label means "no label" (the null class of
classifier-free guidance).

``patch > 1`` folds ``patch`` consecutive samples into channels before the stack and unfolds
them after it, so the convolutions run at ``T / patch`` positions. That trades a little
fine-grained modelling for a ``patch``-fold cheaper network and a ``patch``-fold larger
receptive field, which is what lets the CPU preset learn tones in minutes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_features(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of the time ``t`` (``(B,)`` in [0, 1]) -> ``(B, dim)``; ``t`` is
    scaled by 1000 so that the frequencies resolve the usual step counts."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = 1000.0 * t.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResidualLayer(nn.Module):
    """One DiffWave layer: add the embedding to the input, dilated conv to ``2R`` channels, add
    the embedding again before the ``tanh * sigmoid`` gate (where DiffWave adds its conditioner,
    so that time and label can open and close channels), then a 1x1 conv split into the residual
    and the skip outputs."""

    def __init__(self, channels: int, hidden_dim: int, dilation: int):
        super().__init__()
        self.embedding = nn.Linear(hidden_dim, 3 * channels)
        self.dilated = nn.Conv1d(channels, 2 * channels, 3, padding=dilation, dilation=dilation)
        self.output = nn.Conv1d(channels, 2 * channels, 1)
        self.channels = channels

    def forward(self, x: Tensor, embedding: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` (B, R, L), ``embedding`` (B, hidden) -> (next x (B, R, L), skip (B, R, L))."""
        input_shift, gate_shift = self.embedding(embedding)[:, :, None].split([self.channels, 2 * self.channels], dim=1)
        y = self.dilated(x + input_shift) + gate_shift
        gate, filtered = y.chunk(2, dim=1)
        y = torch.sigmoid(gate) * torch.tanh(filtered)
        residual, skip = self.output(y).chunk(2, dim=1)
        return (x + residual) / math.sqrt(2.0), skip


class LabelNames(nn.Module):
    """Holds the names of the class labels so they travel with the weights (``--cond seven``)."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def get_extra_state(self) -> dict[str, Any]:
        return {"names": list(self.names)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.names = [str(name) for name in state.get("names", [])]


class DiffWave(nn.Module):
    """``model(x_t, t, cond=labels) -> prediction``, all ``(B, C, T)``.

    Args:
        channels: audio channels ``C``.
        residual_channels: width ``R`` of the residual stack.
        layers: number of residual layers; dilations cycle through ``1, 2, ..., 2**(cycle-1)``.
        dilation_cycle: length of the dilation cycle.
        embedding_dim: size of the sinusoidal time features.
        hidden_dim: width of the time/label embedding MLP.
        num_classes: how many labels the class embedding holds; row ``num_classes`` is the null class.
        patch: samples folded into channels (see the module docstring).
    """

    def __init__(self, channels: int = 1, residual_channels: int = 64, layers: int = 30,
                 dilation_cycle: int = 10, embedding_dim: int = 128, hidden_dim: int = 512,
                 num_classes: int = 64, patch: int = 1):
        super().__init__()
        if patch < 1 or layers < 1 or dilation_cycle < 1:
            raise ValueError(f"patch, layers and dilation_cycle must be positive, got {patch}, {layers}, {dilation_cycle}")
        self.channels, self.patch, self.num_classes = channels, patch, num_classes
        self.embedding_dim = embedding_dim
        self.time_mlp = nn.Sequential(nn.Linear(embedding_dim, hidden_dim), nn.SiLU(),
                                      nn.Linear(hidden_dim, hidden_dim), nn.SiLU())
        self.label_embedding = nn.Embedding(num_classes + 1, hidden_dim)
        self.input = nn.Conv1d(channels * patch, residual_channels, 1)
        self.layers = nn.ModuleList(
            ResidualLayer(residual_channels, hidden_dim, 2 ** (i % dilation_cycle)) for i in range(layers)
        )
        self.skip_output = nn.Conv1d(residual_channels, residual_channels, 1)
        self.final = nn.Conv1d(residual_channels, channels * patch, 1)
        nn.init.zeros_(self.final.weight)  # start by predicting zero, a stable first step
        nn.init.zeros_(self.final.bias)
        self.label_names = LabelNames()

    def embed(self, t: Tensor, cond: Tensor | None, batch: int) -> Tensor:
        """Time and label embedding ``(B, hidden)``; ``cond`` None or negative -> the null class."""
        embedding = self.time_mlp(timestep_features(t.expand(batch) if t.ndim == 0 else t, self.embedding_dim))
        if cond is None:
            labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=embedding.device)
        else:
            labels = cond.long().reshape(batch)
            if (labels >= self.num_classes).any():
                raise ValueError(f"label {int(labels.max())} is out of range for a model with "
                                 f"{self.num_classes} classes (model.num_classes)")
            labels = torch.where(labels < 0, torch.full_like(labels, self.num_classes), labels)
        return embedding + self.label_embedding(labels)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, **_: Any) -> Tensor:
        batch, channels, length = x.shape
        if channels != self.channels:
            raise ValueError(f"expected {self.channels} audio channel(s), got input of shape {tuple(x.shape)}")
        embedding = self.embed(t, cond, batch)
        h = self.input(fold(x, self.patch))
        skips = 0.0
        for layer in self.layers:
            h, skip = layer(h, embedding)
            skips = skips + skip
        h = F.relu(self.skip_output(F.relu(skips / math.sqrt(len(self.layers)))))
        return unfold(self.final(h), self.patch, channels, length)


def fold(x: Tensor, patch: int) -> Tensor:
    """(B, C, T) -> (B, C * patch, ceil(T / patch)), zero-padding the end to a whole patch."""
    if patch == 1:
        return x
    batch, channels, length = x.shape
    x = F.pad(x, (0, (-length) % patch))
    x = x.reshape(batch, channels, -1, patch).permute(0, 1, 3, 2)
    return x.reshape(batch, channels * patch, -1)


def unfold(x: Tensor, patch: int, channels: int, length: int) -> Tensor:
    """The inverse of :func:`fold`: (B, C * patch, L) -> (B, C, length)."""
    if patch == 1:
        return x
    batch = x.shape[0]
    x = x.reshape(batch, channels, patch, -1).permute(0, 1, 3, 2)
    return x.reshape(batch, channels, -1)[:, :, :length]


def build_diffwave(model_config: dict, channels: int) -> DiffWave:
    """The network described by the ``model`` section of a config."""
    return DiffWave(
        channels=channels,
        residual_channels=int(model_config["residual_channels"]),
        layers=int(model_config["layers"]),
        dilation_cycle=int(model_config["dilation_cycle"]),
        embedding_dim=int(model_config["embedding_dim"]),
        hidden_dim=int(model_config["hidden_dim"]),
        num_classes=int(model_config["num_classes"]),
        patch=int(model_config["patch"]),
    )


class MelDenoiser(nn.Module):
    """The denoiser of the ``mel`` representation: the core's U-Net (:class:`diffkit.nets.UNet`)
    on ``(B, C, n_mels, frames)`` normalised log-mel states, with the label names beside it.
    ``model(x_t, t, cond=labels) -> prediction`` of the same shape; a negative label, or none,
    is the null class."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        self.label_names = LabelNames()

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, **_: Any) -> Tensor:
        if cond is not None and (cond.long() >= self.unet.num_classes).any():
            raise ValueError(f"label {int(cond.max())} is out of range for a model with "
                             f"{self.unet.num_classes} classes (model.num_classes)")
        return self.unet(x, t, cond)


def mel_frame_multiple(model_config: dict) -> int:
    """What the U-Net needs both sides of its input divisible by: ``mel_patch * 2**(levels - 1)``."""
    return int(model_config["mel_patch"]) * 2 ** (len(model_config["channel_mults"]) - 1)


def build_mel_denoiser(model_config: dict, channels: int, frames: int) -> MelDenoiser:
    """The mel denoiser described by the ``model`` section, for inputs ``(B, channels, mel_bins, frames)``."""
    from diffkit.nets import UNet

    bins = int(model_config["mel_bins"])
    multiple = mel_frame_multiple(model_config)
    if bins % multiple:
        raise ValueError(f"model.mel_bins = {bins} must be divisible by {multiple} "
                         f"(model.mel_patch * 2**(len(model.channel_mults) - 1))")
    unet = UNet(image_size=(bins, frames), channels=channels, base_channels=int(model_config["base_channels"]),
                channel_mults=tuple(model_config["channel_mults"]),
                blocks_per_level=int(model_config["blocks_per_level"]),
                attention_resolutions=tuple(model_config["attention_resolutions"]),
                attention_heads=int(model_config["attention_heads"]), groups=int(model_config["groups"]),
                dropout=float(model_config["dropout"]), num_classes=int(model_config["num_classes"]),
                patch=int(model_config["mel_patch"]))
    return MelDenoiser(unet)
