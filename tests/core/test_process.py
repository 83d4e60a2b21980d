"""The forward process against independent truth: the iterated Markov chain, Bayes' rule for the
posterior, and round trips between the three predictions."""

import math

import numpy as np
import pytest
import torch

from diffkit import CosineSchedule, LinearSchedule, convert, posterior, q_sample, to_eps, to_x0
from diffkit.process import PREDICTIONS, q_step, target


def test_closed_form_marginal_equals_the_iterated_chain_moments():
    """Iterating x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z from a fixed x_0 gives mean
    m_i x_0 and variance v_i with m_i = prod sqrt(1 - beta_j), v_i = (1 - beta_i) v_{i-1} + beta_i."""
    steps = 1000
    betas = np.linspace(1e-4, 0.02, steps)
    schedule = LinearSchedule(1e-4, 0.02, steps)
    mean_coef, variance = 1.0, 0.0
    for i, beta in enumerate(betas, start=1):
        mean_coef *= math.sqrt(1 - beta)
        variance = (1 - beta) * variance + beta
        if i in (1, 10, 250, 500, 1000):
            t = torch.tensor(i / steps, dtype=torch.float64)
            assert math.isclose(float(schedule.alpha(t)), mean_coef, rel_tol=1e-10)
            assert math.isclose(float(schedule.std(t)) ** 2, variance, rel_tol=1e-10)


def test_closed_form_marginal_matches_simulated_chain():
    """Run the chain with q_step on non-Gaussian data and compare with one q_sample draw."""
    g = torch.Generator().manual_seed(0)
    steps, n = 100, 40000
    schedule = LinearSchedule(1e-3, 0.05, steps)
    x0 = torch.rand(n, 1, generator=g, dtype=torch.float64) * 4 - 1  # uniform on [-1, 3]
    x = x0.clone()
    for i in range(1, 31):
        t, s = torch.tensor(i / steps, dtype=torch.float64), torch.tensor((i - 1) / steps, dtype=torch.float64)
        ratio = (schedule.alpha_bar(t) / schedule.alpha_bar(s)).expand(n)
        x = q_step(x, ratio, torch.randn(n, 1, generator=g, dtype=torch.float64))
    t = torch.full((n,), 30 / steps, dtype=torch.float64)
    direct = q_sample(schedule, x0, t, torch.randn(n, 1, generator=g, dtype=torch.float64))
    # the same conditional law given x_0: compare residuals and the marginal quantiles
    alpha = float(schedule.alpha(t[:1]))
    chain_residual = x - alpha * x0
    assert abs(float(chain_residual.mean())) < 0.01
    assert math.isclose(float(chain_residual.std()), float(schedule.std(t[:1])), rel_tol=0.01)
    probs = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)
    assert torch.allclose(torch.quantile(x[:, 0], probs), torch.quantile(direct[:, 0], probs), atol=0.03)


@pytest.mark.parametrize("schedule", [LinearSchedule(), CosineSchedule()])
def test_posterior_is_bayes_rule(schedule):
    """q(x_s | x_t, x_0) ~ q(x_t | x_s) q(x_s | x_0): the product of two Gaussians in x_s."""
    g = torch.Generator().manual_seed(1)
    n = 6
    t = torch.tensor([0.9, 0.5, 0.2, 0.05, 0.6, 0.3], dtype=torch.float64)
    s = t - torch.tensor([0.1, 0.3, 0.1, 0.04, 0.001, 0.299], dtype=torch.float64)
    x0, x_t = torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(n, 3, generator=g, dtype=torch.float64)
    mean, var = posterior(schedule, x0, x_t, t, s)
    a_s2 = schedule.alpha_bar(s)
    ratio = schedule.alpha_bar(t) / a_s2
    precision_prior, precision_step = 1 / (1 - a_s2), ratio / (1 - ratio)
    expected_var = 1 / (precision_prior + precision_step)
    expected_mean = expected_var[:, None] * (
        a_s2.sqrt()[:, None] * x0 / (1 - a_s2)[:, None] + ratio.sqrt()[:, None] * x_t / (1 - ratio)[:, None]
    )
    assert torch.allclose(var, expected_var, rtol=1e-9)
    assert torch.allclose(mean, expected_mean, rtol=1e-9, atol=1e-12)


def test_posterior_samples_reproduce_the_forward_marginal():
    """x_s drawn from the posterior given (x_t, x_0), with x_t ~ q(x_t | x_0), must be distributed
    as q(x_s | x_0)."""
    schedule = CosineSchedule()
    g = torch.Generator().manual_seed(2)
    n = 50000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    t, s = torch.full((n,), 0.6, dtype=torch.float64), torch.full((n,), 0.4, dtype=torch.float64)
    x_t = q_sample(schedule, x0, t, torch.randn(n, 1, generator=g, dtype=torch.float64))
    mean, var = posterior(schedule, x0, x_t, t, s)
    x_s = mean + var.sqrt()[:, None] * torch.randn(n, 1, generator=g, dtype=torch.float64)
    assert abs(float(x_s.mean()) - 0.7 * float(schedule.alpha(s[:1]))) < 0.01
    assert math.isclose(float(x_s.std()), float(schedule.std(s[:1])), rel_tol=0.01)


def _random_setup(seed=3, n=5):
    g = torch.Generator().manual_seed(seed)
    schedule = CosineSchedule()
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    x0 = {"a": torch.randn(n, 4, generator=g, dtype=torch.float64),
          "b": torch.randn(n, 2, 3, generator=g, dtype=torch.float64)}
    eps = {"a": torch.randn(n, 4, generator=g, dtype=torch.float64),
           "b": torch.randn(n, 2, 3, generator=g, dtype=torch.float64)}
    alpha, std = schedule.alpha(t), schedule.std(t)
    x_t = {k: alpha.view(-1, *[1] * (x0[k].ndim - 1)) * x0[k] + std.view(-1, *[1] * (x0[k].ndim - 1)) * eps[k]
           for k in x0}
    # v written out independently of the library: v = alpha eps - std x0
    v = {k: alpha.view(-1, *[1] * (x0[k].ndim - 1)) * eps[k] - std.view(-1, *[1] * (x0[k].ndim - 1)) * x0[k]
         for k in x0}
    return schedule, t, x0, eps, v, x_t, alpha, std


def test_q_sample_is_the_closed_form():
    schedule, t, x0, eps, _, x_t, _, _ = _random_setup()
    out = q_sample(schedule, x0, t, eps)
    for key in x0:
        assert torch.allclose(out[key], x_t[key], atol=1e-12)


@pytest.mark.parametrize("source", PREDICTIONS)
@pytest.mark.parametrize("destination", PREDICTIONS)
def test_prediction_conversions_round_trip(source, destination):
    _, _, x0, eps, v, x_t, alpha, std = _random_setup()
    values = {"eps": eps, "x0": x0, "v": v}
    out = convert(source, destination, values[source], x_t, alpha, std)
    for key in x0:
        assert torch.allclose(out[key], values[destination][key], atol=1e-9), (source, destination, key)
    back = convert(destination, source, out, x_t, alpha, std)
    for key in x0:
        assert torch.allclose(back[key], values[source][key], atol=1e-9)


def test_targets_and_clean_estimates():
    _, _, x0, eps, v, x_t, alpha, std = _random_setup(seed=4)
    values = {"eps": eps, "x0": x0, "v": v}
    for prediction in PREDICTIONS:
        wanted = target(prediction, x0, eps, alpha, std)
        recovered = to_x0(prediction, wanted, x_t, alpha, std)
        for key in x0:
            assert torch.allclose(wanted[key], values[prediction][key], atol=1e-12)
            assert torch.allclose(recovered[key], x0[key], atol=1e-9)
    implied = to_eps(x0, x_t, alpha, std)
    for key in x0:
        assert torch.allclose(implied[key], eps[key], atol=1e-9)


def test_unknown_prediction_lists_the_valid_ones():
    x = torch.zeros(2, 3)
    one = torch.ones(2)
    with pytest.raises(ValueError, match="valid: eps, x0, v"):
        to_x0("score", x, x, one, one)
    with pytest.raises(ValueError, match="valid: eps, x0, v"):
        target("noise", x, x, one, one)
