"""Flow samplers: ODE solvers for ``dx / dt = v(x, t)`` in a flow's own time, with the samplers' contract

``sample_<name>(denoiser, x, times, *, generator=None, callback=None, **options) -> x_0``

``denoiser(x, t)`` returns the model's velocity at the state ``x`` and a scalar time ``t`` (see
:class:`diffkit.flow.FlowDenoiser`, whose ``clean`` gives the clean-data estimate the callback
reports); ``x`` is noise at ``times[0]`` and ``times`` decreases to 0. They are registered with
``kind="flow"`` (:func:`diffkit.register_sampler`); a flow also runs every Gaussian sampler
through its variance-preserving view (:class:`diffkit.flow.VariancePreservingView`), which is
where the multistep solvers (``dpmpp_2m``, ``dpmpp_3m``, ``unipc``) come from.

The fixed-step solvers integrate each interval ``[t, s]`` of ``times`` with one step: Euler
(first order, one call), Heun and the explicit midpoint rule (second order, two calls; Heun's
last step to ``t = 0`` is an Euler step, so ``N`` steps cost ``2 N - 1`` calls). ``dopri5`` is
the adaptive Dormand-Prince 5(4) pair with error control, the reference: each interval is
integrated to the tolerances ``rtol``, ``atol`` with as many calls as that takes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .samplers import register_sampler
from .tree import State, combine, leaves


def _notify(callback, step: int, t: Tensor, x: State, x0: State) -> None:
    if callback is not None:
        callback({"step": step, "t": float(t), "x": x, "x0": x0})


@register_sampler("flow_euler", kind="flow", spacing="uniform", stepwise=True)
def sample_flow_euler(denoiser, x: State, times: Tensor, *, generator=None, callback=None) -> State:
    """Euler's method on ``dx / dt = v``: ``x_s = x_t + (s - t) v(x_t, t)`` (on the linear path the
    same step as DDIM and Gaussian ``euler``, and as diffusers' FlowMatchEulerDiscreteScheduler)."""
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        v = denoiser(x, t)
        x0 = denoiser.clean(x, v, t) if callback is not None else None
        x = combine((1.0, x), (float(s - t), v))
        _notify(callback, i, t, x, x0)
    return x


@register_sampler("flow_heun", kind="flow", spacing="uniform", calls_per_step=2)
def sample_flow_heun(denoiser, x: State, times: Tensor, *, generator=None, callback=None) -> State:
    """Heun's method (the explicit trapezoidal rule) on ``dx / dt = v``: an Euler step corrected with
    the mean of the velocities at its two ends; the last step, to ``t = 0``, is Euler's."""
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        v = denoiser(x, t)
        x0 = denoiser.clean(x, v, t) if callback is not None else None
        euler = combine((1.0, x), (float(s - t), v))
        if s == 0:
            x = euler
        else:
            v_end = denoiser(euler, s)
            x = combine((1.0, x), (float(s - t) / 2, v), (float(s - t) / 2, v_end))
        _notify(callback, i, t, x, x0)
    return x


@register_sampler("flow_midpoint", kind="flow", spacing="uniform", calls_per_step=2)
def sample_flow_midpoint(denoiser, x: State, times: Tensor, *, generator=None, callback=None) -> State:
    """The explicit midpoint rule on ``dx / dt = v``: ``x_s = x_t + (s - t) v(x_m, (t + s) / 2)``,
    ``x_m`` the Euler half step (the default of Meta's ``flow_matching`` ODE solver)."""
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        v = denoiser(x, t)
        x0 = denoiser.clean(x, v, t) if callback is not None else None
        half = combine((1.0, x), (float(s - t) / 2, v))
        x = combine((1.0, x), (float(s - t), denoiser(half, (t + s) / 2)))
        _notify(callback, i, t, x, x0)
    return x


# Dormand & Prince (1980): nodes, the stage matrix, and the 5th- and 4th-order weights.
_NODES = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_STAGES = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_FIFTH = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_FOURTH = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


@register_sampler("dopri5", kind="flow", spacing="uniform")
def sample_dopri5(denoiser, x: State, times: Tensor, *, generator=None, callback=None, rtol: float = 1e-5,
                  atol: float = 1e-5, max_calls: int = 100_000) -> State:
    """The adaptive Dormand-Prince 5(4) method (Hairer et al., Solving ODEs I, II.4-5) on
    ``dx / dt = v``: each interval of ``times`` is integrated with steps whose estimated local
    error, per sample the root mean square over entries of ``error / (atol + rtol |x|)``, stays
    below 1 for every sample of the batch; a reference solver, not a fast one."""
    if rtol <= 0 or atol <= 0:
        raise ValueError(f"rtol and atol must be positive, got {rtol} and {atol}")
    start_calls = denoiser.calls
    for i in range(len(times) - 1):
        t, s = float(times[i]), float(times[i + 1])
        x = _dopri5_interval(denoiser, x, t, s, rtol, atol, start_calls + max_calls)
        _notify(callback, i, times[i], x, x)
    return x


def _dopri5_interval(denoiser, x: State, t: float, end: float, rtol: float, atol: float, call_limit: int) -> State:
    direction = 1.0 if end > t else -1.0
    k1 = denoiser(x, t)
    h = direction * _first_step(x, k1, abs(end - t), rtol, atol)
    while direction * (end - t) > 0:
        if denoiser.calls > call_limit:
            raise RuntimeError(f"dopri5 took more than {call_limit} model calls between t = {t:g} and {end:g}; "
                               "loosen rtol/atol")
        h = direction * min(abs(h), abs(end - t))
        ks = [k1]
        for node, row in zip(_NODES[1:], _STAGES[1:]):
            stage = combine((1.0, x), *((h * a, k) for a, k in zip(row, ks) if a != 0.0))
            ks.append(denoiser(stage, t + node * h))
        new = combine((1.0, x), *((h * b, k) for b, k in zip(_FIFTH, ks) if b != 0.0))
        error = combine(*((h * (b - b4), k) for b, b4, k in zip(_FIFTH, _FOURTH, ks)))
        ratio = _error_ratio(error, x, new, rtol, atol)
        if ratio <= 1.0:
            t = end if abs(end - (t + h)) < 1e-12 else t + h
            x, k1 = new, ks[-1]  # first same as last: the 7th stage is at the new point
        h = h * min(5.0, max(0.2, 0.9 * ratio ** -0.2 if ratio > 0 else 5.0))
    return x


def _error_ratio(error: State, x: State, new: State, rtol: float, atol: float) -> float:
    """The largest per-sample RMS of ``error / (atol + rtol max(|x|, |new|))``."""
    total, count = 0.0, 0
    for e, a, b in zip(leaves(error), leaves(x), leaves(new)):  # detached: step control, not the solution
        tolerance = atol + rtol * torch.maximum(a.detach().abs(), b.detach().abs())
        total = total + ((e.detach() / tolerance) ** 2).reshape(e.shape[0], -1).sum(1)
        count += e[0].numel()
    return float((total / count).sqrt().max())


def _first_step(x: State, slope: State, span: float, rtol: float, atol: float) -> float:
    """A first step whose Euler change is about 1 % of the tolerance-scaled state (Hairer et al.'s
    starting step, without its second model call), at most the whole interval."""
    x, slope = leaves(x), leaves(slope)
    scale_x = sum(float(((a / (atol + rtol * a.abs())) ** 2).mean().detach()) for a in x) ** 0.5
    scale_v = sum(float(((v / (atol + rtol * a.abs())) ** 2).mean().detach()) for v, a in zip(slope, x)) ** 0.5
    h = 0.01 * scale_x / scale_v if scale_x > 1e-5 and scale_v > 1e-5 else 1e-6
    return min(h, span)
