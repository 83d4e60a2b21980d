"""The categorical forward process: transition matrices, posteriors and draws by inverse CDF.

A leaf of a categorical state holds class indices in ``[0, S)``. Its forward process keeps each
entry with probability ``a(t)`` and otherwise replaces it by a draw from a fixed law ``m``:

    Q_t = a(t) I + (1 - a(t)) 1 m^T,      q(x_t = j | x_0 = i) = Q_t[i, j]

``m`` is uniform over the ``K`` classes (``"uniform"``, Austin et al. 2021), a given law such as
the data's class frequencies (``"marginal"``, Vignac et al. 2023), or the one-hot of an extra mask
state with index ``K`` (``"absorbing"``, so ``S = K + 1``). The family is closed under
composition, ``Q_s Q_{t|s} = Q_t`` with ``Q_{t|s} = (a_t / a_s) I + (1 - a_t / a_s) 1 m^T``, so
every quantity has a closed form costing ``O(S)`` per entry; no ``S x S`` matrix is formed except
by :meth:`CategoricalTransition.matrix`.

``a(t)`` is the schedule's ``alpha_bar`` rescaled to run exactly from 1 at ``t = 0`` to 0 at
``t = 1`` (:func:`signal`). Coefficients are computed in float64 and carried as the pair
``(a, 1 - a)``: near ``t = 0``, ``1 - a`` is far below float32's resolution of 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .schedules import Schedule, _snap_to_grid
from .tree import State, append_dims, tree_map

TRANSITIONS = ("uniform", "absorbing", "marginal")
Signal = tuple[Tensor, Tensor]  # (a, 1 - a), per sample, float64


def signal(schedule: Schedule, t: Tensor | float) -> Signal:
    """``(a(t), 1 - a(t))`` in float64, where ``a`` is ``alpha_bar`` rescaled so that ``a(0) = 1``
    and ``a(1) = 0`` exactly.

    ``1 - a`` is formed from ``sigmoid(-log_snr)`` rather than as ``1 - a``, which keeps its
    relative precision where it is tiny.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    noise_ends = torch.sigmoid(-schedule.log_snr(ends).double())           # 1 - alpha_bar at 0 and 1
    signal_ends = torch.sigmoid(schedule.log_snr(ends).double())           # alpha_bar at 0 and 1
    span = float(signal_ends[0] - signal_ends[1])
    log_snr = schedule.log_snr(t.double()).double()
    a = (torch.sigmoid(log_snr) - float(signal_ends[1])) / span
    one_minus_a = (torch.sigmoid(-log_snr) - float(noise_ends[0])) / span
    return a.clamp(0.0, 1.0), one_minus_a.clamp(0.0, 1.0)


def signal_rate(schedule: Schedule, t: Tensor) -> Tensor:
    """``-da/dt >= 0`` at ``t`` (float64), by automatic differentiation of the schedule's log-SNR."""
    t = torch.as_tensor(t, dtype=torch.float64).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        a, _ = signal(schedule, t)
        (slope,) = torch.autograd.grad(a.sum(), t)
    return -slope


def elbo_weight(schedule: Schedule, t: Tensor) -> Tensor:
    """The weight of the cross-entropy of masked entries in the masked-diffusion ELBO (float64).

    Continuous time: ``-a'(t) / (1 - a(t))`` (Sahoo et al. 2024, eq. 10; Shi et al. 2024, eq. 5).
    A discrete schedule of ``T`` steps trains on the grid ``i / T``, where the exact bound's term
    is ``T (a(t - 1/T) - a(t)) / (1 - a(t))``.
    """
    t = torch.as_tensor(t).double()
    _, noise_t = signal(schedule, t)
    if schedule.num_steps:
        _, noise_s = signal(schedule, (t - 1.0 / schedule.num_steps).clamp(min=0.0))
        gain = schedule.num_steps * (noise_t - noise_s)
    else:
        gain = signal_rate(schedule, t)
    return gain / noise_t.clamp(min=1e-300)


def sample_times(schedule: Schedule, steps: int, spacing: str = "uniform", *, t_max: float = 1.0) -> Tensor:
    """``steps + 1`` decreasing times from ``t_max`` to 0 for a categorical sampler.

    Besides the schedule's spacings (:meth:`Schedule.sample_times`), ``"signal"`` spaces the times
    uniformly in ``a(t)``, the expected fraction of entries still equal to ``x_0``: each step then
    settles about the same number of entries.
    """
    if spacing != "signal":
        return schedule.sample_times(steps, spacing, t_max=t_max)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    start, _ = signal(schedule, t_max)
    a = start + (1 - start) * torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    ends = schedule.alpha_bar(torch.tensor([0.0, 1.0], dtype=torch.float64)).double()
    alpha_bar = ends[1] + a * (ends[0] - ends[1])
    times = schedule.t_from_log_snr(torch.log(alpha_bar) - torch.log1p(-alpha_bar)).double()
    times = times.clamp(0.0, t_max)
    times[0], times[-1] = t_max, 0.0
    if schedule.num_steps:
        times = _snap_to_grid(times, schedule.num_steps, steps, spacing)
    return times.float()


class CategoricalTransition:
    """The transitions of one leaf: ``num_classes`` data classes and the stationary law ``m``.

    Args:
        num_classes: ``K``, the number of data classes.
        kind: ``"uniform"``, ``"absorbing"`` (adds the mask state ``K``) or ``"marginal"``.
        marginal: the law ``m`` over the ``K`` classes for ``kind="marginal"`` (normalised here).
    """

    def __init__(self, num_classes: int, kind: str = "uniform", marginal: Any = None):
        if kind not in TRANSITIONS:
            raise ValueError(f"unknown categorical transition {kind!r}; valid: {', '.join(TRANSITIONS)}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if kind != "absorbing" and num_classes < 2:
            raise ValueError(f"{kind} transitions need at least 2 classes, got {num_classes}")
        self.num_classes, self.kind = num_classes, kind
        self.num_states = num_classes + 1 if kind == "absorbing" else num_classes
        self.stationary = self._stationary(marginal)

    def _stationary(self, marginal: Any) -> Tensor:
        k = self.num_classes
        if self.kind == "marginal":
            if marginal is None:
                raise ValueError("transition='marginal' needs marginal=, the law over the classes (e.g. their data frequencies)")
            law = torch.as_tensor(marginal, dtype=torch.float64).flatten()
            if law.shape != (k,) or not torch.isfinite(law).all() or (law < 0).any() or law.sum() <= 0:
                raise ValueError(f"marginal must be {k} non-negative numbers with a positive sum, got {marginal!r}")
            return law / law.sum()
        if marginal is not None:
            raise ValueError(f"marginal= is only used with transition='marginal', not {self.kind!r}")
        if self.kind == "uniform":
            return torch.full((k,), 1.0 / k, dtype=torch.float64)
        law = torch.zeros(k + 1, dtype=torch.float64)
        law[k] = 1.0
        return law

    @property
    def mask_index(self) -> int | None:
        """The mask state's index (``K``) under absorbing noise, else None."""
        return self.num_classes if self.kind == "absorbing" else None

    def __repr__(self) -> str:
        return f"CategoricalTransition(num_classes={self.num_classes}, kind={self.kind!r})"

    # -- closed forms -----------------------------------------------------------------------

    def matrix(self, at: Signal) -> Tensor:
        """``Q = a I + (1 - a) 1 m^T``, ``(S, S)`` for a scalar ``a``, ``(B, S, S)`` for ``(B,)``."""
        a, one_minus_a = (torch.as_tensor(c, dtype=torch.float64) for c in at)
        eye = torch.eye(self.num_states, dtype=torch.float64, device=a.device)
        m = self.stationary.to(a.device)
        return a[..., None, None] * eye + one_minus_a[..., None, None] * m.expand(self.num_states, -1)

    def forward_probs(self, x0: Tensor, at: Signal, dtype=torch.float64) -> Tensor:
        """``q(x_t | x_0)``, i.e. the rows ``Q_t[x_0, :]``, shape ``x0.shape + (S,)``."""
        a, one_minus_a = _per_entry(at, x0, dtype)
        return a * self.one_hot(x0, dtype) + one_minus_a * self._m(x0, dtype)

    def likelihood(self, x_t: Tensor, at: Signal, dtype=torch.float64) -> Tensor:
        """``q(x_t | x_0 = i)`` for every ``i``, i.e. the columns ``Q_t[:, x_t]``, shape ``x_t.shape + (S,)``."""
        a, one_minus_a = _per_entry(at, x_t, dtype)
        m_xt = self.stationary.to(device=x_t.device, dtype=dtype)[x_t][..., None]
        return a * self.one_hot(x_t, dtype) + one_minus_a * m_xt

    def posterior(self, x0_probs: Tensor, x_t: Tensor, at_t: Signal, at_s: Signal) -> Tensor:
        """``sum_i p(x_0 = i) q(x_s | x_t, x_0 = i)`` for ``s < t``, shape ``x_t.shape + (S,)``.

        ``x0_probs`` (``x_t.shape + (K,)``, or ``(S,)`` last) is the law of ``x_0``: a one-hot for the
        exact posterior, a model's prediction for a reverse step. By Bayes,
        ``q(x_s = j | x_t, x_0 = i) = Q_s[i, j] Q_{t|s}[j, x_t] / Q_t[i, x_t]``; with
        ``v_i = p(x_0 = i) / Q_t[i, x_t]`` the sum is
        ``Q_{t|s}[j, x_t] (a_s v_j + (1 - a_s) m_j sum_i v_i)``, normalised. Values of ``x_0`` that
        cannot produce ``x_t`` (``Q_t[i, x_t] = 0``: a revealed token under absorbing noise is its
        own ``x_0``) are dropped from ``p``. An ``x_t`` that no ``x_0`` with positive probability
        can produce at ``t`` (a revealed token at ``t = 1``) is kept as it is.
        """
        dtype = _float_dtype(x0_probs)
        p = self.pad(x0_probs).to(dtype)
        likelihood = self.likelihood(x_t, at_t, dtype)
        v = torch.where(likelihood > 0, p / likelihood.clamp(min=torch.finfo(dtype).tiny), torch.zeros((), dtype=dtype))
        a_s, one_minus_a_s = _per_entry(at_s, x_t, dtype)
        reach = a_s * v + one_minus_a_s * self._m(x_t, dtype) * v.sum(-1, keepdim=True)
        back = self._backward_likelihood(x_t, at_t, at_s, dtype)
        return _normalise_or_stay(back * reach, x_t, self.num_states)

    def jump(self, x0_probs: Tensor, x_t: Tensor, at_t: Signal, at_s: Signal, target_guidance: float = 0.0) -> Tensor:
        """The minimal-jump kernel averaged over ``x0_probs``: an entry ``x_t != x_0`` moves to
        ``x_0`` with probability ``(a_s - a_t) / (1 - a_t)`` and otherwise stays; an entry equal
        to ``x_0`` stays. Like :meth:`posterior` it maps ``q(x_t | x_0)`` to ``q(x_s | x_0)``
        exactly, with the fewest changes (the exact time integral of Campbell et al.'s (2024)
        minimal rate ``-a'(t) / (1 - a(t))`` towards ``x_0``).

        ``target_guidance = w > 0`` adds DeFoG's target guidance (Qin et al. 2024), the rate
        ``w / (Z q(x_t | x_0))`` towards ``x_0`` in the time ``a``, ``Z`` the number of states
        ``x_0`` can have become: over the step it multiplies the probability of moving to each
        ``x_0 = i`` by ``1 + w / (Z_i m[x_t])``. Entries then commit to the model's prediction
        sooner; the kernel no longer maps ``q(x_t | x_0)`` to ``q(x_s | x_0)`` exactly."""
        if target_guidance:
            return self._guided_jump(x0_probs, x_t, at_t, at_s, target_guidance)
        dtype = _float_dtype(x0_probs)
        p = self.pad(x0_probs).to(dtype)
        likelihood = self.likelihood(x_t, at_t, dtype)
        p = torch.where(likelihood > 0, p, torch.zeros((), dtype=dtype))
        total = p.sum(-1, keepdim=True)
        p = torch.where(total > 0, p / total.clamp(min=torch.finfo(dtype).tiny), self.one_hot(x_t, dtype))
        _, one_minus_a_t = _per_entry(at_t, x_t, dtype)
        _, one_minus_a_s = _per_entry(at_s, x_t, dtype)
        gamma = ((one_minus_a_t - one_minus_a_s) / one_minus_a_t.clamp(min=torch.finfo(dtype).tiny)).clamp(0, 1)
        stay = self.one_hot(x_t, dtype)
        return gamma * p + (1 - gamma) * stay

    def _guided_jump(self, x0_probs: Tensor, x_t: Tensor, at_t: Signal, at_s: Signal, weight: float) -> Tensor:
        plain = self.jump(x0_probs, x_t, at_t, at_s)
        dtype = plain.dtype
        stay = self.one_hot(x_t, dtype)
        m = self._m(x_t, dtype)
        reachable = (m > 0).sum()  # states any x_0 can become at 0 < t < 1: those m reaches, and x_0
        z = reachable + (m == 0).to(dtype)  # per candidate x_0 = i
        m_xt = m[x_t][..., None]
        gain = torch.where(m_xt > 0, 1 + weight / (z * m_xt.clamp(min=torch.finfo(dtype).tiny)),
                           torch.ones((), dtype=dtype))
        move = (plain * (1 - stay)) * gain
        total = move.sum(-1, keepdim=True)
        move = move * torch.where(total > 1, 1 / total.clamp(min=1), torch.ones((), dtype=dtype))
        return move + (1 - move.sum(-1, keepdim=True)) * stay

    def _backward_likelihood(self, x_t: Tensor, at_t: Signal, at_s: Signal, dtype) -> Tensor:
        """``Q_{t|s}[j, x_t]`` for every ``j``: ``r d(j, x_t) + (1 - r) m[x_t]`` with ``r = a_t / a_s``."""
        a_t, one_minus_a_t = (c.double() for c in at_t)
        a_s, one_minus_a_s = (c.double() for c in at_s)
        safe_a_s = a_s.clamp(min=1e-300)
        ratio = (a_t / safe_a_s, (one_minus_a_t - one_minus_a_s).clamp(min=0) / safe_a_s)
        return self.likelihood(x_t, ratio, dtype)

    # -- helpers ----------------------------------------------------------------------------

    def one_hot(self, x: Tensor, dtype=torch.float64) -> Tensor:
        return torch.nn.functional.one_hot(x.long(), self.num_states).to(dtype)

    def pad(self, x0_probs: Tensor) -> Tensor:
        """A law over the ``K`` classes extended with probability 0 for the mask state."""
        if x0_probs.shape[-1] == self.num_states:
            return x0_probs
        return torch.nn.functional.pad(x0_probs, (0, self.num_states - x0_probs.shape[-1]))

    def prior_probs(self, like: Tensor, dtype=torch.float64) -> Tensor:
        """The law at ``t = 1``, ``m``, broadcast to ``like.shape + (S,)``."""
        return self._m(like, dtype).expand(*like.shape, self.num_states)

    def _m(self, like: Tensor, dtype) -> Tensor:
        return self.stationary.to(device=like.device, dtype=dtype)


def _per_entry(at: Signal, like: Tensor, dtype) -> tuple[Tensor, Tensor]:
    """Per-sample ``(B,)`` (or scalar) coefficients shaped to broadcast against ``like.shape + (S,)``."""
    out = []
    for c in at:
        c = torch.as_tensor(c, dtype=torch.float64, device=like.device)
        out.append(append_dims(c, like.ndim + 1).to(dtype) if c.ndim else c.to(dtype))
    return out[0], out[1]


def _float_dtype(x: Tensor):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _normalise_or_stay(weights: Tensor, x_t: Tensor, num_states: int) -> Tensor:
    total = weights.sum(-1, keepdim=True)
    stay = torch.nn.functional.one_hot(x_t.long(), num_states).to(weights.dtype)
    return torch.where(total > 0, weights / total.clamp(min=torch.finfo(weights.dtype).tiny), stay)


def draw_categorical(probs: Tensor, u: Tensor) -> Tensor:
    """The class whose CDF interval holds ``u`` (inverse-CDF sampling), shape ``probs.shape[:-1]``.

    ``probs`` need not be normalised; classes of probability 0 are never returned. The same ``u``
    on the same ``probs`` gives the same class, so a symmetric ``u`` on symmetric laws gives a
    symmetric draw.
    """
    probs = probs.double()
    cdf = probs.cumsum(-1)
    target = (u.double() * cdf[..., -1]).unsqueeze(-1)
    index = torch.searchsorted(cdf.contiguous(), target.contiguous(), right=True).squeeze(-1)
    # Rounding may point past the last class with mass; fall back to that class.
    positive = probs > 0
    last = probs.shape[-1] - 1 - positive.flip(-1).to(torch.int8).argmax(-1)
    return torch.minimum(index, last)


def uniform_like(like: State, generator: torch.Generator | None = None, **_: Any) -> State:
    """Uniforms in ``[0, 1)`` (float64), one per entry of every leaf of ``like``: the randomness
    of one categorical draw per entry (see :func:`draw_categorical`)."""
    return tree_map(
        lambda leaf: torch.rand(leaf.shape, generator=generator, dtype=torch.float64, device=leaf.device),
        like,
    )

