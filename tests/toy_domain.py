"""A small domain for tests: 2-D points from a labelled mixture of four Gaussians.

Registered as plugin object ``toy_plugin``; also importable by subprocesses (torchrun, the CLI)
through the entry point the tests install.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

import diffkit
from diffkit import kit
from diffkit.domain import Domain

CENTERS = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [0.0, -2.0]])


class Points(Dataset):
    def __init__(self, n: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (n,), generator=generator)
        self.points = CENTERS[self.labels] + 0.2 * torch.randn(n, 2, generator=generator)

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> dict:
        return {"x": self.points[index], "cond": self.labels[index]}


class PointDenoiser(nn.Module):
    def __init__(self, hidden: int = 64, classes: int = 4, dropout: float = 0.0):
        super().__init__()
        self.label = nn.Embedding(classes + 1, hidden)  # the last index is "no label"
        self.inp = nn.Linear(2 + 2, hidden)
        self.net = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))
        self.classes, self.dropout = classes, dropout

    def forward(self, x, t, cond=None):
        if cond is None:
            cond = torch.full((x.shape[0],), self.classes, device=x.device, dtype=torch.long)
        angle = t[:, None] * math.pi / 2
        h = self.inp(torch.cat([x, torch.cos(angle), torch.sin(angle)], dim=1)) + self.label(cond)
        return self.net(nn.functional.dropout(h, self.dropout, self.training))  # draws from the global generator


class ToyDomain(Domain):
    name = "toy"
    description = "2-D points from four labelled Gaussians (for tests)"

    def default_config(self):
        return {
            "data": {"size": 512},
            "model": {"hidden": 64, "dropout": 0.0},
            "train": {"steps": 40, "batch_size": 32, "lr": 3e-3, "warmup_steps": 5, "checkpoint_every": 20,
                      "preview_every": 0, "preview_count": 8, "log_every": 5},
            "sample": {"steps": 10, "batch_size": 64},
        }

    def presets(self):
        return {"cpu": {"train": {"steps": 40}}, "gpu": {"train": {"batch_size": 256}}}

    def build_dataset(self, config, data=None):
        return Points(config["data"]["size"], seed=0 if data is None else int(data))

    def build_model(self, config):
        return PointDenoiser(config["model"]["hidden"], dropout=config["model"].get("dropout", 0.0))

    def null_cond(self, cond):
        return torch.full_like(cond, 4)

    def prepare_sampling(self, model, n, config, *, cond=None, generator=None):
        if cond is not None:
            labels = torch.full((n,), int(cond))
        else:
            labels = diffkit.draw_per_sample(lambda g, count: torch.randint(0, 4, (count,), generator=g), n, generator)
        return {"x": torch.zeros(n, 2), "cond": labels}

    def write_samples(self, samples, out, config):
        out = Path(out)
        path = out if out.suffix == ".json" else out / "points.json"
        kit.write_new(path, json.dumps({"points": samples["x"].tolist(), "labels": samples["cond"].tolist()}).encode())
        return [kit.Output(path, "table")]

    def evaluate(self, samples, reference, config):
        data = json.loads((samples if samples.suffix == ".json" else samples / "points.json").read_text())
        points, labels = torch.tensor(data["points"]), torch.tensor(data["labels"])
        distance = (points - CENTERS[labels]).norm(dim=1)
        return {"mean_distance_to_center": float(distance.mean())}


@diffkit.hookimpl
def diffkit_register_domains(register):
    register(ToyDomain())
