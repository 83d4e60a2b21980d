"""Fréchet distance and Inception score against closed forms, and `evaluate` end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffkit_audio.data import notes_dataset
from diffkit_audio.evaluation import labels_from_stems
from diffkit_audio.metrics import inception_score

from audio_helpers import RATE, write


def test_inception_score_bounds():
    confident = np.eye(4)[np.arange(40) % 4]
    assert inception_score(confident) == pytest.approx(4.0, rel=1e-6)
    assert inception_score(np.full((40, 4), 0.25)) == pytest.approx(1.0)
    assert inception_score(np.eye(4)[np.zeros(40, dtype=int)]) == pytest.approx(1.0)


def write_set(domain, config, waves, labels, folder):
    """Write clips the way `diffkit sample` does, named by their labels."""
    names = notes_dataset(config["data"]).label_names
    return domain.write_samples({"x": waves, "names": [names[label] for label in labels]}, folder, config)


def test_intended_labels_are_read_from_both_naming_styles():
    names = ["C4", "7", "a b"]
    stems = ["sample-00000-C4", "sample-00001-7", "clip-00002-a-b", "sample_003_C4"]
    assert labels_from_stems(stems, names).tolist() == [0, 1, 2, 0]
    assert labels_from_stems(["sample-00000-D4"], names) is None  # not a label of the reference
    assert labels_from_stems(["recording"], names) is None


def test_evaluate_real_data_scores_near_zero_and_noise_far(domain, config, tmp_path):
    reference = notes_dataset(config["data"])
    waves = torch.stack([reference[i]["x"] for i in range(len(reference))])
    labels = [int(reference[i]["cond"]) for i in range(len(reference))]
    write_set(domain, config, waves, labels, tmp_path / "real")
    noise = (0.3 * torch.randn(waves.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    write_set(domain, config, noise, labels, tmp_path / "noise")

    real = domain.evaluate(tmp_path / "real", None, config)
    fake = domain.evaluate(tmp_path / "noise", None, config)
    for key in ("fd_logmel", "fd_logmel_heldout", "fd_classifier", "fd_classifier_heldout", "is", "is_heldout",
                "label_accuracy", "label_accuracy_heldout"):
        assert key in real and np.isfinite(real[key])
    # The reference itself (through 16-bit files) is ~0; held-out real data is a little further;
    # noise is far beyond both.
    assert real["fd_logmel"] < 1e-2 * real["fd_logmel_heldout"]
    assert real["fd_classifier"] < 1e-2 * real["fd_classifier_heldout"]
    assert fake["fd_logmel"] > 20 * fake["fd_logmel_heldout"]
    assert fake["fd_classifier"] > 5 * fake["fd_classifier_heldout"]
    assert real["label_accuracy"] > 0.5 and fake["label_accuracy"] < real["label_accuracy"]
    assert real["n_samples"] == len(waves) == real["n_heldout"]


def test_evaluate_against_a_reference_folder(domain, config, tmp_path):
    reference = notes_dataset(config["data"])
    waves = torch.stack([reference[i]["x"] for i in range(len(reference))])
    labels = [int(reference[i]["cond"]) for i in range(len(reference))]
    for i, (wave, label) in enumerate(zip(waves, labels)):
        write(tmp_path / "ref" / reference.label_names[label] / f"{i}.wav", wave[0].numpy(), RATE)
    write_set(domain, config, waves[:16], labels[:16], tmp_path / "samples")
    scores = domain.evaluate(tmp_path / "samples", tmp_path / "ref", config)
    assert scores["n_reference"] + scores["n_heldout"] <= len(waves) and scores["n_heldout"] >= 1
    assert np.isfinite(scores["fd_logmel"]) and np.isfinite(scores["fd_classifier"])


def test_evaluate_follows_the_rate_of_the_samples(domain, config, tmp_path):
    """Samples written at 16 kHz are compared with a reference made at 16 kHz, not at the config's 8 kHz."""
    data16 = dict(config["data"], sample_rate=16000)
    reference = notes_dataset(data16)
    waves = torch.stack([reference[i]["x"] for i in range(len(reference))])
    labels = [int(reference[i]["cond"]) for i in range(len(reference))]
    config16 = dict(config, data=data16)
    write_set(domain, config16, waves, labels, tmp_path / "real16")
    scores = domain.evaluate(tmp_path / "real16", None, config)
    assert scores["fd_logmel"] < 1e-2 * scores["fd_logmel_heldout"]
