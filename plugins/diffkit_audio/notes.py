"""The embedded default data: short musical notes, synthesised deterministically.

Each clip is one note of a C-major scale (C4 to C5, the label) played with one of four timbres
(sine, clarinet-like odd harmonics, sawtooth-like, and a plucked string with a bright, fast-
decaying spectrum) under an attack/decay/sustain/release envelope, with small random
variations of loudness, tuning, vibrato and onset. Harmonics above the Nyquist frequency are
left out, so the clips are free of aliasing at any sample rate.
"""

from __future__ import annotations

import math

import numpy as np

#: The labels, in class order, and their fundamental frequencies in Hz (equal temperament, A4 = 440).
PITCHES: dict[str, float] = {
    name: 440.0 * 2 ** (semitones / 12)
    for name, semitones in [("C4", -9), ("D4", -7), ("E4", -5), ("F4", -4), ("G4", -2),
                            ("A4", 0), ("B4", 2), ("C5", 3)]
}
TIMBRES = ("sine", "clarinet", "saw", "pluck")

#: The notes' own sample rate (Hz) and length (seconds): what ``data.sample_rate = 0`` and
#: ``data.duration = 0`` mean for them.
NOTES_RATE, NOTES_DURATION = 8000, 0.5

#: Seeds of the two splits: the training set and the held-out set used beside it in evaluation.
SPLIT_SEEDS = {"train": 0, "heldout": 1}


def harmonic_amplitudes(timbre: str, count: int) -> np.ndarray:
    """Relative amplitudes of harmonics ``1..count`` of a timbre -> ``(count,)``."""
    n = np.arange(1, count + 1, dtype=np.float64)
    if timbre == "sine":
        return (n == 1).astype(np.float64)
    if timbre == "clarinet":
        return np.where(n % 2 == 1, 1.0 / n, 0.0)
    if timbre == "saw":
        return 1.0 / n
    if timbre == "pluck":
        return 1.0 / n ** 1.5
    raise ValueError(f"unknown timbre {timbre!r}; known: {', '.join(TIMBRES)}")


def envelope(length: int, sample_rate: int, timbre: str, rng: np.random.Generator) -> np.ndarray:
    """An amplitude envelope ``(length,)`` in [0, 1]: linear attack, exponential decay to a
    sustain level, linear release over the last part of the clip. Plucks decay without sustain."""
    time = np.arange(length) / sample_rate
    duration = length / sample_rate
    attack = rng.uniform(0.005, 0.02) if timbre == "pluck" else rng.uniform(0.01, 0.08)
    decay_rate = rng.uniform(6.0, 12.0) if timbre == "pluck" else rng.uniform(3.0, 10.0)
    sustain = 0.0 if timbre == "pluck" else rng.uniform(0.5, 0.85)
    rising = np.clip(time / attack, 0.0, 1.0)
    falling = sustain + (1.0 - sustain) * np.exp(-decay_rate * np.maximum(time - attack, 0.0))
    release_start = duration * rng.uniform(0.7, 0.85)
    release = np.clip((duration - time) / max(duration - release_start, 1e-6), 0.0, 1.0)
    return rising * falling * release


def synthesise_note(pitch: float, timbre: str, length: int, sample_rate: int,
                    rng: np.random.Generator) -> np.ndarray:
    """One note ``(length,)`` float32 with peak amplitude in [0.4, 0.9]."""
    detune = 2 ** (rng.uniform(-15, 15) / 1200)  # up to 15 cents off
    frequency = pitch * detune
    onset = int(rng.uniform(0.0, 0.03) * sample_rate)
    time = np.arange(length - onset) / sample_rate
    vibrato_depth = rng.uniform(0.0, 0.006) if timbre != "pluck" else 0.0
    vibrato = vibrato_depth * np.sin(2 * math.pi * rng.uniform(4.0, 7.0) * time)
    phase = 2 * math.pi * frequency * (time + np.cumsum(vibrato) / sample_rate)
    count = max(1, int((sample_rate / 2) / (frequency * (1 + vibrato_depth))) - 1)
    amplitudes = harmonic_amplitudes(timbre, count)
    if timbre == "pluck":
        # Higher harmonics of a string die away faster than the fundamental.
        damping = np.exp(-np.outer(np.arange(count), time) * rng.uniform(2.0, 5.0))
    else:
        damping = np.ones((count, time.size))
    start_phases = rng.uniform(0, 2 * math.pi, size=count)
    harmonics = np.sin(np.outer(np.arange(1, count + 1), phase) + start_phases[:, None])
    tone = (amplitudes[:, None] * damping * harmonics).sum(axis=0)
    tone *= envelope(tone.size, sample_rate, timbre, rng)
    tone /= max(np.abs(tone).max(), 1e-8)
    note = np.zeros(length)
    note[onset:] = tone * rng.uniform(0.4, 0.9)
    return note.astype(np.float32)


def make_notes(sample_rate: int, length: int, per_class: int, split: str = "train"
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The note set: ``(waves (N, length) float32, labels (N,) int64, label names)`` with
    ``N = 8 * per_class``; timbres cycle within each class. The same arguments give the same set."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLIT_SEEDS)}")
    rng = np.random.default_rng([SPLIT_SEEDS[split], sample_rate, length])
    waves, labels = [], []
    for label, pitch in enumerate(PITCHES.values()):
        for i in range(per_class):
            waves.append(synthesise_note(pitch, TIMBRES[i % len(TIMBRES)], length, sample_rate, rng))
            labels.append(label)
    return np.stack(waves), np.asarray(labels, dtype=np.int64), list(PITCHES)
