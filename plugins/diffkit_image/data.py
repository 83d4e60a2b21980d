"""Image data: the embedded handwritten digits and folders of the user's pictures.

Pixels are stored as ``uint8`` tensors ``(N, C, H, W)`` and turned into floats in [-1, 1] per item.
A folder is decoded once, by worker processes, into a store under the diffkit cache
(:func:`diffkit.kit.cache_dir`, :mod:`diffkit.kit.store`), keyed by the files' names, sizes and
modification times and by the size and channel settings, so a changed folder or setting is
noticed and decoded again. Its pixels are then memory-mapped: every training process of a
machine reads the one copy in the page cache, and a set larger than memory is paged in as read.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffkit.kit import ItemStore, Skip, in_shards, open_store

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CACHE_VERSION = 3  # 2: the cache records the files it skipped; 3: a memory-mapped store
#: Pictures a decoding task takes (a shard of the store).
SHARD_PICTURES = 512


@dataclass
class ImageSet:
    """Decoded pictures ``(N, C, H, W)`` uint8 with labels ``(N,)`` and the class names.

    ``store``, when set, is where the pixels are mapped from: an image set pickles (e.g. to a
    DataLoader worker) as its store, not as a copy of the pixels."""

    pixels: Tensor
    labels: Tensor
    class_names: list[str]
    store: ItemStore | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "pixels": None} if self.store is not None else dict(self.__dict__)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.store is not None:
            self.pixels = _mapped_pixels(self.store)


class ImageDataset(Dataset):
    """Items ``{"x": (C, H, W) float32 in [-1, 1], "cond": long label}``, optionally flipped."""

    def __init__(self, images: ImageSet, *, hflip: bool = False):
        self.images = images
        self.hflip = hflip

    @property
    def class_names(self) -> list[str]:
        return self.images.class_names

    @property
    def labels(self) -> Tensor:
        return self.images.labels

    def __len__(self) -> int:
        return len(self.images.labels)

    def __getitem__(self, index: int) -> dict:
        x = to_unit_range(self.images.pixels[index])
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return {"x": x, "cond": self.images.labels[index]}

    def __repr__(self) -> str:
        n, c, h, w = self.images.pixels.shape
        return f"ImageDataset({n} images, {c}x{h}x{w}, {len(self.class_names)} classes, hflip={self.hflip})"


def to_unit_range(pixels: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` -> float32 ``[-1, 1]``."""
    return pixels.float() / 127.5 - 1.0


def to_pixels(x: Tensor) -> Tensor:
    """float ``[-1, 1]`` -> uint8 ``[0, 255]`` (values outside are clamped)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# -- the embedded default ---------------------------------------------------------------------

def load_digits(image_size: int, channels: int) -> ImageSet:
    """The 1,797 8x8 handwritten digits of the UCI ML repository (as shipped by scikit-learn),
    dark ink on white, resized to ``image_size`` with the same resampling as user pictures."""
    images = _digits(image_size, channels)
    return ImageSet(images.pixels.clone(), images.labels.clone(), list(images.class_names))


@functools.lru_cache(maxsize=4)
def _digits(image_size: int, channels: int) -> ImageSet:
    from PIL import Image
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    # Values count ink on a 0..16 scale; invert so the pictures read as ink on paper.
    paper = (255 - digits.images * (255 / 16)).round().astype("uint8")
    pictures = [fit_image(Image.fromarray(array), image_size, channels) for array in paper]
    return ImageSet(torch.stack(pictures), torch.as_tensor(digits.target, dtype=torch.long),
                    [str(i) for i in range(10)])


# -- a folder of pictures ---------------------------------------------------------------------

def load_folder(root: str | Path, image_size: int, channels: int, *, cache: Path | None = None) -> ImageSet:
    """Every PNG/JPEG/WebP under ``root``; each subfolder is a class (sorted names). Without
    subfolders all pictures form one class named after ``root``. Files that cannot be decoded
    (damaged, truncated, empty, or claiming a size beyond PIL's decompression-bomb limit) are
    skipped with one warning naming them, repeated when the folder is read from the cache; a
    folder with nothing readable is an error.

    With ``cache`` the pictures are decoded once into a store there and memory-mapped; without,
    they are decoded into this process's memory."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image data folder {str(root)!r} does not exist or is not a folder")
    check_channels(channels)  # before decoding: a wrong setting is not a damaged file
    files, class_names = list_images(root)
    if not files:
        raise ValueError(f"no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} files found in {str(root)!r}")
    key = _folder_key(root, files, image_size, channels)
    if cache is not None:
        return _image_set(_decoded(cache / "decoded" / key, root, files, image_size, channels), root, class_names)
    with tempfile.TemporaryDirectory(prefix="diffkit-images-") as temporary:
        store = _decoded(Path(temporary) / key, root, files, image_size, channels)
        images = _image_set(store, root, class_names)
        return ImageSet(images.pixels.clone(), images.labels, class_names)


def _decoded(folder: Path, root: Path, files: Sequence[tuple[Path, int]], image_size: int, channels: int) -> ItemStore:
    """The store of the folder's pictures, decoded by worker processes when it is not there yet."""
    decode = functools.partial(decode_pictures, root=root, image_size=image_size, channels=channels)
    return open_store(folder, in_shards(files, SHARD_PICTURES), decode, description=f"decoding {len(files):,} pictures")


def _image_set(store: ItemStore, root: Path, class_names: list[str]) -> ImageSet:
    """The pictures of a store of ``root``, after warning about the files it skipped."""
    unreadable = [skip.reason for skip in store.skipped]
    if not len(store):
        raise ValueError(f"none of the {len(unreadable)} image files in {str(root)!r} could be read"
                         + (f"; the first: {unreadable[0]}" if unreadable else ""))
    _warn_unreadable(root, unreadable)
    labels = torch.from_numpy(np.array(store.array("label")))
    return ImageSet(_mapped_pixels(store), labels, class_names, store)


def _mapped_pixels(store: ItemStore) -> Tensor:
    return torch.from_numpy(store.array("pixels"))


def list_images(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """``([(file, label)], class_names)`` for the pictures under ``root``, in a stable order."""
    under = {folder: _images_under(folder) for folder in sorted(root.iterdir()) if folder.is_dir()}
    subfolders = [folder for folder, found in under.items() if found]
    if not subfolders:
        return [(f, 0) for f in _images_under(root)], [root.resolve().name or "images"]
    loose = [p for p in root.iterdir() if _is_image(p)]
    if loose:
        warnings.warn(f"{len(loose)} pictures directly in {str(root)!r} are ignored: with class "
                      f"subfolders every picture must be in one", stacklevel=3)
    files = [(f, label) for label, folder in enumerate(subfolders) for f in under[folder]]
    return files, [folder.name for folder in subfolders]


def _images_under(folder: Path) -> list[Path]:
    """The picture files under ``folder``, sorted (a walk of the directories, which tells files
    from folders without a call per file)."""
    found = []
    for directory, _, names in os.walk(folder, followlinks=True):
        found.extend(Path(directory, name) for name in names if name.lower().endswith(IMAGE_SUFFIXES))
    return sorted(found)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def decode_pictures(files: Sequence[tuple[Path, int]], *, root: Path, image_size: int,
                    channels: int) -> Iterator[dict | Skip]:
    """``{"pixels": (C, H, W) uint8, "label": int64}`` of each ``(file, label)``, or a
    :class:`~diffkit.kit.Skip` naming a file that does not decode (``"name (error type)"``)."""
    from PIL import Image

    for path, label in files:
        try:
            with Image.open(path) as image:
                pixels = fit_image(image, image_size, channels)
        except Exception as error:  # PIL raises many types for damaged files (OSError, SyntaxError,
            # DecompressionBombError, struct.error, ...): each such file is skipped alike
            yield Skip(f"{path.relative_to(root)} ({type(error).__name__})")
            continue
        yield {"pixels": pixels.numpy(), "label": np.int64(label)}


def _warn_unreadable(root: Path, unreadable: Sequence[str], shown: int = 20) -> None:
    if unreadable:
        listed = ", ".join(unreadable[:shown]) + (f" and {len(unreadable) - shown} more" if len(unreadable) > shown else "")
        warnings.warn(f"skipped {len(unreadable)} unreadable image file(s) in {str(root)!r}: {listed}", stacklevel=5)


def _folder_key(root: Path, files: Sequence[tuple[Path, int]], image_size: int, channels: int) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION} {image_size} {channels}".encode())
    for path, label in files:
        stat = path.stat()
        digest.update(f"\n{path.relative_to(root)}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


# -- one picture ------------------------------------------------------------------------------

def check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"data.channels must be 1 (gray) or 3 (RGB), got {channels}")


def fit_image(image, image_size: int, channels: int, *, nearest: bool = False) -> Tensor:
    """A PIL image as ``(channels, image_size, image_size)`` uint8: EXIF rotation applied,
    transparency composited over white, converted to gray (1) or RGB (3), scaled so its shorter
    side fits and center-cropped. ``nearest`` keeps hard edges (for masks)."""
    from PIL import Image, ImageOps

    check_channels(channels)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    method = Image.NEAREST if nearest else Image.BICUBIC
    image = ImageOps.fit(image, (image_size, image_size), method=method, centering=(0.5, 0.5))
    array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return array.reshape(image_size, image_size, channels).permute(2, 0, 1).contiguous()
