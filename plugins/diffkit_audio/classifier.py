"""A small log-mel CNN classifier, trained on the reference data and cached, whose pooled
features give the classifier Fréchet distance and whose class probabilities give the Inception
score (the role Inception-v3 plays for images, made to measure for each reference set).

It is kept in the audio domain's cache folder (:func:`diffkit.kit.cache_dir`), keyed by a hash
of the reference clips, the feature settings and the training settings, so a changed reference
set trains a new classifier.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffkit.kit import cached_network, content_key

from .metrics import log_mel

#: Bumped whenever the architecture or training changes, so old cache entries are not reused.
CLASSIFIER_VERSION = 2
FEATURE_DIM = 64


class MelClassifier(nn.Module):
    """``(B, n_mels, frames)`` log-mel -> logits ``(B, K)``; :meth:`features` gives ``(B, 64)``.

    The input is standardised per mel band with the reference data's statistics (buffers)."""

    def __init__(self, n_mels: int, num_classes: int):
        super().__init__()
        self.register_buffer("band_mean", torch.zeros(n_mels, 1))
        self.register_buffer("band_std", torch.ones(n_mels, 1))

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU(),
                                 nn.MaxPool2d(2, ceil_mode=True))

        self.body = nn.Sequential(block(1, 16), block(16, 32), block(32, FEATURE_DIM // 2))
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, mel: Tensor) -> Tensor:
        h = self.body(((mel - self.band_mean) / self.band_std)[:, None])
        # Mean and max pooling over frequency and time: level and presence of patterns.
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)

    def forward(self, mel: Tensor) -> Tensor:
        return self.head(self.features(mel))


def train_classifier(waves: Tensor, labels: Tensor, num_classes: int, sample_rate: int, n_mels: int, *,
                     steps: int, seed: int = 0, batch_size: int = 32) -> MelClassifier:
    """Fit a :class:`MelClassifier` to clips ``(N, C, T)`` with labels ``(N,)`` in ``steps``
    minibatch updates (a count of updates, not epochs, so small sets train too).

    Augmentation, so that the features follow what is played or said rather than how it was
    recorded: a random gain (a constant added to the log energies), a random circular time shift
    of up to a tenth of the clip, and, for three clips in four, white noise of a random level
    (standard deviation log-uniform in [1e-4, 0.1]) added to the mel energies."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mel = log_mel(waves, sample_rate, n_mels)
    # Mel energies of unit white noise: energies of independent signals add (on average).
    noise_energy = log_mel(torch.randn((64, 1, waves.shape[-1]), generator=generator), sample_rate, n_mels).exp()
    model = MelClassifier(n_mels, num_classes)
    model.band_mean.copy_(mel.mean(dim=(0, 2))[:, None])
    model.band_std.copy_(mel.std(dim=(0, 2))[:, None].clamp(min=1e-3))
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    max_shift = max(1, mel.shape[2] // 10)
    # A bar on a terminal only (disable=None): the default 2,000 steps take minutes on a CPU.
    for _ in tqdm(range(steps), desc="evaluation classifier", unit="step", leave=False, disable=None):
        size = min(batch_size, mel.shape[0])
        index = torch.randint(0, mel.shape[0], (size,), generator=generator)
        noise_std = 10 ** torch.empty(size, 1, 1).uniform_(-4.0, -1.0, generator=generator)
        noise_std = noise_std * (torch.rand(size, 1, 1, generator=generator) < 0.75)
        noise = noise_energy[torch.randint(0, len(noise_energy), (size,), generator=generator)]
        batch = torch.log(mel[index].exp() + noise_std**2 * noise)
        gain = torch.empty(size, 1, 1).uniform_(-1.0, 1.0, generator=generator)
        shift = int(torch.randint(-max_shift, max_shift + 1, (), generator=generator))
        loss = nn.functional.cross_entropy(model(torch.roll(batch + gain, shift, dims=2)), labels[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def reference_classifier(waves: Tensor, labels: Tensor, num_classes: int, sample_rate: int,
                         n_mels: int, steps: int, *, cache: Path | None = None) -> MelClassifier:
    """The classifier for these reference clips ``(N, C, T)``: from ``cache``, or trained and kept there."""
    settings = {"sample_rate": sample_rate, "n_mels": n_mels, "steps": steps, "num_classes": num_classes}

    def train(model: MelClassifier) -> dict:
        model.load_state_dict(train_classifier(waves, labels, num_classes, sample_rate, n_mels, steps=steps).state_dict())
        return {"settings": repr(settings)}

    key = content_key("classifier", CLASSIFIER_VERSION, settings, waves.float(), labels.long())
    model, _ = cached_network(cache, key, lambda: MelClassifier(n_mels, num_classes), train)
    return model


@torch.no_grad()
def classify(model: MelClassifier, waves: Tensor, sample_rate: int, n_mels: int,
             batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C, T)`` -> (features ``(N, 64)``, class probabilities ``(N, K)``), float64."""
    features, probabilities = [], []
    for start in range(0, waves.shape[0], batch_size):
        mel = log_mel(waves[start:start + batch_size], sample_rate, n_mels)
        h = model.features(mel)
        features.append(h.double())
        probabilities.append(torch.softmax(model.head(h), dim=1).double())
    return torch.cat(features).numpy(), torch.cat(probabilities).numpy()
