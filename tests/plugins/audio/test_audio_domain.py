"""The audio domain through the core: registration, config, training steps, sampling, writing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

import diffkit
from diffkit.config import resolve_config
from diffkit.generate import build_diffusion
from diffkit.testing import assert_domain_conforms
from diffkit.kit import NULL_LABEL

from audio_helpers import loss_before_and_after_training
from run_checks import assert_resume_is_exact


def test_registered_through_the_plugin_manager():
    registry = diffkit.make_plugin_manager(entry_points=False)
    assert registry.domain("audio").name == "audio"


def test_presets_resolve_with_the_promised_scales(domain):
    cpu = resolve_config(domain, preset="cpu")
    gpu = resolve_config(domain, preset="gpu")
    # Rates and lengths come from the data (0); the bundled notes are 8 kHz, 0.5 s.
    assert cpu["data"]["sample_rate"] == gpu["data"]["sample_rate"] == 0
    assert cpu["data"]["duration"] == gpu["data"]["duration"] == 0
    assert domain.build_dataset(cpu).sample_rate == 8000 and (cpu["data"]["sample_rate"], cpu["data"]["duration"]) == (8000, 0.5)
    assert (gpu["model"]["residual_channels"], gpu["model"]["layers"], gpu["model"]["dilation_cycle"]) == (64, 30, 10)
    assert cpu["model"]["representation"] == gpu["model"]["representation"] == "mel"
    with pytest.raises(KeyError, match="did you mean"):
        resolve_config(domain, sets=["data.sample_rat=100"])


def test_conforms_to_the_domain_contract(domain, config, tmp_path):
    from diffkit_audio.clip import AudioClip

    assert_domain_conforms(domain, tmp_path, overrides={key: config[key] for key in ("data", "model", "evaluate")},
                           object_type=AudioClip)


def test_few_steps_reduce_the_loss(domain, config):
    _, before, after = loss_before_and_after_training(domain, config, every=2, steps=40)
    assert after < 0.85 * before, (before, after)


def test_resume_is_exact(domain, config, tmp_path, monkeypatch):
    config["train"]["batch_size"] = 8
    assert_resume_is_exact(domain, config, tmp_path, monkeypatch)


def test_null_cond_is_the_null_label(domain):
    cond = torch.tensor([0, 3, 5])
    assert torch.equal(domain.null_cond(cond), torch.full((3,), NULL_LABEL))
    assert domain.null_cond(None) is None


def sample(domain, config, n: int, cond=None):
    torch.manual_seed(0)
    model = domain.build_model(config)
    domain.fit_data(model, domain.build_dataset(config), config)
    torch.nn.init.normal_(model.final.weight, std=0.3)  # an untrained model would only ever give silence
    batch = domain.prepare_sampling(model.eval(), n, config, cond=cond, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = build_diffusion(domain, config).sample(model, batch["x"], steps=4, cond=batch["cond"],
                                                   uncond=domain.null_cond(batch["cond"]), guidance=2.0)
    batch["x"] = domain.decode(x, batch, config=config)
    return batch


def test_sampling_writes_wavs_at_the_data_rate_and_length(domain, config, tmp_path):
    batch = sample(domain, config, 3, cond="C4,E4")
    assert batch["x"].abs().max() <= 1.0
    written = domain.write_samples(batch, tmp_path / "out", config)
    assert {(o.kind, o.role) for o in written} == {("audio", "samples"), ("image", "samples"), ("image", "overview")}
    wavs = sorted(o.path for o in written if o.kind == "audio")
    assert [path.name for path in wavs] == ["sample-00000-C4.wav", "sample-00001-E4.wav", "sample-00002-C4.wav"]
    for i, path in enumerate(wavs):
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
        assert rate == 8000 and data.shape == (2000, 1)
        assert np.abs(data[:, 0] - batch["x"][i, 0].numpy()).max() <= 1 / 32767 + 1e-6  # 16-bit PCM
        with Image.open(path.with_suffix(".png")) as image:
            assert image.width >= 256 and image.mode == "RGB"
    with Image.open(tmp_path / "out" / "grid.png") as grid:
        assert grid.width > 3 * 256
    with pytest.raises(FileExistsError, match="sample-00000-C4.wav.*never overwritten"):
        domain.write_samples(batch, tmp_path / "out", config)


def test_writing_to_a_file_name(domain, config, tmp_path):
    batch = sample(domain, config, 2, cond="C4,D4")
    written = domain.write_samples(batch, tmp_path / "clip.flac", config)
    assert {o.path.name for o in written} >= {"clip-00000-C4.flac", "clip-00001-D4.flac", "clip-grid.png"}
    one = {"x": batch["x"][:1], "cond": batch["cond"][:1]}
    written = domain.write_samples(one, tmp_path / "single.wav", config)
    assert tmp_path / "single.wav" in [o.path for o in written] and soundfile.info(str(tmp_path / "single.wav")).frames == 2000
    with pytest.raises(ValueError, match="give a folder or a file"):
        domain.write_samples(one, tmp_path / "clip.mp4", config)


def test_stereo_configuration_end_to_end(domain, config, tmp_path):
    stereo = resolve_config(domain, overrides={**{k: config[k] for k in ("model", "evaluate")},
                                               "data": dict(config["data"], channels=2)})
    batch = sample(domain, stereo, 2)
    assert batch["x"].shape == (2, 2, 2000)
    written = domain.write_samples(batch, tmp_path, stereo)
    assert soundfile.info(str(written[0].path)).channels == 2


def test_shipped_weights_are_small_and_sample_every_label(domain, tmp_path):
    weights = domain.pretrained()
    if weights is None:
        pytest.skip("no weights shipped in plugins/diffkit_audio/weights/")
    from diffkit.generate import SampleRequest, generate
    from diffkit.loading import load_for_sampling

    assert sum(file.stat().st_size for file in weights.iterdir()) < 5 * 2**20
    model, config = load_for_sampling(domain, weights)
    assert model.label_names.names == ["C4", "D4", "E4", "F4", "G4", "A4", "B4", "C5"]
    batch = generate(domain, model, config, SampleRequest(n=2, steps=2, cond="A4,C5"))
    assert batch["names"] == ["A4", "C5"] and batch["x"].shape == (2, 1, 4000)


def test_the_spoken_digit_weights_are_found_by_name_and_say_the_asked_digits(domain, tmp_path):
    """`--checkpoint audio-digits` finds the weights trained on recordings at 8 kHz, and the
    samples carry the asked labels at the rate and length the weights were trained with."""
    from click.testing import CliRunner

    from diffkit.cli import cli

    out = tmp_path / "digits"
    result = CliRunner().invoke(cli, ["sample", "--domain", "audio", "--checkpoint", "audio-digits", "-n", "2",
                                      "--cond", "3,seven", "--steps", "2", "--out", str(out), "--no-progress"])
    assert result.exit_code != 0 and "seven" in result.output   # labels are the file names' digits
    result = CliRunner().invoke(cli, ["sample", "--domain", "audio", "--checkpoint", "audio-digits", "-n", "2",
                                      "--cond", "3,7", "--steps", "2", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    trained = json.loads((domain.pretrained_models()["audio-digits"] / "config.json").read_text())["config"]
    wavs = sorted(out.glob("*.wav"))
    assert [path.name for path in wavs] == ["sample-00000-3.wav", "sample-00001-7.wav"]
    info = soundfile.info(str(wavs[0]))
    assert info.samplerate == trained["data"]["sample_rate"] == 8000
    assert info.frames == round(trained["data"]["duration"] * 8000)


def test_data_scale_is_applied_to_the_state_and_undone_by_decode(domain, config, tmp_path):
    scaled = resolve_config(domain, overrides={**{k: config[k] for k in ("model", "evaluate")},
                                               "data": dict(config["data"], scale=4.0)})
    plain_item, scaled_item = domain.build_dataset(config)[3], domain.build_dataset(scaled)[3]
    assert torch.allclose(scaled_item["x"], 4.0 * plain_item["x"])
    model = domain.build_model(scaled)
    batch = domain.prepare_sampling(model, 2, scaled)
    assert torch.allclose(domain.decode(scaled_item["x"][None], batch, config=scaled), plain_item["x"][None])
    path = tmp_path / "clip.wav"
    soundfile.write(str(path), plain_item["x"][0].numpy(), 8000, subtype="FLOAT")
    known = domain.load_known(str(path), "0.1:0.2", 1, scaled)
    assert torch.allclose(domain.decode(known["x"], known, config=scaled), domain.load_known(str(path), "0.1:0.2", 1, config)["x"])


def test_the_plan_says_what_was_chosen_from_the_recordings(tmp_path):
    from click.testing import CliRunner

    from diffkit.cli import cli

    from audio_helpers import sine, write

    for k, seconds in enumerate([0.2, 0.25, 0.3, 0.35]):
        wave = np.concatenate([np.zeros(1600, dtype=np.float32), sine(300 + 100 * k, seconds, 16000)])
        write(tmp_path / "data" / ("low" if k < 2 else "high") / f"{k}.wav", wave, 16000)
    sets = ["model.mel_bins=32", "model.base_channels=8", "model.channel_mults=[1,2]", "train.batch_size=2",
            "train.preview_every=0", "train.checkpoint_every=1", "data.max_sample_rate=16000"]
    result = CliRunner().invoke(cli, ["train", "--domain", "audio", "--data", str(tmp_path / "data"), "--steps", "1",
                                      "--out", str(tmp_path / "run"), "--no-progress",
                                      *[item for assignment in sets for item in ("--set", assignment)]])
    assert result.exit_code == 0, result.output
    assert "sample rate: 16,000 Hz (that of all 4 recordings)" in result.output
    assert "clip length: 0.4" in result.output and "98th percentile of 4 recordings" in result.output
    # 64 ms and 16 ms at 16 kHz; 0.4x s give 26 frames, padded to a multiple of mel_patch * 2 = 4.
    assert "representation: mel, 32 bands x 28 frames (64 ms window, 16 ms hop)" in result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert saved["sample_rate"] == 16000 and 0.4 <= saved["duration"] <= 0.5
