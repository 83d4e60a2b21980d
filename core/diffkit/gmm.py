"""Gaussian mixtures with their exact denoiser: a ground truth for samplers, tests and benchmarks.

For ``x_0 ~ sum_k w_k N(mu_k, C_k)`` and ``x_t = a x_0 + s eps`` the noisy marginal is the mixture
``sum_k w_k N(a mu_k, a^2 C_k + s^2 I)`` and the posterior means are known in closed form:
``E[x_0 | x_t] = sum_k r_k(x_t) (mu_k + a C_k (a^2 C_k + s^2 I)^{-1} (x_t - a mu_k))`` and
``E[eps | x_t] = sum_k r_k(x_t) s (a^2 C_k + s^2 I)^{-1} (x_t - a mu_k)``, with ``r_k`` the
posterior weight of component ``k``. A model returning them is the best possible denoiser (or, as
``a' E[x_0 | x_t] + s' E[eps | x_t]``, the exact velocity of a flow path), so any error left in
its samples is the sampler's.

Each covariance is diagonalised once, ``C_k = U_k diag(l_k) U_k^T``; every noise level then costs
elementwise work in that basis instead of a ``D x D`` solve per sample and component.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .process import target
from .schedules import Schedule


class GaussianMixture:
    """``weights (K,)``, ``means (K, D)`` and ``covariances (K, D, D)`` (or ``stds (K,)`` for isotropic)."""

    def __init__(self, weights: Tensor, means: Tensor, covariances: Tensor | None = None,
                 stds: Tensor | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"means must be (K, D), got shape {tuple(self.means.shape)}")
        k, d = self.means.shape
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        if covariances is None:
            stds = torch.as_tensor(stds, dtype=torch.float64).reshape(k)
            covariances = stds[:, None, None] ** 2 * torch.eye(d, dtype=torch.float64)
        self.covariances = torch.as_tensor(covariances, dtype=torch.float64)
        if self.weights.shape != (k,) or self.covariances.shape != (k, d, d):
            raise ValueError("weights must be (K,), means (K, D) and covariances (K, D, D)")
        off_diagonal = self.covariances - torch.diag_embed(torch.diagonal(self.covariances, dim1=1, dim2=2))
        self._diagonal = bool((off_diagonal == 0).all())
        if self._diagonal:
            self._eigvals = torch.diagonal(self.covariances, dim1=1, dim2=2).clone()   # (K, D)
            self._eigvecs = None
        else:
            self._eigvals, self._eigvecs = torch.linalg.eigh(self.covariances)       # (K, D), (K, D, D)
        if (self._eigvals < 0).any():
            raise ValueError("covariances must be positive semi-definite")
        # Isotropic components (C_k = v_k I) allow a path without any (K, n, D) intermediate.
        self._isotropic = self._diagonal and bool((self._eigvals == self._eigvals[:, :1]).all())

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> Tensor:
        """The mixture mean, ``(D,)``."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """The mixture covariance, ``(D, D)``."""
        centred = self.means - self.mean()
        return (torch.einsum("k,kij->ij", self.weights, self.covariances)
                + torch.einsum("k,ki,kj->ij", self.weights, centred, centred))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact draws, ``(n, D)`` in float64."""
        components = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scaled = z * self._eigvals[components].sqrt()
        return self.means[components] + self._from_basis(scaled, components)

    def noisy_log_prob(self, x: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
        """``log w_k + log N(x; a mu_k, a^2 C_k + s^2 I)`` per component, shape ``(n, K)``, for
        per-sample ``alpha`` and ``std`` of shape ``(n,)``."""
        z, var = self._whitening(x, alpha, std)
        quad = (z**2 / var).sum(-1) + var.log().sum(-1)
        return (-0.5 * (quad + self.dim * math.log(2 * math.pi)) + self.weights.log()[:, None]).T

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` of the clean mixture, shape ``(n,)``."""
        ones = torch.ones(x.shape[0], dtype=torch.float64)
        return torch.logsumexp(self.noisy_log_prob(x, ones, torch.zeros_like(ones)), dim=1)

    def posterior_mean(self, x: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
        """``E[x_0 | x_t = x]`` in closed form, for per-sample ``alpha`` and ``std`` of shape ``(n,)``."""
        if self._isotropic:
            return self._isotropic_posterior_mean(x, alpha, std)
        z, var = self._whitening(x, alpha, std)                                 # (K, n, D), (K, n|1, D)
        log_r = -0.5 * ((z**2 / var).sum(-1) + var.log().sum(-1)) + self.weights.log()[:, None]
        responsibilities = torch.softmax(log_r, dim=0)                          # (K, n)
        a = _per_sample(alpha, var.shape[1])
        # Each component's posterior mean is mu_k + a l / (a^2 l + s^2) z in its eigenbasis.
        shrunk = responsibilities[..., None] * (a * self._eigvals[:, None, :] / var) * z
        if not self._diagonal:
            shrunk = torch.bmm(shrunk, self._eigvecs.transpose(1, 2))
        return (responsibilities.T @ self.means + shrunk.sum(0)).to(x.dtype)

    def posterior_noise(self, x: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
        """``E[eps | x_t = x]`` in closed form, without dividing by ``std`` (so also at ``std = 0``,
        where it is 0), for per-sample ``alpha`` and ``std`` of shape ``(n,)``."""
        if self._isotropic:
            xd, a, s = x.double(), alpha.double()[:, None], std.double()[:, None]
            var = a**2 * self._eigvals[None, :, 0] + s**2                          # (n, K)
            distance = ((xd**2).sum(1, keepdim=True) - 2 * a * (xd @ self.means.T)
                        + a**2 * (self.means**2).sum(1)[None]).clamp(min=0)
            log_r = -0.5 * (distance / var + self.dim * var.log()) + self.weights.log()[None]
            weights = torch.softmax(log_r, dim=1) * s / var                         # r_k s / var_k, (n, K)
            # sum_k r_k s / var_k (x - a mu_k)
            return (weights.sum(1, keepdim=True) * xd - a * (weights @ self.means)).to(x.dtype)
        z, var = self._whitening(x, alpha, std)
        log_r = -0.5 * ((z**2 / var).sum(-1) + var.log().sum(-1)) + self.weights.log()[:, None]
        responsibilities = torch.softmax(log_r, dim=0)
        scaled = responsibilities[..., None] * (_per_sample(std, var.shape[1]) / var) * z
        if not self._diagonal:
            scaled = torch.bmm(scaled, self._eigvecs.transpose(1, 2))
        return scaled.sum(0).to(x.dtype)

    def component_posteriors(self, x: Tensor, alpha: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
        """Each component's ``E[x_0 | x_t = x, k]`` and ``E[eps | x_t = x, k]``, both ``(K, n, D)``
        (float64), for per-sample ``alpha`` and ``std`` of shape ``(n,)``; weigh them with
        ``softmax(noisy_log_prob)`` (times any other evidence about ``k``) for the posterior means."""
        z, var = self._whitening(x, alpha, std)
        x0 = (_per_sample(alpha, var.shape[1]) * self._eigvals[:, None, :] / var) * z
        eps = (_per_sample(std, var.shape[1]) / var) * z
        if not self._diagonal:
            x0, eps = torch.bmm(x0, self._eigvecs.transpose(1, 2)), torch.bmm(eps, self._eigvecs.transpose(1, 2))
        return self.means[:, None, :] + x0, eps

    def _isotropic_posterior_mean(self, x: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
        xd, a, s = x.double(), alpha.double()[:, None], std.double()[:, None]   # (n, D), (n, 1)
        var = a**2 * self._eigvals[None, :, 0] + s**2                          # (n, K)
        # |x - a mu_k|^2 expanded, so that only (n, K) arrays appear.
        distance = ((xd**2).sum(1, keepdim=True) - 2 * a * (xd @ self.means.T)
                    + a**2 * (self.means**2).sum(1)[None]).clamp(min=0)
        log_r = -0.5 * (distance / var + self.dim * var.log()) + self.weights.log()[None]
        responsibilities = torch.softmax(log_r, dim=1)                          # (n, K)
        shrink = a * self._eigvals[None, :, 0] / var                            # (n, K)
        # sum_k r_k (mu_k + c_k (x - a mu_k)) = sum_k r_k (1 - a c_k) mu_k + (sum_k r_k c_k) x
        mean = (responsibilities * (1 - a * shrink)) @ self.means
        return (mean + (responsibilities * shrink).sum(1, keepdim=True) * xd).to(x.dtype)

    def project(self, direction: Tensor) -> "GaussianMixture":
        """The 1-D mixture of ``x @ direction``."""
        u = torch.as_tensor(direction, dtype=torch.float64).reshape(self.dim)
        variances = torch.einsum("i,kij,j->k", u, self.covariances, u)
        return GaussianMixture(self.weights, (self.means @ u)[:, None], variances[:, None, None])

    def quantile(self, probs: Tensor, grid: int = 4096, iterations: int = 24) -> Tensor:
        """Quantiles of a 1-D mixture at ``probs`` (any shape): the CDF tabulated on a grid
        brackets each quantile, bisection then narrows the bracket ``2^iterations`` times."""
        if self.dim != 1:
            raise ValueError(f"quantile needs a 1-D mixture (see project), this one has D={self.dim}")
        probs = torch.as_tensor(probs, dtype=torch.float64)
        mu, sd = self.means[:, 0], self._eigvals[:, 0].clamp(min=1e-300).sqrt()
        # Phi(z) = erfc(-z / sqrt 2) / 2: accurate in the lower tail, and faster than ndtr.
        cdf = lambda x: (self.weights * torch.special.erfc((mu - x[..., None]) / (sd * math.sqrt(2)))).sum(-1) / 2  # noqa: E731
        points = torch.linspace(float((mu - 40 * sd).min()), float((mu + 40 * sd).max()), grid, dtype=torch.float64)
        index = torch.searchsorted(cdf(points), probs.reshape(-1)).clamp(1, grid - 1)
        low, high = points[index - 1], points[index]
        for _ in range(iterations):
            mid = (low + high) / 2
            below = cdf(mid) < probs.reshape(-1)
            low, high = torch.where(below, mid, low), torch.where(below, high, mid)
        return ((low + high) / 2).reshape(probs.shape)

    def sliced_wasserstein(self, samples: Tensor, directions: Tensor) -> Tensor:
        """Sliced 2-Wasserstein distance from ``samples (n, D)`` to this mixture.

        For each unit direction (rows of ``directions (P, D)``) the sorted projected samples are
        compared with the exact projected mixture's quantiles at ``(i + 1/2) / n``; the result is
        ``sqrt(mean over directions of the 1-D W2^2)``. Exact samples give ``O(1 / sqrt(n))``.
        """
        samples = samples.double()
        n = samples.shape[0]
        probs = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        total = 0.0
        for u in directions.double():
            projected = torch.sort(samples @ u).values
            total += ((projected - self.project(u).quantile(probs)) ** 2).mean()
        return (total / len(directions)).sqrt()

    def denoiser(self, schedule: Schedule, prediction: str = "eps") -> "ExactDenoiser":
        return ExactDenoiser(self, schedule, prediction)

    def velocity(self, path) -> "ExactVelocity":
        """The exact velocity model of a flow ``path`` (:class:`diffkit.flow.Path`) towards this mixture."""
        return ExactVelocity(self, path)

    def _whitening(self, x: Tensor, alpha: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
        """``x - a mu_k`` in component ``k``'s eigenbasis, ``(K, n, D)``, and the noisy variances
        ``a^2 l_k + s^2`` there, ``(K, n, D)`` or ``(K, 1, D)`` when all samples share one time."""
        shared = bool((alpha == alpha[0]).all() and (std == std[0]).all())
        a = _per_sample(alpha, 1 if shared else len(alpha))                     # (n|1, 1)
        s = _per_sample(std, 1 if shared else len(std))
        diff = x.double()[None] - a * self.means[:, None, :]                    # (K, n, D)
        z = diff if self._diagonal else torch.bmm(diff, self._eigvecs)
        var = a**2 * self._eigvals[:, None, :] + s**2
        return z, var

    def _from_basis(self, values: Tensor, components: Tensor) -> Tensor:
        if self._diagonal:
            return values
        return torch.einsum("nij,nj->ni", self._eigvecs[components], values)


def _per_sample(values: Tensor, n: int) -> Tensor:
    """The first ``n`` entries of a per-sample ``(N,)`` coefficient as a float64 ``(n, 1)`` column."""
    return values.double()[:n, None]


def random_directions(count: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """``count`` unit vectors uniform on the sphere in ``dim`` dimensions, ``(count, dim)``."""
    u = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    return u / u.norm(dim=1, keepdim=True)


class ExactDenoiser(nn.Module):
    """``model(x_t, t, cond=None)`` returning the exact ``eps``, ``x0`` or ``v`` for a mixture."""

    def __init__(self, mixture: GaussianMixture, schedule: Schedule, prediction: str):
        super().__init__()
        self.mixture, self.schedule, self.prediction = mixture, schedule, prediction

    def forward(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        alpha, std = self.schedule.alpha(t.double()), self.schedule.std(t.double())
        x0 = self.mixture.posterior_mean(x, alpha, std).double()
        # eps from x0 divides by std: fine for t > 0, where samplers call the model.
        eps = (x.double() - alpha[:, None] * x0) / std[:, None]
        return target(self.prediction, x0, eps, alpha, std).to(x.dtype)


class ExactVelocity(nn.Module):
    """``model(x_t, t, cond=None)`` returning the exact velocity ``E[alpha'(t) x_0 + sigma'(t) eps | x_t]``
    of a flow path (:class:`diffkit.flow.Path`) towards a mixture: its ODE carries standard noise
    at ``t = 1`` to the mixture at ``t = 0`` exactly."""

    def __init__(self, mixture: GaussianMixture, path):
        super().__init__()
        self.mixture, self.path = mixture, path

    def forward(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        t = t.double()
        alpha, sigma = self.path.alpha(t), self.path.sigma(t)
        x0 = self.mixture.posterior_mean(x, alpha, sigma).double()
        eps = self.mixture.posterior_noise(x, alpha, sigma).double()
        return (self.path.d_alpha(t)[:, None] * x0 + self.path.d_sigma(t)[:, None] * eps).to(x.dtype)


class ExactLabelledModel(nn.Module):
    """The exact model of a mixed state ``{point: x, label: k}`` whose law is the mixture's joint law
    of a component ``k`` (with the mixture's weights) and a point ``x ~ N(mu_k, C_k)``: a perfect model
    for :class:`diffkit.MixedProcess` with a Gaussian path for ``point`` (diffusion or flow: its
    ``coefficients`` and ``target``) and categorical diffusion for ``label`` (its ``transition``).

    Given ``(x_t, k_t)``, ``P(k_0 = k | x_t, k_t) ∝ w_k N(x_t; a mu_k, a^2 C_k + s^2 I) Q_t[k, k_t]``;
    the label's logits are its logarithm, the point's output the path's target at the posterior
    means of ``x_0`` and ``eps`` over the components so weighted."""

    def __init__(self, mixture: GaussianMixture, process, point: str = "x", label: str = "label"):
        super().__init__()
        self.mixture, self.point, self.label = mixture, point, label
        self.path, self.labels = process.processes[point], process.processes[label]

    def forward(self, state: dict, t: Tensor, cond=None) -> dict:
        x, k_t = state[self.point], state[self.label].long()
        alpha, std = self.path.coefficients(t.double())
        log_r = self.mixture.noisy_log_prob(x.double(), alpha, std)                         # (n, K)
        columns = self.labels.transition(t.double())[torch.arange(len(k_t)), :, k_t]     # Q_t[:, k_t], (n, S)
        # A label no x_0 can have produced (a kept label at t = 1 under absorbing transitions) says nothing.
        log_r = torch.log_softmax(log_r + columns[:, :log_r.shape[1]].clamp(min=1e-300).log(), dim=1)
        x0, eps = self.mixture.component_posteriors(x.double(), alpha, std)              # (K, n, D)
        weights = log_r.exp().T[..., None]
        target = self.path.target((weights * x0).sum(0), (weights * eps).sum(0), t.double())
        return {self.point: target.to(x.dtype), self.label: log_r.float()}
