"""Noise schedules: the views agree, closed forms hold, inverses invert, spacings are well formed."""

import math

import numpy as np
import pytest
import torch

from diffkit import (CosineSchedule, LinearSchedule, SigmoidSchedule, ZeroTerminalSNR, make_schedule,
                     register_schedule)
from diffkit.schedules import SCHEDULES, SPACINGS, DiscreteSchedule, discretize

GRID = torch.linspace(0.0, 1.0, 201, dtype=torch.float64)
INNER = GRID[1:-1]


def all_schedules():
    return {
        "linear": LinearSchedule(),
        "cosine": CosineSchedule(),
        "sigmoid": SigmoidSchedule(),
        "cosine_zero_terminal": ZeroTerminalSNR(CosineSchedule()),
        "linear_zero_terminal": ZeroTerminalSNR(LinearSchedule()),
        "cosine_discrete": discretize(CosineSchedule(), 100),
    }


@pytest.mark.parametrize("name", list(all_schedules()))
def test_views_agree(name):
    schedule = all_schedules()[name]
    t = INNER
    log_snr = schedule.log_snr(t)
    alpha, std = schedule.alpha(t), schedule.std(t)
    assert torch.allclose(schedule.alpha_bar(t), 1 / (1 + torch.exp(-log_snr)), rtol=1e-12, atol=1e-15)
    assert torch.allclose(alpha**2 + std**2, torch.ones_like(t), atol=1e-12)
    assert torch.allclose(alpha**2, schedule.alpha_bar(t), rtol=1e-12, atol=1e-15)
    finite = torch.isfinite(log_snr)
    assert torch.allclose(schedule.sigma(t)[finite], (std / alpha)[finite], rtol=1e-9)
    assert torch.allclose(torch.log(alpha**2 / std**2)[finite], log_snr[finite], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(all_schedules()))
def test_signal_decreases_from_data_to_noise(name):
    alpha_bar = all_schedules()[name].alpha_bar(GRID)
    assert (alpha_bar[1:] <= alpha_bar[:-1]).all()
    assert alpha_bar[0] > 0.99 and alpha_bar[-1] < 1e-3


def test_float32_times_give_float32_values():
    t = torch.rand(5)
    for schedule in all_schedules().values():
        assert schedule.alpha_bar(t).dtype == torch.float32


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid", "cosine_discrete"])
def test_t_from_log_snr_inverts_log_snr(name):
    schedule = all_schedules()[name]
    t = INNER
    recovered = schedule.t_from_log_snr(schedule.log_snr(t))
    assert torch.allclose(recovered, t, atol=1e-9)


def test_cosine_inverse_is_closed_form():
    schedule = CosineSchedule(logsnr_min=-12.0, logsnr_max=9.0)
    lam = torch.linspace(-12.0, 9.0, 50, dtype=torch.float64)
    assert torch.allclose(schedule.log_snr(schedule.t_from_log_snr(lam)), lam, atol=1e-9)


def test_cosine_matches_nichol_dhariwal():
    """alpha_bar(t) = f(t) / f(0) with f(t) = cos^2((t + s) / (1 + s) pi / 2), s = 0.008 (Nichol &
    Dhariwal 2021): the same curve as a cosine schedule whose log-SNR runs from -2 log tan(pi s /
    (2 (1 + s))) down to (nearly) minus infinity."""
    s = 0.008
    logsnr_max = -2 * math.log(math.tan(math.pi / 2 * s / (1 + s)))
    schedule = CosineSchedule(logsnr_min=-60.0, logsnr_max=logsnr_max)
    f = lambda t: np.cos((t + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    t = np.linspace(0, 0.999, 500)
    expected = f(t) / f(0)
    ours = schedule.alpha_bar(torch.from_numpy(t)).numpy() / float(schedule.alpha_bar(torch.tensor(0.0, dtype=torch.float64)))
    assert np.allclose(ours, expected, rtol=1e-9, atol=1e-12)


def test_cosine_endpoints_are_the_log_snr_bounds():
    schedule = CosineSchedule(logsnr_min=-10.0, logsnr_max=7.0)
    ends = schedule.log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(ends, torch.tensor([7.0, -10.0], dtype=torch.float64), atol=1e-9)
    with pytest.raises(ValueError, match="logsnr_min"):
        CosineSchedule(logsnr_min=3.0, logsnr_max=1.0)


def test_linear_schedule_is_the_product_of_one_minus_beta_on_its_grid():
    steps = 1000
    betas = np.linspace(1e-4, 0.02, steps)
    expected = np.cumprod(1 - betas)
    schedule = LinearSchedule(1e-4, 0.02, steps)
    grid = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    assert np.allclose(schedule.alpha_bar(grid).numpy(), expected, rtol=1e-10)
    assert float(schedule.alpha_bar(torch.tensor(0.0, dtype=torch.float64))) == 1.0
    # between grid points log(alpha_bar) is interpolated linearly
    middle = (torch.arange(1, steps, dtype=torch.float64) + 0.5) / steps
    geometric = np.sqrt(expected[:-1] * expected[1:])
    assert np.allclose(schedule.alpha_bar(middle).numpy(), geometric, rtol=1e-10)


def test_discrete_schedule_validates_betas():
    with pytest.raises(ValueError, match="betas"):
        DiscreteSchedule(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="betas"):
        DiscreteSchedule(torch.ones(2, 2) * 0.1)


def test_discretize_matches_the_continuous_schedule_on_its_grid():
    base = CosineSchedule()
    discrete = discretize(base, 50)
    grid = torch.arange(0, 51, dtype=torch.float64) / 50
    assert discrete.num_steps == 50
    assert torch.allclose(discrete.alpha_bar(grid), base.alpha_bar(grid) / base.alpha_bar(grid[:1]), rtol=1e-9)


def test_sigmoid_schedule_formula():
    start, end, tau = -3.0, 3.0, 1.0
    schedule = SigmoidSchedule(start, end, tau, logsnr_min=-40, logsnr_max=40)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    t = np.linspace(0.01, 0.99, 99)
    expected = (sig(end / tau) - sig((t * (end - start) + start) / tau)) / (sig(end / tau) - sig(start / tau))
    assert np.allclose(schedule.alpha_bar(torch.from_numpy(t)).numpy(), expected, rtol=1e-9)
    clamped = SigmoidSchedule().log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert clamped.tolist() == [15.0, -15.0]


@pytest.mark.parametrize("base", [CosineSchedule(), LinearSchedule(), SigmoidSchedule()])
def test_zero_terminal_snr_rescales_sqrt_alpha_bar_affinely(base):
    schedule = ZeroTerminalSNR(base)
    assert float(schedule.alpha_bar(torch.tensor(1.0, dtype=torch.float64))) == 0.0
    assert math.isinf(float(schedule.log_snr(torch.tensor(1.0, dtype=torch.float64))))
    t0 = torch.tensor(0.0, dtype=torch.float64)
    assert torch.allclose(schedule.alpha_bar(t0), base.alpha_bar(t0), rtol=1e-12)
    # sqrt(alpha_bar) is an affine function of the base's: (a - a_1) a_0 / (a_0 - a_1)
    a, b = base.alpha(INNER), schedule.alpha(INNER)
    a0, a1 = float(base.alpha(t0)), float(base.alpha(torch.tensor(1.0, dtype=torch.float64)))
    assert torch.allclose(b, (a - a1) * a0 / (a0 - a1), rtol=1e-9, atol=1e-12)


SPACING_CASES = [(spacing, schedule) for spacing in SPACINGS for schedule in ("cosine", "linear", "sigmoid")]


@pytest.mark.parametrize("spacing,schedule_name", SPACING_CASES)
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_sample_times_decrease_from_t_max_to_zero(spacing, schedule_name, steps):
    schedule = make_schedule(schedule_name)
    for t_max, sigma_max in ((1.0, None), (1.0, 80.0), (0.6, None)):
        times = schedule.sample_times(steps, spacing, t_max=t_max, sigma_max=sigma_max)
        assert times.shape == (steps + 1,)
        assert (times[1:] < times[:-1]).all(), times
        assert float(times[-1]) == 0.0
        assert abs(float(times[0]) - t_max) < 1e-6


def test_uniform_and_quadratic_spacings():
    schedule = CosineSchedule()
    u = torch.linspace(1, 0, 11)
    assert torch.allclose(schedule.sample_times(10, "uniform"), u)
    assert torch.allclose(schedule.sample_times(10, "quadratic"), u**2)


def test_log_snr_spacing_is_uniform_in_log_snr():
    schedule = CosineSchedule()
    times = schedule.sample_times(12, "log_snr").double()
    lam = schedule.log_snr(times[:-1])
    steps = lam[1:] - lam[:-1]
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-4)
    assert abs(float(times[-2]) - 1e-3) < 1e-6  # the smallest time worth a model call


def test_karras_spacing_is_uniform_in_sigma_to_the_one_over_seven():
    """Below Karras et al.'s sigma_max = 80: the first step jumps there from sigma(1) ~ 1800."""
    schedule = CosineSchedule()
    times = schedule.sample_times(12, "karras").double()
    assert abs(float(schedule.sigma(times[1])) - 80.0) < 1e-3
    root = schedule.sigma(times[1:-1]) ** (1 / 7)
    steps = root[1:] - root[:-1]
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-4)
    uncapped = schedule.sample_times(12, "karras", sigma_max=math.inf).double()
    root = schedule.sigma(uncapped[:-1]) ** (1 / 7)
    assert torch.allclose(root[1:] - root[:-1], (root[1] - root[0]).expand(11), rtol=1e-3)  # float32 times near t = 1


def test_trimmed_spacing_with_few_steps_keeps_steps_short_about_the_middle():
    schedule = CosineSchedule()
    times = schedule.sample_times(8, "trimmed").double()
    lam = schedule.log_snr(times[1:-1])  # after the jump from t = 1, before the last step to 0
    assert torch.allclose(lam[1:] - lam[:-1], torch.full((6,), 1.5, dtype=torch.float64), atol=1e-6)
    full = schedule.log_snr(torch.tensor([1e-3], dtype=torch.float64)), torch.tensor([-2 * math.log(80.0)], dtype=torch.float64)
    assert torch.allclose((lam[0] + lam[-1]) / 2, (full[0] + full[1]) / 2, atol=1e-6)


def test_trimmed_spacing_with_enough_steps_is_log_snr_below_sigma_80():
    schedule = CosineSchedule()
    assert torch.allclose(schedule.sample_times(30, "trimmed"), schedule.sample_times(30, "log_snr", sigma_max=80.0))


@pytest.mark.parametrize("spacing", ["log_snr", "karras"])
def test_sigma_max_caps_where_the_spacing_starts(spacing):
    schedule = CosineSchedule()  # sigma(1) is about 1800
    times = schedule.sample_times(8, spacing, sigma_max=20.0).double()
    assert float(times[0]) == 1.0
    assert abs(float(schedule.sigma(times[1])) - 20.0) < 1e-4
    low = CosineSchedule(logsnr_min=-2.0)  # sigma(1) = e: below the cap, so nothing changes
    assert torch.equal(low.sample_times(8, spacing, sigma_max=20.0), low.sample_times(8, spacing))


@pytest.mark.parametrize("spacing", SPACINGS)
def test_discrete_schedules_snap_to_their_grid(spacing):
    schedule = LinearSchedule(num_steps=1000)
    times = schedule.sample_times(25, spacing).double()
    assert torch.allclose(times * 1000, torch.round(times * 1000), atol=1e-3)
    if spacing in ("log_snr", "karras"):
        assert abs(float(times[-2]) - 1e-3) < 1e-7  # step 1 of 1000


def test_dense_spacings_on_a_coarse_grid_move_up_instead_of_colliding():
    schedule = LinearSchedule(num_steps=1000)
    times = (schedule.sample_times(50, "quadratic", t_max=0.6).double() * 1000).round()
    assert times[-1] == 0 and times[-2] == 1 and (times[1:] < times[:-1]).all()
    # where nothing collides the grid values are the rounded spacing
    coarse = (schedule.sample_times(10, "quadratic").double() * 1000).round()
    assert torch.equal(coarse[:-1], (torch.linspace(1, 0, 11, dtype=torch.float64)[:-1] ** 2 * 1000).round())


def test_too_many_steps_for_a_discrete_grid_are_refused():
    schedule = LinearSchedule(num_steps=100)
    everything = schedule.sample_times(100, "karras")
    assert torch.allclose(everything.double(), torch.arange(100, -1, -1, dtype=torch.float64) / 100)
    with pytest.raises(ValueError, match="fewer steps"):
        schedule.sample_times(101, "karras")
    with pytest.raises(ValueError, match="fewer steps"):
        schedule.sample_times(60, "uniform", t_max=0.5)


def test_bad_spacing_and_steps_are_refused():
    schedule = CosineSchedule()
    with pytest.raises(ValueError, match="valid: uniform, quadratic, log_snr, karras, trimmed"):
        schedule.sample_times(10, "linear-ish")
    with pytest.raises(ValueError, match="at least 1"):
        schedule.sample_times(0)


def test_make_schedule_names_dicts_and_options():
    assert isinstance(make_schedule("cosine"), CosineSchedule)
    linear = make_schedule({"name": "linear", "beta_end": 0.03, "num_steps": 200})
    assert isinstance(linear, LinearSchedule) and linear.num_steps == 200 and linear.beta_end == 0.03
    assert make_schedule("cosine", num_steps=64).num_steps == 64
    assert isinstance(make_schedule("sigmoid", zero_terminal_snr=True), ZeroTerminalSNR)
    same = CosineSchedule()
    assert make_schedule(same) is same


def test_unknown_schedule_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        make_schedule("cosine2")
    message = str(error.value)
    assert "cosine2" in message
    for name in ("cosine", "linear", "sigmoid"):
        assert name in message


def test_register_schedule():
    factory = lambda: CosineSchedule(logsnr_min=-5.0)  # noqa: E731
    register_schedule("test_short_cosine", factory)
    try:
        assert make_schedule("test_short_cosine").logsnr_min == -5.0
        with pytest.raises(ValueError, match="already registered"):
            register_schedule("test_short_cosine", lambda: CosineSchedule())
    finally:
        SCHEDULES.pop("test_short_cosine")


def test_training_times():
    g = torch.Generator().manual_seed(0)
    t = CosineSchedule().training_times(10000, generator=g)
    assert t.min() > 0 and t.max() <= 1 and abs(float(t.mean()) - 0.5) < 0.02
    discrete = LinearSchedule(num_steps=50).training_times(1000, generator=g)
    steps = discrete.double() * 50
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    assert steps.round().min() == 1 and steps.round().max() == 50
