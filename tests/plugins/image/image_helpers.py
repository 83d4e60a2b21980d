"""Picture-file helpers of the image-domain tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
