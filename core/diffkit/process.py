"""The forward process and conversions between what a denoiser may predict.

With ``a = alpha(t)`` and ``s = std(t)`` (``a^2 + s^2 = 1``):

* ``q(x_t | x_0) = N(a x_0, s^2 I)``, i.e. ``x_t = a x_0 + s eps``
* ``v = a eps - s x_0`` (Salimans & Ho 2022), so ``x_0 = a x_t - s v`` and ``eps = s x_t + a v``

All functions take states (a Tensor or a dict of Tensors) and per-sample ``(B,)`` coefficients.
"""

from __future__ import annotations

from torch import Tensor

from .schedules import Schedule
from .tree import State, combine

PREDICTIONS = ("eps", "x0", "v")


def q_sample(schedule: Schedule, x0: State, t: Tensor, noise: State) -> State:
    """A draw from ``q(x_t | x_0)`` given the standard normal ``noise``."""
    return combine((schedule.alpha(t), x0), (schedule.std(t), noise))


def q_step(x_prev: State, alpha_bar_ratio: Tensor, noise: State) -> State:
    """One forward step ``q(x_t | x_s) = N(sqrt(r) x_s, (1 - r) I)`` with ``r = alpha_bar_t / alpha_bar_s``."""
    return combine((alpha_bar_ratio.sqrt(), x_prev), ((1 - alpha_bar_ratio).sqrt(), noise))


def posterior(schedule: Schedule, x0: State, x_t: State, t: Tensor, s: Tensor) -> tuple[State, Tensor]:
    """Mean and variance of ``q(x_s | x_t, x_0)`` for ``s < t``.

    ``mean = sqrt(ab_s) beta / (1 - ab_t) x_0 + sqrt(ab_t / ab_s) (1 - ab_s) / (1 - ab_t) x_t`` and
    ``var = (1 - ab_s) / (1 - ab_t) beta`` with ``beta = 1 - ab_t / ab_s`` (Ho et al. 2020, eq. 7).
    """
    ab_t, ab_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
    beta = 1 - ab_t / ab_s
    coef_x0 = ab_s.sqrt() * beta / (1 - ab_t)
    coef_xt = (ab_t / ab_s).sqrt() * (1 - ab_s) / (1 - ab_t)
    variance = (1 - ab_s) / (1 - ab_t) * beta
    return combine((coef_x0, x0), (coef_xt, x_t)), variance


def to_x0(prediction: str, output: State, x_t: State, alpha: Tensor, std: Tensor) -> State:
    """The clean-data estimate implied by a model output of kind ``prediction``."""
    if prediction == "x0":
        return output
    if prediction == "eps":
        return combine((1 / alpha, x_t), (-std / alpha, output))
    if prediction == "v":
        return combine((alpha, x_t), (-std, output))
    raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def to_eps(x0: State, x_t: State, alpha: Tensor, std: Tensor) -> State:
    """The noise implied by a clean-data estimate: ``eps = (x_t - a x_0) / s``."""
    return combine((1 / std, x_t), (-alpha / std, x0))


def target(prediction: str, x0: State, noise: State, alpha: Tensor, std: Tensor) -> State:
    """What a model of kind ``prediction`` should output for ``x_t = a x_0 + s noise``."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return combine((alpha, noise), (-std, x0))
    raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def convert(prediction_from: str, prediction_to: str, output: State, x_t: State,
            alpha: Tensor, std: Tensor) -> State:
    """Convert a model output between ``eps``, ``x0`` and ``v`` at the same ``x_t``."""
    x0 = to_x0(prediction_from, output, x_t, alpha, std)
    if prediction_to == "x0":
        return x0
    eps = output if prediction_from == "eps" else _eps_from(prediction_from, output, x_t, alpha, std)
    return target(prediction_to, x0, eps, alpha, std)


def _eps_from(prediction: str, output: State, x_t: State, alpha: Tensor, std: Tensor) -> State:
    if prediction == "v":
        return combine((std, x_t), (alpha, output))
    return to_eps(output, x_t, alpha, std)


