"""Gaussian diffusion: a schedule plus a prediction type, as a :class:`~diffkit.contract.Process`."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .contract import GaussianNoiseProcess, masked_mean, squared_errors
from .denoiser import Denoiser
from .process import PREDICTIONS, q_sample, q_step, target, to_x0
from .schedules import Schedule, make_schedule
from .tree import State, draw_noise, gaussian_like

WEIGHTINGS = ("uniform", "min_snr")


class Diffusion(GaussianNoiseProcess):
    """Gaussian diffusion with a given noise schedule and model parameterisation.

    Args:
        schedule: a name (``"cosine"``, ``"linear"``, ``"sigmoid"``), a config dict or a
            :class:`~diffkit.schedules.Schedule`.
        prediction: what the model outputs: ``"eps"`` (the noise), ``"v"`` or ``"x0"``.
        noise_fn: ``noise_fn(like, generator, **model_kwargs) -> state``; standard normal by
            default. A domain supplies its own for structured states (symmetric edges, zero padding).
        weighting: loss weighting over time, ``"uniform"`` or ``"min_snr"`` (Hang et al. 2023).
        min_snr_gamma: the ``gamma`` of min-SNR weighting.
        samplers: where sampler names are looked up (a plugin manager's ``Registry.samplers``);
            the built-in ones by default.

    Padding: the domain's noise keeps it (zeros there), so ``mask`` only restricts the loss.
    """

    kind = "gaussian"
    sampler_kinds = ("gaussian",)
    defaults = {
        "sample": {"sampler": "dpmpp_2m", "steps": 20, "spacing": "auto"},
        "edit": {"sampler": "ddim", "steps": 50, "spacing": "uniform"},
        # DDPM's step noise defaults to variance="beta" when inpainting: under resampling the
        # posterior variance's lack of spread compounds with every round trip and narrows the
        # generated part (by about 15% at 50 steps x 10 resamples on a correlated Gaussian; beta
        # stays within 2%).
        "inpaint": {"sampler": "ddpm", "steps": 50, "spacing": "uniform", "options": {"ddpm": {"variance": "beta"}}},
    }
    stepwise_sampler = "ddim"
    distillable = True

    def __init__(self, schedule: str | Schedule | dict = "cosine", prediction: str = "eps", *,
                 noise_fn: Callable = gaussian_like, weighting: str = "uniform", min_snr_gamma: float = 5.0,
                 samplers: dict[str, Callable] | None = None):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        self.schedule = make_schedule(schedule)
        if prediction == "eps" and float(self.schedule.alpha_bar(torch.tensor(1.0))) == 0.0:
            raise ValueError(
                "this schedule reaches zero signal at t = 1, where an eps prediction says nothing "
                "about the data; use prediction='v' or 'x0'"
            )
        self.prediction = prediction
        self.noise_fn = noise_fn
        self.weighting = weighting
        self.min_snr_gamma = min_snr_gamma
        self.samplers = samplers

    @classmethod
    def from_config(cls, section: dict, *, noise_fn: Callable = gaussian_like, samplers: dict | None = None,
                    schedules: dict | None = None, categories: Callable | None = None) -> "Diffusion":
        """The diffusion a config's ``diffusion`` section describes (schedule names in ``schedules``)."""
        schedule = make_schedule(section["schedule"], schedules=schedules,
                                 zero_terminal_snr=section.get("zero_terminal_snr", False))
        return cls(schedule, section["prediction"], noise_fn=noise_fn, weighting=section["weighting"],
                   min_snr_gamma=section["min_snr_gamma"], samplers=samplers)

    def __repr__(self) -> str:
        return f"Diffusion(schedule={self.schedule!r}, prediction={self.prediction!r}, weighting={self.weighting!r})"

    # -- the forward process ----------------------------------------------------------------

    def q_sample(self, x0: State, t: Tensor, noise: State | None = None, *, generator=None,
                 model_kwargs: dict | None = None, mask: State | None = None) -> State:
        """A draw of ``x_t = alpha(t) x_0 + std(t) noise``; ``model_kwargs`` reach the domain's noise."""
        noise = draw_noise(self.noise_fn, x0, generator, **(model_kwargs or {})) if noise is None else noise
        return q_sample(self.schedule, x0, t, noise)

    def forward_step(self, x: State, s: Tensor | float, t: Tensor | float, *, noise: State | None = None,
                     generator=None, model_kwargs: dict | None = None, mask: State | None = None) -> State:
        """``q(x_t | x_s) = N(sqrt(r) x_s, (1 - r) I)`` with ``r = alpha_bar(t) / alpha_bar(s)``."""
        noise = draw_noise(self.noise_fn, x, generator, **(model_kwargs or {})) if noise is None else noise
        return q_step(x, self.schedule.alpha_bar(t) / self.schedule.alpha_bar(s), noise)

    # -- training ---------------------------------------------------------------------------

    def training_times(self, n: int, *, generator=None, device=None) -> Tensor:
        return self.schedule.training_times(n, generator=generator, device=device)

    def leaf_errors(self, output: State, x0: State, x_t: State, t: Tensor, noise: State, *,
                    mask: State | None = None, weighting: str | None = None) -> State:
        """``||target - output||^2`` per leaf, the mean over the entries ``mask`` marks; the target
        is the noise, the clean data or v, as ``prediction`` says."""
        return squared_errors(output, self.target(x0, noise, t), mask)

    def target(self, x0: State, noise: State, t: Tensor) -> State:
        """What the model should output for ``x_t = alpha x_0 + std noise`` (affine in both, so the
        perfect model returns it at ``E[x_0 | x_t]`` and ``E[noise | x_t]``)."""
        return target(self.prediction, x0, noise, self.schedule.alpha(t), self.schedule.std(t))

    def time_weight(self, t: Tensor, weighting: str | None = None) -> Tensor | float:
        weighting = weighting or self.weighting
        if weighting == "uniform":
            return 1.0
        if weighting != "min_snr":
            raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        snr = torch.exp(self.schedule.log_snr(t)).float()
        clipped = snr.clamp(max=self.min_snr_gamma)
        # min(SNR, gamma) on the x0 error, expressed for the prediction's own error.
        return {"x0": clipped, "eps": clipped / snr, "v": clipped / (snr + 1)}[self.prediction]

    # -- sampling ---------------------------------------------------------------------------

    def denoiser(self, model: Callable, like: State | None = None, *, cond: Any = None, guidance: float = 1.0,
                 uncond: Any = None, model_kwargs: dict | None = None, mask: State | None = None) -> Denoiser:
        return Denoiser(model, self.schedule, self.prediction, cond=cond, guidance=guidance,
                        uncond=uncond, model_kwargs=model_kwargs, noise_fn=self.noise_fn)

    def sample_times(self, steps: int, spacing: str = "uniform", *, t_max: float = 1.0) -> Tensor:
        """The schedule's times (:meth:`Schedule.sample_times`): ``"auto"`` is each sampler's own
        (``trimmed`` for the multistep solvers, ``karras`` for Euler and Heun; measured in
        benchmarks/samplers.py)."""
        return self.schedule.sample_times(steps, spacing, t_max=t_max)

    # -- distillation -----------------------------------------------------------------------

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha(t), std(t))`` of ``x_t = alpha x_0 + std eps``."""
        return self.schedule.alpha(t), self.schedule.std(t)

    def clean_estimate(self, output: State, x_t: State, t: Tensor) -> State:
        """The clean-data estimate implied by a model output at ``(x_t, t)``."""
        return to_x0(self.prediction, output, x_t, self.schedule.alpha(t.double()), self.schedule.std(t.double()))


__all__ = ["Diffusion", "masked_mean"]
