"""A small categorical domain for tests: token sequences of 3 to 6 tokens over 4 classes, padded
to 6, each a ramp ``s, s+1, s+2, ... (mod 4)`` from a start token ``s``.

Registered as plugin object ``toy_categorical``; also importable by subprocesses (the CLI)
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

CLASSES, WIDTH, SHORTEST = 4, 6, 3


def ramps(starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens (n, WIDTH), mask (n, WIDTH))``: each row a ramp from its start, padded with 0."""
    positions = torch.arange(WIDTH)
    mask = (positions < lengths[:, None]).long()
    return (starts[:, None] + positions) % CLASSES * mask, mask


def is_ramp(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(n,)``: whether each row is a ramp over its real tokens, with 0 on its padding."""
    expected, _ = ramps(tokens[:, 0], mask.sum(1))
    return (tokens == expected).all(1)


class Ramps(Dataset):
    def __init__(self, n: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, CLASSES, (n,), generator=generator)
        lengths = torch.randint(SHORTEST, WIDTH + 1, (n,), generator=generator)
        self.tokens, self.mask = ramps(starts, lengths)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict:
        return {"x": self.tokens[index], "mask": self.mask[index], "extra": {"lengths": self.mask[index].sum()}}


# tutorial: categorical-denoiser
class RampDenoiser(nn.Module):
    """An MLP on the one-hot sequence, its mask and the time: logits ``(B, WIDTH, CLASSES)``."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(WIDTH * (CLASSES + 1) + 2, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, WIDTH * CLASSES))

    def forward(self, x, t, cond=None, lengths=None):
        one_hot = nn.functional.one_hot(x, CLASSES).float()
        real = (torch.arange(WIDTH, device=x.device) < lengths.reshape(-1, 1)).float().unsqueeze(-1)
        angle = t[:, None] * math.pi / 2
        h = torch.cat([(one_hot * real).flatten(1), real.flatten(1), torch.cos(angle), torch.sin(angle)], dim=1)
        return self.net(h).view(-1, WIDTH, CLASSES)  # logits: the state's shape plus the classes
# end tutorial: categorical-denoiser


class ToyCategoricalDomain(diffkit.Domain):
    name = "toycat"
    description = "ramps of 3 to 6 tokens over 4 classes (categorical diffusion, for tests)"

    # tutorial: categorical-domain
    def default_config(self):
        return {
            "data": {"size": 512},
            "model": {"hidden": 128},
            "diffusion": {"kind": "categorical", "transition": "uniform"},
            "train": {"steps": 40, "batch_size": 32, "lr": 3e-3, "warmup_steps": 5, "checkpoint_every": 20,
                      "preview_every": 0, "preview_count": 8, "log_every": 5},
            "sample": {"sampler": "discrete_flow", "steps": 10, "batch_size": 64},
        }

    def build_dataset(self, config, data=None):
        return Ramps(config["data"]["size"], seed=0 if data is None else int(data))

    def build_model(self, config):
        return RampDenoiser(config["model"]["hidden"])

    def categories(self, model, config):
        return CLASSES, None

    def prepare_sampling(self, model, n, config, *, cond=None, generator=None):
        lengths = diffkit.draw_per_sample(
            lambda g, count: torch.randint(SHORTEST, WIDTH + 1, (count,), generator=g), n, generator)
        mask = (torch.arange(WIDTH) < lengths[:, None]).long()
        return {"x": torch.zeros(n, WIDTH, dtype=torch.long), "mask": mask, "extra": {"lengths": lengths}}
    # end tutorial: categorical-domain

    def load_known(self, init, mask, n, config, *, model=None, cond=None, generator=None):
        """``init``: tokens such as ``"1 2 ? ? 1"``; the length is theirs. With a ``?`` (to generate)
        the others are kept (inpainting), without one the whole sequence is edited."""
        words = init.split()
        tokens = torch.tensor([0 if word == "?" else int(word) for word in words] + [0] * (WIDTH - len(words)))
        real = (torch.arange(WIDTH) < len(words)).long()
        batch = {"x": tokens.repeat(n, 1), "mask": real.repeat(n, 1), "extra": {"lengths": torch.full((n,), len(words))}}
        if "?" in words:
            keep = torch.tensor([word != "?" for word in words] + [True] * (WIDTH - len(words)))
            batch["keep"] = keep.long().repeat(n, 1)
        return batch

    def write_samples(self, samples, out, config):
        out = Path(out)
        path = out if out.suffix == ".json" else out / "tokens.json"
        lengths = samples["extra"]["lengths"].tolist()
        rows = [row[:length] for row, length in zip(samples["x"].tolist(), lengths)]
        kit.write_new(path, json.dumps(rows).encode())
        return [kit.Output(path, "table")]


@diffkit.hookimpl
def diffkit_register_domains(register):
    register(ToyCategoricalDomain())
