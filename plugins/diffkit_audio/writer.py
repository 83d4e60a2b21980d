"""Writing generated clips: an audio file and a spectrogram PNG per clip, and one grid PNG."""

from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor

from .audio_io import write_wav
from .render import grid_image, save_png, spectrogram_image

AUDIO_OUT_SUFFIXES = (".wav", ".flac", ".ogg")


def safe_label(text: str) -> str:
    """A label usable in a file name (path separators and spaces become ``-``)."""
    return re.sub(r"[^\w.+-]", "-", text) or "none"


def target_paths(out: Path, names: list[str]) -> tuple[list[Path], Path]:
    """(audio file per clip, grid PNG) for an output folder or an audio file name."""
    if out.suffix.lower() in AUDIO_OUT_SUFFIXES:
        if len(names) == 1:
            return [out], out.with_name(f"{out.stem}_grid.png")
        paths = [out.with_name(f"{out.stem}_{i:03d}_{safe_label(name)}{out.suffix}") for i, name in enumerate(names)]
        return paths, out.with_name(f"{out.stem}_grid.png")
    if out.suffix and not out.is_dir():
        raise ValueError(f"cannot write audio samples to {str(out)!r}: give a folder or a file ending in "
                         f"{', '.join(AUDIO_OUT_SUFFIXES)}")
    paths = [out / f"sample_{i:03d}_{safe_label(name)}.wav" for i, name in enumerate(names)]
    return paths, out / "grid.png"


def write_clips(waves: Tensor, names: list[str], out: Path, sample_rate: int) -> list[Path]:
    """Write ``(N, C, T)`` clips with their labels ``names``; returns the files written.

    Refuses (before writing anything) when any target file exists already."""
    if len(names) != waves.shape[0]:
        raise ValueError(f"{waves.shape[0]} clips but {len(names)} names")
    audio_paths, grid_path = target_paths(out, names)
    images_paths = [path.with_suffix(".png") for path in audio_paths]
    existing = [str(path) for path in [*audio_paths, *images_paths, grid_path] if path.exists()]
    if existing:
        raise ValueError(f"not overwriting {len(existing)} existing file(s), e.g. {existing[0]!r}; "
                              f"choose another --out")
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    written, images = [], []
    for wave, audio_path, image_path in zip(waves, audio_paths, images_paths):
        written.append(write_wav(audio_path, wave, sample_rate))
        image = spectrogram_image(wave, sample_rate)
        written.append(save_png(image, image_path))
        images.append(image)
    written.append(save_png(grid_image(images, names, columns=8), grid_path))
    return written
