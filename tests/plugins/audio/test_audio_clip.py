"""AudioClip, what the audio domain's to_objects returns: Jupyter player, saving, labels."""

from __future__ import annotations

import base64
import io
import math
import re

import pytest
import soundfile
import torch

from diffkit_audio.clip import AudioClip

# 16-bit PCM stores round(x * 32767) (soundfile's float conversion): the error is at most half a step.
PCM16_STEP = 1 / 32767


def stereo_tone(rate: int = 8000, seconds: float = 0.25) -> torch.Tensor:
    t = torch.arange(int(rate * seconds)) / rate
    return torch.stack([0.5 * torch.sin(2 * math.pi * 440 * t), 0.25 * torch.sin(2 * math.pi * 660 * t)])


def test_the_jupyter_view_is_an_audio_player_holding_the_clip_as_wav():
    wave = stereo_tone()
    view = AudioClip(wave, 8000, "A4")._repr_html_()
    assert "<audio controls" in view and "A4" in view
    encoded = re.search(r'src="data:audio/wav;base64,([A-Za-z0-9+/=]+)"', view).group(1)
    data, rate = soundfile.read(io.BytesIO(base64.b64decode(encoded)), dtype="float32", always_2d=True)
    assert rate == 8000 and data.shape == (2000, 2)
    assert torch.allclose(torch.from_numpy(data.T), wave, atol=PCM16_STEP)


def test_save_writes_the_clip_and_never_replaces_a_file(tmp_path):
    clip = AudioClip(stereo_tone(), 8000, None)
    path = clip.save(tmp_path / "tone.flac")
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    assert rate == 8000 and torch.allclose(torch.from_numpy(data.T), clip.waveform, atol=PCM16_STEP)
    with pytest.raises(FileExistsError, match="tone.flac"):
        clip.save(path)
    with pytest.raises(ValueError, match=".wav, .flac or .ogg"):
        clip.save(tmp_path / "tone.mp4")


def test_a_clip_knows_its_length_and_refuses_a_flat_waveform():
    clip = AudioClip(torch.zeros(1, 4000), 8000)
    assert clip.duration == 0.5 and repr(clip) == "<AudioClip 'unconditional': 1 channel, 0.50 s at 8000 Hz>"
    with pytest.raises(ValueError, match=r"\(channels, time\)"):
        AudioClip(torch.zeros(4000), 8000)


def test_to_objects_labels_each_clip_with_the_label_it_was_drawn_for(domain, config):
    from diffkit.kit import label_texts

    labels = torch.tensor([1, -1, 0])  # -1: the null label of unconditional samples
    waves = torch.rand(3, 1, 2000) * 2 - 1
    batch = {"x": waves, "cond": labels, "names": label_texts(labels, ["C4", "D4"])}
    clips = domain.to_objects(batch, config)
    assert [clip.label for clip in clips] == ["D4", None, "C4"]
    assert all(torch.equal(clip.waveform, wave) for clip, wave in zip(clips, waves))
    assert {clip.sample_rate for clip in clips} == {config["data"]["sample_rate"]}
