"""Reading and writing image files: sample PNGs, grids, and the inputs of editing.

Files are created exclusively: an existing file is never overwritten. Samples written into a
folder take the first free numbers, so repeated runs (or processes sharing a folder) add files.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .data import fit_image, to_pixels

GRID_NAME = "grid"
OTHER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
#: Tiles of a grid are enlarged (nearest neighbour) to at least this many pixels a side.
GRID_MIN_TILE = 64
#: A grid shows at most this many samples (the first ones), so that large runs stay viewable.
GRID_MAX_SAMPLES = 256


def write_images(images: Tensor, out: Path) -> list[Path]:
    """Write ``(B, C, H, W)`` images in [-1, 1] as PNGs.

    ``out`` ending in ``.png`` gets one grid; any other path is a folder that gets
    ``sample-00000.png``, ... (numbered after those already there) and a ``grid.png`` (or
    ``grid-1.png``, ... when taken). Grids show the first ``GRID_MAX_SAMPLES`` images. Returns
    the files written, individual ones first.
    """
    out = Path(out)
    if len(images) == 0:
        raise ValueError(f"no samples to write to {str(out)!r}")
    grid = png_bytes(make_grid(images[:GRID_MAX_SAMPLES]))
    if out.suffix.lower() == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        _create(out, grid)
        return [out]
    if out.suffix.lower() in OTHER_IMAGE_SUFFIXES:
        raise ValueError(f"--out {str(out)!r}: the image domain writes a folder or a .png grid, "
                         f"not {out.suffix!r} files")
    out.mkdir(parents=True, exist_ok=True)
    start = _next_sample_number(out)
    written = [_create_first_free(out, _sample_name, png_bytes(image), start + i) for i, image in enumerate(images)]
    written.append(_create_first_free(out, _grid_name, grid))
    return written


def grid_columns(n: int) -> int:
    """A single row for short strips (e.g. interpolations), else a square-ish grid."""
    return n if n <= 10 else math.ceil(math.sqrt(n))


def make_grid(images: Tensor, *, columns: int | None = None, padding: int = 1) -> Tensor:
    """Tile ``(B, C, H, W)`` images row by row into ``(C, H', W')``, enlarged so that small
    images stay visible; the padding between tiles is mid-gray."""
    n, c, h, w = images.shape
    columns = columns or grid_columns(n)
    rows = math.ceil(n / columns)
    zoom = max(1, math.ceil(GRID_MIN_TILE / max(h, w)))
    tiles = images.repeat_interleave(zoom, dim=-2).repeat_interleave(zoom, dim=-1)
    th, tw = h * zoom, w * zoom
    grid = torch.zeros(c, rows * (th + padding) + padding, columns * (tw + padding) + padding)
    for index, tile in enumerate(tiles):
        top, left = padding + (index // columns) * (th + padding), padding + (index % columns) * (tw + padding)
        grid[:, top:top + th, left:left + tw] = tile
    return grid


def png_bytes(image: Tensor) -> bytes:
    """A ``(C, H, W)`` image in [-1, 1] (C = 1 or 3) encoded as PNG."""
    buffer = io.BytesIO()
    pil_image(image).save(buffer, format="PNG")
    return buffer.getvalue()


def pil_image(image: Tensor):
    """A ``(C, H, W)`` image in [-1, 1] as a PIL image: mode ``L`` for C = 1, ``RGB`` for C = 3."""
    from PIL import Image

    pixels = to_pixels(image).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def _create(path: Path, content: bytes) -> None:
    try:
        with open(path, "xb") as handle:
            handle.write(content)
    except FileExistsError:
        raise FileExistsError(f"{str(path)!r} already exists; choose another --out or remove it") from None


def _create_first_free(folder: Path, name_for: Callable[[int], str], content: bytes, start: int = 0) -> Path:
    """Create ``folder / name_for(i)`` for the first free ``i >= start``; exclusive creation makes
    this safe when several processes write into the same folder."""
    index = start
    while True:
        path = folder / name_for(index)
        try:
            with open(path, "xb") as handle:
                handle.write(content)
            return path
        except FileExistsError:
            index += 1


def _sample_name(index: int) -> str:
    return f"sample-{index:05d}.png"


def _grid_name(index: int) -> str:
    return f"{GRID_NAME}.png" if index == 0 else f"{GRID_NAME}-{index}.png"


def _next_sample_number(folder: Path) -> int:
    """One past the highest ``sample-N.png`` in ``folder`` (so new files follow the old ones)."""
    numbers = [int(p.stem[len("sample-"):]) for p in folder.glob("sample-*.png") if p.stem[len("sample-"):].isdigit()]
    return max(numbers, default=-1) + 1


def read_images(folder: Path, image_size: int, channels: int) -> Tensor:
    """The pictures in ``folder`` (not its subfolders, not grids) as ``(N, C, H, W)`` uint8."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"samples folder {str(folder)!r} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")
                   and not p.name.startswith(GRID_NAME))
    if not files:
        raise ValueError(f"no sample pictures in {str(folder)!r} (grid*.png files are not counted)")
    pictures = []
    for path in files:
        with Image.open(path) as image:
            pictures.append(fit_image(image, image_size, channels))
    return torch.stack(pictures)


def read_known(init: str, mask: str | None, image_size: int, channels: int) -> tuple[Tensor, Tensor | None]:
    """The picture to edit as ``(C, H, W)`` in [-1, 1], and the mask ``(1, H, W)`` (1 = keep, from
    white; 0 = generate, from black; gray is split at half) fitted the same way, or ``None``."""
    known = _open(init, "--init")
    x = fit_image(known, image_size, channels).float() / 127.5 - 1.0
    if mask is None:
        return x, None
    keep = fit_image(_open(mask, "--mask"), image_size, 1, nearest=True)
    return x, (keep >= 128).float()


def _open(path: str, option: str):
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise FileNotFoundError(f"{option} {path!r}: no such image file")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{option} {path!r} is not a readable image: {error}") from None
