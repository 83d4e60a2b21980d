"""Reading and shaping audio: decode with soundfile, resample with torchaudio, fix the channel
count and the length. Waveforms are float32 tensors ``(C, T)`` in [-1, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: File suffixes read as audio (all decoded by libsndfile through soundfile).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".mp3")


class UnreadableAudio(ValueError):
    """A file that soundfile cannot decode, or that holds no samples."""


def read_audio(path: str | Path) -> tuple[Tensor, int]:
    """Decode a file -> ``(waveform (C, T) float32, sample_rate)``; raises :class:`UnreadableAudio`."""
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises several types (LibsndfileError, RuntimeError...)
        raise UnreadableAudio(f"{path}: {error}") from None
    if data.shape[0] == 0:
        raise UnreadableAudio(f"{path}: the file holds no samples")
    if not np.isfinite(data).all():
        raise UnreadableAudio(f"{path}: the file holds non-finite samples")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(rate)


def resample(wave: Tensor, rate: int, target_rate: int) -> Tensor:
    """``(..., T)`` at ``rate`` -> ``(..., T')`` at ``target_rate`` (windowed-sinc, torchaudio)."""
    if rate == target_rate:
        return wave
    import torchaudio.functional

    return torchaudio.functional.resample(wave, rate, target_rate)


def match_channels(wave: Tensor, channels: int) -> Tensor:
    """(C, T) -> (channels, T): the mean of all channels for mono, a mono file repeated for
    more, and the first ``channels`` of a file that has more."""
    have = wave.shape[0]
    if channels == 1:
        return wave.mean(dim=0, keepdim=True)
    if have == 1:
        return wave.expand(channels, -1).clone()
    if have < channels:
        raise UnreadableAudio(f"has {have} channels, fewer than data.channels = {channels}")
    return wave[:channels]


def fit_length(wave: Tensor, length: int, offset: int = 0) -> Tensor:
    """(C, T) -> (C, length): the window starting at ``offset``, zero-padded at the end."""
    window = wave[:, offset:offset + length]
    missing = length - window.shape[1]
    if missing > 0:
        window = torch.nn.functional.pad(window, (0, missing))
    return window


def peak_normalise(wave: Tensor, peak: float = 0.95) -> Tensor:
    """Scale so that the largest magnitude is ``peak`` (silence is left as it is)."""
    largest = wave.abs().max()
    return wave if largest <= 0 else wave * (peak / largest)


def load_clip(path: str | Path, sample_rate: int, channels: int, normalise: bool = True) -> Tensor:
    """A whole file as ``(channels, T)`` at ``sample_rate``, peak-normalised when asked."""
    wave, rate = read_audio(path)
    try:
        wave = match_channels(wave, channels)
    except UnreadableAudio as error:
        raise UnreadableAudio(f"{path}: {error}") from None
    wave = resample(wave, rate, sample_rate)
    return peak_normalise(wave) if normalise else wave


def write_wav(path, wave: Tensor, sample_rate: int, format: str | None = None):
    """Write ``(C, T)`` in [-1, 1] as 16-bit PCM; the format follows the suffix (.wav, .flac,
    .ogg), or ``format`` (e.g. ``"WAV"``) when ``path`` is a file object."""
    import soundfile

    data = wave.detach().float().clamp(-1, 1).cpu().numpy().T
    kind = (format or Path(path).suffix.lstrip(".")).lower()
    subtype = "PCM_16" if kind in ("wav", "flac") else None
    soundfile.write(str(path) if isinstance(path, Path) else path, data, sample_rate, subtype=subtype, format=format)
    return path
