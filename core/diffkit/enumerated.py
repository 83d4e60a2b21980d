"""Laws over short sequences of classes, enumerated exactly, with their exact denoiser: a ground
truth for categorical samplers, tests and benchmarks (what :mod:`diffkit.gmm` is for Gaussians).

A law ``p`` over all ``K^L`` sequences of length ``L`` is a table of probabilities. Under a
forward process with transition matrix ``Q_t`` (:meth:`diffkit.CategoricalDiffusion.transition`)
the entries are noised independently, so Bayes gives the posterior of the whole sequence,

    p(x_0 | x_t) ∝ p(x_0) prod_i Q_t[x_0,i, x_t,i],

and its per-position marginals are what a perfect model trained with the cross-entropy returns.
Any error left in samples drawn with it is the sampler's.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

#: Times are capped just below 1 for the posterior: at ``t = 1`` a revealed token (absorbing noise)
#: has likelihood 0 under every ``x_0``; the cap takes the limit from below, where only the
#: ``x_0`` that agree with it remain.
T_CAP = 1.0 - 1e-6


class EnumeratedLaw:
    """A law over all sequences of ``length`` classes in ``[0, num_classes)``.

    ``probs`` holds the ``num_classes ** length`` probabilities in lexicographic order of the
    sequences (:attr:`states`); they are normalised here.
    """

    def __init__(self, probs: Tensor, num_classes: int, length: int):
        probs = torch.as_tensor(probs, dtype=torch.float64).flatten()
        if probs.numel() != num_classes**length:
            raise ValueError(f"a law over {num_classes}^{length} sequences needs {num_classes**length} "
                             f"probabilities, got {probs.numel()}")
        if (probs < 0).any() or probs.sum() <= 0:
            raise ValueError("probabilities must be non-negative with a positive sum")
        self.probs = probs / probs.sum()
        self.num_classes, self.length = num_classes, length
        self.states = torch.tensor(list(itertools.product(range(num_classes), repeat=length)), dtype=torch.long)

    def index(self, x: Tensor) -> Tensor:
        """The position of each sequence ``x (n, L)`` in :attr:`states`."""
        powers = self.num_classes ** torch.arange(self.length - 1, -1, -1)
        return (x.long().cpu() * powers).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact draws, ``(n, L)``."""
        return self.states[torch.multinomial(self.probs, n, replacement=True, generator=generator)]

    def frequencies(self, x: Tensor) -> Tensor:
        """The empirical law of the sequences ``x (n, L)`` over :attr:`states`."""
        counts = torch.bincount(self.index(x), minlength=len(self.probs)).double()
        return counts / counts.sum()

    def kl_from(self, x: Tensor) -> float:
        """``KL(empirical || p)`` of the samples ``x``: infinite if any has probability 0."""
        freq = self.frequencies(x)
        seen = freq > 0
        return float((freq[seen] * (freq[seen].log() - self.probs[seen].log())).sum())

    def kl_floor(self, n: int) -> tuple[float, float]:
        """Mean and standard deviation of :meth:`kl_from` for ``n`` exact samples, to leading order:
        ``2 n KL`` is asymptotically chi-square with ``M - 1`` degrees of freedom, ``M`` the number
        of sequences of positive probability."""
        dof = int((self.probs > 0).sum()) - 1
        return dof / (2 * n), math.sqrt(2 * dof) / (2 * n)

    def marginal(self, position: int) -> Tensor:
        """The law of one position, ``(K,)``."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self.states[:, position], self.probs)

    def condition(self, keep: Tensor, values: Tensor) -> "EnumeratedLaw":
        """The law given that the positions where ``keep (L,)`` is true hold ``values (L,)``."""
        keep = torch.as_tensor(keep, dtype=torch.bool)
        agrees = (self.states[:, keep] == torch.as_tensor(values)[keep]).all(-1)
        return EnumeratedLaw(self.probs * agrees, self.num_classes, self.length)

    def posterior(self, x_t: Tensor, transitions: Tensor) -> Tensor:
        """``p(x_0 | x_t)`` over :attr:`states`, ``(n, M)``, for ``x_t (n, L)`` and per-sample
        transition matrices ``transitions (n, S, S)`` (Bayes, in log space)."""
        return torch.softmax(self.probs.log()[None] + _log_likelihood(self.states, x_t, transitions), dim=-1)

    def marginals(self, x_t: Tensor, transitions: Tensor) -> Tensor:
        """Per-position posterior marginals ``p(x_0,i = k | x_t)``, ``(n, L, K)``."""
        one_hot = nn.functional.one_hot(self.states, self.num_classes).double()      # (M, L, K)
        return torch.einsum("nm,mlk->nlk", self.posterior(x_t, transitions), one_hot)

    def conditional_entropy(self, transition: Tensor) -> float:
        """``(1 / L) sum_i H(X_0,i | X_t)`` in nats for one transition matrix ``Q_t (S, S)``: the
        least expected cross-entropy of per-position predictions, by summing over every pair
        ``(x_0, x_t)``."""
        num_states = transition.shape[-1]
        noisy = torch.tensor(list(itertools.product(range(num_states), repeat=self.length)), dtype=torch.long)
        batch = transition.expand(len(noisy), num_states, num_states)
        log_joint = self.probs.log()[None] + _log_likelihood(self.states, noisy, batch)   # (n_t, M)
        joint = log_joint.exp()
        marginals = self.marginals(noisy, batch)                                          # (n_t, L, K)
        total = 0.0
        for i in range(self.length):
            own = marginals[:, i, :][:, self.states[:, i]]                               # (n_t, M)
            total -= float((joint * torch.where(joint > 0, own.log(), torch.zeros((), dtype=own.dtype))).sum())
        return total / self.length

    def denoiser(self, diffusion, conditional: list["EnumeratedLaw"] | None = None) -> "ExactCategoricalDenoiser":
        return ExactCategoricalDenoiser(self, diffusion, conditional)


def _log_likelihood(states: Tensor, x_t: Tensor, transitions: Tensor) -> Tensor:
    """``sum_i log Q[x_0,i, x_t,i]`` for every candidate ``x_0`` in ``states (M, L)``, ``(n, M)``."""
    log_q = transitions.double().log()                                                   # (n, S, S)
    # columns[n, i, a] = log Q[n, a, x_t[n, i]]
    columns = torch.take_along_dim(log_q.transpose(1, 2), x_t.long().cpu()[:, :, None], dim=1)
    return sum(columns[:, i, :][:, states[:, i]] for i in range(states.shape[1]))


class ExactCategoricalDenoiser(nn.Module):
    """``model(x_t, t, cond=None)`` returning the exact per-position ``x_0`` logits of a law.

    With ``conditional`` (one law per class label), ``cond`` is a LongTensor ``(B,)`` of labels
    and each sample gets its own law's posterior; ``cond=None`` uses ``law`` (for guidance, the
    mixture of the conditional laws).
    """

    def __init__(self, law: EnumeratedLaw, diffusion, conditional: list[EnumeratedLaw] | None = None):
        super().__init__()
        self.law, self.diffusion, self.conditional = law, diffusion, conditional

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        t, x = t.double().cpu().clamp(max=T_CAP), x_t.long().cpu()
        labels = torch.zeros(len(x), dtype=torch.long) if cond is None else cond.long().cpu()
        laws = [self.law] if cond is None else self.conditional
        marginals = torch.empty(*x.shape, self.law.num_classes, dtype=torch.float64)
        for label in torch.unique(labels).tolist():
            rows = labels == label
            marginals[rows] = _marginals(laws[label], x[rows], t[rows], self.diffusion)
        return marginals.clamp(min=1e-300).log().to(x_t.device)


def _marginals(law: EnumeratedLaw, x_t: Tensor, t: Tensor, diffusion) -> Tensor:
    """``law.marginals`` at per-sample times; when all share one time (as in sampling) the
    marginals are tabulated once for every possible ``x_t`` and looked up."""
    if not bool((t == t[0]).all()):
        return law.marginals(x_t, diffusion.transition(t))
    transition = diffusion.transition(t[0])
    num_states = transition.shape[-1]
    noisy = torch.tensor(list(itertools.product(range(num_states), repeat=law.length)), dtype=torch.long)
    table = law.marginals(noisy, transition.expand(len(noisy), num_states, num_states))
    powers = num_states ** torch.arange(law.length - 1, -1, -1)
    return table[(x_t * powers).sum(-1)]
