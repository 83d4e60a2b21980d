"""Flow matching against closed forms: the convention, the exact flow map of a Gaussian, the orders
of the ODE solvers, training-time laws and the shift, guidance, inpainting, editing and distillation."""

from __future__ import annotations

import math

import pytest
import torch

import diffkit
from diffkit import FlowMatching
from diffkit.distill import ddim_target, student_times, teacher_solution
from diffkit.flow import CosinePath, LinearPath, shift_time, unshift_time
from diffkit.gmm import GaussianMixture
from diffkit.samplers import sample_ddim

DOUBLE = torch.float64
MU, SD = 1.5, 0.3


def gaussian_velocity(path, mu=MU, sd=SD):
    """The exact velocity towards ``N(mu, sd^2)`` in 1-D: ``x_t ~ N(a mu, a^2 sd^2 + s^2)``."""

    def model(x, t, cond=None):
        t = t.double()[:, None]
        a, s, da, ds = path.alpha(t), path.sigma(t), path.d_alpha(t), path.d_sigma(t)
        z = x.double() - a * mu
        var = a**2 * sd**2 + s**2
        return (da * (mu + a * sd**2 / var * z) + ds * s / var * z).to(x.dtype)

    return model


def flow_map_error(flow, sampler, steps, n=256, **options):
    """Largest distance of the samples from the exact flow map ``eps -> mu + sd eps`` of ``N(mu, sd^2)``:
    in 1-D the ODE of any Gaussian path keeps the rank of every point, so it is the quantile map."""
    eps = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=DOUBLE)
    x = flow.sample(gaussian_velocity(flow.path), eps, sampler=sampler, steps=steps, x_T=eps, spacing="uniform",
                    **options)
    return float((x - (MU + SD * eps)).abs().max())


def test_the_convention_is_linear_with_velocity_eps_minus_x0():
    flow = FlowMatching()
    x0, eps = torch.randn(6, 3, dtype=DOUBLE), torch.randn(6, 3, dtype=DOUBLE)
    t = torch.linspace(0.0, 1.0, 6, dtype=DOUBLE)
    torch.testing.assert_close(flow.q_sample(x0, t, eps), (1 - t[:, None]) * x0 + t[:, None] * eps)
    oracle = lambda x, time, cond=None: eps - x0  # noqa: E731
    assert float(flow.loss(oracle, x0, t=t, noise=eps)) < 1e-20
    wrong = lambda x, time, cond=None: x0 - eps  # noqa: E731
    torch.testing.assert_close(flow.loss(wrong, x0, t=t, noise=eps), (4 * (eps - x0) ** 2).mean().float())


def test_sample_calls_the_model_with_one_time_per_sample():
    seen = []

    def model(x, t, cond=None):
        seen.append((tuple(x.shape), tuple(t.shape), float(t[0])))
        return torch.zeros_like(x)

    FlowMatching().sample(model, shape=(5, 2), sampler="flow_euler", steps=4, generator=torch.Generator().manual_seed(0))
    assert [shape for shape, _, _ in seen] == [(5, 2)] * 4 and all(times == (5,) for _, times, _ in seen)
    assert [t for _, _, t in seen] == [1.0, 0.75, 0.5, 0.25]


@pytest.mark.parametrize("path", ["linear", "cosine"])
@pytest.mark.parametrize("sampler, order", [("flow_euler", 1), ("flow_heun", 2), ("flow_midpoint", 2)])
def test_fixed_step_solvers_converge_to_the_exact_flow_map_at_their_order(path, sampler, order):
    flow = FlowMatching(path)
    errors = [flow_map_error(flow, sampler, steps) for steps in (16, 32, 64)]
    for coarse, fine in zip(errors, errors[1:]):
        assert coarse / fine > 0.75 * 2**order, errors  # twice the steps divide the error by 2^order or more


@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_dopri5_meets_its_tolerance_and_spends_calls_on_it(path):
    flow = FlowMatching(path)
    model = gaussian_velocity(flow.path)
    eps = torch.randn(64, 1, generator=torch.Generator().manual_seed(1), dtype=DOUBLE)
    calls, errors = [], []
    for tolerance in (1e-4, 1e-8):
        denoiser = flow.denoiser(model)
        x = flow.run_sampler(flow.get_sampler("dopri5"), denoiser, eps, torch.tensor([1.0, 0.0], dtype=DOUBLE),
                             rtol=tolerance, atol=tolerance)
        calls.append(denoiser.calls)
        errors.append(float((x - (MU + SD * eps)).abs().max()))
    assert errors[0] < 1e-3 and errors[1] < 1e-7 and calls[1] > calls[0]


@pytest.mark.parametrize("path", ["linear", "cosine"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc"])
def test_gaussian_samplers_give_what_they_give_the_variance_preserving_diffusion_of_the_same_log_snr(path, sampler):
    """A flow's Gaussian samplers run on x / c(t), the variance-preserving path of its log-SNR: the
    same samples as Gaussian diffusion with that schedule and its exact denoiser (the two exact
    models differ only in what they predict)."""
    mixture = GaussianMixture(torch.tensor([1.0, 2.0]), torch.tensor([[0.0, 1.0], [1.0, -1.0]]),
                              stds=torch.tensor([0.3, 0.2]))
    flow = FlowMatching(path)
    diffusion = diffkit.Diffusion(flow.schedule, "v")
    eps = torch.randn(64, 2, generator=torch.Generator().manual_seed(9), dtype=DOUBLE)
    by_flow = flow.sample(mixture.velocity(flow.path), eps, sampler=sampler, steps=12, x_T=eps,
                          generator=torch.Generator().manual_seed(10))
    by_diffusion = diffusion.sample(mixture.denoiser(flow.schedule, "v"), eps, sampler=sampler, steps=12, x_T=eps,
                                    generator=torch.Generator().manual_seed(10))
    torch.testing.assert_close(by_flow, by_diffusion, rtol=0, atol=1e-9)


def test_ddim_on_the_linear_path_is_flows_euler_step():
    flow = FlowMatching()
    eps = torch.randn(32, 1, generator=torch.Generator().manual_seed(2), dtype=DOUBLE)
    by_ddim = flow.sample(gaussian_velocity(flow.path), eps, sampler="ddim", steps=7, x_T=eps)
    by_euler = flow.sample(gaussian_velocity(flow.path), eps, sampler="flow_euler", steps=7, x_T=eps)
    torch.testing.assert_close(by_ddim, by_euler, rtol=0, atol=1e-6)  # the times are float32


def test_the_exact_velocity_of_a_mixture_is_consistent_with_its_posterior_means():
    """``x_t = alpha E[x_0 | x_t] + sigma E[eps | x_t]`` (linearity), for diagonal and full covariances."""
    means = torch.tensor([[0.0, 1.0], [1.0, -1.0]])
    for mixture in (GaussianMixture(torch.tensor([1.0, 2.0]), means, stds=torch.tensor([0.3, 0.5])),
                    GaussianMixture(torch.tensor([1.0, 2.0]), means,
                                    torch.tensor([[[0.2, 0.05], [0.05, 0.1]], [[0.3, 0.0], [0.0, 0.1]]]))):
        x = torch.randn(7, 2, generator=torch.Generator().manual_seed(3), dtype=DOUBLE)
        a, s = torch.full((7,), 0.6, dtype=DOUBLE), torch.full((7,), 0.7, dtype=DOUBLE)
        combined = a[:, None] * mixture.posterior_mean(x, a, s) + s[:, None] * mixture.posterior_noise(x, a, s)
        torch.testing.assert_close(combined, x)
        # At t = 0 the velocity of the linear path is -x_0 = -x: the noise is independent of the data.
        torch.testing.assert_close(mixture.velocity(LinearPath())(x, torch.zeros(7, dtype=DOUBLE)), -x)


def test_training_times_follow_their_laws_and_the_shift():
    n, generator = 40_000, torch.Generator().manual_seed(4)
    uniform = FlowMatching().training_times(n, generator=generator).double()
    assert 0 < float(uniform.min()) and float(uniform.max()) <= 1 and abs(float(uniform.mean()) - 0.5) < 0.01
    logit = FlowMatching(training_times="logit_normal", logit_mean=0.5, logit_std=0.8).training_times(
        n, generator=generator).double()
    logits = torch.log(logit) - torch.log1p(-logit)
    assert abs(float(logits.mean()) - 0.5) < 0.02 and abs(float(logits.std()) - 0.8) < 0.02
    # A shifted uniform time t' has P(t' <= x) = unshift(x): compare the empirical CDF at a few points.
    shifted = FlowMatching(shift=3.0).training_times(n, generator=generator).double()
    for point in (0.25, 0.5, 0.75, 0.9):
        cdf = float(unshift_time(torch.tensor(point, dtype=DOUBLE), 3.0))
        assert abs(float((shifted <= point).double().mean()) - cdf) < 0.01  # 4.5 standard errors at most


def test_the_shift_maps_sampling_times_and_keeps_their_ends():
    times = FlowMatching(shift=3.0).sample_times(4, "uniform").double()
    plain = torch.linspace(1.0, 0.0, 5, dtype=DOUBLE)
    torch.testing.assert_close(times, shift_time(plain, 3.0), rtol=0, atol=1e-7)
    edit = FlowMatching(shift=3.0).sample_times(4, "uniform", t_max=0.6)
    assert float(edit[0]) == pytest.approx(0.6) and float(edit[-1]) == 0.0
    torch.testing.assert_close(unshift_time(shift_time(plain, 2.5), 2.5), plain)


def test_classifier_free_guidance_combines_velocities():
    flow = FlowMatching()
    model = lambda x, t, cond=None: x * (0.0 if cond is None else cond[:, None])  # noqa: E731
    x, cond = torch.randn(4, 2), torch.tensor([1.0, 2.0, 3.0, 4.0])
    for uncond in (None, torch.zeros(4)):
        guided = flow.denoiser(model, x, cond=cond, guidance=3.0, uncond=uncond)(x, 0.5)
        torch.testing.assert_close(guided, 3.0 * cond[:, None] * x)


def test_forward_steps_compose_to_the_forward_process():
    """``q(x_s | x_0)`` followed by ``q(x_t | x_s)`` is ``q(x_t | x_0)``: mean alpha_t x_0 and
    variance sigma_t^2, for both paths."""
    for path in ("linear", "cosine"):
        flow = FlowMatching(path)
        x0 = torch.full((200_000, 1), 0.7, dtype=DOUBLE)
        generator = torch.Generator().manual_seed(5)
        x_s = flow.q_sample(x0, torch.tensor(0.3, dtype=DOUBLE), generator=generator)
        x_t = flow.forward_step(x_s, torch.tensor(0.3), torch.tensor(0.8), generator=generator)
        alpha, sigma = flow.coefficients(torch.tensor(0.8))
        assert abs(float(x_t.mean()) - 0.7 * float(alpha)) < 0.005
        assert abs(float(x_t.std()) / float(sigma) - 1) < 0.005


def test_inpainting_with_resampling_reproduces_the_analytic_conditional():
    mean, (std1, std2, rho), known_value = torch.tensor([0.5, -0.3], dtype=DOUBLE), (1.0, 0.8, 0.8), 1.2
    cov = torch.tensor([[std1**2, rho * std1 * std2], [rho * std1 * std2, std2**2]], dtype=DOUBLE)
    flow = FlowMatching()
    model = GaussianMixture(torch.ones(1), mean[None], cov[None]).velocity(flow.path)
    known = torch.zeros(2000, 2, dtype=DOUBLE)
    known[:, 0] = known_value
    keep = torch.zeros(2000, 2)
    keep[:, 0] = 1
    out = flow.inpaint(model, known, keep, steps=50, resample=10, generator=torch.Generator().manual_seed(6))
    assert torch.equal(out[:, 0], known[:, 0])
    cond_mean = float(mean[1]) + rho * std2 / std1 * (known_value - float(mean[0]))
    cond_std = std2 * math.sqrt(1 - rho**2)
    assert abs(float(out[:, 1].mean()) - cond_mean) < 0.04          # 2000 samples: standard error 0.011
    assert abs(float(out[:, 1].std()) / cond_std - 1) < 0.06


def test_editing_keeps_small_strengths_close_and_full_strength_samples_the_law():
    flow = FlowMatching()
    model = gaussian_velocity(flow.path)
    x0 = torch.full((4000, 1), 3.0, dtype=DOUBLE)  # far out in the tail of N(1.5, 0.3^2)
    near = flow.edit(model, x0, 0.02, generator=torch.Generator().manual_seed(7))
    assert float((near - x0).abs().mean()) < 0.05
    far = flow.edit(model, x0, 1.0, steps=40, generator=torch.Generator().manual_seed(7))
    assert abs(float(far.mean()) - MU) < 0.02 and abs(float(far.std()) / SD - 1) < 0.05


def test_the_student_objective_holds_for_flows():
    """The DDIM step a student takes is the same in any scaling of the path, so its target, made
    in the flow's own coefficients, lands a DDIM step (on the variance-preserving view) on the
    teacher's point; and the teacher's solution is the exact flow map of a Gaussian."""
    flow = FlowMatching()
    generator = torch.Generator().manual_seed(8)
    x_t, x_s = (torch.randn(8, 1, generator=generator, dtype=DOUBLE) for _ in range(2))
    for t_value, s_value in ((0.9, 0.4), (0.25, 0.0)):
        t, s = torch.full((8,), t_value, dtype=DOUBLE), torch.full((8,), s_value, dtype=DOUBLE)
        target_x0, _ = ddim_target(flow, x_t, x_s, t, s)

        def model(x, time, cond=None):  # the velocity whose clean-data estimate is target_x0
            alpha, sigma = flow.coefficients(time)
            eps = (x.double() - alpha[:, None] * target_x0) / sigma[:, None]
            return flow.path.velocity(target_x0, eps, time)

        landed = flow.run_sampler(sample_ddim, flow.denoiser(model), x_t, torch.tensor([t_value, s_value], dtype=DOUBLE))
        torch.testing.assert_close(landed, x_s, rtol=0, atol=1e-6)
    eps = torch.randn(16, 1, generator=generator, dtype=DOUBLE)
    t, s = torch.ones(16, dtype=DOUBLE), torch.zeros(16, dtype=DOUBLE)
    for sampler in ("dpmpp_2m", "flow_midpoint"):  # a Gaussian and a flow sampler as the teacher's solver
        solved = teacher_solution(gaussian_velocity(flow.path), flow, eps, t, s, sampler=sampler, substeps=24)
        assert float((solved - (MU + SD * eps)).abs().max()) < 1e-2
    torch.testing.assert_close(student_times(FlowMatching(shift=2.0), 4, "uniform"),
                               FlowMatching(shift=2.0).sample_times(4, "uniform"))


def test_bad_settings_are_refused_with_the_valid_choices():
    with pytest.raises(ValueError, match="unknown flow path 'straight'; valid: linear, cosine"):
        FlowMatching("straight")
    with pytest.raises(ValueError, match="unknown training times 'beta'; valid: uniform, logit_normal"):
        FlowMatching(training_times="beta")
    with pytest.raises(ValueError, match="shift must be positive"):
        FlowMatching(shift=0.0)
    with pytest.raises(ValueError, match="'ancestral' is a categorical sampler, but a flow or gaussian one"):
        FlowMatching().sample(lambda x, t, cond=None: x, (2, 1), sampler="ancestral")


def test_paths_reach_their_ends_and_invert_their_log_snr():
    for path in (LinearPath(), CosinePath()):
        ends = torch.tensor([0.0, 1.0], dtype=DOUBLE)
        assert path.alpha(ends).tolist() == [1.0, 0.0] and path.sigma(ends).tolist() == [0.0, 1.0]
        t = torch.linspace(0.05, 0.95, 7, dtype=DOUBLE)
        torch.testing.assert_close(path.t_from_log_snr(path.log_snr(t)), t)
        # The velocity is the time derivative of the path: compare with a central difference.
        x0, eps, h = torch.full((7,), 0.4, dtype=DOUBLE), torch.full((7,), -1.3, dtype=DOUBLE), 1e-6
        numeric = ((path.alpha(t + h) - path.alpha(t - h)) * x0 + (path.sigma(t + h) - path.sigma(t - h)) * eps) / (2 * h)
        torch.testing.assert_close(path.velocity(x0, eps, t), numeric, rtol=1e-6, atol=1e-8)


def test_a_flow_is_a_config_kind():
    from diffkit.generate import PROCESSES

    assert PROCESSES["flow"] is FlowMatching and diffkit.FlowMatching is FlowMatching


# -- the runner, the conformance kit and distillation, with diffusion.kind = "flow" ------------

FLOW = {"diffusion": {"kind": "flow", "training_times": "logit_normal", "shift": 2.0}}


def test_an_interrupted_then_resumed_flow_run_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    from diffkit import checkpoint as ckpt
    from diffkit.config import resolve_config
    from diffkit.runner import train
    from run_checks import assert_same_weights, final_weights, stop_at_step
    from toy_domain import ToyDomain

    domain = ToyDomain()
    config = resolve_config(domain, overrides={**FLOW, "train": {"steps": 40, "checkpoint_every": 10}})
    train(domain, config, out=tmp_path / "straight", progress=False)
    stop_at_step(25, lambda: train(domain, config, out=tmp_path / "resumed", progress=False), monkeypatch)
    assert ckpt.resolve(tmp_path / "resumed").name == "step_00000020.pt"
    train(domain, config, out=tmp_path / "resumed", resume=True, progress=False)
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed"), rtol=0, atol=0)


def test_the_conformance_kit_checks_a_flow_domain(tmp_path):
    from diffkit.testing import check_domain
    from toy_domain import ToyDomain

    assert check_domain(ToyDomain(), tmp_path, overrides=FLOW) == []
    problems = check_domain(ToyDomain(), tmp_path / "wrong", overrides={**FLOW, "sample": {"sampler": "ancestral"}})
    assert any("'ancestral' is a categorical sampler, but diffusion.kind is 'flow'" in p for p in problems)


def test_a_flow_teacher_distils_into_a_ddim_student(tmp_path):
    from diffkit.config import resolve_config
    from diffkit.distill import distill, load_teacher, student_config
    from diffkit.generate import SampleRequest, generate
    from diffkit.loading import load_for_sampling
    from diffkit.runner import train
    from toy_domain import ToyDomain

    domain = ToyDomain()
    train(domain, resolve_config(domain, overrides={**FLOW, "train": {"steps": 20, "checkpoint_every": 20}}),
          out=tmp_path / "teacher", progress=False)
    _, teacher_config, info = load_teacher(domain, tmp_path / "teacher")
    config = student_config(domain, teacher_config, info["source"], 2, overrides={"train": {"steps": 4}})
    assert config["diffusion"]["kind"] == "flow" and config["sample"]["sampler"] == "ddim"
    distill(domain, config, out=tmp_path / "student", progress=False)
    model, saved = load_for_sampling(domain, tmp_path / "student")
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    points = generate(domain, model, saved, SampleRequest(n=8, seed=0))["x"]
    assert points.shape == (8, 2) and bool(torch.isfinite(points).all()) and len(calls) == 2


def test_choosing_another_kind_takes_its_default_sampler_unless_one_is_named():
    from diffkit.config import resolve_config
    from toy_categorical import ToyCategoricalDomain

    domain = ToyCategoricalDomain()  # samples with discrete_flow, a categorical sampler
    assert resolve_config(domain, sets=["diffusion.kind=flow"])["sample"]["sampler"] == "dpmpp_2m"
    named = resolve_config(domain, sets=["sample.sampler=flow_heun", "diffusion.kind=flow"])
    assert named["sample"]["sampler"] == "flow_heun"
    assert resolve_config(domain)["sample"]["sampler"] == "discrete_flow"


def test_a_run_whose_data_does_not_suit_the_process_is_refused_before_training(tmp_path):
    from diffkit.config import resolve_config
    from diffkit.runner import TrainingError, train
    from toy_categorical import ToyCategoricalDomain

    domain = ToyCategoricalDomain()
    with pytest.raises(TrainingError, match="does not suit diffusion.kind = 'flow': state leaves must be floating"):
        train(domain, resolve_config(domain, sets=["diffusion.kind=flow"]), out=tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()
