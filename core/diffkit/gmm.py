"""Gaussian mixtures with their exact denoiser: a ground truth for samplers, tests and benchmarks.

For ``x_0 ~ sum_k w_k N(mu_k, C_k)`` and ``x_t = a x_0 + s eps`` the noisy marginal is the mixture
``sum_k w_k N(a mu_k, a^2 C_k + s^2 I)`` and the posterior mean is known in closed form:
``E[x_0 | x_t] = sum_k r_k(x_t) (mu_k + a C_k (a^2 C_k + s^2 I)^{-1} (x_t - a mu_k))`` with
``r_k`` the posterior weight of component ``k``. A model returning it is the best possible denoiser,
so any error left in its samples is the sampler's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .process import target
from .schedules import Schedule


class GaussianMixture:
    """``weights (K,)``, ``means (K, D)`` and ``covariances (K, D, D)`` (or ``stds (K,)`` for isotropic)."""

    def __init__(self, weights: Tensor, means: Tensor, covariances: Tensor | None = None,
                 stds: Tensor | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        k, d = self.means.shape
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        if covariances is None:
            stds = torch.as_tensor(stds, dtype=torch.float64).reshape(k)
            covariances = stds[:, None, None] ** 2 * torch.eye(d, dtype=torch.float64)
        self.covariances = torch.as_tensor(covariances, dtype=torch.float64)
        if self.weights.shape != (k,) or self.covariances.shape != (k, d, d):
            raise ValueError("weights must be (K,), means (K, D) and covariances (K, D, D)")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        components = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covariances)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[components] + torch.einsum("nij,nj->ni", chol[components], z)

    def noisy_log_prob(self, x: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
        """``log p_t(x_t)`` per component, shape ``(n, K)``, for per-sample ``alpha`` and ``std``."""
        cov = self._noisy_cov(alpha, std)
        diff = x.double()[:, None, :] - alpha.double()[:, None, None] * self.means[None]
        dist = torch.distributions.MultivariateNormal(torch.zeros_like(diff), covariance_matrix=cov)
        return dist.log_prob(diff) + self.weights.log()

    def posterior_mean(self, x: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
        """``E[x_0 | x_t = x]`` in closed form, for per-sample ``alpha`` and ``std`` of shape ``(n,)``."""
        xd, a = x.double(), alpha.double()[:, None, None]
        cov = self._noisy_cov(alpha, std)                                    # (n, K, D, D)
        diff = xd[:, None, :] - a * self.means[None]                          # (n, K, D)
        solved = torch.linalg.solve(cov, diff.unsqueeze(-1)).squeeze(-1)
        component_means = self.means[None] + a * torch.einsum("kij,nkj->nki", self.covariances, solved)
        responsibilities = torch.softmax(self.noisy_log_prob(x, alpha, std), dim=1)
        return torch.einsum("nk,nkd->nd", responsibilities, component_means).to(x.dtype)

    def _noisy_cov(self, alpha: Tensor, std: Tensor) -> Tensor:
        a2 = alpha.double()[:, None, None, None] ** 2
        s2 = std.double()[:, None, None, None] ** 2
        eye = torch.eye(self.dim, dtype=torch.float64)
        return a2 * self.covariances[None] + s2 * eye

    def denoiser(self, schedule: Schedule, prediction: str = "eps") -> "ExactDenoiser":
        return ExactDenoiser(self, schedule, prediction)


class ExactDenoiser(nn.Module):
    """``model(x_t, t, cond=None)`` returning the exact ``eps``, ``x0`` or ``v`` for a mixture."""

    def __init__(self, mixture: GaussianMixture, schedule: Schedule, prediction: str):
        super().__init__()
        self.mixture, self.schedule, self.prediction = mixture, schedule, prediction

    def forward(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        alpha, std = self.schedule.alpha(t.double()), self.schedule.std(t.double())
        x0 = self.mixture.posterior_mean(x, alpha, std).double()
        eps = (x.double() - alpha[:, None] * x0) / std[:, None]
        return target(self.prediction, x0, eps, alpha, std).to(x.dtype)
