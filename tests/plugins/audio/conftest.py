"""Shared fixtures of the audio-domain tests: a tiny configuration and file helpers."""

from __future__ import annotations

import pytest

from diffkit.config import resolve_config
from diffkit_audio.domain import AudioDomain

from audio_helpers import RATE


@pytest.fixture
def domain() -> AudioDomain:
    return AudioDomain()


@pytest.fixture
def config(domain) -> dict:
    """The waveform representation: 0.25 s at 8 kHz, a small network and a small note set: fast on one core."""
    return resolve_config(domain, preset="cpu", overrides={
        "data": {"sample_rate": RATE, "duration": 0.25, "notes_per_class": 4},
        "model": {"representation": "waveform", "residual_channels": 16, "layers": 4, "dilation_cycle": 4,
                  "hidden_dim": 32, "embedding_dim": 32, "patch": 4},
        "evaluate": {"classifier_steps": 40, "mels": 32},
    })


@pytest.fixture
def mel_config(domain) -> dict:
    """The mel representation at the same size: 32 bands x 32 frames, a narrow U-Net, few Griffin-Lim iterations."""
    return resolve_config(domain, preset="cpu", overrides={
        "data": {"sample_rate": RATE, "duration": 0.25, "notes_per_class": 4},
        "model": {"representation": "mel", "mel_bins": 32, "mel_fft": 256, "mel_hop": 64, "griffin_lim_iters": 8,
                  "base_channels": 16, "channel_mults": [1, 2], "mel_patch": 2},
        "evaluate": {"classifier_steps": 40, "mels": 32},
    })
