"""The audio domain's latent stage: a learned decoder from the log-mel spectrogram to waveforms,
trained by the runner as an autoencoder of waveforms, and diffusion on its mel latents."""

from __future__ import annotations

import math

import pytest
import torch

from diffkit.latent import latent_config
from diffkit.loading import load_for_sampling
from diffkit.generate import SampleRequest, generate
from diffkit.runner import train
from diffkit_audio.domain import vocoder_codec
from diffkit_audio.vocoder import MelVocoder

from audio_helpers import RATE

VOCODER = {"mel_bins": 32, "mel_fft": 256, "mel_hop": 64, "vocoder_width": 32, "vocoder_layers": 2}
TRAIN = {"steps": 6, "batch_size": 8, "checkpoint_every": 6, "preview_every": 0, "preview_count": 2, "log_every": 2}


def vocoder_config(config: dict) -> dict:
    return {**config, "autoencoder": {**config["autoencoder"], **VOCODER},
            "train": {**config["train"], **TRAIN, "stage": "autoencoder"}}


def test_the_encoder_is_the_mel_front_end_and_the_decoder_returns_clips_of_the_length(domain, config):
    settings = vocoder_config(config)
    length = round(RATE * settings["data"]["duration"])
    autoencoder = domain.build_autoencoder(settings, (1, length))
    assert isinstance(autoencoder, MelVocoder)
    wave = torch.randn(3, 1, length, generator=torch.Generator().manual_seed(0)) * 0.1
    posterior = autoencoder.encode(wave)
    codec = vocoder_codec(settings)
    assert torch.equal(posterior.mean, codec.encode(wave)) and posterior.logvar is None
    assert autoencoder.latent_shape == (1, 32, 32)  # 32 frames of 64 samples, padded to a multiple of 16
    assert autoencoder.decode(posterior.mean).shape == wave.shape


def test_the_decoder_synthesises_a_clip_from_its_own_spectrum_exactly(domain, config):
    """Given a clip's own STFT (log-magnitude and phase), the decoder's inverse STFT gives the clip
    back: the synthesis is exact, only the spectrum is learned."""
    settings = vocoder_config(config)
    length = round(RATE * settings["data"]["duration"])
    vocoder = domain.build_autoencoder(settings, (1, length))
    wave = torch.sin(2 * math.pi * 440 * torch.arange(length) / RATE)[None] * 0.5
    spectrum = torch.stft(wave, vocoder.codec.n_fft, vocoder.codec.hop, window=vocoder.codec.window,
                          center=True, return_complex=True)
    rebuilt = vocoder.synthesise(spectrum.abs().clamp(min=1e-12).log(), spectrum.angle())
    torch.testing.assert_close(rebuilt, wave, atol=1e-5, rtol=0)
    assert vocoder.synthesise(spectrum.abs().log(), spectrum.angle() + 1.0).sub(wave).abs().max() > 0.1


def test_the_audio_reconstruction_loss_is_zero_only_for_the_same_clip(domain, config):
    settings = vocoder_config(config)
    wave = torch.randn(2, 1, round(RATE * settings["data"]["duration"]), generator=torch.Generator().manual_seed(1))
    assert torch.equal(domain.reconstruction_loss(wave, wave, settings), torch.zeros(2))
    assert torch.all(domain.reconstruction_loss(0.5 * wave, wave, settings) > 0.5)


def test_a_diffusion_on_the_mel_latents_samples_clips_and_refuses_to_inpaint_a_time_span(domain, config, tmp_path):
    train(domain, vocoder_config(config), out=tmp_path / "vocoder", progress=False)
    settings = latent_config(domain, tmp_path / "vocoder", overrides={
        "model": {"base_channels": 16, "channel_mults": [1, 2], "mel_patch": 2}, "train": TRAIN})
    train(domain, settings, out=tmp_path / "run", progress=False)
    model, saved = load_for_sampling(domain, tmp_path / "run")
    batch = generate(domain, model, saved, SampleRequest(n=2, seed=0, steps=3, cond="C4"))
    assert batch["x"].shape == (2, 1, round(RATE * saved["data"]["duration"]))
    assert float(batch["x"].abs().max()) <= 1.0
    clip = tmp_path / "clip.wav"
    domain.write_samples({"x": batch["x"][:1], "cond": batch["cond"][:1]}, clip, saved)
    with pytest.raises(ValueError, match="do not tile"):
        generate(domain, model, saved, SampleRequest(n=1, seed=0, steps=3, init=str(clip), mask="0:0.1"))
    # Editing the whole clip needs no map of the kept part.
    edited = generate(domain, model, saved, SampleRequest(n=1, seed=0, steps=3, init=str(clip), strength=0.5))
    assert edited["x"].shape == (1, 1, round(RATE * saved["data"]["duration"]))
