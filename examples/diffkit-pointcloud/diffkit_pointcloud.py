"""The pointcloud domain for diffkit: 2-D point clouds, each a set of P points ``(P, 2)``.

With no --data it trains on outlines of circles, squares, triangles and crosses that it draws
itself (random size, rotation and point positions, all from a seed); with --data it reads a
``.npz`` file (``points (N, P, 2)``, optional ``labels (N,)``) or a ``.npy`` file of clouds.

    pip install -e .
    diffkit train --domain pointcloud
    diffkit sample --domain pointcloud --checkpoint runs/pointcloud --cond circle --out circles/

The comments ``# tutorial: NAME`` and ``# end tutorial: NAME`` mark the parts that diffkit's
docs/writing-a-plugin.md quotes; a test keeps the two identical.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

import diffkit
from diffkit import Domain, kit

# tutorial: shapes
SHAPES = ("circle", "square", "triangle", "cross")


def shape_segments(name: str) -> Tensor:
    """The outline of a shape as equally long segments ``(S, 2, 2)`` (start, end) within the unit disc."""
    if name == "cross":
        return torch.tensor([[[-1.0, 0.0], [1.0, 0.0]], [[0.0, -1.0], [0.0, 1.0]]])
    corners = {"circle": 96, "square": 4, "triangle": 3}[name]  # a circle is a 96-gon
    angles = 2 * math.pi * torch.arange(corners + 1) / corners + math.pi / corners
    vertices = torch.stack([angles.cos(), angles.sin()], dim=1)
    return torch.stack([vertices[:-1], vertices[1:]], dim=1)


def points_on(segments: Tensor, u: Tensor) -> Tensor:
    """Points at arc-length fractions ``u`` in [0, 1) ``(..., P)`` along equal segments: ``(..., P, 2)``."""
    position = u * len(segments)
    index = position.floor().long().clamp(max=len(segments) - 1)
    start, end = segments[index, 0], segments[index, 1]
    return start + (position - index)[..., None] * (end - start)


def make_shapes(count: int, points: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``count`` clouds ``(count, points, 2)`` and their labels ``(count,)``: outlines of the
    SHAPES in turn, randomly scaled (0.6 to 1), rotated and sampled, plus a little jitter."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % len(SHAPES)
    u = torch.rand(count, points, generator=generator)
    clouds = torch.stack([points_on(shape_segments(SHAPES[int(k)]), u[i]) for i, k in enumerate(labels)])
    angle = 2 * math.pi * torch.rand(count, generator=generator)
    rotation = torch.stack([angle.cos(), -angle.sin(), angle.sin(), angle.cos()], dim=1).view(count, 2, 2)
    scale = 0.6 + 0.4 * torch.rand(count, 1, 1, generator=generator)
    jitter = 0.01 * torch.randn(count, points, 2, generator=generator)
    return scale * clouds @ rotation.transpose(1, 2) + jitter, labels
# end tutorial: shapes


# tutorial: data
class PointClouds(Dataset):
    """Items ``{"x": (P, 2), "cond": label}``; the label ``len(SHAPES)`` means "unlabelled"."""

    def __init__(self, points: Tensor, labels: Tensor):
        self.points, self.labels = points.float(), labels.long()

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> dict:
        return {"x": self.points[index], "cond": self.labels[index]}


def read_clouds(path: Path, points: int) -> tuple[Tensor, Tensor]:
    """Clouds and labels from a ``.npz`` (``points``, optional ``labels``) or ``.npy`` file."""
    if path.suffix not in (".npz", ".npy") or not path.is_file():
        raise FileNotFoundError(f"{path}: expected a .npz or .npy file of point clouds (N, P, 2)")
    stored = np.load(path)
    clouds = torch.from_numpy(stored["points"] if path.suffix == ".npz" else stored).float()
    if clouds.ndim != 3 or clouds.shape[1:] != (points, 2):
        raise ValueError(f"{path}: point clouds have shape {tuple(clouds.shape)}; expected (N, {points}, 2) "
                         f"(set data.points to match, e.g. --set data.points={clouds.shape[1]})")
    if path.suffix == ".npz" and "labels" in stored:
        return clouds, torch.from_numpy(stored["labels"]).long()
    return clouds, torch.full((len(clouds),), len(SHAPES))
# end tutorial: data


# tutorial: model
def time_features(t: Tensor, size: int = 32) -> Tensor:
    """Sinusoidal features ``(B, size)`` of the diffusion time ``t`` in [0, 1] ``(B,)``."""
    frequencies = torch.exp(-math.log(1000.0) * torch.arange(size // 2, device=t.device) / (size // 2))
    angles = 1000.0 * t[:, None].float() * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class SetDenoiser(nn.Module):
    """A transformer over the points without positional encodings, so permuting the input points
    permutes the output the same way. The time and the label enter every layer, added to each point."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.embed = nn.Linear(2, width)
        self.time = nn.Sequential(nn.Linear(32, width), nn.SiLU(), nn.Linear(width, width))
        self.label = nn.Embedding(len(SHAPES) + 1, width)  # the last label is "no label"
        self.inject = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(layers))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``x (B, P, 2)``, ``t (B,)``, ``cond (B,)`` labels or None -> prediction ``(B, P, 2)``."""
        if cond is None:
            cond = torch.full((x.shape[0],), len(SHAPES), device=x.device)
        context = nn.functional.silu(self.time(time_features(t)) + self.label(cond))
        h = self.embed(x)
        for inject, layer in zip(self.inject, self.layers):
            h = layer(h + inject(context)[:, None])
        return self.out(h)
# end tutorial: model


# tutorial: metrics
def chamfer_distance(a: Tensor, b: Tensor, chunk: int = 8) -> Tensor:
    """Chamfer distances ``(S, R)`` between clouds ``a (S, P, 2)`` and ``b (R, Q, 2)``: the mean
    squared distance from each point to the nearest point of the other cloud, both ways."""
    rows = []
    for part in a.split(chunk):
        squared = torch.cdist(part[:, None], b[None]) ** 2        # (s, R, P, Q)
        rows.append(squared.min(3).values.mean(2) + squared.min(2).values.mean(2))
    return torch.cat(rows)


def score_clouds(samples: Tensor, reference: Tensor, sample_labels: Tensor, reference_labels: Tensor) -> dict:
    """MMD-CD (mean over samples of the Chamfer distance to the nearest reference cloud; low is
    good), COV-CD (the share of reference clouds that are some sample's nearest; high is good;
    Achlioptas et al. 2018) and, where both are labelled, how often the nearest reference has the
    sample's label."""
    distances = chamfer_distance(samples, reference)
    nearest = distances.argmin(1)
    scores = {"mmd_cd": float(distances.min(1).values.mean()),
              "cov_cd": len(set(nearest.tolist())) / len(reference)}
    labelled = (sample_labels < len(SHAPES)) & (reference_labels[nearest] < len(SHAPES))
    if labelled.any():
        agree = sample_labels[labelled] == reference_labels[nearest][labelled]
        scores["label_agreement"] = float(agree.float().mean())
    return scores
# end tutorial: metrics


HALVES = {"left": (0, -1.0), "right": (0, 1.0), "bottom": (1, -1.0), "top": (1, 1.0)}


# tutorial: domain
class PointCloudDomain(Domain):
    name = "pointcloud"
    description = "2-D point clouds (P, 2): outlines of circles, squares, triangles, crosses"

    def default_config(self) -> dict:
        return {
            "data": {"points": 64, "count": 2048, "seed": 0},
            "model": {"width": 64, "layers": 3, "heads": 4},
            "train": {"steps": 4000, "batch_size": 64, "lr": 1e-3, "checkpoint_every": 500,
                      "preview_every": 500, "preview_count": 16},
            "sample": {"steps": 30, "guidance": 2.0},
        }

    def presets(self) -> dict:
        return {"cpu": {}, "gpu": {"model": {"width": 192, "layers": 6},
                                   "train": {"steps": 20000, "batch_size": 256}}}

    def build_dataset(self, config: dict, data: str | None = None) -> Dataset:
        settings = config["data"]
        if data is None:
            return PointClouds(*make_shapes(settings["count"], settings["points"], settings["seed"]))
        return PointClouds(*read_clouds(Path(data), settings["points"]))

    def build_model(self, config: dict) -> nn.Module:
        return SetDenoiser(**config["model"])

    def null_cond(self, cond: Tensor) -> Tensor:
        return torch.full_like(cond, len(SHAPES))

    def prepare_sampling(self, model, n, config, *, cond=None, generator=None) -> dict:
        # Without --cond the samples are unconditional: every shape, and smooth --interpolate strips.
        labels = torch.full((n,), len(SHAPES)) if cond is None else self.labels(cond, n)
        return {"x": torch.zeros(n, config["data"]["points"], 2), "cond": labels}

    @staticmethod
    def labels(cond, n: int) -> Tensor:
        """The kit's label rules (a shape name or index, a list cycled, "none"); its null label
        becomes this model's "no label" row."""
        labels = kit.parse_labels(cond, SHAPES, n)
        return torch.where(labels == kit.NULL_LABEL, len(SHAPES), labels)
    # end tutorial: domain

    # tutorial: editing
    def load_known(self, init: str, mask: str | None, n: int, config: dict, *, model=None,
                   cond=None, generator=None) -> dict:
        """``init``: a shape name (its outline, evenly sampled) or a ``.npz``/``.npy`` file (its
        first cloud); ``mask``: the half to keep, left, right, bottom or top (points in it are
        kept, the rest generated); without ``mask`` the whole cloud is edited (SDEdit)."""
        points = config["data"]["points"]
        if init in SHAPES:
            u = (torch.arange(points) + 0.5) / points
            cloud, label = points_on(shape_segments(init), u), SHAPES.index(init)
        else:
            clouds, labels = read_clouds(Path(init), points)
            cloud, label = clouds[0], int(labels[0])
        batch = {"x": cloud.expand(n, points, 2).clone(), "cond": torch.full((n,), label)}
        if mask is not None:
            if mask not in HALVES:
                raise ValueError(f"--mask {mask!r}: expected one of {', '.join(HALVES)}")
            axis, sign = HALVES[mask]
            keep = (sign * cloud[:, axis] > 0).float()[:, None]          # (P, 1)
            batch["keep"] = keep.expand(n, points, 1).clone()
        return batch
    # end tutorial: editing

    # tutorial: writer
    def write_samples(self, samples: dict, out: Path, config: dict) -> list[kit.Output]:
        """``samples.npz`` (``points``, ``labels``) and ``samples.png`` (a scatter grid) in the folder
        ``out``, or ``out`` itself when it ends in ``.npz`` (the picture beside it). Existing files
        are never replaced (the kit refuses before anything is written)."""
        path = out if out.suffix == ".npz" else out / "samples.npz"
        picture = path.with_suffix(".png")
        kit.check_new([path, picture])
        points, labels = samples["x"].float().numpy(), samples["cond"].numpy()
        kit.write_new(path, lambda file: np.savez(file, points=points, labels=labels))
        kit.write_new(picture, lambda file: draw_grid(points, labels, file))
        return [kit.Output(path, "data"), kit.Output(picture, "image", "overview")]
    # end tutorial: writer

    # tutorial: evaluate
    def evaluate(self, samples: Path, reference: Path | None, config: dict) -> dict[str, float]:
        """Scores of written samples against ``reference`` (fresh shapes when None); see score_clouds."""
        points = config["data"]["points"]
        generated, labels = read_clouds(samples if samples.is_file() else samples / "samples.npz", points)
        if reference is None:
            real, real_labels = make_shapes(512, points, seed=config["data"]["seed"] + 1)
        else:
            real, real_labels = read_clouds(reference, points)
        return score_clouds(generated, real, labels, real_labels)
    # end tutorial: evaluate


def draw_grid(points: np.ndarray, labels: np.ndarray, file, columns: int = 8) -> None:
    """A PNG with one scatter plot per cloud, in rows of ``columns``, written to a path or binary file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = math.ceil(len(points) / columns)
    width = min(len(points), columns)
    figure, axes = plt.subplots(rows, width, figsize=(1.6 * width, 1.6 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.set_axis_off()
        if index < len(points):
            axis.scatter(points[index, :, 0], points[index, :, 1], s=4)
            axis.set(xlim=(-1.3, 1.3), ylim=(-1.3, 1.3), aspect="equal")
            if labels[index] < len(SHAPES):
                axis.set_title(SHAPES[labels[index]], fontsize=8)
    figure.tight_layout()
    figure.savefig(file, format="png", dpi=80)
    plt.close(figure)


# tutorial: register
@diffkit.hookimpl
def diffkit_register_domains(register):
    register(PointCloudDomain())
# end tutorial: register
