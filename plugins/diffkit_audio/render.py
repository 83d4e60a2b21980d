"""Pictures of sounds: log-magnitude spectrogram PNGs and a labelled grid of them (Pillow only,
so writing samples stays quick)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

# Anchor colours of a dark-to-bright palette (black, purple, red, orange, pale yellow).
PALETTE_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)
DYNAMIC_RANGE_DB = 80.0


def stft_size(sample_rate: int) -> int:
    """A window of about 32 ms, rounded to a power of two."""
    return 2 ** max(6, round(math.log2(0.032 * sample_rate)))


def spectrogram_db(wave: Tensor, sample_rate: int) -> Tensor:
    """``(C, T)`` -> log-magnitude ``(F, frames)`` in dB of the channel mean, Hann window, hop n_fft/4."""
    n_fft = stft_size(sample_rate)
    mono = wave.float().mean(dim=0)
    if mono.numel() < n_fft:
        mono = torch.nn.functional.pad(mono, (0, n_fft - mono.numel()))
    spec = torch.stft(mono, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft), return_complex=True)
    return 20 * torch.log10(spec.abs().clamp(min=1e-5))


def colourise(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] ``(H, W)`` -> RGB ``(H, W, 3)`` uint8 through the palette."""
    position = np.clip(values, 0, 1) * (len(PALETTE_ANCHORS) - 1)
    low = np.floor(position).astype(int).clip(max=len(PALETTE_ANCHORS) - 2)
    fraction = (position - low)[..., None]
    rgb = PALETTE_ANCHORS[low] * (1 - fraction) + PALETTE_ANCHORS[low + 1] * fraction
    return rgb.round().astype(np.uint8)


def spectrogram_image(wave: Tensor, sample_rate: int, min_width: int = 256):
    """A PIL image of the spectrogram: time left to right, low frequencies at the bottom; the
    top :data:`DYNAMIC_RANGE_DB` below an absolute full scale (0 dB = a full-scale sine) are shown."""
    from PIL import Image

    db = spectrogram_db(wave, sample_rate).numpy()
    full_scale = 20 * math.log10(stft_size(sample_rate) / 4)  # a unit sine's peak bin with a Hann window
    values = (db - full_scale + DYNAMIC_RANGE_DB) / DYNAMIC_RANGE_DB
    image = Image.fromarray(colourise(values[::-1]))
    scale = max(1, math.ceil(min_width / image.width))
    return image.resize((image.width * scale, image.height * max(1, scale // 2)), Image.NEAREST)


def grid_image(images: list, captions: list[str], columns: int = 8):
    """Tiles in rows of ``columns`` with a caption above each tile."""
    from PIL import Image, ImageDraw

    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    width = max(image.width for image in images)
    height = max(image.height for image in images)
    caption, gap = 14, 4
    grid = Image.new("RGB", (columns * (width + gap) + gap, rows * (height + caption + gap) + gap), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, text) in enumerate(zip(images, captions)):
        x = gap + (i % columns) * (width + gap)
        y = gap + (i // columns) * (height + caption + gap)
        draw.text((x + 2, y + 1), text, fill="black")
        grid.paste(image, (x, y + caption))
    return grid


def png_bytes(image) -> bytes:
    """A PIL image encoded as PNG."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
