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


LEVELS = ("loudness", "peak", "none")
#: RMS of a loudness-normalised clip: 20 dB below full scale.
TARGET_RMS = 0.1
#: The largest magnitude a normalised clip may reach.
PEAK = 0.95


def peak_normalise(wave: Tensor, peak: float = PEAK) -> Tensor:
    """Scale so that the largest magnitude is ``peak`` (silence is left as it is)."""
    largest = wave.abs().max()
    return wave if largest <= 0 else wave * (peak / largest)


def loudness_normalise(wave: Tensor, rms: float = TARGET_RMS, peak: float = PEAK) -> Tensor:
    """Scale to a root-mean-square level of ``rms``, or less where that would push the largest
    magnitude past ``peak`` (silence is left as it is). Unlike the peak, the RMS level follows how
    loud a recording sounds, whatever one click or plosive reaches."""
    largest = wave.abs().max()
    if largest <= 0:
        return wave
    level = wave.float().pow(2).mean().sqrt()
    return wave * min(rms / float(level), peak / float(largest))


def check_level(level: str) -> str:
    """``data.normalize``, checked."""
    if level not in LEVELS:
        raise ValueError(f"data.normalize = {level!r}; expected one of {', '.join(LEVELS)}")
    return level


def normalise_level(wave: Tensor, level: str) -> Tensor:
    """``data.normalize``: ``loudness`` (:func:`loudness_normalise`), ``peak`` or ``none``."""
    if check_level(level) == "loudness":
        return loudness_normalise(wave)
    return peak_normalise(wave) if level == "peak" else wave


def frame_levels(wave: Tensor, sample_rate: int, frame_seconds: float = 0.02) -> tuple[Tensor, int, int]:
    """Energies in dB of half-overlapping frames of ``frame_seconds`` of the channel mean of
    ``wave (C, T)``: ``(levels (F,), frame, hop)``, sizes in samples (a clip shorter than a frame is one frame)."""
    mono = wave.float().mean(dim=0)
    frame = max(1, min(round(frame_seconds * sample_rate), mono.shape[0]))
    hop = max(1, frame // 2)
    frames = mono.unfold(0, frame, hop)
    return 10 * torch.log10(frames.pow(2).mean(dim=1) + 1e-12), frame, hop


#: How far above a recording's noise floor (the level 90 % of its 20 ms frames exceed) a frame must
#: be to count as sound when trimming: noise frames scatter a few dB around their mean level.
ABOVE_FLOOR_DB = 6.0


def trim_silence(wave: Tensor, sample_rate: int, below_db: float) -> Tensor:
    """``wave (C, T)`` without its leading and trailing 20 ms frames of silence, keeping two frames
    of margin each side; ``below_db <= 0`` trims nothing. A frame is silence when it is more than
    ``below_db`` under the loudest frame, or within :data:`ABOVE_FLOOR_DB` of the noise floor:
    recordings of words in a noisy room are trimmed to the word (but never to less than the
    frames within 3 dB of the loudest)."""
    if below_db <= 0:
        return wave
    levels, frame, hop = frame_levels(wave, sample_rate)
    loudest, floor = levels.max(), torch.quantile(levels, 0.1)
    threshold = torch.maximum(loudest - below_db, torch.minimum(floor + ABOVE_FLOOR_DB, loudest - 3.0))
    sound = torch.nonzero(levels >= threshold).flatten()
    start = max(0, int(sound[0]) * hop - 2 * frame)
    end = min(wave.shape[-1], int(sound[-1]) * hop + 3 * frame)
    return wave[..., start:end]


def load_clip(path: str | Path, sample_rate: int, channels: int, normalise: str = "peak",
              trim_db: float = 0.0) -> Tensor:
    """A whole file as ``(channels, T)`` at ``sample_rate``, as :func:`prepare_clip` makes it."""
    wave, rate = read_audio(path)
    return prepare_clip(wave, rate, sample_rate, channels, normalise, trim_db, path=path)


def prepare_clip(wave: Tensor, rate: int, sample_rate: int, channels: int, normalise: str = "peak",
                 trim_db: float = 0.0, *, path: str | Path = "") -> Tensor:
    """A decoded recording ``(C, T)`` at ``rate`` -> ``(channels, T')`` at ``sample_rate``:
    silence trimmed (``trim_db``, :func:`trim_silence`), then its level normalised
    (``normalise``, :func:`normalise_level`); ``path`` names the file in errors."""
    try:
        wave = match_channels(wave, channels)
    except UnreadableAudio as error:
        raise UnreadableAudio(f"{path}: {error}") from None
    wave = resample(trim_silence(wave, rate, trim_db), rate, sample_rate)
    return normalise_level(wave, normalise)


def encode_audio(wave: Tensor, sample_rate: int, suffix: str = ".wav") -> bytes:
    """``(C, T)`` in [-1, 1] encoded as a file of the format ``suffix`` names (.wav, .flac: 16-bit
    PCM; .ogg: Vorbis)."""
    import io

    import soundfile

    data = wave.detach().float().clamp(-1, 1).cpu().numpy().T
    file_format = suffix.lower().lstrip(".").upper()
    subtype = "PCM_16" if file_format in ("WAV", "FLAC") else None
    buffer = io.BytesIO()
    soundfile.write(buffer, data, sample_rate, format=file_format, subtype=subtype)
    return buffer.getvalue()
