"""Offline scores for generated pictures.

* Fréchet distance (Heusel et al. 2017) between Gaussians fitted to features of the samples and
  of the reference pictures. The features come from a small CNN classifier that diffkit trains on
  the reference pictures and their labels and caches (see :func:`feature_network`); pictures
  without labels (one class) use the same network with fixed random weights. Scores from
  different references, image sizes or sample counts are not comparable.
* A memorisation check in pixel space: each sample's distance to its nearest reference picture,
  relative to how close distinct reference pictures typically are to each other.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffkit.kit import cached_network, content_key, frechet_distance

from .data import ImageSet, to_unit_range

#: 2: a stem and group norms for pictures larger than 16x16 (16x16 and smaller: the same network,
#: trained again once under the new key).
FEATURE_NET_VERSION = 2
FEATURE_DIM = 64
#: The side the feature network's stem brings larger pictures down to.
STEM_SIDE = 16
#: A sample closer to a reference picture than this fraction of the typical nearest-neighbour
#: distance between reference pictures counts as a copy.
COPY_FRACTION = 1 / 3


class FeatureNet(nn.Module):
    """Four 3x3 convolutions, pooled to 4x4, then a 64-wide feature layer and a class layer.

    Pictures larger than 16x16 (``side``) first pass a stem of one 3x3 convolution and a 2x2
    max-pool per halving that brings them to 16 or less, so that the features see a whole object,
    and every convolution is then followed by a group norm, without which the deeper network does
    not learn (held-out accuracy on benchmarks/latent.py's 64x64 colour digits, 15 epochs: 22 %
    with the plain network, near chance with the stem alone, 98.6 % with both). 16x16 pictures
    and smaller keep the plain network.

    ``features(x)``: ``(B, C, H, W)`` in [-1, 1] -> ``(B, 64)``; ``forward`` adds the logits.
    """

    def __init__(self, channels: int, num_classes: int, side: int = STEM_SIDE):
        super().__init__()
        normalise = side > STEM_SIDE
        stem, width = [], channels
        while side > STEM_SIDE:
            stem += [*_convolution(width, 32, normalise), nn.MaxPool2d(2, ceil_mode=True)]
            width, side = 32, (side + 1) // 2
        self.body = nn.Sequential(
            *stem, *_convolution(width, 32, normalise), *_convolution(32, 32, normalise),
            nn.MaxPool2d(2, ceil_mode=True), *_convolution(32, 64, normalise), *_convolution(64, 64, normalise),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, FEATURE_DIM), nn.ReLU(),
        )
        self.classify = nn.Linear(FEATURE_DIM, max(num_classes, 1))

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.body(x))


def _convolution(inputs: int, outputs: int, normalise: bool) -> list[nn.Module]:
    """A 3x3 convolution and a ReLU, with a group norm between them when ``normalise``."""
    return [nn.Conv2d(inputs, outputs, 3, padding=1), *([nn.GroupNorm(8, outputs)] if normalise else []), nn.ReLU()]


# -- the feature network, trained once per reference and cached --------------------------------

def evaluation_device() -> torch.device:
    """A GPU when there is one (a CIFAR-size reference trains in seconds there), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def feature_network(reference: ImageSet, *, epochs: int, cache: Path | None) -> tuple[FeatureNet, float]:
    """The feature network for ``reference`` and its held-out accuracy (NaN when untrained).

    Trained with a fixed seed on 90% of the pictures (random shifts of up to 1/8 of the side as
    augmentation), checked on the other 10%, and kept in ``cache/classifiers/`` under a hash of
    the pictures, labels, epochs and network version."""
    channels, num_classes, side = reference.pixels.shape[1], len(reference.class_names), max(reference.pixels.shape[-2:])

    def build() -> FeatureNet:
        with torch.random.fork_rng():
            torch.manual_seed(0)  # fixed initial (and, for unlabelled pictures, final) weights
            return FeatureNet(channels, num_classes, side)

    def train(net: FeatureNet) -> dict:
        return {"accuracy": _train(net, reference, epochs) if num_classes > 1 else float("nan")}

    key = content_key("featurenet", FEATURE_NET_VERSION, epochs, reference.pixels, reference.labels)
    net, info = cached_network(cache / "classifiers" if cache is not None else None, key, build, train)
    return net, float(info["accuracy"])


def _train(net: FeatureNet, reference: ImageSet, epochs: int, batch_size: int = 64) -> float:
    device = evaluation_device()
    net.to(device)
    reference = ImageSet(reference.pixels.to(device), reference.labels.to(device), reference.class_names)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(reference.labels), generator=generator)
    held_out = max(1, len(order) // 10)
    test, train = order[:held_out].to(device), order[held_out:]
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    net.train()
    _fit(net, reference, train, optimizer, epochs, batch_size, generator)
    net.eval()
    with torch.no_grad():
        predicted = net(to_unit_range(reference.pixels[test])).argmax(dim=1)
    return float((predicted == reference.labels[test]).float().mean())


def _fit(net: FeatureNet, reference: ImageSet, train: Tensor, optimizer, epochs: int, batch_size: int,
         generator: torch.Generator) -> None:
    for _ in range(epochs):
        for batch in torch.randperm(len(train), generator=generator).split(batch_size):
            index = train[batch].to(reference.pixels.device)
            x = _random_shift(to_unit_range(reference.pixels[index]), generator)
            loss = F.cross_entropy(net(x), reference.labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def _random_shift(x: Tensor, generator: torch.Generator) -> Tensor:
    """Translate the batch by a random offset of up to 1/8 of the side, padding with the border."""
    limit = max(1, x.shape[-1] // 8)
    dy, dx = (int(v) for v in torch.randint(-limit, limit + 1, (2,), generator=generator))
    padded = F.pad(x, (limit, limit, limit, limit), mode="replicate")
    h, w = x.shape[-2:]
    return padded[..., limit + dy: limit + dy + h, limit + dx: limit + dx + w]


@torch.no_grad()
def extract_features(net: FeatureNet, pixels: Tensor, batch_size: int = 512) -> Tensor:
    """``(N, C, H, W)`` uint8 -> ``(N, 64)`` float64 features (on the CPU)."""
    device = evaluation_device()
    net = net.to(device)
    features = [net.features(to_unit_range(chunk.to(device))).double().cpu() for chunk in pixels.split(batch_size)]
    net.cpu()
    return torch.cat(features)


# -- the scores ---------------------------------------------------------------------------------

def nearest_distances(queries: Tensor, pool: Tensor, *, k: int = 1, exclude_self: bool = False,
                      chunk: int = 256) -> Tensor:
    """The ``k`` smallest Euclidean distances from each query ``(N, D)`` to the pool ``(M, D)``,
    ``(N, k)`` ascending. ``exclude_self`` drops exact zero distances to the same row index
    (queries being the first rows of the pool). Computed on :func:`evaluation_device`."""
    device = evaluation_device()
    pool = pool.to(device, torch.float64)
    pool_norms = pool.square().sum(1)
    out = []
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk].to(device, torch.float64)
        squared = q.square().sum(1, keepdim=True) - 2 * q @ pool.T + pool_norms[None]
        if exclude_self:
            rows = torch.arange(len(q), device=device)
            squared[rows, rows + start] = float("inf")
        out.append(squared.clamp(min=0).topk(k, dim=1, largest=False).values.sqrt().cpu())
    return torch.cat(out)


def memorisation(samples: Tensor, reference: Tensor, *, probe: int = 1000, seed: int = 0) -> dict[str, float]:
    """Copy detection in pixel space for uint8 pictures ``(N, C, H, W)`` vs ``(M, C, H, W)``.

    ``typical`` is the median distance from a reference picture to its nearest other reference
    picture (over up to ``probe`` of them). Returns ``nn_distance_ratio``, the median over samples
    of (distance to the nearest reference picture) / ``typical``, about 1 for new pictures from the
    same distribution and 0 for copies, and ``memorised_fraction``, the share of samples nearer
    than ``COPY_FRACTION * typical`` to some reference picture.
    """
    flat_ref = to_unit_range(reference).flatten(1)
    flat_samples = to_unit_range(samples).flatten(1)
    if len(flat_ref) < 2:
        raise ValueError("the memorisation check needs at least 2 reference pictures")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(flat_ref), generator=generator)[:probe]
    reordered = torch.cat([flat_ref[chosen], flat_ref[_others(len(flat_ref), chosen)]])
    typical = nearest_distances(reordered[: len(chosen)], reordered, exclude_self=True)[:, 0].median()
    nearest = nearest_distances(flat_samples, flat_ref)[:, 0]
    typical = typical.clamp(min=1e-12)
    return {
        "nn_distance_ratio": float((nearest / typical).median()),
        "memorised_fraction": float((nearest < COPY_FRACTION * typical).double().mean()),
    }


def _others(n: int, chosen: Tensor) -> Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[chosen] = False
    return keep.nonzero().squeeze(1)


def score(samples: Tensor, reference: ImageSet, *, epochs: int, cache: Path | None,
          asked: Tensor | None = None) -> dict[str, float]:
    """All scores for uint8 samples ``(N, C, H, W)`` against ``reference`` (same C, H, W); with
    the labels ``asked (N,)`` the samples were drawn for, ``asked_label_accuracy``: the share of
    samples the reference classifier reads as their label (null labels are left out)."""
    if samples.shape[1:] != reference.pixels.shape[1:]:
        raise ValueError(f"samples are {tuple(samples.shape[1:])} but the reference is "
                         f"{tuple(reference.pixels.shape[1:])}")
    net, accuracy = feature_network(reference, epochs=epochs, cache=cache)
    scores = {
        "frechet_distance": frechet_distance(extract_features(net, reference.pixels), extract_features(net, samples)),
        **memorisation(samples, reference.pixels),
        "samples": float(len(samples)),
    }
    if accuracy == accuracy:  # not NaN: a trained network
        scores["classifier_accuracy"] = accuracy
        labelled = asked >= 0 if asked is not None else None
        if labelled is not None and labelled.any():
            scores["asked_label_accuracy"] = float((classify(net, samples[labelled]) == asked[labelled]).double().mean())
    return scores


@torch.no_grad()
def classify(net: FeatureNet, pixels: Tensor, batch_size: int = 512) -> Tensor:
    """The class the feature network reads in each uint8 picture ``(N, C, H, W)``."""
    return torch.cat([net(to_unit_range(chunk)).argmax(dim=1) for chunk in pixels.split(batch_size)])
