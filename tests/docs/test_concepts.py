"""The equations of docs/concepts.md hold for the functions the page names."""

from __future__ import annotations

import math
from pathlib import Path

import torch

import diffkit
from diffkit.process import q_step, target
from diffkit.samplers import sample_dpmpp_2m, sample_ddpm

DOUBLE = torch.float64


def test_forward_steps_compose_to_the_closed_form():
    schedule = diffkit.LinearSchedule(beta_start=1e-3, beta_end=0.05, num_steps=50)
    grid = torch.arange(51, dtype=DOUBLE) / 50
    alpha_bar = schedule.alpha_bar(grid)
    # alpha_bar_i = prod (1 - beta_j), i.e. the ratio of neighbours is 1 - beta_i
    assert torch.allclose(alpha_bar[1:] / alpha_bar[:-1], 1 - schedule.betas, atol=1e-12)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 1.5, dtype=DOUBLE)
    x = x0
    for i in range(50):
        x = q_step(x, 1 - schedule.betas[i], torch.randn(x.shape, generator=generator, dtype=DOUBLE))
    # q(x_T | x_0) = N(sqrt(alpha_bar_T) x_0, (1 - alpha_bar_T) I)
    assert float(x.mean()) == pytest_approx(math.sqrt(alpha_bar[-1]) * 1.5, 0.01)
    assert float(x.var()) == pytest_approx(1 - alpha_bar[-1], 0.01)
    t = torch.ones(1, dtype=DOUBLE)
    closed = diffkit.q_sample(schedule, x0[:1], t, torch.ones(1, dtype=DOUBLE))
    assert float(closed) == pytest_approx(math.sqrt(alpha_bar[-1]) * 1.5 + math.sqrt(1 - alpha_bar[-1]), 1e-9)


def test_schedule_views_follow_from_the_log_snr():
    schedule = diffkit.CosineSchedule()
    t = torch.linspace(0.01, 0.99, 7, dtype=DOUBLE)
    lam = schedule.log_snr(t)
    assert torch.allclose(schedule.alpha_bar(t), torch.sigmoid(lam))
    assert torch.allclose(schedule.alpha(t) ** 2 + schedule.std(t) ** 2, torch.ones_like(t))
    assert torch.allclose(schedule.sigma(t), schedule.std(t) / schedule.alpha(t))
    # the cosine schedule: alpha_bar close to cos^2(pi t / 2) away from the clipped ends
    assert torch.allclose(schedule.alpha_bar(t), torch.cos(math.pi * t / 2) ** 2, atol=1e-3)
    assert float(lam[0]) > float(lam[-1])


def _losses(prediction: str, weighting: str, x0, x0_hat, t, noise) -> torch.Tensor:
    """Per-sample loss of a model whose clean-data estimate is ``x0_hat``, expressed as ``prediction``."""
    diffusion = diffkit.Diffusion("cosine", prediction, weighting=weighting, min_snr_gamma=5.0)
    alpha, std = diffusion.schedule.alpha(t), diffusion.schedule.std(t)

    def model(x_t, t_, cond=None):
        return diffkit.convert("x0", prediction, x0_hat, x_t, alpha, std)

    return diffusion.loss(model, x0, t=t, noise=noise, reduction="none")


def test_eps_v_and_x0_losses_differ_by_snr_weights_and_min_snr_caps_them():
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 3, generator=generator)
    x0_hat = x0 + 0.1 * torch.randn(6, 3, generator=generator)
    noise = torch.randn(6, 3, generator=generator)
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.95])
    snr = torch.exp(diffkit.CosineSchedule().log_snr(t))
    x0_loss = ((x0 - x0_hat) ** 2).mean(1)
    assert torch.allclose(_losses("x0", "uniform", x0, x0_hat, t, noise), x0_loss, rtol=1e-4)
    assert torch.allclose(_losses("eps", "uniform", x0, x0_hat, t, noise), snr * x0_loss, rtol=1e-4)
    assert torch.allclose(_losses("v", "uniform", x0, x0_hat, t, noise), (1 + snr) * x0_loss, rtol=1e-4)
    for prediction in ("x0", "eps", "v"):
        capped = _losses(prediction, "min_snr", x0, x0_hat, t, noise)
        assert torch.allclose(capped, snr.clamp(max=5.0) * x0_loss, rtol=1e-4), prediction


def test_v_target_and_its_inversions():
    generator = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 4, 5, generator=generator, dtype=DOUBLE)
    alpha = torch.tensor([0.6, 0.8, 0.28, 0.96], dtype=DOUBLE)
    std = (1 - alpha**2).sqrt()
    x_t = alpha[:, None] * x0 + std[:, None] * eps
    v = target("v", x0, eps, alpha, std)
    assert torch.allclose(v, alpha[:, None] * eps - std[:, None] * x0)
    assert torch.allclose(diffkit.to_x0("v", v, x_t, alpha, std), alpha[:, None] * x_t - std[:, None] * v)
    assert torch.allclose(diffkit.to_x0("eps", eps, x_t, alpha, std), x0)
    assert torch.allclose(diffkit.to_eps(x0, x_t, alpha, std), eps)


def test_ddpm_step_equals_the_eps_form_of_ho_et_al():
    schedule = diffkit.CosineSchedule()
    t, s = torch.tensor(0.6, dtype=DOUBLE), torch.tensor(0.5, dtype=DOUBLE)
    eps_hat = torch.tensor([[0.3, -1.2]], dtype=DOUBLE)
    x_t = torch.tensor([[0.7, 0.1]], dtype=DOUBLE)
    ab_t, ab_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
    beta = 1 - ab_t / ab_s
    expected = (x_t - beta / (1 - ab_t).sqrt() * eps_hat) / (1 - beta).sqrt()
    model = lambda x, t_, cond=None: eps_hat.expand_as(x)  # noqa: E731
    seen = []
    # times (t, s, 0): the first step is t -> s; z is zero because the noise function returns zeros
    no_noise = lambda like, generator=None, **_: torch.zeros_like(like)  # noqa: E731
    denoiser = diffkit.Denoiser(model, schedule, "eps", noise_fn=no_noise)
    sample_ddpm(denoiser, x_t, torch.stack([t, s, torch.zeros((), dtype=DOUBLE)]),
                callback=lambda info: seen.append(info["x"]))
    assert torch.allclose(seen[0], expected)


def test_dpm_solver_2m_update():
    schedule = diffkit.CosineSchedule()
    times = torch.tensor([0.9, 0.7, 0.5, 0.0], dtype=DOUBLE)
    estimates = iter([torch.tensor([[1.0]]), torch.tensor([[2.0]]), torch.tensor([[3.0]])])

    class Recorded(diffkit.Denoiser):
        def __call__(self, x, t):
            x0 = next(estimates).to(DOUBLE)
            return x0, diffkit.to_eps(x0, x, self.schedule.alpha(t), self.schedule.std(t))

    seen = []
    x = torch.tensor([[0.4]], dtype=DOUBLE)
    sample_dpmpp_2m(Recorded(None, schedule, "x0"), x, times, callback=lambda info: seen.append(info["x"]))
    lam = schedule.log_snr(times[:3]) / 2
    alpha, std = schedule.alpha(times[:3]), schedule.std(times[:3])
    h1, h2 = lam[1] - lam[0], lam[2] - lam[1]
    first = std[1] / std[0] * x + alpha[1] * (1 - torch.exp(-h1)) * 1.0        # D = x0_hat on step one
    r = h1 / h2
    d = (1 + 1 / (2 * r)) * 2.0 - 1 / (2 * r) * 1.0
    second = std[2] / std[1] * first + alpha[2] * (1 - torch.exp(-h2)) * d
    assert torch.allclose(seen[0], first) and torch.allclose(seen[1], second)
    assert float(seen[2]) == 3.0                                                # the last step returns x0_hat


def test_guidance_combines_conditional_and_unconditional_outputs():
    schedule = diffkit.CosineSchedule()
    model = lambda x, t, cond=None: torch.zeros_like(x) + (cond[:, None] if cond is not None else 0.0)  # noqa: E731
    cond, null = torch.tensor([2.0, 5.0]), torch.tensor([0.5, 0.5])
    denoiser = diffkit.Denoiser(model, schedule, "x0", cond=cond, uncond=null, guidance=3.0)
    x0, _ = denoiser(torch.zeros(2, 1), 0.5)
    assert torch.allclose(x0[:, 0], null + 3.0 * (cond - null))


def test_inpainting_keeps_the_known_part_exactly():
    schedule = diffkit.CosineSchedule()
    denoiser = diffkit.Denoiser(lambda x, t, cond=None: torch.zeros_like(x), schedule, "x0")
    known = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    mask = (torch.arange(6) < 3).float().expand(4, 6)
    times = schedule.sample_times(10)
    x = diffkit.inpaint(diffkit.get_sampler("ddpm"), denoiser, torch.randn(4, 6), times, known, mask, resample=2,
                        generator=torch.Generator().manual_seed(4))
    assert torch.equal(x[:, :3], known[:, :3])
    # where nothing is known the result is the model's estimate (0), up to alpha_bar(0) = sigmoid(15) < 1
    assert torch.allclose(x[:, 3:], torch.zeros(4, 3), atol=1e-4)


def test_slerp_formula_and_norm():
    generator = torch.Generator().manual_seed(5)
    z0, z1 = torch.randn(2, 3, 100, generator=generator, dtype=DOUBLE)
    w = 0.3
    cos = (z0 * z1).sum(1) / (z0.norm(dim=1) * z1.norm(dim=1))
    theta = torch.arccos(cos)[:, None]
    expected = torch.sin((1 - w) * theta) / torch.sin(theta) * z0 + torch.sin(w * theta) / torch.sin(theta) * z1
    assert torch.allclose(diffkit.slerp(z0, z1, w), expected)
    # orthogonal noises of equal norm: the norm is kept all along, while lerp's midpoint shrinks by sqrt(2)
    a, b = torch.eye(2, dtype=DOUBLE)[None, 0], torch.eye(2, dtype=DOUBLE)[None, 1]
    for weight in (0.0, 0.25, 0.5, 1.0):
        assert float(diffkit.slerp(a, b, weight).norm()) == pytest_approx(1.0, 1e-12)
    assert float((0.5 * a + 0.5 * b).norm()) == pytest_approx(1 / math.sqrt(2), 1e-12)


def pytest_approx(expected, tolerance):
    import pytest

    return pytest.approx(float(expected), abs=tolerance)


def test_concepts_names_every_built_in_sampler_and_spacing():
    from diffkit.schedules import SPACINGS

    text = (Path(__file__).resolve().parents[2] / "docs" / "concepts.md").read_text()
    built_in = [fn for fn in diffkit.SAMPLERS.values()
                if getattr(fn, "__module__", "") in ("diffkit.samplers", "diffkit.categorical_samplers")]
    assert any(fn.__module__ == "diffkit.categorical_samplers" for fn in built_in)
    names = [f"{fn.__module__}.{fn.__name__}" for fn in built_in]
    missing = [name for name in names if f"`{name}`" not in text]
    missing += [spacing for spacing in (*SPACINGS, "signal") if f"`{spacing}`" not in text]
    assert not missing, f"docs/concepts.md does not describe {missing}"
