"""Samplers: short functions with one contract,

``sample_<name>(denoiser, x, times, *, generator=None, callback=None, **options) -> x_0``

``denoiser(x, t)`` returns ``(x0_estimate, eps_estimate)`` (see :class:`diffkit.Denoiser`),
``x`` is the starting state at ``times[0]`` and ``times`` decreases to 0. ``callback``, when
given, receives ``{"step", "t", "x", "x0"}`` after every step. Samplers are registered by name;
plugins add more through the ``diffkit_register_samplers`` hook.

:data:`SAMPLERS` holds the built-in samplers and those registered directly with
:func:`register_sampler`; a plugin manager keeps its own copy with its plugins' samplers added
(``Registry.samplers``), and a :class:`~diffkit.Diffusion` made with ``samplers=`` looks names
up there.

A sampler may carry three attributes: ``spacing``, the time spacing it works best with (used when
the caller asks for ``spacing="auto"``), ``calls_per_step`` (2 for Heun, 1 otherwise), and
``stepwise``: each step is one model call at its start and uses nothing of earlier steps, so the
sampler may run one step at a time (inpainting's re-noising, the leaves of a mixed state) and
lose nothing.

Samplers come in three kinds, tagged on each function as ``fn.kind``: ``"gaussian"`` ones (here),
whose denoiser returns ``(x0, eps)`` on a variance-preserving Gaussian path (Gaussian diffusion,
and flow matching through its variance-preserving view); ``"flow"`` ones
(:mod:`diffkit.flow_samplers`), which integrate a flow's velocity in its own time; and
``"categorical"`` ones (:mod:`diffkit.categorical_samplers`), whose denoiser returns class
probabilities. One registry holds them all, so a name is unique across kinds; each process runs
the kinds it names (:attr:`diffkit.contract.Process.sampler_kinds`), and :func:`get_sampler`
says so when a name belongs to another.

The multistep solvers work in ``lambda = log(alpha / std)`` (half the log-SNR) and predict the
clean data: over a step of size ``h`` the exact solution of the probability-flow ODE is
``x_s = (std_s / std_t) x_t + alpha_s * integral_0^h e^{u - h} x0(lambda_t + u) du`` and they
differ only in how they approximate ``x0(lambda)`` from earlier estimates. Every sampler's
last step, to ``t = 0``, returns the final clean-data estimate (``t = 0`` of a schedule may keep a
trace of noise, e.g. ``sigma = 5.5e-4`` for the default cosine).
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
SAMPLER_KINDS = ("gaussian", "flow", "categorical")


def register_sampler(name: str, sampler: Sampler | None = None, *, kind: str = "gaussian",
                     spacing: str | None = None, calls_per_step: int | None = None, stepwise: bool = False,
                     registry: dict[str, Sampler] | None = None):
    """Register ``sampler`` under ``name`` in ``registry`` (:data:`SAMPLERS` by default); usable
    as a decorator. A name may be taken once, whatever its kind.

    ``kind`` is ``"gaussian"``, ``"flow"`` or ``"categorical"`` (recorded as ``sampler.kind``);
    ``spacing`` records the time spacing the sampler prefers (see :func:`preferred_spacing`),
    ``stepwise`` that it may run one step at a time (module docstring).
    """
    if kind not in SAMPLER_KINDS:
        raise ValueError(f"unknown sampler kind {kind!r}; valid: {', '.join(SAMPLER_KINDS)}")
    target = SAMPLERS if registry is None else registry

    def add(fn: Sampler) -> Sampler:
        if name in target and target[name] is not fn:
            raise ValueError(f"a sampler named {name!r} is already registered (a {sampler_kind(target[name])} one)")
        fn.kind = kind
        if spacing is not None:
            fn.spacing = spacing
        if calls_per_step is not None:
            fn.calls_per_step = calls_per_step
        if stepwise:
            fn.stepwise = True
        target[name] = fn
        return fn

    return add(sampler) if sampler is not None else add


def sampler_kind(sampler: Sampler) -> str:
    """``"gaussian"``, ``"flow"`` or ``"categorical"``; functions registered before kinds existed are Gaussian."""
    return getattr(sampler, "kind", "gaussian")


def is_stepwise(sampler: Sampler) -> bool:
    """Whether ``sampler`` may run one step at a time without losing anything (module docstring)."""
    return getattr(sampler, "stepwise", False)


def sampler_names(kind: str | tuple[str, ...] = "gaussian", registry: dict[str, Sampler] | None = None) -> list[str]:
    """The names of one kind (or of several) in ``registry`` (:data:`SAMPLERS` by default), sorted."""
    known = SAMPLERS if registry is None else registry
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    return sorted(name for name, fn in known.items() if sampler_kind(fn) in kinds)


def get_sampler(name: str, registry: dict[str, Sampler] | None = None, *,
                kind: str | tuple[str, ...] = "gaussian") -> Sampler:
    """The sampler registered under ``name`` in ``registry`` (:data:`SAMPLERS` by default), which
    must be of ``kind`` (or of one of several); an unknown name or a sampler of another kind is an
    error listing the valid names."""
    known = SAMPLERS if registry is None else registry
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    valid = ", ".join(sampler_names(kinds, known))
    if name not in known:
        raise ValueError(f"unknown sampler {name!r}; valid: {valid}")
    fn = known[name]
    if sampler_kind(fn) not in kinds:
        raise ValueError(f"{name!r} is a {sampler_kind(fn)} sampler, but a {' or '.join(kinds)} one is needed here; "
                         f"valid: {valid}")
    return fn


def preferred_spacing(sampler: str | Sampler, *, kind: str = "gaussian") -> str:
    """The time spacing a sampler was tuned with; ``"uniform"`` when it names none."""
    fn = get_sampler(sampler, kind=kind) if isinstance(sampler, str) else sampler
    return getattr(fn, "spacing", "uniform")


def _notify(callback, step: int, t: Tensor, x: State, x0: State) -> None:
    if callback is not None:
        callback({"step": step, "t": float(t), "x": x, "x0": x0})


def _half_log_snr(schedule, t: Tensor) -> Tensor:
    """``lambda(t) = log(alpha / std)`` in float64, so that step sizes keep their precision."""
    return schedule.log_snr(torch.as_tensor(t).double()) / 2


def _coefficients(schedule, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``std_s / std_t``, ``alpha_s`` and ``h = lambda_s - lambda_t`` for a step from ``t`` to ``s``."""
    t, s = torch.as_tensor(t).double(), torch.as_tensor(s).double()
    h = _half_log_snr(schedule, s) - _half_log_snr(schedule, t)
    return (schedule.std(s) / schedule.std(t)), schedule.alpha(s), h


@register_sampler("ddpm", spacing="uniform", stepwise=True)
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
        if s == 0:
            x = x0  # the clean estimate, not t = 0's state, which may keep a little noise
        else:
            mean, var = posterior(schedule, x0, x, t, s)
            if variance == "beta":
                var = 1 - schedule.alpha_bar(t) / schedule.alpha_bar(s)
            x = combine((1.0, mean), (var.sqrt(), denoiser.noise_like(x, generator)))
        _notify(callback, i, t, x, x0)
    return x


@register_sampler("ddim", spacing="uniform", stepwise=True)
def sample_ddim(denoiser: Denoiser, x: State, times: Tensor, *, generator=None, callback=None,
                eta: float = 0.0) -> State:
    """DDIM (Song et al. 2021): ``x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - c^2) eps + c z``,
    ``c = eta sqrt((1 - ab_s) / (1 - ab_t) (1 - ab_t / ab_s))``; ``eta = 1`` is ancestral DDPM."""
    schedule = denoiser.schedule
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        x0, eps = denoiser(x, t)
        if s == 0:
            x = x0
        else:
            ab_t, ab_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
            c = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).clamp(min=0).sqrt()
            terms = [(ab_s.sqrt(), x0), ((1 - ab_s - c**2).clamp(min=0).sqrt(), eps)]
            if eta > 0:
                terms.append((c, denoiser.noise_like(x, generator)))
            x = combine(*terms)
        _notify(callback, i, t, x, x0)
    return x


@register_sampler("euler", spacing="karras", stepwise=True)
def sample_euler(denoiser: Denoiser, x: State, times: Tensor, *, generator=None, callback=None) -> State:
    """Euler's method on the probability-flow ODE in Karras et al.'s (2022) coordinates
    ``(sigma, x / alpha)``, where ``d(x / alpha) / d sigma = eps``. Written in ``x`` the step is
    ``x_s = alpha_s x0 + std_s eps``, so it coincides with DDIM at ``eta = 0``."""
    return sample_ddim(denoiser, x, times, generator=generator, callback=callback, eta=0.0)


@register_sampler("heun", spacing="karras", calls_per_step=2)
def sample_heun(denoiser: Denoiser, x: State, times: Tensor, *, generator=None, callback=None) -> State:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1): an
    Euler step in ``(sigma, x / alpha)``, corrected with the slope at its end; two model
    calls a step, one on the last step to ``sigma = 0``. Like the original it needs gentle steps
    (about 10 or more with Karras spacing): its correction divides by the target noise level."""
    schedule = denoiser.schedule
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        x0, eps = denoiser(x, t)
        alpha_t, alpha_s = schedule.alpha(t), schedule.alpha(s)
        if s == 0:
            x = x0
        elif alpha_t == 0:
            x = combine((alpha_s, x0), (schedule.std(s), eps))
        else:
            euler = combine((alpha_s, x0), (schedule.std(s), eps))
            _, eps_end = denoiser(euler, s)
            d_sigma = schedule.sigma(s) - schedule.sigma(t)
            x = combine((alpha_s / alpha_t, x), (alpha_s * d_sigma / 2, eps), (alpha_s * d_sigma / 2, eps_end))
        _notify(callback, i, t, x, x0)
    return x


@register_sampler("dpmpp_2m", spacing="trimmed")
def sample_dpmpp_2m(denoiser: Denoiser, x: State, times: Tensor, *, generator=None, callback=None) -> State:
    """DPM-Solver++(2M) (Lu et al. 2022), the multistep second-order data-prediction solver:
    ``x_s = (std_s / std_t) x_t - alpha_s (e^{-h} - 1) D`` with ``h = lambda_s - lambda_t``
    (``lambda`` = half log-SNR) and ``D`` extrapolated from the last two x0 estimates."""
    return _multistep(denoiser, x, times, order=2, callback=callback)


@register_sampler("dpmpp_3m", spacing="trimmed")
def sample_dpmpp_3m(denoiser: Denoiser, x: State, times: Tensor, *, generator=None, callback=None) -> State:
    """DPM-Solver++(3M) (Lu et al. 2022), third-order multistep: ``x0(lambda)`` is expanded to
    second order from the last three x0 estimates (lower orders while fewer exist)."""
    return _multistep(denoiser, x, times, order=3, callback=callback)


@register_sampler("dpmpp_2m_sde", spacing="trimmed")
def sample_dpmpp_2m_sde(denoiser: Denoiser, x: State, times: Tensor, *, generator=None,
                        callback=None, eta: float = 1.0) -> State:
    """DPM-Solver++(2M) SDE (Lu et al. 2022), the stochastic multistep solver in its
    midpoint form: ``x_s = (std_s / std_t) e^{-eta h} x_t + alpha_s (1 - e^{-(1 + eta) h}) D
    + std_s sqrt(1 - e^{-2 eta h}) z``; ``eta = 0`` is DPM-Solver++(2M)."""
    schedule = denoiser.schedule
    x0_prev, h_prev = None, None
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        x0, _ = denoiser(x, t)
        if s == 0:
            x = x0
        else:
            std_ratio, alpha_s, h = _coefficients(schedule, t, s)
            data_weight = -alpha_s * torch.expm1(-(1 + eta) * h)
            terms = [(std_ratio * torch.exp(-eta * h), x)]
            if x0_prev is None:
                terms.append((data_weight, x0))
            else:  # D = (1 + 1 / (2 r)) x0 - 1 / (2 r) x0_prev with r = h_prev / h
                r = h_prev / h
                terms += [(data_weight * (1 + 1 / (2 * r)), x0), (-data_weight / (2 * r), x0_prev)]
            if eta > 0:
                noise_scale = schedule.std(torch.as_tensor(s).double()) * (-torch.expm1(-2 * eta * h)).clamp(min=0).sqrt()
                terms.append((noise_scale, denoiser.noise_like(x, generator)))
            x = combine(*terms)
            h_prev = h
        x0_prev = x0
        _notify(callback, i, t, x, x0)
    return x


def _multistep(denoiser: Denoiser, x: State, times: Tensor, *, order: int, callback) -> State:
    schedule = denoiser.schedule
    history: list[tuple[Tensor, State]] = []  # (lambda, x0) of earlier steps, newest last
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        x0, _ = denoiser(x, t)
        lam_t = _half_log_snr(schedule, t)
        if s == 0:
            x = x0
        else:
            std_ratio, alpha_s, h = _coefficients(schedule, t, s)
            known = [(lam, old) for lam, old in history if torch.isfinite(lam)][-(order - 1):] if order > 1 else []
            x = combine((std_ratio, x), *_taylor_terms(alpha_s, h, lam_t, x0, known))
        history = (history + [(lam_t, x0)])[-2:]
        _notify(callback, i, t, x, x0)
    return x


def _taylor_terms(alpha_s: Tensor, h: Tensor, lam_t: Tensor, x0: State,
                  known: list[tuple[Tensor, State]]) -> list[tuple[Tensor, State]]:
    """``alpha_s * integral_0^h e^{u - h} x0(lambda_t + u) du`` with ``x0`` the polynomial in
    ``lambda`` through ``(lam_t, x0)`` and ``known`` (up to two earlier points), as combine terms.

    The integrals of ``e^{u - h} u^k / k!`` are ``c0 = 1 - e^{-h}``, ``c1 = h - c0``,
    ``c2 = h^2 / 2 - c1``; the derivatives are divided differences moved to ``lambda_t``. The
    result is returned as one weight per estimate, so a step touches each state once.
    """
    c0 = -torch.expm1(-h)
    c1 = h - c0
    c2 = h**2 / 2 - c1
    if not known:
        return [(alpha_s * c0, x0)]
    lam_1, x0_1 = known[-1]
    h_1 = lam_t - lam_1
    if len(known) == 1:
        # DPM-Solver++(2M) as published: slope (x0 - x0_1) / h_1 weighted by (1 - e^{-h}) h / 2
        # (c1 up to O(h^3)).
        w = alpha_s * c0 * h / (2 * h_1)
        return [(alpha_s * c0 + w, x0), (-w, x0_1)]
    lam_2, x0_2 = known[-2]
    h_2 = lam_1 - lam_2
    # slope_0 = (x0 - x0_1) / h_1 sits at the midpoint of [lam_1, lam_t], slope_1 likewise one
    # step earlier; curvature = (slope_0 - slope_1) / ((h_1 + h_2) / 2); slope at lam_t =
    # slope_0 + h_1 / 2 * curvature. Written as weights on (x0, x0_1, x0_2):
    slope_0 = (1 / h_1, -1 / h_1, 0.0)
    slope_1 = (0.0, 1 / h_2, -1 / h_2)
    k = 2 / (h_1 + h_2)
    curvature = tuple(k * (a - b) for a, b in zip(slope_0, slope_1))
    slope = tuple(a + h_1 / 2 * c for a, c in zip(slope_0, curvature))
    weights = [alpha_s * (c0 * (i == 0) + c1 * slope[i] + c2 * curvature[i]) for i in range(3)]
    return list(zip(weights, (x0, x0_1, x0_2)))


@register_sampler("unipc", spacing="trimmed")
def sample_unipc(denoiser: Denoiser, x: State, times: Tensor, *, generator=None, callback=None,
                 order: int = 3, variant: str = "bh2", corrector: bool = True) -> State:
    """UniPC (Zhao et al. 2023): a multistep predictor (UniP) of ``order`` whose result is
    corrected (UniC) once the model has been called at it, raising the order by one for free.
    ``variant`` is the paper's ``B(h)``: ``"bh1"`` (``h``) or ``"bh2"`` (``e^h - 1``); they differ
    where one earlier estimate is used and the paper fixes its weight to 1/2. Lower ``order``
    (2) is the safer choice under strong guidance."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unknown UniPC variant {variant!r}; valid: bh1, bh2")
    if order < 1:
        raise ValueError(f"order must be at least 1, got {order}")
    schedule = denoiser.schedule
    history: list[tuple[Tensor, State]] = []  # (lambda, x0) of earlier steps, newest last
    last_step = None  # what the corrector needs to redo the previous step
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        x0, _ = denoiser(x, t)
        lam_t = _half_log_snr(schedule, t)
        if last_step is not None and corrector and s > 0:
            x = _unipc_update(*last_step, variant=variant, end_x0=x0)
        if s == 0:
            x = x0
        else:
            std_ratio, alpha_s, h = _coefficients(schedule, t, s)
            earlier = [(lam - lam_t, old) for lam, old in history[-(order - 1):][::-1]] if order > 1 else []
            last_step = (x, std_ratio, alpha_s, h, x0, earlier)
            x = _unipc_update(*last_step, variant=variant)
        history = (history + [(lam_t, x0)])[-max(order - 1, 1):]
        _notify(callback, i, t, x, x0)
    return x


def _unipc_update(x: State, std_ratio: Tensor, alpha_s: Tensor, h: Tensor, x0: State,
                  earlier: list[tuple[Tensor, State]], *, variant: str, end_x0: State | None = None) -> State:
    """One UniP step (or, given ``end_x0``, the UniC step) from ``x`` with estimate ``x0``.

    ``earlier`` holds ``(lambda_k - lambda_t, x0_k)``, newest first. With ``r_k`` those offsets
    over ``h`` and ``D_k = (x0_k - x0) / r_k``, the update is
    ``(std_s / std_t) x + alpha_s (1 - e^{-h}) x0 - alpha_s B(h) sum_k rho_k D_k`` where ``rho``
    solves ``sum_k rho_k r_k^(i-1) = phi_i(h) i! / B(h)`` for ``i = 1..len(D)``.
    """
    points = [((offset / h), old) for offset, old in earlier if torch.isfinite(offset)]
    if end_x0 is not None:
        points.append((torch.ones((), dtype=torch.float64), end_x0))
    c0 = -torch.expm1(-h)
    if not points:
        return combine((std_ratio, x), (alpha_s * c0, x0))
    ratios = torch.stack([r for r, _ in points])
    neg_h = -h
    b_of_h = neg_h if variant == "bh1" else torch.expm1(neg_h)
    phi = torch.expm1(neg_h) / neg_h - 1                      # h phi_2(h) / h, then phi_3, ...
    factorial, rhs = 1.0, []
    for k in range(1, len(points) + 1):
        rhs.append(phi * factorial / b_of_h)
        factorial *= k + 1
        phi = phi / neg_h - 1 / factorial
    if len(points) == 1:
        rho = torch.full((1,), 0.5, dtype=torch.float64)  # the paper's choice; exact as h -> 0
    else:
        powers = torch.stack([ratios**k for k in range(len(points))])
        rho = torch.linalg.solve(powers, torch.stack(rhs))
    # D_k = (old - x0) / r_k, weighted by -alpha_s B(h) rho_k; x0's weights are gathered in one.
    weights = [-alpha_s * b_of_h * rho_k / r_k for rho_k, (r_k, _) in zip(rho, points)]
    x0_weight = alpha_s * c0 - sum(weights)
    return combine((std_ratio, x), (x0_weight, x0), *zip(weights, (old for _, old in points)))
