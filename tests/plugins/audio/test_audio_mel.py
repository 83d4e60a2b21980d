"""The mel representation: the log-mel map, Griffin-Lim decoding, the switch, editing and config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffkit.config import resolve_config
from diffkit.generate import SampleRequest, generate
from diffkit.testing import assert_domain_conforms
from diffkit_audio.editing import frame_keep
from diffkit_audio.mel import MEL_CEILING, MEL_FLOOR, MelCodec, denormalise_log_mel, frames_for, normalise_log_mel

from audio_helpers import RATE, loss_before_and_after_training, peak_frequency, sine, write


def test_log_mel_map_sends_floor_and_ceiling_to_the_ends_and_inverts_exactly():
    mel = torch.logspace(-4, 2, 200, dtype=torch.float64)       # floor .. 10x above the ceiling
    x = normalise_log_mel(mel)
    assert x[0] == -1.0 and torch.isclose(normalise_log_mel(torch.tensor(MEL_CEILING)), torch.tensor(1.0))
    assert torch.allclose(denormalise_log_mel(x), mel, rtol=1e-12)
    # Silence and anything below the floor map to -1; below -1 decodes to the floor.
    assert normalise_log_mel(torch.tensor([0.0, MEL_FLOOR / 10])).eq(-1.0).all()
    assert denormalise_log_mel(torch.tensor(-3.0)) == pytest.approx(MEL_FLOOR)
    # The map is affine in log(mel): half a unit of x is a quarter of the range.
    ratio = denormalise_log_mel(torch.tensor(0.5)) / denormalise_log_mel(torch.tensor(0.0))
    assert float(ratio) == pytest.approx((MEL_CEILING / MEL_FLOOR) ** 0.25, rel=1e-5)


def test_frames_are_padded_with_silence_to_the_multiple():
    assert frames_for(4000, 64) == 63 and frames_for(4000, 64, 8) == 64 and frames_for(4032, 64, 1) == 64
    codec = MelCodec(RATE, 2000, n_fft=256, hop=64, n_mels=32, frame_multiple=4)
    x = codec.encode(torch.from_numpy(sine(440, 0.25, RATE))[None])
    assert x.shape == (1, 32, 32) and x[..., 2000 // 64 + 1:].eq(-1.0).all()


def test_encoding_is_batch_consistent():
    codec = MelCodec(RATE, 2000, n_fft=256, hop=64, n_mels=32)
    waves = torch.from_numpy(np.stack([sine(f, 0.25, RATE) for f in (220, 440, 880)]))[:, None]
    batched = codec.encode(waves)
    assert batched.shape == (3, 1, 32, codec.frames)
    assert torch.allclose(torch.stack([codec.encode(wave) for wave in waves]), batched, atol=1e-6)


def peak_bin(wave: torch.Tensor, codec: MelCodec) -> int:
    """The loudest bin of the time-averaged STFT magnitude at the codec's resolution."""
    spectrum = torch.stft(wave, codec.n_fft, codec.hop, window=codec.window, return_complex=True).abs()
    return int(spectrum.mean(-1).argmax())


@pytest.mark.parametrize("frequency", [261.63, 440.0, 1318.5])
def test_griffin_lim_keeps_a_tone_within_a_bin_and_its_mel_spectrogram(frequency):
    """Below 1 kHz the 64 mel bands up to 4 kHz lie about 36 Hz apart, 2.3 STFT bins of 15.6 Hz:
    a tone between two bins lies mostly in one band, which cannot tell where in it the tone was,
    so decoding may move it to the neighbouring bin (C4, 261.63 Hz, is 0.74 of the way from bin 16
    to 17), but no further, and its mel spectrogram stays closer to the tone's than that of a tone
    half a bin (the STFT's own resolution) away."""
    codec = MelCodec(RATE, 4000, n_fft=512, hop=64, n_mels=64, griffin_lim_iters=32)
    bin_width = RATE / codec.n_fft

    def tone(hz: float) -> torch.Tensor:
        return torch.from_numpy(sine(hz, 0.5, RATE, amplitude=0.5))

    def mel_error(wave: torch.Tensor) -> float:
        return float((codec.mel(wave) - codec.mel(tone(frequency))).norm() / codec.mel(tone(frequency)).norm())

    decoded = codec.decode(codec.encode(tone(frequency)))
    assert decoded.shape == (4000,)
    assert abs(peak_bin(decoded, codec) - peak_bin(tone(frequency), codec)) <= 1
    assert abs(peak_frequency(decoded.numpy(), RATE) - frequency) <= bin_width  # over the whole clip
    assert mel_error(decoded) < min(mel_error(tone(frequency - bin_width / 2)), mel_error(tone(frequency + bin_width / 2)))
    assert float(decoded.pow(2).mean().sqrt()) == pytest.approx(0.5 / math.sqrt(2), rel=0.15)  # loudness (RMS) survives


def test_silence_decodes_to_silence():
    codec = MelCodec(RATE, 2000, n_fft=256, hop=64, n_mels=32, griffin_lim_iters=8)
    decoded = codec.decode(torch.full((2, 1, 32, codec.frames), -1.0))
    assert decoded.shape == (2, 1, 2000) and float(decoded.abs().max()) == 0.0


def test_mel_dataset_items_and_model_shapes(domain, mel_config):
    dataset = domain.build_dataset(mel_config)
    item = dataset[0]
    assert item["x"].shape == (1, 32, 32) and item["x"].min() >= -1.0
    model = domain.build_model(mel_config)
    out = model(item["x"][None].repeat(2, 1, 1, 1), torch.rand(2), cond=torch.tensor([0, -1]))
    assert out.shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="model.num_classes"):
        model(item["x"][None], torch.rand(1), cond=torch.tensor([64]))


def test_mel_representation_trains_and_samples_waveforms(domain, mel_config):
    model, before, after = loss_before_and_after_training(domain, mel_config, every=4, steps=10)
    assert after < 0.8 * before
    samples = generate(domain, model.eval(), mel_config, SampleRequest(n=3, steps=3, seed=0, cond="C4,E4,G4"))
    assert samples["x"].shape == (3, 1, 2000) and samples["names"] == ["C4", "E4", "G4"]
    assert samples["x"].abs().max() <= 1.0 and torch.isfinite(samples["x"]).all()


def test_mel_conforms_to_the_domain_contract(domain, mel_config, tmp_path):
    from diffkit_audio.clip import AudioClip

    assert_domain_conforms(domain, tmp_path, overrides={key: mel_config[key] for key in ("data", "model", "evaluate")},
                           train_steps=5, object_type=AudioClip)


def test_mel_span_mask_keeps_frames_by_their_centre(domain, mel_config, tmp_path):
    path = write(tmp_path / "a.wav", sine(440, 0.25, RATE), RATE)
    batch = domain.load_known(str(path), "0.1:0.15", 2, mel_config)
    assert batch["x"].shape == (2, 1, 32, 32) and batch["keep"].shape == (2, 1, 1, 32)
    keep = batch["keep"][0, 0, 0]
    centres = torch.arange(32) * 64
    generated = (centres >= 800) & (centres < 1200)
    assert torch.equal(keep, (~generated).float())
    assert torch.equal(frame_keep(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), 2, 3), torch.tensor([[1.0, 0.0, 1.0]]))
    # SDEdit input: the encoded clip, decoded back to the clip's pitch.
    whole = domain.load_known(str(path), None, 1, mel_config)
    assert "keep" not in whole
    assert peak_frequency(domain.decode(whole["x"], whole, config=mel_config)[0, 0].numpy(), RATE) == pytest.approx(440, rel=0.03)
    # Infilling runs through the core's inpainting with the frame mask and decodes to waveforms.
    model = domain.build_model(mel_config).eval()
    edited = generate(domain, model, mel_config, SampleRequest(n=2, steps=2, seed=0, init=str(path), mask="0.1:0.15"))
    assert edited["x"].shape == (2, 1, 2000) and torch.isfinite(edited["x"]).all()


def test_unknown_representation_and_bad_mel_sizes_are_named(domain, mel_config):
    wrong = resolve_config(domain, sets=["model.representation=spectrum"])
    with pytest.raises(ValueError, match=r"model.representation = 'spectrum'; expected one of mel, waveform"):
        domain.build_model(wrong)
    odd = resolve_config(domain, overrides={**{k: mel_config[k] for k in ("data", "evaluate")},
                                            "model": dict(mel_config["model"], mel_bins=30)})
    with pytest.raises(ValueError, match="model.mel_bins = 30 must be divisible by 4"):
        domain.build_model(odd)
    with pytest.raises(ValueError, match="model.mel_hop"):
        MelCodec(RATE, 2000, n_fft=64, hop=128)


def test_saved_configs_from_before_the_setting_load_as_waveform_models(domain, config, mel_config):
    from diffkit.config import fill_defaults

    old = {section: dict(values) for section, values in config.items()}
    del old["model"]["representation"]
    assert fill_defaults(domain, old)["model"]["representation"] == "waveform"
    assert fill_defaults(domain, mel_config)["model"]["representation"] == "mel"
    assert fill_defaults(domain, {"data": {}})["model"]["representation"] == "mel"
