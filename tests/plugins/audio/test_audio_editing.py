"""Editing recordings: infilling a time span, continuing a clip, SDEdit without a mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffkit.generate import build_diffusion
from diffkit.kit import NULL_LABEL

from audio_helpers import RATE, sine, write


@pytest.fixture
def recording(tmp_path):
    """A 0.5 s, 16 kHz stereo file (it is converted like training data: 8 kHz mono, 0.25 s)."""
    wave = np.stack([sine(440, 0.5, 16000, 0.8), sine(440, 0.5, 16000, 0.8)], axis=1)
    return write(tmp_path / "take.wav", wave, 16000)


def test_span_mask_marks_the_span_to_generate(domain, config, recording):
    batch = domain.load_known(str(recording), "0.1:0.15", 3, config)
    assert batch["x"].shape == (3, 1, 2000) and batch["keep"].shape == (3, 1, 2000)
    keep = batch["keep"][0, 0]
    assert keep[:800].all() and not keep[800:1200].any() and keep[1200:].all()
    assert torch.equal(batch["cond"], torch.full((3,), NULL_LABEL))
    open_ended = domain.load_known(str(recording), "0.2:", 1, config)["keep"][0, 0]
    assert open_ended[:1600].all() and not open_ended[1600:].any()


def test_continue_places_the_end_of_the_file_first(domain, config, tmp_path):
    ramp = np.linspace(-0.5, 0.5, 4000).astype(np.float32)  # 0.5 s at 8 kHz, every value distinct
    path = write(tmp_path / "ramp.wav", ramp, RATE, subtype="FLOAT")
    data = dict(config["data"], normalize="none")
    batch = domain.load_known(str(path), "continue:0.05", 1, dict(config, data=data))
    keep, x = batch["keep"][0, 0], batch["x"][0, 0]
    assert keep[:400].all() and not keep[400:].any()
    assert torch.allclose(x[:400], torch.from_numpy(ramp[-400:]))
    default = domain.load_known(str(path), "continue", 1, dict(config, data=data))["keep"][0, 0]
    assert int(default.sum()) == 1000  # half the 0.25 s clip


@pytest.mark.parametrize("mask,message", [("0.3:0.2", "before the end"), ("abc", "START:END"),
                                          ("1.0:2.0", "after the end"), ("x:0.1", "not a number")])
def test_bad_masks_are_explained(domain, config, recording, mask, message):
    with pytest.raises(ValueError, match=message):
        domain.load_known(str(recording), mask, 1, config)


def test_missing_or_unreadable_init(domain, config, tmp_path):
    with pytest.raises(FileNotFoundError, match="not an audio file"):
        domain.load_known(str(tmp_path / "nope.wav"), None, 1, config)
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(ValueError, match="cannot read"):
        domain.load_known(str(tmp_path / "bad.wav"), None, 1, config)


def test_no_mask_means_sdedit(domain, config, recording):
    batch = domain.load_known(str(recording), None, 2, config)
    assert "keep" not in batch and batch["x"].shape == (2, 1, 2000)


def test_infill_keeps_the_known_span_exactly(domain, config, recording):
    torch.manual_seed(0)
    model = domain.build_model(config)
    torch.nn.init.normal_(model.final.weight, std=0.3)
    batch = domain.load_known(str(recording), "0.1:0.15", 2, config)
    diffusion = build_diffusion(domain, config)
    with torch.no_grad():
        x = diffusion.inpaint(model.eval(), batch["x"], batch["keep"], steps=5, cond=batch["cond"],
                              generator=torch.Generator().manual_seed(0))
    x = domain.decode(x, batch, config=config)
    keep = batch["keep"].bool().expand_as(x)
    assert torch.equal(x[keep], batch["x"][keep])
    assert (x[~keep] - batch["x"][~keep]).abs().mean() > 1e-2


def test_edits_take_a_label_when_asked(domain, config, recording):
    model = domain.build_model(config)
    domain.fit_data(model, domain.build_dataset(config), config)
    batch = domain.load_known(str(recording), "continue", 2, config, model=model, cond="E4")
    assert batch["cond"].tolist() == [2, 2] and batch["names"] == ["E4", "E4"]
    with pytest.raises(ValueError, match="not a class of this model"):
        domain.load_known(str(recording), None, 1, config, model=model, cond="H9")
