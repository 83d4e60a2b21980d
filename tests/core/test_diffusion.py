"""The training objective and the Diffusion front end."""

import math

import pytest
import torch

from diffkit import Diffusion, masked_mean
from diffkit.gmm import GaussianMixture

PREDICTIONS = ("eps", "x0", "v")


def _fixed_batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 3, 4, generator=g)
    noise = torch.randn(n, 3, 4, generator=g)
    t = torch.rand(n, generator=g) * 0.98 + 0.01
    return x0, noise, t


def _written_out_targets(diffusion, x0, noise, t):
    a = diffusion.schedule.alpha(t)[:, None, None]
    s = diffusion.schedule.std(t)[:, None, None]
    return {"eps": noise, "x0": x0, "v": a * noise - s * x0}, a * x0 + s * noise


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_a_model_returning_the_target_has_zero_loss(prediction):
    diffusion = Diffusion("cosine", prediction)
    x0, noise, t = _fixed_batch()
    targets, x_t = _written_out_targets(diffusion, x0, noise, t)

    def oracle(x, time, cond=None):
        assert torch.allclose(x, x_t, atol=1e-6) and torch.equal(time, t)
        return targets[prediction]

    assert float(diffusion.loss(oracle, x0, t=t, noise=noise)) < 1e-10


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("returned", PREDICTIONS)
def test_each_objective_regresses_its_own_target(prediction, returned):
    diffusion = Diffusion("cosine", prediction)
    x0, noise, t = _fixed_batch(seed=1)
    targets, _ = _written_out_targets(diffusion, x0, noise, t)
    loss = diffusion.loss(lambda x, time, cond=None: targets[returned], x0, t=t, noise=noise)
    expected = ((targets[returned] - targets[prediction]) ** 2).mean()
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_the_exact_denoiser_reaches_the_irreducible_loss(prediction):
    """For x0 ~ N(0, c^2 I), Var(x0 | x_t) = c^2 s^2 / (a^2 c^2 + s^2); the eps and v errors are
    that times a^2 / s^2 and 1 / s^2. The exact posterior mean attains exactly this loss."""
    c, n, dim = 0.7, 20000, 4
    diffusion = Diffusion("cosine", prediction)
    gaussian = GaussianMixture(torch.ones(1), torch.zeros(1, dim), stds=torch.tensor([c]))
    model = gaussian.denoiser(diffusion.schedule, prediction)
    g = torch.Generator().manual_seed(2)
    x0 = gaussian.sample(n, g).float()
    for time in (0.2, 0.5, 0.8):
        t = torch.full((n,), time)
        a2 = float(diffusion.schedule.alpha_bar(t[:1]))
        s2 = 1 - a2
        var_x0 = c**2 * s2 / (a2 * c**2 + s2)
        expected = {"x0": var_x0, "eps": var_x0 * a2 / s2, "v": var_x0 / s2}[prediction]
        loss = float(diffusion.loss(model, x0, t=t, generator=g))
        assert math.isclose(loss, expected, rel_tol=0.03), (time, loss, expected)


def test_masked_mean_ignores_padding_exactly():
    g = torch.Generator().manual_seed(3)
    values = torch.rand(3, 5, 2, generator=g)
    lengths = [5, 2, 4]
    mask = torch.zeros(3, 5, 1)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
    poisoned = values.clone()
    poisoned[mask.expand_as(values) == 0] = 1e6
    out = masked_mean(poisoned, mask)
    for i, length in enumerate(lengths):
        assert torch.allclose(out[i], values[i, :length].mean())
    assert torch.allclose(masked_mean(values, None), values.reshape(3, -1).mean(1))


def test_loss_on_padded_states_ignores_the_padding():
    diffusion = Diffusion("cosine", "eps")
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(2, 6, 3, generator=g), torch.randn(2, 6, 3, generator=g)
    t = torch.tensor([0.3, 0.7])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.float32)[..., None]
    prediction = torch.randn(2, 6, 3, generator=g)
    garbage = torch.where(mask.bool(), prediction, torch.full_like(prediction, 1e4))
    per_sample = diffusion.loss(lambda x, time, cond=None: garbage, x0, t=t, noise=noise, mask=mask, reduction="none")
    for i, length in enumerate((4, 2)):
        expected = ((prediction[i, :length] - noise[i, :length]) ** 2).mean()
        assert torch.allclose(per_sample[i], expected)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_min_snr_weights(prediction):
    """Hang et al. (2023): weight min(SNR, gamma) on the x0 error, i.e. min(SNR, gamma) / SNR
    on the eps error and min(SNR, gamma) / (SNR + 1) on the v error."""
    gamma = 5.0
    diffusion = Diffusion("cosine", prediction, weighting="min_snr", min_snr_gamma=gamma)
    x0, noise, _ = _fixed_batch(seed=5)
    t = torch.linspace(0.02, 0.98, 8)
    model = lambda x, time, cond=None: torch.zeros_like(x)  # noqa: E731
    weighted = diffusion.loss(model, x0, t=t, noise=noise, reduction="none")
    plain = diffusion.loss(model, x0, t=t, noise=noise, reduction="none", weighting="uniform")
    alpha_bar = diffusion.schedule.alpha_bar(t.double())
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=gamma)
    weight = {"x0": clipped, "eps": clipped / snr, "v": clipped / (snr + 1)}[prediction]
    assert torch.allclose(weighted.double(), plain.double() * weight, rtol=1e-4)
    assert (snr[:2] > gamma).all() and (snr[-3:] < gamma).all()  # both branches of the min are exercised


def test_dict_states_sum_weighted_leaf_losses():
    diffusion = Diffusion("cosine", "eps")
    g = torch.Generator().manual_seed(6)
    x0 = {"nodes": torch.randn(4, 5, 3, generator=g), "edges": torch.randn(4, 5, 5, 2, generator=g)}
    noise = {k: torch.randn(v.shape, generator=g) for k, v in x0.items()}
    out = {k: torch.randn(v.shape, generator=g) for k, v in x0.items()}
    t = torch.full((4,), 0.5)
    loss = diffusion.loss(lambda x, time, cond=None: out, x0, t=t, noise=noise, leaf_weights={"edges": 0.25},
                          reduction="none")
    expected = (((out["nodes"] - noise["nodes"]) ** 2).mean((1, 2))
                + 0.25 * ((out["edges"] - noise["edges"]) ** 2).mean((1, 2, 3)))
    assert torch.allclose(loss, expected)


def test_loss_passes_condition_and_extra_inputs():
    diffusion = Diffusion()
    seen = {}

    def model(x, t, cond=None, mask=None):
        seen.update(cond=cond, mask=mask)
        return torch.zeros_like(x)

    x0, cond, extra = torch.randn(3, 2), torch.tensor([1, 2, 3]), torch.ones(3, 2)
    diffusion.loss(model, x0, cond=cond, model_kwargs={"mask": extra})
    assert torch.equal(seen["cond"], cond) and torch.equal(seen["mask"], extra)


def test_invalid_settings_are_refused_with_the_valid_choices():
    with pytest.raises(ValueError, match="valid: eps, x0, v"):
        Diffusion(prediction="score")
    with pytest.raises(ValueError, match="valid: uniform, min_snr"):
        Diffusion(weighting="p2")
    with pytest.raises(ValueError, match="prediction='v' or 'x0'"):
        Diffusion({"name": "cosine", "zero_terminal_snr": True}, "eps")
    with pytest.raises(ValueError, match="valid: mean, none"):
        Diffusion().loss(lambda x, t, cond=None: x, torch.zeros(2, 2), reduction="sum")
    with pytest.raises(ValueError, match="strength"):
        Diffusion().edit(lambda x, t, cond=None: x, torch.zeros(2, 2), 0.0)


def test_training_times_follow_the_schedule():
    discrete = Diffusion({"name": "linear", "num_steps": 10})
    seen = []
    discrete.loss(lambda x, t, cond=None: seen.append(t) or torch.zeros_like(x), torch.zeros(500, 1),
                  generator=torch.Generator().manual_seed(0))
    steps = (seen[0] * 10).round()
    assert set(steps.tolist()) == set(float(i) for i in range(1, 11))


def test_sample_accepts_a_shape_or_an_example_state():
    diffusion = Diffusion()
    model = lambda x, t, cond=None: {k: torch.zeros_like(v) for k, v in x.items()} if isinstance(x, dict) else torch.zeros_like(x)  # noqa: E731
    out = diffusion.sample(model, (3, 4), steps=4)
    assert out.shape == (3, 4) and out.dtype == torch.float32
    example = {"a": torch.zeros(2, 5, dtype=torch.float64), "b": torch.zeros(2, 1, 3)}
    out = diffusion.sample(model, example, steps=4)
    assert out["a"].shape == (2, 5) and out["a"].dtype == torch.float64 and out["b"].shape == (2, 1, 3)
    # a model predicting eps = 0 leaves x0 = x / alpha along the whole path: the output is x_T / alpha(1) ...
    x_T = torch.randn(2, 4, dtype=torch.float64)
    out = diffusion.sample(model, x_T, steps=4, x_T=x_T, sampler="ddim")
    assert torch.allclose(out, x_T / diffusion.schedule.alpha(torch.tensor(1.0, dtype=torch.float64)))


def test_progress_bar_and_callback_together():
    diffusion = Diffusion()
    seen = []
    diffusion.sample(lambda x, t, cond=None: torch.zeros_like(x), (2, 2), steps=3, progress=True, callback=seen.append)
    assert len(seen) == 3


class _Linear(torch.nn.Module):
    """A model with trainable parameters: its outputs would carry a graph under autograd."""

    def __init__(self, dim):
        super().__init__()
        self.layer = torch.nn.Linear(dim, dim)

    def forward(self, x, t, cond=None):
        return self.layer(x) * 0.1


def test_sampling_inpainting_and_editing_keep_no_graph():
    diffusion, model = Diffusion("cosine", "v"), _Linear(4)
    x = torch.randn(3, 4)
    assert all(p.requires_grad for p in model.parameters())
    outputs = [diffusion.sample(model, (3, 4), sampler=name, steps=3) for name in ("ddpm", "dpmpp_2m", "heun")]
    outputs.append(diffusion.inpaint(model, x, torch.ones(3, 4).tril(), steps=3))
    outputs.append(diffusion.edit(model, x, 0.5, steps=4))
    assert not any(out.requires_grad for out in outputs)
    assert torch.is_grad_enabled()  # and autograd is on again afterwards


def test_a_model_guided_by_a_gradient_still_gets_it():
    """eps = -std * grad log p_t(x), computed by autograd inside the model, gives the same samples
    as the closed-form posterior mean of the same Gaussian mixture."""
    mixture = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0, 0.5], [1.0, 0.0]]),
                              stds=torch.tensor([0.4, 0.6]))
    diffusion = Diffusion("cosine", "eps")

    def score_model(x, t, cond=None):
        alpha, std = diffusion.schedule.alpha(t.double()), diffusion.schedule.std(t.double())
        with torch.enable_grad():
            x = x.detach().double().requires_grad_()
            log_p = torch.logsumexp(mixture.noisy_log_prob(x, alpha, std), dim=1).sum()
            (score,) = torch.autograd.grad(log_p, x)
        return -std[:, None] * score

    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    by_gradient = diffusion.sample(score_model, x_T, sampler="ddim", steps=10, x_T=x_T)
    exact = diffusion.sample(mixture.denoiser(diffusion.schedule, "eps"), x_T, sampler="ddim", steps=10, x_T=x_T)
    assert not by_gradient.requires_grad
    assert torch.allclose(by_gradient, exact, atol=1e-6)
