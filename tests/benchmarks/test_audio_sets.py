"""benchmarks/audio_sets.py: its noise colours and SNR estimate against closed forms, and its refusal
of a folder that holds files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "audio_sets.py"
spec = importlib.util.spec_from_file_location("audio_sets", SCRIPT)
audio_sets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(audio_sets)


@pytest.mark.parametrize("exponent", [-2.0, -1.0, 0.0, 1.0])
def test_coloured_noise_follows_its_power_law(exponent):
    rng = np.random.default_rng(0)
    power = np.mean([np.abs(np.fft.rfft(audio_sets.coloured_noise(16000, exponent, rng))) ** 2 for _ in range(20)],
                    axis=0)
    frequency = np.fft.rfftfreq(16000, 1 / 16000)
    band = (frequency >= 50) & (frequency <= 5000)
    slope = np.polyfit(np.log(frequency[band]), np.log(power[band]), 1)[0]
    assert slope == pytest.approx(exponent, abs=0.05)


@pytest.mark.parametrize("snr_db", [5.0, 20.0, 35.0])
def test_the_snr_estimate_recovers_a_tone_burst_in_white_noise(snr_db):
    rng = np.random.default_rng(1)
    time = np.arange(16000) / 16000
    tone = np.sqrt(2) * np.sin(2 * np.pi * 440 * time) * ((time >= 0.3) & (time < 0.7))  # power 1 while on
    noise = rng.standard_normal(16000) * 10 ** (-snr_db / 20)
    # The quietest fifth of the noise-only frames is a little below their mean: about +0.4 dB.
    assert audio_sets.estimated_snr_db(tone + noise, 16000) == pytest.approx(snr_db, abs=1.0)


def test_a_folder_holding_files_is_refused_before_anything_is_made(tmp_path):
    (tmp_path / "mine.wav").write_bytes(b"not to be lost")
    with pytest.raises(SystemExit, match="not an empty folder"):
        audio_sets.make_messy_digits(tmp_path, count=10)
    assert [path.name for path in tmp_path.iterdir()] == ["mine.wav"]
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.partial-*"))
