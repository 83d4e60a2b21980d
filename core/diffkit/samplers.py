"""Samplers: short functions with one contract,

``sample_<name>(denoiser, x, times, *, generator=None, callback=None, **options) -> x_0``

``denoiser(x, t)`` returns ``(x0_estimate, eps_estimate)`` (see :class:`diffkit.Denoiser`),
``x`` is the starting state at ``times[0]`` and ``times`` decreases to 0. ``callback``, when
given, receives ``{"step", "t", "x", "x0"}`` after every step. Samplers are registered by name;
plugins add more through the ``diffkit_register_samplers`` hook.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .denoiser import Denoiser
from .process import posterior
from .tree import State, combine

Sampler = Callable[..., State]
SAMPLERS: dict[str, Sampler] = {}


def register_sampler(name: str, sampler: Sampler | None = None):
    """Register ``sampler`` under ``name``; usable as a decorator. A name may be taken once."""

    def add(fn: Sampler) -> Sampler:
        if name in SAMPLERS and SAMPLERS[name] is not fn:
            raise ValueError(f"a sampler named {name!r} is already registered")
        SAMPLERS[name] = fn
        return fn

    return add(sampler) if sampler is not None else add


def get_sampler(name: str) -> Sampler:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(sorted(SAMPLERS))}") from None


def _notify(callback, step: int, t: Tensor, x: State, x0: State) -> None:
    if callback is not None:
        callback({"step": step, "t": float(t), "x": x, "x0": x0})


@register_sampler("ddpm")
def sample_ddpm(denoiser: Denoiser, x: State, times: Tensor, *, generator=None, callback=None,
                variance: str = "posterior") -> State:
    """DDPM ancestral sampling (Ho et al. 2020):
    ``x_s = (x_t - beta / sqrt(1 - ab_t) eps) / sqrt(1 - beta) + sigma z`` with ``beta = 1 - ab_t / ab_s``
    and ``sigma^2`` the posterior variance ``(1 - ab_s) / (1 - ab_t) beta`` or ``beta`` itself."""
    if variance not in ("posterior", "beta"):
        raise ValueError(f"unknown variance {variance!r}; valid: posterior, beta")
    schedule = denoiser.schedule
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        x0, _ = denoiser(x, t)
        # The posterior mean in its x0 form equals the eps form above and stays finite at ab_t = 0.
        mean, var = posterior(schedule, x0, x, t, s)
        if s > 0:
            if variance == "beta":
                var = 1 - schedule.alpha_bar(t) / schedule.alpha_bar(s)
            x = combine((1.0, mean), (var.sqrt(), denoiser.noise_like(x, generator)))
        else:
            x = mean
        _notify(callback, i, t, x, x0)
    return x


@register_sampler("ddim")
def sample_ddim(denoiser: Denoiser, x: State, times: Tensor, *, generator=None, callback=None,
                eta: float = 0.0) -> State:
    """DDIM (Song et al. 2021): ``x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - c^2) eps + c z``,
    ``c = eta sqrt((1 - ab_s) / (1 - ab_t) (1 - ab_t / ab_s))``; ``eta = 1`` is ancestral DDPM."""
    schedule = denoiser.schedule
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        x0, eps = denoiser(x, t)
        ab_t, ab_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
        c = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).clamp(min=0).sqrt()
        terms = [(ab_s.sqrt(), x0), ((1 - ab_s - c**2).clamp(min=0).sqrt(), eps)]
        if eta > 0 and s > 0:
            terms.append((c, denoiser.noise_like(x, generator)))
        x = combine(*terms)
        _notify(callback, i, t, x, x0)
    return x


@register_sampler("euler")
def sample_euler(denoiser: Denoiser, x: State, times: Tensor, *, generator=None, callback=None) -> State:
    """Euler's method on the probability-flow ODE in Karras et al.'s (2022) coordinates
    ``(sigma, x / alpha)``, where ``d(x / alpha) / d sigma = eps``. Written in ``x`` the step is
    ``x_s = alpha_s x0 + std_s eps``, so it coincides with DDIM at ``eta = 0``."""
    return sample_ddim(denoiser, x, times, generator=generator, callback=callback, eta=0.0)


@register_sampler("heun")
def sample_heun(denoiser: Denoiser, x: State, times: Tensor, *, generator=None, callback=None) -> State:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1): an
    Euler step in ``(sigma, x / alpha)``, corrected with the slope at its end; two model
    calls a step, one on the last step to ``sigma = 0``."""
    schedule = denoiser.schedule
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        x0, eps = denoiser(x, t)
        alpha_t, alpha_s = schedule.alpha(t), schedule.alpha(s)
        euler = combine((alpha_s, x0), (schedule.std(s), eps))
        if s == 0 or alpha_t == 0:
            x = euler
        else:
            _, eps_end = denoiser(euler, s)
            d_sigma = schedule.sigma(s) - schedule.sigma(t)
            x = combine((alpha_s / alpha_t, x), (alpha_s * d_sigma / 2, eps), (alpha_s * d_sigma / 2, eps_end))
        _notify(callback, i, t, x, x0)
    return x


@register_sampler("dpmpp_2m")
def sample_dpmpp_2m(denoiser: Denoiser, x: State, times: Tensor, *, generator=None, callback=None) -> State:
    """DPM-Solver++(2M) (Lu et al. 2022), the multistep second-order data-prediction solver:
    ``x_s = (std_s / std_t) x_t - alpha_s (e^{-h} - 1) D`` with ``h = lambda_s - lambda_t``
    (``lambda`` = half log-SNR) and ``D`` extrapolated from the last two x0 estimates."""
    schedule = denoiser.schedule
    x0_prev, h_prev = None, None
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        x0, _ = denoiser(x, t)
        if s == 0:
            x = x0  # the exact last step of the first-order solver to std = 0
        else:
            lam_t, lam_s = schedule.log_snr(t) / 2, schedule.log_snr(s) / 2
            h = lam_s - lam_t
            d = x0
            if x0_prev is not None:
                r = h_prev / h
                d = combine((1 + 1 / (2 * r), x0), (-1 / (2 * r), x0_prev))
            x = combine((schedule.std(s) / schedule.std(t), x), (-schedule.alpha(s) * torch.expm1(-h), d))
            h_prev = h
        x0_prev = x0
        _notify(callback, i, t, x, x0)
    return x


@register_sampler("dpmpp_2m_sde")
def sample_dpmpp_2m_sde(denoiser: Denoiser, x: State, times: Tensor, *, generator=None,
                        callback=None, eta: float = 1.0) -> State:
    """DPM-Solver++(2M) SDE (Lu et al. 2022), the stochastic multistep solver in its
    midpoint form: ``x_s = (std_s / std_t) e^{-eta h} x_t + alpha_s (1 - e^{-(1 + eta) h}) D
    + std_s sqrt(1 - e^{-2 eta h}) z``."""
    schedule = denoiser.schedule
    x0_prev, h_prev = None, None
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        x0, _ = denoiser(x, t)
        if s == 0:
            x = x0
        else:
            h = (schedule.log_snr(s) - schedule.log_snr(t)) / 2
            d = x0
            if x0_prev is not None:
                r = h_prev / h
                d = combine((1 + 1 / (2 * r), x0), (-1 / (2 * r), x0_prev))
            terms = [
                (schedule.std(s) / schedule.std(t) * torch.exp(-eta * h), x),
                (-schedule.alpha(s) * torch.expm1(-(1 + eta) * h), d),
            ]
            if eta > 0:
                noise_scale = schedule.std(s) * (-torch.expm1(-2 * eta * h)).clamp(min=0).sqrt()
                terms.append((noise_scale, denoiser.noise_like(x, generator)))
            x = combine(*terms)
            h_prev = h
        x0_prev = x0
        _notify(callback, i, t, x, x0)
    return x


@register_sampler("dpmpp_3m")
def sample_dpmpp_3m(denoiser: Denoiser, x: State, times: Tensor, *, generator=None, callback=None) -> State:
    """DPM-Solver++(3M) (Lu et al. 2022), third-order multistep: the exact solution
    ``x_s = (std_s / std_t) x_t + std_s * integral of e^lambda x0(lambda)`` over ``[lambda_t, lambda_s]``
    with ``x0(lambda)`` expanded to second order from the last three x0 estimates (lower orders
    while fewer exist). ``lambda`` is half the log-SNR."""
    schedule = denoiser.schedule
    history: list[tuple[Tensor, State]] = []  # (lambda, x0) of earlier steps, newest last
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        x0, _ = denoiser(x, t)
        lam_t = schedule.log_snr(t) / 2
        if s == 0:
            x = x0
        else:
            h = schedule.log_snr(s) / 2 - lam_t
            # alpha_s * integral over u in [0, h] of e^{u - h} u^k / k!, for k = 0, 1, 2
            c0 = -torch.expm1(-h)
            c1 = h - c0
            c2 = h**2 / 2 - c1
            terms = [(schedule.std(s) / schedule.std(t), x), (schedule.alpha(s) * c0, x0)]
            finite = [(lam, old) for lam, old in history if torch.isfinite(lam)]
            if finite:
                lam_1, x0_1 = finite[-1]
                h_1 = lam_t - lam_1
                slope_0 = combine((1 / h_1, x0), (-1 / h_1, x0_1))  # at (lam_1 + lam_t) / 2
                if len(finite) == 2:
                    lam_2, x0_2 = finite[0]
                    h_2 = lam_1 - lam_2
                    slope_1 = combine((1 / h_2, x0_1), (-1 / h_2, x0_2))
                    curvature = combine((2 / (h_1 + h_2), slope_0), (-2 / (h_1 + h_2), slope_1))
                    slope = combine((1.0, slope_0), (h_1 / 2, curvature))  # moved to lam_t
                    terms += [(schedule.alpha(s) * c1, slope), (schedule.alpha(s) * c2, curvature)]
                else:
                    terms.append((schedule.alpha(s) * c1, slope_0))
            x = combine(*terms)
        history = (history + [(lam_t, x0)])[-2:]
        _notify(callback, i, t, x, x0)
    return x
