"""Picture-file and network helpers of the image-domain tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    """Write a uint8 array (H, W) / (H, W, 3) / (H, W, 4) as a picture file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array.astype(np.uint8))
    if mode is not None:
        image = image.convert(mode)
    image.save(path, **kwargs)
    return path


def gray(value: int, size=(12, 12)) -> np.ndarray:
    return np.full(size, value, dtype=np.uint8)


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L" if image.mode in ("L", "LA", "P") else image.mode))


def randomize_zero_layers(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised layers (which make a fresh U-Net output 0) small random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model
