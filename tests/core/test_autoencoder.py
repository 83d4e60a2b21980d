"""The latent stage's pieces against independent truth: the posterior's KL in closed form, the
autoencoder's shapes, the reconstruction losses, a kept region on the latent grid, and the
latent model's map between data and diffusion states."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffkit.kit.reconstruction import laplacian_l1, laplacian_pyramid, mean_absolute_error, multi_resolution_stft
from diffkit.latent import LatentModel, keep_on_latent_grid, latent_statistics, load_latents, save_latents
from diffkit.nets.autoencoder import ConvAutoencoder, Posterior, downsampling
from latent_helpers import IdentityAutoencoder


def test_the_posterior_kl_is_the_closed_form_of_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 5, 5, generator=generator), torch.randn(3, 4, 5, 5, generator=generator)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()),
                                                 torch.distributions.Normal(0.0, 1.0)).flatten(1).mean(1)
    torch.testing.assert_close(Posterior(mean, logvar).kl(), expected)
    # The standard normal is its own prior; a point has nothing to pay.
    assert torch.equal(Posterior(torch.zeros(2, 3), torch.zeros(2, 3)).kl(), torch.zeros(2))
    assert torch.equal(Posterior(mean).kl(), torch.zeros(3))


def test_posterior_draws_have_its_mean_and_variance():
    mean, logvar = torch.full((1, 200_000), 1.5), torch.full((1, 200_000), math.log(0.25))
    draws = Posterior(mean, logvar).sample(torch.randn(1, 200_000, generator=torch.Generator().manual_seed(1)))
    assert float(draws.mean()) == pytest.approx(1.5, abs=0.01)
    assert float(draws.var()) == pytest.approx(0.25, rel=0.02)
    assert torch.equal(Posterior(mean).sample(torch.randn(1, 200_000)), mean)


@pytest.mark.parametrize("shape, latent", [((3, 16, 16), (4, 4, 4)), ((1, 32), (4, 8)), ((2, 8, 24), (4, 2, 6))])
def test_the_autoencoder_maps_states_to_latents_and_back(shape, latent):
    autoencoder = ConvAutoencoder(shape, latent_channels=4, base_channels=8, channel_mults=(1, 2, 2), groups=4)
    x = torch.randn(2, *shape)
    posterior = autoencoder.encode(x)
    assert autoencoder.latent_shape == latent
    assert posterior.mean.shape == posterior.logvar.shape == (2, *latent)
    assert autoencoder.decode(posterior.mean).shape == x.shape
    assert downsampling(shape, latent) == tuple(side // small for side, small in zip(shape[1:], latent[1:]))


def test_the_autoencoder_refuses_states_it_cannot_halve_or_convolve():
    with pytest.raises(ValueError, match=r"sides 10x10 must be divisible by 4"):
        ConvAutoencoder((1, 10, 10))
    with pytest.raises(ValueError, match=r"states \(C, L\) or \(C, H, W\).*got 0"):
        ConvAutoencoder((2,))
    with pytest.raises(ValueError, match="autoencoder.posterior"):
        ConvAutoencoder((1, 8, 8), posterior="beta")


def test_a_deterministic_autoencoder_has_a_point_posterior():
    autoencoder = ConvAutoencoder((1, 8, 8), base_channels=8, channel_mults=(1, 2), posterior="deterministic", groups=4)
    posterior = autoencoder.encode(torch.randn(2, 1, 8, 8))
    assert posterior.logvar is None and posterior.mean.shape == (2, 4, 4, 4)


def test_a_laplacian_pyramid_adds_back_up_to_its_picture():
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    bands = laplacian_pyramid(x, 4)
    assert [band.shape[-1] for band in bands] == [32, 16, 8, 4]
    rebuilt = bands[-1]
    for band in reversed(bands[:-1]):
        rebuilt = band + torch.nn.functional.interpolate(rebuilt, size=band.shape[-2:], mode="nearest")
    torch.testing.assert_close(rebuilt, x)


def test_laplacian_l1_is_zero_only_for_equal_pictures_and_weighs_coarse_errors_up():
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(laplacian_l1(x, x), torch.zeros(2))
    offset = laplacian_l1(x + 0.1, x)  # an error only in the coarsest band: 8/15 of 0.1 with 4 levels
    torch.testing.assert_close(offset, torch.full((2,), 0.1 * 8 / 15))
    assert torch.all(mean_absolute_error(x + 0.1, x) > offset)


def test_multi_resolution_stft_of_a_scaled_wave_is_its_closed_form():
    b = torch.randn(2, 1, 4000, generator=torch.Generator().manual_seed(0))
    for c in (0.5, 2.0):
        # |S(c b)| = c |S(b)|: spectral convergence |1 - c|, log distance |log c|, at every resolution.
        torch.testing.assert_close(multi_resolution_stft(c * b, b, 256), torch.full((2,), abs(1 - c) + abs(math.log(c))),
                                   rtol=1e-4, atol=1e-5)
    assert torch.equal(multi_resolution_stft(b, b, 256), torch.zeros(2))


def test_a_kept_region_maps_to_the_latent_cells_it_wholly_covers():
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., :, :5] = 1  # columns 0-4 kept: latent columns of 4 cover 0-3 (kept) and 4-7 (not all kept)
    latent = keep_on_latent_grid(keep, (3, 8, 8), (4, 2, 2))
    assert torch.equal(latent, torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]]))
    # Per channel: a cell is kept only where every channel is.
    both = torch.ones(1, 3, 8, 8)
    both[:, 1, 0, 0] = 0
    assert torch.equal(keep_on_latent_grid(both, (3, 8, 8), (4, 2, 2)), torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]]))
    # A side of 1 stands for all of it.
    frames = torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]).reshape(1, 1, 1, 8)
    assert torch.equal(keep_on_latent_grid(frames, (1, 16, 8), (4, 4, 2)), torch.tensor([1.0, 0.0]).expand(1, 1, 4, 2))


def test_a_kept_region_the_latent_grid_does_not_tile_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"data's grid \(1x4000\).*latents \(1x128x64\) do not tile.*--strength"):
        keep_on_latent_grid(torch.ones(1, 1, 4000), (1, 4000), (1, 128, 64))


def test_the_latent_model_maps_data_to_unit_scale_states_and_back():
    data = 3.0 + 0.5 * torch.randn(64, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    model = LatentModel(nn.Identity(), IdentityAutoencoder((2, 4, 4)))
    scale, shift = latent_statistics(data)
    assert (scale, shift) == pytest.approx((1 / float(data.double().std()), float(data.double().mean())), rel=1e-12)
    assert latent_statistics(data, chunk=5) == pytest.approx((scale, shift), rel=1e-12)  # 64 latents, chunks of 5
    model.latent_scale.fill_(scale)
    model.latent_shift.fill_(shift)
    states = model.encode(data)
    assert float(states.mean()) == pytest.approx(0.0, abs=1e-6) and float(states.std()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(model.decode(states), data)
    assert not any(parameter.requires_grad for parameter in model.autoencoder.parameters())
    assert not model.train().autoencoder.training  # frozen: it stays in eval mode


def test_latents_that_are_all_alike_are_refused():
    with pytest.raises(ValueError, match="standard deviation 0"):
        latent_statistics(torch.ones(10, 4))


def test_latents_are_saved_a_batch_at_a_time_and_read_back(tmp_path):
    latents = torch.randn(10, 2, 3, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "latents.npy"
    save_latents(latents.split(4), 10, path)  # batches of 4, 4 and 2
    assert torch.equal(load_latents(path), latents)
    with pytest.raises(RuntimeError, match="9 latents were encoded where the data holds 10"):
        save_latents(latents[:9].split(4), 10, tmp_path / "short.npy")
    assert list(tmp_path.iterdir()) == [path]  # nothing half-written is left
