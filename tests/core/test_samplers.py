"""Samplers against the exact denoiser of a Gaussian mixture, whose samples are known exactly.

Two yardsticks. Deterministic samplers integrate the probability-flow ODE, whose flow is
monotone in one dimension: started from the normal quantiles ``Phi^-1((i + 1/2) / n)`` an exact
solver returns the data quantiles ``F^-1((i + 1/2) / n)``, so the W1 distance between the two
measures the solver's error alone, with no sampling noise. Stochastic samplers are scored on a
2-D mixture by the sliced W1 distance (W1 averaged over fixed random 1-D projections, against the
projected mixture's exact quantiles); exact samples of the same size score 0.008 +- 0.003 there.
"""

import math

import pytest
import torch

from diffkit import Diffusion, get_sampler, register_sampler
from diffkit.denoiser import Denoiser
from diffkit.gmm import GaussianMixture, random_directions
from diffkit.samplers import SAMPLERS, preferred_spacing, sample_ddim
from diffkit.schedules import CosineSchedule


def line_mixture() -> GaussianMixture:
    """Three narrow components on a line (stds 0.05 to 0.2), unequal weights."""
    return GaussianMixture(torch.tensor([0.2, 0.5, 0.3]), torch.tensor([[-1.5], [0.2], [1.6]]),
                           stds=torch.tensor([0.05, 0.1, 0.2]))


def ring_mixture() -> GaussianMixture:
    """Five components on a circle of radius 1.2, stds 0.04 to 0.12, unequal weights."""
    angles = torch.arange(5, dtype=torch.float64) * 2 * math.pi / 5
    means = 1.2 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(torch.tensor([1.0, 2, 3, 2, 1]), means, stds=torch.linspace(0.04, 0.12, 5))


def draw(mixture, sampler, steps, x_T, *, seed=0, schedule="cosine", prediction="eps", spacing="auto", **options):
    """Samples from ``x_T``; ``spacing="auto"``: each sampler's own spacing."""
    diffusion = Diffusion(schedule, prediction)
    model = mixture.denoiser(diffusion.schedule, prediction)
    return diffusion.sample(model, x_T, sampler=sampler, steps=steps, x_T=x_T.clone(), spacing=spacing,
                            generator=torch.Generator().manual_seed(seed), **options)


@pytest.fixture(scope="module")
def line():
    """(mixture, W1 of a sample to its quantiles, the normal quantiles as x_T)."""
    mixture, n = line_mixture(), 2000
    probs = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    quantiles = mixture.quantile(probs)

    def w1(x):
        return float((torch.sort(x[:, 0].double()).values - quantiles).abs().mean())

    return mixture, w1, torch.special.ndtri(probs)[:, None].float()


@pytest.fixture(scope="module")
def ring():
    """(mixture, sliced W1 to the mixture, a random x_T) with 8000 samples."""
    mixture, n = ring_mixture(), 8000
    directions = random_directions(16, 2, torch.Generator().manual_seed(0))
    probs = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    quantiles = torch.stack([mixture.project(u).quantile(probs) for u in directions])

    def sliced_w1(x):
        projected = torch.sort(x.double() @ directions.T, dim=0).values.T
        return float((projected - quantiles).abs().mean())

    return mixture, sliced_w1, torch.randn(n, 2, generator=torch.Generator().manual_seed(1))


def test_the_exact_denoiser_is_the_posterior_mean_by_quadrature():
    """E[x0 | x_t] = int x0 p(x0) N(x_t; a x0, s^2) dx0 / int p(x0) N(x_t; a x0, s^2) dx0 on a grid."""
    mixture = line_mixture()
    grid = torch.linspace(-4, 4, 200001, dtype=torch.float64)
    prior = mixture.log_prob(grid[:, None]).exp()
    assert abs(float(torch.trapezoid(prior, grid)) - 1) < 1e-8  # log_prob is normalised
    x_t = torch.tensor([[-1.0], [0.1], [0.9], [2.5]], dtype=torch.float64)
    for a in (0.3, 0.8, 0.99):
        s = math.sqrt(1 - a * a)
        likelihood = torch.exp(-0.5 * ((x_t - a * grid[None]) / s) ** 2)
        expected = torch.trapezoid(likelihood * prior * grid, grid) / torch.trapezoid(likelihood * prior, grid)
        alpha, std = torch.full((4,), a, dtype=torch.float64), torch.full((4,), s, dtype=torch.float64)
        assert torch.allclose(mixture.posterior_mean(x_t, alpha, std)[:, 0], expected, atol=1e-7)


def test_full_covariance_mixtures_match_a_direct_computation():
    g = torch.Generator().manual_seed(10)
    factors = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    covariances = factors @ factors.transpose(1, 2) * 0.1 + 0.01 * torch.eye(4, dtype=torch.float64)
    mixture = GaussianMixture(torch.tensor([0.2, 0.5, 0.3]), torch.randn(3, 4, generator=g, dtype=torch.float64), covariances)
    x = torch.randn(20, 4, generator=g, dtype=torch.float64)
    alpha = torch.rand(20, generator=g, dtype=torch.float64)
    std = (1 - alpha**2).sqrt()
    noisy = alpha[:, None, None, None] ** 2 * covariances + std[:, None, None, None] ** 2 * torch.eye(4, dtype=torch.float64)
    diff = x[:, None] - alpha[:, None, None] * mixture.means
    log_joint = torch.distributions.MultivariateNormal(torch.zeros_like(diff), noisy).log_prob(diff) + mixture.weights.log()
    assert torch.allclose(mixture.noisy_log_prob(x, alpha, std), log_joint, atol=1e-10)
    solved = torch.linalg.solve(noisy, diff.unsqueeze(-1)).squeeze(-1)
    means = mixture.means + alpha[:, None, None] * torch.einsum("kij,nkj->nki", covariances, solved)
    expected = torch.einsum("nk,nkd->nd", torch.softmax(log_joint, 1), means)
    assert torch.allclose(mixture.posterior_mean(x, alpha, std), expected, atol=1e-10)
    draws = mixture.sample(100000, g)
    assert torch.allclose(draws.mean(0), mixture.mean(), atol=0.02)
    assert torch.allclose(torch.cov(draws.T), mixture.covariance(), atol=0.03)


def test_the_quantile_yardstick_sees_errors(line):
    mixture, w1, x_T = line
    exact = mixture.quantile((torch.arange(2000, dtype=torch.float64) + 0.5) / 2000)[:, None]
    assert w1(exact) < 1e-6
    assert w1(exact * 1.02) > 0.015  # a 2% stretch
    assert w1(draw(mixture, "dpmpp_3m", 200, x_T)) < 1e-3  # a fine solve is essentially exact


# (sampler, steps, tolerance): each deterministic sampler at the step count it is meant for.
ODE_INTENDED = [
    ("ddim", 100, 0.015),
    ("euler", 100, 0.025),
    ("heun", 30, 0.015),
    ("dpmpp_2m", 30, 0.01),
    ("dpmpp_3m", 30, 0.01),
    ("unipc", 30, 0.006),
]


@pytest.mark.parametrize("sampler,steps,tolerance", ODE_INTENDED)
def test_ode_samplers_land_on_the_true_quantiles(line, sampler, steps, tolerance):
    mixture, w1, x_T = line
    x = draw(mixture, sampler, steps, x_T)
    assert bool((x[1:] >= x[:-1] - 1e-5).all()), "the flow of an exact ODE solve is monotone"
    assert w1(x) < tolerance


@pytest.mark.parametrize("sampler,few,many", [("dpmpp_2m", 8, 30), ("unipc", 5, 30), ("euler", 10, 100)])
def test_fewer_steps_miss_the_tolerance(line, sampler, few, many):
    mixture, w1, x_T = line
    assert w1(draw(mixture, sampler, few, x_T)) > 2 * w1(draw(mixture, sampler, many, x_T))


def test_exact_samples_set_the_noise_floor(ring):
    mixture, sliced_w1, _ = ring
    floors = [sliced_w1(mixture.sample(8000, torch.Generator().manual_seed(s))) for s in range(3)]
    assert max(floors) < 0.015, floors
    assert sliced_w1(mixture.sample(8000, torch.Generator().manual_seed(9)) * 1.05) > 0.03  # a 5% stretch


# Stochastic samplers (and two ODE ones for comparison) on the ring, tolerance 0.02.
RING_INTENDED = [
    ("ddpm", 200, {}),
    ("ddim", 100, {"eta": 1.0}),
    ("dpmpp_2m_sde", 50, {}),
    ("dpmpp_3m", 20, {}),
    ("unipc", 20, {}),
]


@pytest.mark.parametrize("sampler,steps,options", RING_INTENDED)
def test_samplers_land_on_the_true_distribution(ring, sampler, steps, options):
    mixture, sliced_w1, x_T = ring
    assert sliced_w1(draw(mixture, sampler, steps, x_T, **options)) < 0.02


def test_ddpm_with_v_prediction_on_a_discrete_schedule(ring):
    mixture, sliced_w1, x_T = ring
    # The 1000-step linear schedule stops at sigma = 0.01, a quarter of the narrowest std here.
    x = draw(mixture, "ddpm", 200, x_T, schedule={"name": "linear", "num_steps": 1000}, prediction="v")
    assert sliced_w1(x) < 0.025


def test_euler_is_ddim_without_noise():
    """Karras' Euler step in (sigma, y = x / alpha), written out here, equals DDIM(eta=0)."""
    mixture, schedule = ring_mixture(), CosineSchedule()
    denoiser = Denoiser(mixture.denoiser(schedule), schedule, "eps")
    x_T = torch.randn(200, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    times = schedule.sample_times(12, "karras").double()
    y = x_T / schedule.alpha(times[0])
    for t, s in zip(times[:-1], times[1:]):
        _, eps = denoiser(y * schedule.alpha(t), t)
        y = y + (schedule.sigma(s) - schedule.sigma(t)) * eps if s > 0 else y - schedule.sigma(t) * eps
    ddim = sample_ddim(denoiser, x_T, times)
    assert torch.allclose(ddim, y, atol=1e-7)
    assert torch.allclose(get_sampler("euler")(denoiser, x_T, times), ddim, atol=1e-12)


@pytest.fixture(scope="module")
def ode_reference():
    """x_T on the ring and a fine DPM-Solver++(3M) solution from it (400 log-SNR steps)."""
    mixture, schedule = ring_mixture(), CosineSchedule()
    x_T = torch.randn(200, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    fine = Denoiser(mixture.denoiser(schedule), schedule, "eps")
    return x_T, get_sampler("dpmpp_3m")(fine, x_T.clone(), schedule.sample_times(400, "log_snr").double())


@pytest.mark.parametrize("sampler,options", [("dpmpp_2m", {}), ("dpmpp_3m", {}), ("unipc", {}),
                                             ("unipc", {"order": 2}), ("euler", {}), ("heun", {})])
def test_ode_solvers_converge_to_the_fine_solution_of_the_same_ode(ode_reference, sampler, options):
    x_T, reference = ode_reference
    mixture, schedule = ring_mixture(), CosineSchedule()
    errors = []
    for steps in (12, 24, 48):
        denoiser = Denoiser(mixture.denoiser(schedule), schedule, "eps")
        x = get_sampler(sampler)(denoiser, x_T.clone(), schedule.sample_times(steps, "log_snr").double(), **options)
        errors.append(float((x - reference).norm(dim=1).median()))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.02


def _gaussian_endpoint_errors(sampler, step_counts, **options):
    """Errors against the closed-form solution of the probability-flow ODE for one Gaussian
    N(m, diag(l)): y = x / alpha moves as m + sqrt((l + sigma^2) / (l + sigma_T^2)) (y_T - m)."""
    schedule = CosineSchedule()
    variances = torch.tensor([1e-4, 1e-2, 1.0, 4.0], dtype=torch.float64)
    gaussian = GaussianMixture(torch.ones(1), torch.full((1, 4), 0.3, dtype=torch.float64), torch.diag(variances)[None])
    x_T = torch.randn(50, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    errors = []
    for steps in step_counts:
        times = schedule.sample_times(steps, "log_snr").double()[:-1]  # stop at the last noise level
        denoiser = Denoiser(gaussian.denoiser(schedule), schedule, "eps")
        x = get_sampler(sampler)(denoiser, x_T.clone(), times, **options)
        sigma_0, sigma_1 = schedule.sigma(times[0]), schedule.sigma(times[-1])
        y = 0.3 + ((variances + sigma_1**2) / (variances + sigma_0**2)).sqrt() * (x_T / schedule.alpha(times[0]) - 0.3)
        errors.append(float((x - y * schedule.alpha(times[-1])).norm(dim=1).max()))
    return errors


@pytest.mark.parametrize("sampler,options,order", [("euler", {}, 1), ("heun", {}, 2), ("dpmpp_2m", {}, 2),
                                                   ("dpmpp_3m", {}, 3), ("unipc", {"order": 2}, 3),
                                                   ("unipc", {"order": 3}, 3)])
def test_convergence_order_on_a_gaussian(sampler, options, order):
    """The measured order from 20 to 80 steps; UniPC's corrector adds one to its predictor's
    order (its order-3 variant measures about 3.8 here, claimed as 3)."""
    errors = _gaussian_endpoint_errors(sampler, (20, 80), **options)
    measured = math.log2(errors[0] / errors[1]) / 2
    assert measured > order - 0.3, (errors, measured)


def test_unipc_predictor_alone_is_dpmpp_3m():
    """Two derivations of the same third-order multistep update agree."""
    mixture, schedule = ring_mixture(), CosineSchedule()
    x_T = torch.randn(100, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    times = schedule.sample_times(15, "log_snr").double()
    run = lambda name, **o: get_sampler(name)(Denoiser(mixture.denoiser(schedule), schedule, "eps"), x_T, times, **o)  # noqa: E731
    assert torch.allclose(run("unipc", order=3, corrector=False), run("dpmpp_3m"), atol=1e-10)


@pytest.mark.parametrize("sampler,options", [("ddpm", {}), ("ddim", {"eta": 0.5}), ("dpmpp_2m_sde", {})])
def test_seeded_runs_are_reproducible(sampler, options):
    mixture = ring_mixture()
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(6))
    first = draw(mixture, sampler, 10, x_T, seed=11, **options)
    again = draw(mixture, sampler, 10, x_T, seed=11, **options)
    other = draw(mixture, sampler, 10, x_T, seed=12, **options)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_seeded_noise_is_reproducible_through_sample():
    diffusion, mixture = Diffusion("cosine"), ring_mixture()
    model = mixture.denoiser(diffusion.schedule)
    runs = [diffusion.sample(model, (32, 2), steps=8, generator=torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])


@pytest.mark.parametrize("sampler", ["ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"])
def test_batch_consistency(sampler):
    """Deterministic samplers treat every sample on its own: one at a time equals all at once."""
    mixture = ring_mixture()
    x_T = torch.randn(6, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    batched = draw(mixture, sampler, 8, x_T)
    single = torch.cat([draw(mixture, sampler, 8, x_T[i:i + 1]) for i in range(6)])
    assert torch.allclose(batched, single, atol=1e-10)


class TwoMixtureModel(torch.nn.Module):
    """A dict state {"a": (B, 2), "b": (B, 3)} whose leaves are independent mixtures."""

    def __init__(self, schedule):
        super().__init__()
        self.a = ring_mixture().denoiser(schedule)
        g = torch.Generator().manual_seed(8)
        self.b = GaussianMixture(torch.ones(3), torch.randn(3, 3, generator=g), stds=torch.full((3,), 0.1)).denoiser(schedule)

    def forward(self, x, t, cond=None):
        return {"a": self.a(x["a"], t), "b": self.b(x["b"], t)}


@pytest.mark.parametrize("sampler", ["ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"])
def test_dict_states_match_their_leaves_sampled_separately(sampler):
    diffusion = Diffusion("cosine")
    model = TwoMixtureModel(diffusion.schedule)
    g = torch.Generator().manual_seed(9)
    x_T = {"a": torch.randn(40, 2, generator=g, dtype=torch.float64), "b": torch.randn(40, 3, generator=g, dtype=torch.float64)}
    joint = diffusion.sample(model, x_T, sampler=sampler, steps=10, x_T=x_T)
    for key in ("a", "b"):
        alone = diffusion.sample(getattr(model, key), x_T[key], sampler=sampler, steps=10, x_T=x_T[key])
        assert torch.allclose(joint[key], alone, atol=1e-10)


def test_unknown_sampler_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        get_sampler("dpm_fast")
    for name in ("ddpm", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"):
        assert name in str(error.value)
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        Diffusion().sample(lambda x, t, cond=None: x, (2, 2), sampler="nope")


def test_register_sampler_adds_a_usable_sampler():
    calls = []

    @register_sampler("test_denoise_once", spacing="quadratic")
    def denoise_once(denoiser, x, times, *, generator=None, callback=None):
        calls.append(times.clone())
        x0, _ = denoiser(x, times[0])
        return x0

    try:
        assert preferred_spacing("test_denoise_once") == "quadratic"
        diffusion = Diffusion()
        zero = lambda x, t, cond=None: torch.zeros_like(x)  # noqa: E731
        out = diffusion.sample(zero, (4, 3), sampler="test_denoise_once", steps=3, spacing="auto")
        assert out.shape == (4, 3)
        assert torch.allclose(calls[0], torch.linspace(1, 0, 4) ** 2)  # "auto" spacing follows the sampler
        diffusion.sample(zero, (4, 3), sampler="test_denoise_once", steps=3)
        assert torch.equal(calls[1], calls[0])  # "auto" is the default
        diffusion.sample(zero, (4, 3), sampler="test_denoise_once", steps=3, spacing="uniform")
        assert torch.allclose(calls[2], torch.linspace(1, 0, 4))
        with pytest.raises(ValueError, match="already registered"):
            register_sampler("test_denoise_once", lambda *a, **k: None)
    finally:
        SAMPLERS.pop("test_denoise_once")


@pytest.mark.parametrize("sampler", sorted(["ddpm", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m", "unipc"]))
def test_model_calls_and_callbacks(sampler):
    diffusion, mixture = Diffusion(), ring_mixture()
    model = mixture.denoiser(diffusion.schedule)
    calls, seen = [0], []

    def counting(x, t, cond=None):
        calls[0] += 1
        return model(x, t)

    diffusion.sample(counting, (5, 2), sampler=sampler, steps=6, callback=seen.append)
    assert calls[0] == (11 if sampler == "heun" else 6)
    assert [info["step"] for info in seen] == list(range(6))
    assert seen[0]["t"] == 1.0 and seen[-1]["x"].shape == (5, 2)
