"""Noise schedules in continuous time ``t`` in [0, 1]: ``t = 0`` is clean data, ``t = 1`` is noise.

Every schedule is defined by its log signal-to-noise ratio ``log_snr(t)``; the other views follow:

* ``alpha_bar(t) = sigmoid(log_snr)``: the signal fraction, ``x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps``
* ``alpha(t) = sqrt(alpha_bar)`` and ``std(t) = sqrt(1 - alpha_bar)``: the two coefficients
* ``sigma(t) = exp(-log_snr / 2)``: the noise level of ``x_t / alpha`` (the variance-exploding view)

A discrete schedule (DDPM's T steps) places step ``i`` at ``t = i / T`` and interpolates between.
The model is always called with the same continuous ``t`` that these functions take.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


class Schedule:
    """Base class: subclasses define :meth:`log_snr`; ``num_steps`` is set for discrete schedules."""

    num_steps: int | None = None

    def log_snr(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def alpha_bar(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self.log_snr(_as_tensor(t)))

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self.log_snr(_as_tensor(t))).sqrt()

    def std(self, t: Tensor) -> Tensor:
        return torch.sigmoid(-self.log_snr(_as_tensor(t))).sqrt()

    def sigma(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.log_snr(_as_tensor(t)))

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """Invert :meth:`log_snr` (by bisection; it decreases in ``t``)."""
        return _bisect(self.log_snr, _as_tensor(log_snr))

    def training_times(self, n: int, *, generator=None, device=None) -> Tensor:
        """Times to train on: uniform in (0, 1], or the grid ``i / T`` for discrete schedules."""
        if self.num_steps:
            steps = torch.randint(1, self.num_steps + 1, (n,), generator=generator)
            return (steps.double() / self.num_steps).to(device=device, dtype=torch.float32)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return (1.0 - u).to(device=device, dtype=torch.float32)  # in (0, 1]

    def sample_times(self, steps: int, spacing: str = "uniform", *, t_max: float = 1.0,
                     sigma_max: float | None = None) -> Tensor:
        """``steps + 1`` decreasing times from ``t_max`` to 0 for a sampler.

        spacing: ``uniform`` in t, ``quadratic`` (denser near the data), ``log_snr`` (uniform in
        log-SNR, as DPM-Solver), ``karras`` (Karras et al. 2022, rho = 7, in sigma) or
        ``trimmed``: uniform in log-SNR below ``sigma = 80``, with the range narrowed about its
        middle when that would make steps longer than 0.75 in half log-SNR (few steps are spent
        where they matter; from 17 steps on it is the whole range). Discrete schedules snap
        the times to their grid. ``sigma_max`` makes the first step jump straight to that noise
        level for the noise-level spacings (80 by default for ``karras`` and ``trimmed``, none
        for ``log_snr``; ``math.inf`` turns it off).
        """
        return sample_times(self, steps, spacing, t_max=t_max, sigma_max=sigma_max)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class CosineSchedule(Schedule):
    """Nichol & Dhariwal's cosine schedule, ``alpha_bar(t) = cos^2(pi t / 2)``, as a log-SNR
    ``-2 log tan(pi t / 2)`` rescaled in t so that it runs from ``logsnr_max`` to ``logsnr_min``."""

    def __init__(self, logsnr_min: float = -15.0, logsnr_max: float = 15.0):
        if not logsnr_min < logsnr_max:
            raise ValueError(f"logsnr_min ({logsnr_min}) must be below logsnr_max ({logsnr_max})")
        self.logsnr_min = logsnr_min
        self.logsnr_max = logsnr_max
        self._b = math.atan(math.exp(-0.5 * logsnr_max))
        self._a = math.atan(math.exp(-0.5 * logsnr_min)) - self._b

    def log_snr(self, t: Tensor) -> Tensor:
        t = _as_tensor(t)
        return -2.0 * torch.log(torch.tan(self._a * t.double() + self._b)).to(t.dtype)

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        log_snr = _as_tensor(log_snr)
        t = (torch.atan(torch.exp(-0.5 * log_snr.double())) - self._b) / self._a
        return t.to(log_snr.dtype)


class SigmoidSchedule(Schedule):
    """Chen (2023) / Jabri et al. (2023): ``alpha_bar`` follows a sigmoid from ``start`` to ``end``
    with temperature ``tau``; log-SNR clamped to ``[logsnr_min, logsnr_max]``."""

    def __init__(self, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                 logsnr_min: float = -15.0, logsnr_max: float = 15.0):
        self.start, self.end, self.tau = start, end, tau
        self.logsnr_min, self.logsnr_max = logsnr_min, logsnr_max

    def log_snr(self, t: Tensor) -> Tensor:
        t = _as_tensor(t)
        td = t.double()
        v_start = torch.sigmoid(torch.tensor(self.start / self.tau, dtype=torch.float64))
        v_end = torch.sigmoid(torch.tensor(self.end / self.tau, dtype=torch.float64))
        value = torch.sigmoid((td * (self.end - self.start) + self.start) / self.tau)
        alpha_bar = ((v_end - value) / (v_end - v_start)).clamp(0.0, 1.0)
        log_snr = torch.log(alpha_bar) - torch.log1p(-alpha_bar)
        return log_snr.clamp(self.logsnr_min, self.logsnr_max).to(t.dtype)


class DiscreteSchedule(Schedule):
    """A schedule given by ``T`` betas: ``alpha_bar_i = prod_{j <= i} (1 - beta_j)`` at ``t = i / T``.

    Between grid points ``log alpha_bar`` is interpolated linearly, with ``alpha_bar(0) = 1``.
    """

    def __init__(self, betas: Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        self.num_steps = len(betas)
        self.betas = betas
        zero = torch.zeros(1, dtype=torch.float64)
        self._log_alpha_bar = torch.cat([zero, torch.cumsum(torch.log1p(-betas), 0)])

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        t = _as_tensor(t)
        position = t.double().clamp(0, 1) * self.num_steps
        table = self._log_alpha_bar.to(t.device)
        low = position.floor().long().clamp(max=self.num_steps - 1)
        frac = position - low
        return (table[low] * (1 - frac) + table[low + 1] * frac)

    def log_snr(self, t: Tensor) -> Tensor:
        t = _as_tensor(t)
        log_ab = self.log_alpha_bar(t)
        return (log_ab - torch.log(-torch.expm1(log_ab))).to(t.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_steps={self.num_steps})"


class LinearSchedule(DiscreteSchedule):
    """DDPM (Ho et al. 2020): betas linear from ``beta_start`` to ``beta_end`` over ``num_steps``."""

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000):
        super().__init__(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))
        self.beta_start, self.beta_end = beta_start, beta_end

    def __repr__(self) -> str:
        return (f"LinearSchedule(beta_start={self.beta_start}, beta_end={self.beta_end}, "
                f"num_steps={self.num_steps})")


class ZeroTerminalSNR(Schedule):
    """Lin et al. (2024): shift and scale ``sqrt(alpha_bar)`` of ``base`` so that it is unchanged at
    ``t = 0`` and exactly 0 at ``t = 1`` (pure noise). Needs ``prediction="v"`` or ``"x0"``."""

    def __init__(self, base: Schedule):
        self.base = base
        self.num_steps = base.num_steps
        self._first = float(base.alpha(torch.tensor(0.0, dtype=torch.float64)))
        self._last = float(base.alpha(torch.tensor(1.0, dtype=torch.float64)))

    def log_snr(self, t: Tensor) -> Tensor:
        t = _as_tensor(t)
        alpha = self.base.alpha(t.double())
        alpha = (alpha - self._last) * self._first / (self._first - self._last)
        alpha_bar = alpha.clamp(0.0, 1.0) ** 2
        return (torch.log(alpha_bar) - torch.log1p(-alpha_bar)).to(t.dtype)


def discretize(schedule: Schedule, num_steps: int) -> DiscreteSchedule:
    """The discrete schedule with ``num_steps`` steps that matches ``schedule`` on its grid."""
    grid = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    alpha_bar = schedule.alpha_bar(grid)
    betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(1e-12, 1.0)
    return DiscreteSchedule(betas)


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "linear": LinearSchedule,
    "cosine": CosineSchedule,
    "sigmoid": SigmoidSchedule,
}


def register_schedule(name: str, factory: Callable[..., Schedule], *,
                      registry: dict[str, Callable[..., Schedule]] | None = None) -> None:
    """Make ``factory`` available as ``make_schedule(name)`` (in ``registry``, :data:`SCHEDULES`
    by default; a plugin manager keeps its own copy); a name may be registered once."""
    target = SCHEDULES if registry is None else registry
    if name in target and target[name] is not factory:
        raise ValueError(f"a schedule named {name!r} is already registered")
    target[name] = factory


def make_schedule(spec: str | Schedule | dict, *, schedules: dict[str, Callable[..., Schedule]] | None = None,
                  **options) -> Schedule:
    """A schedule from a name (``"cosine"``), a config dict (``{"name": "linear", ...}``) or itself.

    Names are looked up in ``schedules`` (:data:`SCHEDULES` by default). ``zero_terminal_snr=True``
    applies :class:`ZeroTerminalSNR`; ``num_steps=T`` on a continuous schedule makes it discrete.
    """
    known = SCHEDULES if schedules is None else schedules
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, dict):
        options = {**spec, **options}
        spec = options.pop("name")
    zero_terminal = options.pop("zero_terminal_snr", False)
    num_steps = options.pop("num_steps", None)
    if spec not in known:
        raise ValueError(f"unknown schedule {spec!r}; valid: {', '.join(sorted(known))}")
    factory = known[spec]
    if num_steps is not None and factory is LinearSchedule:
        options["num_steps"] = num_steps
    schedule = factory(**options)
    if num_steps is not None and schedule.num_steps != num_steps:
        schedule = discretize(schedule, num_steps)
    return ZeroTerminalSNR(schedule) if zero_terminal else schedule


SPACINGS = ("uniform", "quadratic", "log_snr", "karras", "trimmed")
KARRAS_SIGMA_MAX = 80.0    # Karras et al.'s sigma_max: above it x0 estimates barely change
TRIMMED_MAX_STEP = 0.75    # longest step in half log-SNR before the range is trimmed


def sample_times(schedule: Schedule, steps: int, spacing: str = "uniform", *,
                 t_max: float = 1.0, sigma_max: float | None = None) -> Tensor:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if spacing == "uniform":
        times = u * t_max
    elif spacing == "quadratic":
        times = u**2 * t_max
    else:
        times = _noise_level_times(schedule, steps, spacing, t_max, sigma_max)
    if schedule.num_steps:
        times = _snap_to_grid(times, schedule.num_steps, steps, spacing)
    return times.float()


def _snap_to_grid(times: Tensor, num_steps: int, steps: int, spacing: str) -> Tensor:
    """Round times to the grid ``i / T``. A model call at ``t = 0`` is useless, so inner times
    stay at step 1 or later, and where rounding makes neighbours collide (dense spacings near
    the data) the later one moves up a grid step."""
    grid = torch.round(times * num_steps).long()
    grid[:-1] = grid[:-1].clamp(min=1)
    for i in range(len(grid) - 2, -1, -1):
        grid[i] = max(int(grid[i]), int(grid[i + 1]) + 1)
    if grid[0] > round(float(times[0]) * num_steps):
        raise ValueError(
            f"{steps} steps with {spacing!r} spacing need more times than the {num_steps}-step grid "
            f"has below t = {float(times[0]):g}; use fewer steps"
        )
    return grid.double() / num_steps


def _noise_level_times(schedule: Schedule, steps: int, spacing: str, t_max: float,
                       sigma_max: float | None) -> Tensor:
    """Times spaced uniformly in log-SNR, in ``sigma^(1/7)`` (Karras) or trimmed, ending with 0.

    They run from ``t_max`` to the smallest time worth a model call (``1 / T`` on a discrete
    schedule, ``1e-3`` otherwise). When ``sigma(t_max)`` exceeds ``sigma_max`` the first step
    goes straight to ``sigma_max`` (80 by default for ``karras`` and ``trimmed``, as Karras et
    al.; pass ``math.inf`` for none) and the rest are spaced below it: at such noise levels the
    clean-data estimate hardly changes, so one step is as good as many.
    """
    if sigma_max is None and spacing in ("karras", "trimmed"):
        sigma_max = KARRAS_SIGMA_MAX
    t_min = 1.0 / schedule.num_steps if schedule.num_steps else 1e-3
    lam = schedule.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64)).clamp(-30.0, 30.0)
    jump = sigma_max is not None and steps > 1 and float(lam[0]) < -2 * math.log(sigma_max)
    if jump:
        lam[0] = -2 * math.log(sigma_max)
    points = steps - 1 if jump else steps  # times with a model call below the jump
    if spacing == "trimmed":
        lam = _trim(lam, points - 1)
    ramp = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    if spacing == "karras":
        rho = 7.0
        inv_rho = torch.exp(-0.5 * lam / rho)  # sigma^(1 / rho)
        lams = -2 * rho * torch.log(inv_rho[0] + ramp * (inv_rho[1] - inv_rho[0]))
    else:
        lams = lam[0] + (lam[1] - lam[0]) * ramp
    inner = schedule.t_from_log_snr(lams).clamp(0, t_max)
    zero, start = torch.zeros(1, dtype=torch.float64), torch.full((1,), t_max, dtype=torch.float64)
    return torch.cat([start, inner if jump else inner[1:], zero])


def _trim(lam: Tensor, intervals: int) -> Tensor:
    """Narrow the log-SNR range ``lam = [high noise, low noise]`` about its middle so that
    ``intervals`` steps are at most ``TRIMMED_MAX_STEP`` long (in half log-SNR)."""
    width = 2 * TRIMMED_MAX_STEP * max(intervals, 1)  # in log-SNR
    if float(lam[1] - lam[0]) <= width:
        return lam
    middle = (lam[0] + lam[1]) / 2
    return torch.stack([middle - width / 2, middle + width / 2])


def _as_tensor(t) -> Tensor:
    return t if isinstance(t, Tensor) else torch.as_tensor(t, dtype=torch.float32)


def _bisect(fn: Callable[[Tensor], Tensor], target: Tensor, iterations: int = 60) -> Tensor:
    low = torch.zeros_like(target, dtype=torch.float64)
    high = torch.ones_like(target, dtype=torch.float64)
    goal = target.double()
    for _ in range(iterations):
        mid = (low + high) / 2
        above = fn(mid).double() > goal  # log-SNR still too high: move later in time
        low = torch.where(above, mid, low)
        high = torch.where(above, high, mid)
    return ((low + high) / 2).to(target.dtype)
