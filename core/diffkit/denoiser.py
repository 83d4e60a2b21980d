"""The model as samplers see it: a state and a time in, a clean-data estimate and a noise estimate out."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .process import to_eps, to_x0
from .schedules import Schedule
from .tree import State, batch_size, combine, concat, draw_noise, first_leaf, gaussian_like, split, tree_map


class Denoiser:
    """Wraps ``model(x_t, t, cond=None, **model_kwargs) -> prediction`` for the samplers.

    Calling it with a state ``x`` and a scalar time ``t`` returns ``(x0, eps)``. With ``guidance``
    ``w != 1`` it applies classifier-free guidance (Ho & Salimans 2022),
    ``out = out_uncond + w (out_cond - out_uncond)``, evaluating both halves in one batched call
    when ``uncond`` (the null condition) is given, and by calling the model with ``cond=None``
    otherwise. ``noise`` draws noise shaped like a state (a domain may zero padding, symmetrise...).
    """

    def __init__(self, model: Callable, schedule: Schedule, prediction: str, *, cond: Any = None,
                 guidance: float = 1.0, uncond: Any = None, model_kwargs: dict | None = None,
                 noise: Callable = gaussian_like):
        self.model = model
        self.schedule = schedule
        self.prediction = prediction
        self.cond = cond
        self.guidance = guidance
        self.uncond = uncond
        self.model_kwargs = model_kwargs or {}
        self._noise = noise
        self.calls = 0  # model evaluations, counting a batched guided call once

    def noise_like(self, x: State, generator: torch.Generator | None = None) -> State:
        """Noise shaped like ``x``; ``generator`` may be a :class:`~diffkit.tree.SampleGenerators`."""
        return draw_noise(self._noise, x, generator, **self.model_kwargs)

    def __call__(self, x: State, t: Tensor | float) -> tuple[State, State]:
        t_batch = torch.full((batch_size(x),), float(t), device=first_leaf(x).device)
        output = self.model_output(x, t_batch)
        # Coefficients in float64: at high noise x0 = (x - std eps) / alpha cancels strongly.
        alpha, std = self.schedule.alpha(t_batch.double()), self.schedule.std(t_batch.double())
        x0 = to_x0(self.prediction, output, x, alpha, std)
        eps = output if self.prediction == "eps" else to_eps(x0, x, alpha, std)
        return x0, eps

    def model_output(self, x: State, t: Tensor) -> State:
        self.calls += 1
        if self.guidance == 1.0 or self.cond is None:
            return self._call(x, t, self.cond, self.model_kwargs)
        if self.uncond is None:
            cond_out = self._call(x, t, self.cond, self.model_kwargs)
            uncond_out = self._call(x, t, None, self.model_kwargs)
        else:
            n = batch_size(x)
            doubled = lambda tree: concat([tree, tree])  # noqa: E731
            both = self._call(
                doubled(x), torch.cat([t, t]), _concat_any(self.cond, self.uncond),
                {k: _concat_any(v, v) for k, v in self.model_kwargs.items()},
            )
            cond_out, uncond_out = split(both, n)
        return combine((1.0 - self.guidance, uncond_out), (self.guidance, cond_out))

    def _call(self, x: State, t: Tensor, cond: Any, model_kwargs: dict) -> State:
        output = self.model(x, t, cond=cond, **model_kwargs)
        return tree_map(lambda out, ref: out.to(ref.dtype), output, x)


def _concat_any(a: Any, b: Any) -> Any:
    if isinstance(a, Tensor) or isinstance(a, dict):
        return concat([a, b])
    return a
