"""Flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2023) as a :class:`~diffkit.contract.Process`.

A path ``x_t = alpha(t) x_0 + sigma(t) eps`` runs from the data at ``t = 0`` to standard noise at
``t = 1``; the model learns its velocity ``v = dx_t / dt = alpha'(t) x_0 + sigma'(t) eps`` by
regression, ``L = ||v - model(x_t, t)||^2``, and samples follow the ODE ``dx / dt = v`` from noise
to data. The default, :class:`LinearPath`, is the linear (conditional optimal transport) path of
SD3 and diffusers: ``x_t = (1 - t) x_0 + t eps``, ``v = eps - x_0``.

Every Gaussian path is the variance-preserving path of the same log-SNR ``2 log(alpha / sigma)``
scaled by ``c(t) = sqrt(alpha^2 + sigma^2)`` (Kingma et al. 2021): ``x_t = c(t) y_t`` with
``y_t = (alpha / c) x_0 + (sigma / c) eps``. So besides its own ODE samplers in ``t``
(:mod:`diffkit.flow_samplers`, kind ``"flow"``), a flow runs every Gaussian sampler exactly, on
``y = x / c`` with the schedule :class:`PathSchedule` of the path's log-SNR and the clean-data
and noise estimates its velocity implies (:class:`VariancePreservingView`); ``c = 1`` at both
ends of both paths here, so the prior draw and the samples are the same in either scaling.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from . import flow_samplers  # noqa: F401  (registers the flow samplers)
from .contract import GaussianNoiseProcess, squared_errors
from .denoiser import GuidedModel
from .samplers import sampler_kind
from .schedules import Schedule
from .tree import State, combine, draw_noise, gaussian_like, scale

TRAINING_TIMES = ("uniform", "logit_normal")


class Path:
    """A Gaussian path ``x_t = alpha(t) x_0 + sigma(t) eps`` with ``alpha(0) = sigma(1) = 1`` and
    ``alpha(1) = sigma(0) = 0``; every function takes and returns float64 per-sample times."""

    name = ""

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """The time at which ``2 log(alpha / sigma)`` equals ``log_snr``."""
        raise NotImplementedError

    def log_snr(self, t: Tensor) -> Tensor:
        t = _float64(t)
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def scale(self, t: Tensor) -> Tensor:
        """``c(t) = sqrt(alpha^2 + sigma^2)``: ``x_t / c`` is on the variance-preserving path."""
        t = _float64(t)
        return torch.sqrt(self.alpha(t) ** 2 + self.sigma(t) ** 2)

    def split(self, x: State, v: State, t: Tensor) -> tuple[State, State]:
        """The clean data and the noise that give the state ``x`` and the velocity ``v`` at ``t``:
        ``(x_0, eps) = (sigma' x - sigma v, alpha v - alpha' x) / (alpha sigma' - sigma alpha')``."""
        t = _float64(t)
        a, s, da, ds = self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t)
        det = a * ds - s * da
        return combine((ds / det, x), (-s / det, v)), combine((-da / det, x), (a / det, v))

    def velocity(self, x0: State, eps: State, t: Tensor) -> State:
        """``alpha'(t) x_0 + sigma'(t) eps``, the regression target."""
        t = _float64(t)
        return combine((self.d_alpha(t), x0), (self.d_sigma(t), eps))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearPath(Path):
    """``x_t = (1 - t) x_0 + t eps``, ``v = eps - x_0`` (rectified flow; SD3, Flux, diffusers)."""

    name = "linear"

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -1.0)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        return torch.sigmoid(-_float64(log_snr) / 2)  # (1 - t) / t = e^{l / 2}


class CosinePath(Path):
    """The variance-preserving cosine path ``x_t = cos(pi t / 2) x_0 + sin(pi t / 2) eps`` (its
    velocity is ``pi / 2`` times Salimans & Ho's ``v``), with ``alpha(1) = 0`` exactly."""

    name = "cosine"

    def alpha(self, t: Tensor) -> Tensor:
        return torch.where(t >= 1, torch.zeros_like(t), torch.cos(math.pi / 2 * t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sin(math.pi / 2 * t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -math.pi / 2 * torch.sin(math.pi / 2 * t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return math.pi / 2 * self.alpha(t)

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        return 2 / math.pi * torch.atan(torch.exp(-_float64(log_snr) / 2))


PATHS: dict[str, Callable[[], Path]] = {"linear": LinearPath, "cosine": CosinePath}


class PathSchedule(Schedule):
    """The variance-preserving schedule with a path's log-SNR: the Gaussian samplers' view of a flow."""

    def __init__(self, path: Path):
        self.path = path

    def log_snr(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        return self.path.log_snr(t).to(t.dtype if t.is_floating_point() else torch.float32)

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        log_snr = torch.as_tensor(log_snr)
        return self.path.t_from_log_snr(log_snr).to(log_snr.dtype)

    def __repr__(self) -> str:
        return f"PathSchedule({self.path!r})"


def shift_time(t: Tensor, shift: float) -> Tensor:
    """SD3's time shift (Esser et al. 2024, eq. 23): ``shift t / (1 + (shift - 1) t)``, which moves
    times towards the noise for ``shift > 1`` and leaves 0 and 1 in place."""
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def unshift_time(t: Tensor, shift: float) -> Tensor:
    """The inverse of :func:`shift_time`: ``t / (shift - (shift - 1) t)``."""
    return t if shift == 1.0 else t / (shift - (shift - 1) * t)


class FlowDenoiser(GuidedModel):
    """A velocity model as the flow samplers see it: called with a state ``x`` and a scalar time
    ``t`` it returns the (guided) velocity; :meth:`clean` is the clean-data estimate it implies."""

    def __init__(self, model: Callable, path: Path, *, cond: Any = None, guidance: float = 1.0, uncond: Any = None,
                 model_kwargs: dict | None = None, noise_fn: Callable = gaussian_like):
        super().__init__(model, cond=cond, guidance=guidance, uncond=uncond, model_kwargs=model_kwargs,
                         noise_fn=noise_fn)
        self.path = path

    def __call__(self, x: State, t: Tensor | float) -> State:
        return self.model_output(x, self._times(x, t))

    def clean(self, x: State, v: State, t: Tensor | float) -> State:
        """The clean-data estimate at ``(x, t)`` given the velocity ``v``."""
        return self.path.split(x, v, torch.as_tensor(t, dtype=torch.float64))[0]


class VariancePreservingView:
    """A flow's velocity model as the Gaussian samplers see it (module docstring): called with a
    state ``y`` of the variance-preserving path and a scalar time ``t``, it returns ``(x0, eps)``
    implied by the velocity at ``x = c(t) y``; ``schedule`` is the path's :class:`PathSchedule`."""

    def __init__(self, velocity: FlowDenoiser, schedule: PathSchedule):
        self.velocity, self.schedule = velocity, schedule

    def __call__(self, y: State, t: Tensor | float) -> tuple[State, State]:
        t_batch = self.velocity._times(y, t)
        x = scale(self.schedule.path.scale(t_batch.double()), y)
        return self.schedule.path.split(x, self.velocity.model_output(x, t_batch), t_batch)

    def noise_like(self, x: State, generator: torch.Generator | None = None) -> State:
        return self.velocity.noise_like(x, generator)

    @property
    def calls(self) -> int:
        return self.velocity.calls


class FlowMatching(GaussianNoiseProcess):
    """Flow matching: a Gaussian path from data (``t = 0``) to noise (``t = 1``) whose velocity the
    model learns (module docstring).

    Args:
        path: ``"linear"`` (``x_t = (1 - t) x_0 + t eps``, the model returns ``v = eps - x_0``;
            the default) or ``"cosine"`` (the variance-preserving cosine path), or a :class:`Path`.
        training_times: how training draws ``t``: ``"uniform"`` in (0, 1] or ``"logit_normal"``
            (``t = sigmoid(logit_mean + logit_std n)``, ``n ~ N(0, 1)``; SD3's choice).
        logit_mean, logit_std: the logit-normal law's parameters.
        shift: SD3's time shift (:func:`shift_time`), applied to training and sampling times alike;
            1 leaves them as they are, above 1 spends more of both near the noise.
        noise_fn: ``noise_fn(like, generator, **model_kwargs) -> state``; standard normal by
            default (a domain's noise keeps padding at zero).
        samplers: where sampler names are looked up (a plugin manager's ``Registry.samplers``);
            the built-in ones by default.

    It runs the flow samplers (``flow_euler``, ``flow_heun``, ``flow_midpoint``, the adaptive
    ``dopri5``) and every Gaussian one (``euler``, ``dpmpp_2m``, ``unipc``, ``ddpm``...) through
    its variance-preserving view. Padding: the domain's noise keeps it, so ``mask`` only
    restricts the loss.
    """

    kind = "flow"
    sampler_kinds = ("flow", "gaussian")
    defaults = {
        "sample": {"sampler": "dpmpp_2m", "steps": 20, "spacing": "auto"},
        "edit": {"sampler": "euler", "steps": 50, "spacing": "uniform"},
        "inpaint": {"sampler": "ddpm", "steps": 50, "spacing": "uniform", "options": {"ddpm": {"variance": "beta"}}},
    }
    stepwise_sampler = "flow_euler"
    distillable = True

    def __init__(self, path: str | Path = "linear", *, training_times: str = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0, shift: float = 1.0, noise_fn: Callable = gaussian_like,
                 samplers: dict[str, Callable] | None = None):
        if isinstance(path, str):
            if path not in PATHS:
                raise ValueError(f"unknown flow path {path!r}; valid: {', '.join(PATHS)}")
            path = PATHS[path]()
        if training_times not in TRAINING_TIMES:
            raise ValueError(f"unknown training times {training_times!r}; valid: {', '.join(TRAINING_TIMES)}")
        if not logit_std > 0:
            raise ValueError(f"logit_std must be positive, got {logit_std}")
        if not shift > 0:
            raise ValueError(f"shift must be positive, got {shift}")
        self.path = path
        self.schedule = PathSchedule(path)
        self.training_law, self.logit_mean, self.logit_std, self.shift = training_times, logit_mean, logit_std, shift
        self.noise_fn = noise_fn
        self.samplers = samplers

    @classmethod
    def from_config(cls, section: dict, *, noise_fn: Callable = gaussian_like, samplers: dict | None = None,
                    schedules: dict | None = None, categories: Callable | None = None) -> "FlowMatching":
        """The flow a config's ``diffusion`` section describes (``path``, ``training_times``,
        ``logit_mean``, ``logit_std``, ``shift``)."""
        return cls(section["path"], training_times=section["training_times"], logit_mean=section["logit_mean"],
                   logit_std=section["logit_std"], shift=section["shift"], noise_fn=noise_fn, samplers=samplers)

    def __repr__(self) -> str:
        return (f"FlowMatching(path={self.path.name!r}, training_times={self.training_law!r}, "
                f"shift={self.shift!r})")

    # -- the forward process ----------------------------------------------------------------

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha(t), sigma(t))`` in float64."""
        t = _float64(t)
        return self.path.alpha(t), self.path.sigma(t)

    def q_sample(self, x0: State, t: Tensor, noise: State | None = None, *, generator=None,
                 model_kwargs: dict | None = None, mask: State | None = None) -> State:
        """``x_t = alpha(t) x_0 + sigma(t) noise``; ``model_kwargs`` reach the domain's noise."""
        noise = draw_noise(self.noise_fn, x0, generator, **(model_kwargs or {})) if noise is None else noise
        alpha, sigma = self.coefficients(t)
        return combine((alpha, x0), (sigma, noise))

    def forward_step(self, x: State, s: Tensor | float, t: Tensor | float, *, noise: State | None = None,
                     generator=None, model_kwargs: dict | None = None, mask: State | None = None) -> State:
        """``q(x_t | x_s) = N(r x_s, (sigma_t^2 - r^2 sigma_s^2) I)`` with ``r = alpha_t / alpha_s``."""
        noise = draw_noise(self.noise_fn, x, generator, **(model_kwargs or {})) if noise is None else noise
        (alpha_t, sigma_t), (alpha_s, sigma_s) = self.coefficients(t), self.coefficients(s)
        ratio = alpha_t / alpha_s
        return combine((ratio, x), ((sigma_t**2 - ratio**2 * sigma_s**2).clamp(min=0).sqrt(), noise))

    # -- training ---------------------------------------------------------------------------

    def training_times(self, n: int, *, generator=None, device=None) -> Tensor:
        """``n`` times: uniform in (0, 1] or logit-normal, then shifted."""
        if self.training_law == "uniform":
            t = 1.0 - torch.rand(n, generator=generator, dtype=torch.float64)
        else:
            t = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=generator, dtype=torch.float64))
        return shift_time(t, self.shift).to(device=device, dtype=torch.float32)

    def leaf_errors(self, output: State, x0: State, x_t: State, t: Tensor, noise: State, *,
                    mask: State | None = None, weighting: str | None = None) -> State:
        """``||v - output||^2`` per leaf, ``v = alpha'(t) x_0 + sigma'(t) noise``, the mean over the
        entries ``mask`` marks. The law of the training times does the weighting over time."""
        if weighting not in (None, "uniform"):
            raise ValueError(f"flow matching weighs time by its training times, not by weighting={weighting!r}")
        return squared_errors(output, self.target(x0, noise, t), mask)

    def target(self, x0: State, noise: State, t: Tensor) -> State:
        """The velocity ``alpha'(t) x_0 + sigma'(t) noise`` (affine in both, so the perfect model
        returns it at ``E[x_0 | x_t]`` and ``E[noise | x_t]``)."""
        return self.path.velocity(x0, noise, t)

    # -- sampling ---------------------------------------------------------------------------

    def denoiser(self, model: Callable, like: State | None = None, *, cond: Any = None, guidance: float = 1.0,
                 uncond: Any = None, model_kwargs: dict | None = None, mask: State | None = None) -> FlowDenoiser:
        """The velocity model, guided (classifier-free guidance combines velocities)."""
        return FlowDenoiser(model, self.path, cond=cond, guidance=guidance, uncond=uncond, model_kwargs=model_kwargs,
                            noise_fn=self.noise_fn)

    def sample_times(self, steps: int, spacing: str = "uniform", *, t_max: float = 1.0) -> Tensor:
        """The spacings of :meth:`Schedule.sample_times` on the path's log-SNR, shifted: the times
        of the unshifted path from ``unshift(t_max)`` down to 0, each mapped by :func:`shift_time`."""
        start = float(unshift_time(torch.tensor(t_max, dtype=torch.float64), self.shift))
        times = self.schedule.sample_times(steps, spacing, t_max=start).double()
        shifted = shift_time(times, self.shift)
        shifted[0] = t_max
        return shifted.float()

    def run_sampler(self, sampler: Callable, denoiser: FlowDenoiser, x: State, times: Tensor, **kwargs) -> State:
        """Flow samplers integrate ``dx / dt = v`` on ``x``; Gaussian ones run on ``y = x / c(t)``
        through :class:`VariancePreservingView` (their callbacks see ``y``)."""
        if sampler_kind(sampler) != "gaussian":
            return sampler(denoiser, x, times, **kwargs)
        start, end = (self.path.scale(times[i].double()) for i in (0, -1))
        y = sampler(VariancePreservingView(denoiser, self.schedule), scale(1 / start, x), times, **kwargs)
        return scale(end, y)

    # -- distillation -----------------------------------------------------------------------

    def clean_estimate(self, output: State, x_t: State, t: Tensor) -> State:
        """The clean-data estimate implied by a velocity at ``(x_t, t)``."""
        return self.path.split(x_t, output, t)[0]


def _float64(t) -> Tensor:
    return torch.as_tensor(t).double()


__all__ = ["CosinePath", "FlowMatching", "LinearPath", "Path"]
