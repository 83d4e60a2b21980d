"""The U-Net denoiser: shapes, dtypes, conditioning, batch consistency, memory formats, saved state."""

from __future__ import annotations

import io
import math

import pytest
import torch

from diffkit_image.unet import UNet, build_unet, timestep_embedding
from image_helpers import randomize_zero_layers


def small_unet(**changes) -> UNet:
    settings = dict(image_size=8, channels=1, base_channels=16, channel_mults=(1, 2), blocks_per_level=1,
                    attention_resolutions=(4,), attention_heads=2, groups=4, num_classes=10)
    settings.update(changes)
    torch.manual_seed(0)
    return randomize_zero_layers(UNet(**settings)).eval()


@pytest.mark.parametrize("channels,size,mults", [(1, 8, (1, 2)), (3, 16, (1, 2, 2)), (3, 32, (1, 2, 2, 2))])
def test_output_has_the_input_shape_and_dtype(channels, size, mults):
    model = small_unet(channels=channels, image_size=size, channel_mults=mults, attention_resolutions=(size // 2,))
    x = torch.randn(3, channels, size, size)
    with torch.no_grad():
        out = model(x, torch.rand(3), cond=torch.tensor([0, 5, 9]))
        unconditional = model(x, torch.rand(3))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert unconditional.shape == x.shape
    assert torch.isfinite(out).all()


def test_float64_inputs_give_float64_outputs():
    model = small_unet().double()
    out = model(torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.rand(2, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_a_fresh_model_predicts_zero():
    """The zero-initialised output layer makes the untrained denoiser start from 0."""
    model = UNet(image_size=8, channels=1, base_channels=16, channel_mults=(1, 2), groups=4)
    assert torch.count_nonzero(model(torch.randn(2, 1, 8, 8), torch.rand(2))) == 0


def test_the_class_label_changes_the_output():
    model = small_unet()
    x, t = torch.randn(1, 1, 8, 8).expand(3, -1, -1, -1), torch.full((3,), 0.5)
    with torch.no_grad():
        out = model(x, t, cond=torch.tensor([3, 5, 3]))
    assert torch.equal(out[0], out[2])
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_none_negative_and_num_classes_all_mean_the_null_class():
    model = small_unet()
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    with torch.no_grad():
        reference = model(x, t, cond=None)
        assert torch.allclose(model(x, t, cond=torch.full((4,), -1)), reference)
        assert torch.allclose(model(x, t, cond=torch.full((4,), 10)), reference)
        assert not torch.allclose(model(x, t, cond=torch.zeros(4, dtype=torch.long)), reference)


def test_the_time_changes_the_output():
    model = small_unet()
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = model(x, torch.tensor([0.1, 0.9]))
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_batched_output_equals_stacked_single_outputs():
    model = small_unet()
    x, t, cond = torch.randn(5, 1, 8, 8), torch.rand(5), torch.tensor([0, 1, -1, 7, 9])
    with torch.no_grad():
        batched = model(x, t, cond=cond)
        single = torch.cat([model(x[i:i + 1], t[i:i + 1], cond=cond[i:i + 1]) for i in range(5)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_channels_last_computes_the_same_function():
    contiguous = small_unet(channels=3, image_size=16, channel_mults=(1, 2, 2))
    channels_last = small_unet(channels=3, image_size=16, channel_mults=(1, 2, 2)).use_channels_last()
    assert channels_last.input.weight.is_contiguous(memory_format=torch.channels_last)
    x, t, cond = torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.allclose(contiguous(x, t, cond=cond), channels_last(x, t, cond=cond), atol=1e-5)


def test_timestep_embedding_matches_its_formula():
    t = torch.tensor([0.0, 0.25, 1.0])
    embedding = timestep_embedding(t, 6)
    frequencies = [math.exp(-math.log(10_000) * i / 3) for i in range(3)]
    for row, time in zip(embedding, t.tolist()):
        expected = [math.cos(1000 * time * f) for f in frequencies] + [math.sin(1000 * time * f) for f in frequencies]
        assert torch.allclose(row, torch.tensor(expected), atol=1e-4)
    assert timestep_embedding(t, 7).shape == (3, 7)


def test_class_names_and_counts_travel_with_the_weights():
    model = small_unet(num_classes=3)
    model.set_classes(["cat", "dog"], torch.tensor([4, 6]))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = small_unet(num_classes=3)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.class_names[:2] == ["cat", "dog"]
    assert restored.class_counts.tolist() == [4.0, 6.0, 0.0]


def test_too_many_classes_for_the_model_is_an_error_naming_the_setting():
    model = small_unet(num_classes=2)
    with pytest.raises(ValueError, match="model.num_classes=3"):
        model.set_classes(["a", "b", "c"], torch.ones(3))


def test_image_size_must_fit_the_levels():
    with pytest.raises(ValueError, match=r"12x12 must be divisible by patch \* 2\*\*3"):
        UNet(image_size=12, channels=1, channel_mults=(1, 2, 2, 2))
    from diffkit.config import resolve_config
    from diffkit_image.domain import ImageDomain

    config = resolve_config(ImageDomain(), overrides={"data": {"image_size": 12}, "model": {"channel_mults": [1, 2, 2, 2]}})
    with pytest.raises(ValueError, match="data.image_size=12"):
        build_unet(config["data"], config["model"])


def test_patches_fold_into_channels_and_back():
    """``patch=2`` is the same network run on 2x2 squares folded into channels (space-to-depth)."""
    import torch.nn.functional as F

    settings = dict(base_channels=8, channel_mults=(1, 2), blocks_per_level=1, attention_resolutions=(), groups=4)
    torch.manual_seed(0)
    folded = UNet(image_size=(4, 8), channels=8, **settings)
    torch.nn.init.normal_(folded.output[-1].weight)   # a non-zero output, to see where each value lands
    patched = UNet(image_size=(8, 16), channels=2, patch=2, **settings)
    patched.load_state_dict(folded.state_dict())
    x, t, labels = torch.randn(3, 2, 8, 16), torch.rand(3), torch.tensor([0, 1, -1])
    expected = F.pixel_shuffle(folded(F.pixel_unshuffle(x, 2), t, labels), 2)
    assert torch.allclose(patched(x, t, labels), expected, atol=1e-6)
