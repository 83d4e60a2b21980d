"""Reading and writing image files: sample PNGs, grids, and the inputs of editing.

Outputs follow the kit's policy: an existing file is never overwritten, and a run that would
replace one writes nothing.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from torch import Tensor

from diffkit.kit import Output, check_new, numbered_names, write_new

from .data import fit_image, to_pixels

GRID_NAME = "grid"
GRID_FILE = f"{GRID_NAME}.png"
OTHER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
#: Tiles of a grid are enlarged (nearest neighbour) to at least this many pixels a side.
GRID_MIN_TILE = 64
#: A grid shows at most this many samples (the first ones), so that large runs stay viewable.
GRID_MAX_SAMPLES = 256


def write_images(images: Tensor, out: Path) -> list[Output]:
    """Write ``(B, C, H, W)`` images in [-1, 1] as PNGs.

    ``out`` ending in ``.png`` gets one grid; any other path is a folder that gets
    ``sample-00000.png``, ... and ``grid.png``. Grids show the first ``GRID_MAX_SAMPLES`` images.
    Returns the outputs, individual ones first."""
    out = Path(out)
    if len(images) == 0:
        raise ValueError(f"no samples to write to {str(out)!r}")
    if out.suffix.lower() in OTHER_IMAGE_SUFFIXES:
        raise ValueError(f"--out {str(out)!r}: the image domain writes a folder or a .png grid, "
                         f"not {out.suffix!r} files")
    grid = make_grid(images[:GRID_MAX_SAMPLES])
    if out.suffix.lower() == ".png":
        return [_write_png(out, grid, "overview")]
    paths = [out / name for name in numbered_names("sample", len(images), ".png")]
    check_new([*paths, out / GRID_FILE])
    written = [_write_png(path, image, "samples") for path, image in zip(paths, images)]
    return written + [_write_png(out / GRID_FILE, grid, "overview")]


def _write_png(path: Path, image: Tensor, role: str) -> Output:
    write_new(path, png_bytes(image))
    # Overviews keep their pixels for previews; single samples are many and need not.
    return Output(path, "image", role, content=_hwc_pixels(image) if role == "overview" else None)


def _hwc_pixels(image: Tensor):
    """A ``(C, H, W)`` image in [-1, 1] as an ``(H, W)`` or ``(H, W, 3)`` uint8 array."""
    pixels = to_pixels(image).permute(1, 2, 0).numpy()
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


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

    return Image.fromarray(_hwc_pixels(image))


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
