"""A class-conditional U-Net denoiser for 2-D states ``(B, C, H, W)``: images, or spectrograms
(the audio plugin's ``mel`` representation: mel bands by frames).

Residual blocks with group norm whose scale and shift come from the time and class embedding
(the adaptive group norm of Dhariwal & Nichol 2021), self-attention at the low resolutions,
strided-convolution downsampling and nearest-neighbour upsampling. Every operation is a
convolution, a group norm, a pointwise op or a batched matmul, so the network can run in
``channels_last`` memory format (on the CPU without layout conversions other than around
attention; on CUDA, whether group norm keeps the layout depends on the PyTorch version).

``patch > 1`` folds each ``patch x patch`` square into channels before the first convolution and
unfolds the output after the last (space-to-depth), so the whole U runs at ``1 / patch**2`` of the
positions: much cheaper on a CPU, at the price of detail finer than a patch being mixed by
1x1-wide filters only.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, *, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of diffusion times ``t`` in [0, 1], ``(B,) -> (B, dim)``.

    Times are scaled by 1000 so that the frequencies match the usual integer-step embedding
    (Vaswani et al. 2017; Ho et al. 2020).
    """
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """Group norm with the largest group count not above ``groups`` that divides ``channels``."""
    groups = max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResidualBlock(nn.Module):
    """``x + f(x, emb)``: two 3x3 convolutions; the embedding sets the second norm's scale and shift.

    ``(B, C_in, H, W), (B, E) -> (B, C_out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, *, groups: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embed = nn.Linear(embed_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # A zero last layer makes every block start as the identity, which keeps deep U-Nets stable.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.embed(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, *, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"model.attention_heads={heads} must divide the channel count {channels}")
        self.heads = heads
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # each (B, heads, HW, C / heads)
        attended = F.scaled_dot_product_attention(q, k, v)
        attended = attended.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.out(attended)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """A residual block optionally followed by self-attention: one step of the U."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, *, attention: bool,
                 heads: int, groups: int, dropout: float):
        super().__init__()
        self.block = ResidualBlock(in_channels, out_channels, embed_dim, groups=groups, dropout=dropout)
        self.attention = SelfAttention(out_channels, heads=heads, groups=groups) if attention else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.block(x, emb)
        return self.attention(x) if self.attention is not None else x


class UNet(nn.Module):
    """Class-conditional U-Net denoiser, ``model(x_t, t, cond=None) -> prediction``.

    Args:
        image_size: side of the square input, or ``(height, width)``; each side must be divisible
            by ``patch * 2 ** (len(channel_mults) - 1)``.
        channels: image channels (1 gray, 3 RGB).
        base_channels: feature channels at full resolution.
        channel_mults: multipliers of ``base_channels``, one per resolution level.
        blocks_per_level: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sides at which self-attention follows each block;
            the middle of the U always has attention.
        num_classes: number of class labels; label ``num_classes`` (and any negative label) is the
            null class used for classifier-free guidance, as is ``cond=None``.
        patch: side of the squares folded into channels (see the module docstring); 1 folds nothing.

    Shapes: ``x_t (B, C, H, W)``, ``t (B,)`` in [0, 1], ``cond (B,)`` long or ``None``.

    Class names and how often each class occurs in the training data travel with the weights
    (``class_names`` in the extra state, ``class_counts`` a buffer), set by :meth:`set_classes`.
    """

    def __init__(self, *, image_size: int | tuple[int, int], channels: int, base_channels: int = 64,
                 channel_mults: Sequence[int] = (1, 2, 2), blocks_per_level: int = 2,
                 attention_resolutions: Sequence[int] = (8,), attention_heads: int = 4,
                 groups: int = 32, dropout: float = 0.0, num_classes: int = 10, patch: int = 1):
        super().__init__()
        levels = len(channel_mults)
        sides = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if patch < 1 or any(side % (patch * 2 ** (levels - 1)) for side in sides):
            raise ValueError(f"the input size {sides[0]}x{sides[1]} must be divisible by patch * 2**{levels - 1} "
                             f"(patch = {patch}, model.channel_mults={list(channel_mults)})")
        self.image_size, self.channels, self.num_classes, self.patch = image_size, channels, num_classes, patch
        embed_dim = 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.class_embedding = nn.Embedding(num_classes + 1, embed_dim)
        self.input = nn.Conv2d(channels * patch**2, base_channels, 3, padding=1)
        stage = lambda cin, cout, res: Stage(cin, cout, embed_dim, attention=res in attention_resolutions,  # noqa: E731
                                             heads=attention_heads, groups=groups, dropout=dropout)

        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        # Attention is placed by the side of the (folded) feature map: its height.
        channels_now, resolution = base_channels, sides[0] // patch
        for level, mult in enumerate(channel_mults):
            for _ in range(blocks_per_level):
                self.down.append(stage(channels_now, base_channels * mult, resolution))
                channels_now = base_channels * mult
                skip_channels.append(channels_now)
            if level < levels - 1:
                self.down.append(Downsample(channels_now))
                skip_channels.append(channels_now)
                resolution //= 2

        self.middle = nn.ModuleList([
            Stage(channels_now, channels_now, embed_dim, attention=True, heads=attention_heads,
                  groups=groups, dropout=dropout),
            Stage(channels_now, channels_now, embed_dim, attention=False, heads=attention_heads,
                  groups=groups, dropout=dropout),
        ])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(blocks_per_level + 1):
                self.up.append(stage(channels_now + skip_channels.pop(), base_channels * mult, resolution))
                channels_now = base_channels * mult
            if level > 0:
                self.up.append(Upsample(channels_now))
                resolution *= 2

        self.output = nn.Sequential(group_norm(channels_now, groups), nn.SiLU(),
                                    nn.Conv2d(channels_now, channels * patch**2, 3, padding=1))
        nn.init.zeros_(self.output[-1].weight)
        nn.init.zeros_(self.output[-1].bias)
        self.register_buffer("class_counts", torch.zeros(num_classes))
        self.class_names = [str(i) for i in range(num_classes)]
        self.channels_last = False

    def use_channels_last(self) -> "UNet":
        """Store weights and run activations in ``channels_last`` format (faster convolutions on GPUs)."""
        self.channels_last = True
        return self.to(memory_format=torch.channels_last)

    # -- classes ------------------------------------------------------------------------------

    def set_classes(self, names: Sequence[str], counts: Tensor) -> None:
        """Record the training data's class names and label histogram ``(num_classes,)``."""
        if len(names) > self.num_classes:
            raise ValueError(f"the data has {len(names)} classes but model.num_classes={self.num_classes}; "
                             f"set --set model.num_classes={len(names)}")
        self.class_names = list(names) + [str(i) for i in range(len(names), self.num_classes)]
        padded = torch.zeros(self.num_classes)
        padded[: len(counts)] = counts.float()
        self.class_counts.copy_(padded)

    def get_extra_state(self) -> dict:
        return {"class_names": list(self.class_names)}

    def set_extra_state(self, state: dict) -> None:
        self.class_names = list(state["class_names"])

    # -- forward ------------------------------------------------------------------------------

    def embed(self, t: Tensor, cond: Tensor | None) -> Tensor:
        """The time plus class embedding, ``(B,), (B,) -> (B, 4 * base_channels)``."""
        labels = self.null_labels(t.shape[0], t.device) if cond is None else cond.long()
        labels = torch.where((labels < 0) | (labels >= self.num_classes), self.num_classes, labels)
        emb = self.time_mlp(timestep_embedding(t, self.base_channels).to(self.input.weight.dtype))
        return emb + self.class_embedding(labels)

    def null_labels(self, n: int, device: torch.device) -> Tensor:
        return torch.full((n,), self.num_classes, dtype=torch.long, device=device)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected images (B, {self.channels}, H, W), got shape {tuple(x.shape)}")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        emb = self.embed(t, cond)
        h = self.input(F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x)
        skips = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, Downsample) else layer(h, emb)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb)
        for layer in self.up:
            h = layer(h) if isinstance(layer, Upsample) else layer(torch.cat([h, skips.pop()], dim=1), emb)
        h = self.output(h)
        return F.pixel_shuffle(h, self.patch) if self.patch > 1 else h

