"""The model as samplers see it: :class:`GuidedModel` calls it at one time for the whole batch, with
classifier-free guidance; each process's denoiser reads what it returns (:class:`Denoiser`: the
clean-data and noise estimates of Gaussian diffusion)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .process import to_eps, to_x0
from .schedules import Schedule
from .tree import State, batch_size, combine, concat, draw_noise, first_leaf, gaussian_like, split, tree_map


class GuidedModel:
    """Wraps ``model(x_t, t, cond=None, **model_kwargs)`` for the samplers of every process.

    :meth:`model_output` calls it with one time for the batch. With ``guidance`` ``w != 1`` it
    applies classifier-free guidance (Ho & Salimans 2022), ``out = out_uncond + w (out_cond -
    out_uncond)``, on what :meth:`read` makes of each output, evaluating both halves in one batched
    call when ``uncond`` (the null condition) is given, and by calling the model with
    ``cond=None`` otherwise. ``noise_fn(like, generator, **model_kwargs)`` draws the process's
    noise shaped like a state (a domain may zero padding, symmetrise...).
    """

    def __init__(self, model: Callable, *, cond: Any = None, guidance: float = 1.0, uncond: Any = None,
                 model_kwargs: dict | None = None, noise_fn: Callable = gaussian_like):
        self.model = model
        self.cond = cond
        self.guidance = guidance
        self.uncond = uncond
        self.model_kwargs = model_kwargs or {}
        self.noise_fn = noise_fn
        self.calls = 0  # model evaluations, counting a batched guided call once

    def noise_like(self, x: State, generator: torch.Generator | None = None) -> State:
        """Noise shaped like ``x``; ``generator`` may be a :class:`~diffkit.tree.SampleGenerators`."""
        return draw_noise(self.noise_fn, x, generator, **self.model_kwargs)

    def model_output(self, x: State, t: Tensor) -> State:
        """The guided output at ``x`` and per-sample times ``t`` (shape ``(B,)``), as :meth:`read` gives it."""
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

    def read(self, output: State, x: State) -> State:
        """What guidance combines: the model's output in the state's dtype."""
        return tree_map(lambda out, ref: out.to(ref.dtype), output, x)

    def _call(self, x: State, t: Tensor, cond: Any, model_kwargs: dict) -> State:
        return self.read(self.model(x, t, cond=cond, **model_kwargs), x)

    def _times(self, x: State, t: Tensor | float) -> Tensor:
        return torch.full((batch_size(x),), float(t), device=first_leaf(x).device)


class Denoiser(GuidedModel):
    """Gaussian diffusion's model as its samplers see it: called with a state ``x`` and a scalar
    time ``t``, it returns ``(x0, eps)``, the clean-data and noise estimates implied by the model's
    ``prediction`` (``eps``, ``x0`` or ``v``) under ``schedule``; guidance as :class:`GuidedModel`."""

    def __init__(self, model: Callable, schedule: Schedule, prediction: str, *, cond: Any = None,
                 guidance: float = 1.0, uncond: Any = None, model_kwargs: dict | None = None,
                 noise_fn: Callable = gaussian_like):
        super().__init__(model, cond=cond, guidance=guidance, uncond=uncond, model_kwargs=model_kwargs,
                         noise_fn=noise_fn)
        self.schedule = schedule
        self.prediction = prediction

    def __call__(self, x: State, t: Tensor | float) -> tuple[State, State]:
        t_batch = self._times(x, t)
        output = self.model_output(x, t_batch)
        # Coefficients in float64: at high noise x0 = (x - std eps) / alpha cancels strongly.
        alpha, std = self.schedule.alpha(t_batch.double()), self.schedule.std(t_batch.double())
        x0 = to_x0(self.prediction, output, x, alpha, std)
        eps = output if self.prediction == "eps" else to_eps(x0, x, alpha, std)
        return x0, eps


def _concat_any(a: Any, b: Any) -> Any:
    if isinstance(a, Tensor) or isinstance(a, dict):
        return concat([a, b])
    return a
