"""Sample-quality statistics: log-mel features and the Inception score of class probabilities
(the Fréchet distance is the kit's, :func:`diffkit.kit.frechet_distance`)."""

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


def inception_score(probabilities: np.ndarray) -> float:
    """``exp(E_x KL(p(y|x) || p(y)))`` of class probabilities ``(N, K)``: 1 when every clip
    gets the same distribution, ``K`` at best (confident and evenly spread over classes)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    marginal = p.mean(axis=0, keepdims=True)
    return float(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1))))
