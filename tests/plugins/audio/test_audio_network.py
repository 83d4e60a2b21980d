"""The DiffWave-style denoiser: shapes, conditioning, batch consistency, label names in weights."""

from __future__ import annotations

import io

import pytest
import torch

from diffkit_audio.network import DiffWave, fold, timestep_features, unfold


def randomised(model: DiffWave) -> DiffWave:
    """The output layer starts at zero (so every input maps to 0); give it weights to test with."""
    torch.manual_seed(0)
    torch.nn.init.normal_(model.final.weight, std=0.5)
    return model.eval()


@pytest.mark.parametrize("patch,length,channels", [(1, 300, 1), (4, 1000, 1), (3, 1001, 2)])
def test_output_shape_matches_input(patch, length, channels):
    model = randomised(DiffWave(channels, residual_channels=8, layers=3, dilation_cycle=2, embedding_dim=16,
                                hidden_dim=16, num_classes=5, patch=patch))
    x = torch.randn(2, channels, length)
    out = model(x, torch.rand(2), cond=torch.tensor([0, 4]))
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("patch,length", [(1, 10), (4, 16), (4, 15), (5, 3)])
def test_fold_unfold_round_trip(patch, length):
    x = torch.randn(2, 3, length)
    folded = fold(x, patch)
    assert folded.shape == (2, 3 * patch, -(-length // patch))
    assert torch.equal(unfold(folded, patch, 3, length), x)


def test_fold_groups_consecutive_samples():
    x = torch.arange(8.0).reshape(1, 1, 8)
    # Position j of the folded signal holds samples 2j and 2j + 1 as its two channels.
    assert torch.equal(fold(x, 2)[0], torch.tensor([[0.0, 2, 4, 6], [1, 3, 5, 7]]))


def test_zero_initialised_output_layer_predicts_zero():
    model = DiffWave(1, residual_channels=8, layers=2, dilation_cycle=2, embedding_dim=16, hidden_dim=16)
    assert model(torch.randn(3, 1, 64), torch.rand(3)).abs().max() == 0


def test_conditioning_and_time_change_the_output():
    model = randomised(DiffWave(1, residual_channels=8, layers=3, dilation_cycle=3, embedding_dim=16,
                                hidden_dim=16, num_classes=4, patch=2))
    x, t = torch.randn(1, 1, 200).expand(4, -1, -1), torch.full((4,), 0.5)
    with torch.no_grad():
        by_label = model(x, t, cond=torch.tensor([0, 1, 2, 3]))
        null = model(x[:1], t[:1], cond=torch.tensor([-1]))
        none = model(x[:1], t[:1], cond=None)
        later = model(x[:1], torch.tensor([0.9]), cond=torch.tensor([0]))
    for i in range(4):
        for j in range(i + 1, 4):
            assert (by_label[i] - by_label[j]).abs().max() > 1e-4
    assert torch.equal(null, none)  # -1 and "no condition" are the same null class
    assert (null - by_label[:1]).abs().max() > 1e-4
    assert (later - by_label[:1]).abs().max() > 1e-4


def test_batched_equals_per_item():
    model = randomised(DiffWave(1, residual_channels=8, layers=3, dilation_cycle=2, embedding_dim=16,
                                hidden_dim=16, num_classes=3, patch=4))
    x, t, cond = torch.randn(3, 1, 120), torch.rand(3), torch.tensor([2, -1, 0])
    with torch.no_grad():
        batched = model(x, t, cond=cond)
        single = torch.cat([model(x[i:i + 1], t[i:i + 1], cond=cond[i:i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_label_out_of_range_and_wrong_channels_are_errors():
    model = DiffWave(1, residual_channels=8, layers=1, dilation_cycle=1, embedding_dim=16, hidden_dim=16, num_classes=3)
    with pytest.raises(ValueError, match="model.num_classes"):
        model(torch.randn(1, 1, 16), torch.rand(1), cond=torch.tensor([3]))
    with pytest.raises(ValueError, match="audio channel"):
        model(torch.randn(1, 2, 16), torch.rand(1))


def test_timestep_features_distinguish_close_times():
    features = timestep_features(torch.tensor([0.0, 0.001, 1.0]), 32)
    assert features.shape == (3, 32)
    assert (features[0] - features[1]).abs().max() > 1e-3


def test_label_names_travel_with_the_weights():
    model = DiffWave(1, residual_channels=8, layers=1, dilation_cycle=1, embedding_dim=16, hidden_dim=16)
    model.label_names.names = ["C4", "zero", "yes"]
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = DiffWave(1, residual_channels=8, layers=1, dilation_cycle=1, embedding_dim=16, hidden_dim=16)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.label_names.names == ["C4", "zero", "yes"]
