"""The Fréchet distance (Heusel et al. 2017): the squared 2-Wasserstein distance between Gaussians
fitted to two feature sets, ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``."""

from __future__ import annotations

import warnings

import numpy as np


class FewSamplesWarning(UserWarning):
    """A Fréchet distance computed from no more feature vectors than features."""


def frechet_distance(features_a, features_b) -> float:
    """The Fréchet distance between Gaussian fits of ``(N, D)`` and ``(M, D)`` feature sets
    (arrays or tensors; computed in float64)."""
    a, b = _as_matrix(features_a, "first"), _as_matrix(features_b, "second")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the feature sets have {a.shape[1]} and {b.shape[1]} dimensions")
    fewest = min(len(a), len(b))
    if fewest <= a.shape[1]:
        # The covariance of n <= D vectors has rank n - 1 < D: its missing directions add to the distance.
        warnings.warn(f"a Fréchet distance from {fewest} samples of {a.shape[1]} features is biased upwards "
                      "(its covariance is rank-deficient); compare such scores only at equal sample counts, "
                      f"or score more than {a.shape[1]} samples", FewSamplesWarning, stacklevel=2)
    return gaussian_frechet_distance(a.mean(axis=0), _covariance(a), b.mean(axis=0), _covariance(b))


def gaussian_frechet_distance(mean_a, cov_a, mean_b, cov_b) -> float:
    """The Fréchet distance between ``N(mean_a, cov_a)`` and ``N(mean_b, cov_b)``.

    ``tr (S_a S_b)^(1/2)`` is the sum of the square roots of the eigenvalues of the symmetric
    ``S_a^(1/2) S_b S_a^(1/2)``, which has the spectrum of ``S_a S_b``: two symmetric
    eigendecompositions, steadier than a general matrix square root."""
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    value = float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)
    return max(value, 0.0)  # round-off can leave a tiny negative number for equal Gaussians


def _as_matrix(features, which: str) -> np.ndarray:
    if hasattr(features, "detach"):
        features = features.detach().cpu().double().numpy()
    matrix = np.asarray(features, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] < 2:
        raise ValueError(f"the Fréchet distance needs at least 2 feature vectors (N, D) per set; "
                         f"the {which} set has shape {matrix.shape}")
    return matrix


def _covariance(features: np.ndarray) -> np.ndarray:
    return np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
