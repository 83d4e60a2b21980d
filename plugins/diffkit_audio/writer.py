"""Writing generated clips: an audio file and a spectrogram PNG per clip, and one grid PNG
(never over existing files: the kit's output policy)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from torch import Tensor

from diffkit.kit import Output, check_new, numbered_names, write_new

from .audio_io import encode_audio
from .render import grid_image, png_bytes, spectrogram_image

AUDIO_OUT_SUFFIXES = (".wav", ".flac", ".ogg")


def safe_label(text: str) -> str:
    """A label usable in a file name (path separators and spaces become ``-``)."""
    return re.sub(r"[^\w.+-]", "-", text) or "none"


def target_paths(out: Path, names: list[str]) -> tuple[list[Path], Path]:
    """(audio file per clip, grid PNG) for an output folder or an audio file name."""
    if out.suffix.lower() in AUDIO_OUT_SUFFIXES:
        if len(names) == 1:
            return [out], out.with_name(f"{out.stem}-grid.png")
        labels = [safe_label(name) for name in names]
        paths = [out.with_name(name) for name in numbered_names(out.stem, len(names), out.suffix, labels)]
        return paths, out.with_name(f"{out.stem}-grid.png")
    if out.suffix and not out.is_dir():
        raise ValueError(f"cannot write audio samples to {str(out)!r}: give a folder or a file ending in "
                         f"{', '.join(AUDIO_OUT_SUFFIXES)}")
    paths = [out / name for name in numbered_names("sample", len(names), ".wav", [safe_label(n) for n in names])]
    return paths, out / "grid.png"


def write_clips(waves: Tensor, names: list[str], out: Path, sample_rate: int) -> list[Output]:
    """Write ``(N, C, T)`` clips with their labels ``names``; returns the outputs.

    Refuses (before writing anything) when any target file exists already."""
    if len(names) != waves.shape[0]:
        raise ValueError(f"{waves.shape[0]} clips but {len(names)} names")
    audio_paths, grid_path = target_paths(out, names)
    image_paths = [path.with_suffix(".png") for path in audio_paths]
    check_new([*audio_paths, *image_paths, grid_path])
    written, images = [], []
    for wave, audio_path, image_path in zip(waves, audio_paths, image_paths):
        write_new(audio_path, encode_audio(wave, sample_rate, audio_path.suffix))
        written.append(Output(audio_path, "audio", content=wave.float().mean(dim=0).numpy(), sample_rate=sample_rate))
        image = spectrogram_image(wave, sample_rate)
        written.append(Output(write_new(image_path, png_bytes(image)), "image"))
        images.append(image)
    grid = grid_image(images, names, columns=8)
    written.append(Output(write_new(grid_path, png_bytes(grid)), "image", "overview", content=np.asarray(grid)))
    return written
