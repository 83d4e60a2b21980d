"""Sample-quality statistics: log-mel features, the Fréchet distance between Gaussian fits of
two feature sets, and the Inception score of class probabilities."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .render import stft_size


def log_mel(waves: Tensor, sample_rate: int, n_mels: int) -> Tensor:
    """``(N, C, T)`` -> log-mel energies ``(N, n_mels, frames)`` of the channel mean (window of
    about 64 ms, long enough to tell neighbouring notes apart; hop a quarter of it; floor at 1e-5
    so silence stays finite)."""
    import torchaudio

    n_fft = 2 * stft_size(sample_rate)
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=n_mels, power=2.0,
        f_min=0.0, f_max=sample_rate / 2, norm="slaney", mel_scale="slaney",
    )
    return torch.log(transform(waves.float().mean(dim=1)) + 1e-5)


def frame_features(waves: Tensor, sample_rate: int, n_mels: int) -> np.ndarray:
    """Every frame of every clip as one log-mel vector: ``(N * frames, n_mels)`` float64."""
    mel = log_mel(waves, sample_rate, n_mels)
    return mel.permute(0, 2, 1).reshape(-1, n_mels).double().numpy()


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` of ``(N, D)`` features (N >= 2)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D) for a covariance, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix (negative round-off clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, the squared 2-Wasserstein distance
    between two Gaussians. ``tr (S_a S_b)^(1/2)`` is computed as the trace of the root of the
    symmetric matrix ``S_a^(1/2) S_b S_a^(1/2)``, which has the same eigenvalues."""
    root_a = sqrt_psd(cov_a)
    cross = sqrt_psd(root_a @ cov_b @ root_a)
    value = float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(cross))
    return max(value, 0.0)


def feature_frechet(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The Fréchet distance between Gaussian fits of two ``(N, D)`` feature sets."""
    return frechet_distance(*gaussian_fit(features_a), *gaussian_fit(features_b))


def inception_score(probabilities: np.ndarray) -> float:
    """``exp(E_x KL(p(y|x) || p(y)))`` of class probabilities ``(N, K)``: 1 when every clip
    gets the same distribution, ``K`` at best (confident and evenly spread over classes)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    marginal = p.mean(axis=0, keepdims=True)
    return float(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1))))
