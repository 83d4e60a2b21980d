"""Checkpoints: plain dicts of tensors and numbers, written atomically, loaded without unpickling
arbitrary objects (``torch.load(weights_only=True)``).

A training checkpoint holds the model, its EMA, the optimizer, the LR schedule, the step, the RNG
states, the resolved config and the domain/plugin that made it. :func:`export_weights` keeps only
what sampling needs (the EMA weights and the config) in the same format; :mod:`diffkit.pretrained`
writes it as a portable folder (safetensors, config, model card). :func:`load_sampling_state`
reads all three.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "diffkit-checkpoint/1"
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(ValueError):
    pass


def save_atomic(obj: Any, path: Path) -> Path:
    """Write ``obj`` with ``torch.save`` to a temporary file beside ``path``, then rename it into
    place: a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a checkpoint file (no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{str(path)!r} is not a readable diffkit checkpoint: {error}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a diffkit checkpoint (expected format {FORMAT!r})")
    return checkpoint


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoints of a run folder, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    return sorted(folder.glob("step_*.pt")) if folder.is_dir() else []


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or the latest checkpoint of a run folder."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise FileNotFoundError(f"folder {str(path)!r} has no checkpoints in {CHECKPOINT_DIR}/ and is not an "
                                    "exported weights folder (model.safetensors and config.json)")
        return found[-1]
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return path


def check_domain(checkpoint: dict, domain_name: str, path: str | Path) -> None:
    found = checkpoint.get("domain")
    if found != domain_name:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained for domain {found!r}, not {domain_name!r}; "
            f"use --domain {found} or another checkpoint"
        )


def export_weights(source: str | Path, destination: str | Path) -> Path:
    """Write the sampling part of a checkpoint (EMA weights, config, provenance) to ``destination``."""
    checkpoint = load(resolve(source))
    slim = {key: checkpoint[key] for key in ("format", "domain", "plugin", "plugin_version",
                                              "diffkit_version", "config", "step") if key in checkpoint}
    slim["ema"] = checkpoint["ema"]
    return save_atomic(slim, Path(destination))


def load_sampling_state(path: str | Path) -> dict:
    """What sampling needs from a checkpoint file, a run folder (its latest checkpoint) or an
    exported weights folder: a dict with ``domain``, ``config``, ``ema`` (the weights to sample
    with), ``step``, ``plugin``, ``plugin_version``, ``diffkit_version`` and ``card`` (model-card
    facts; empty for checkpoints)."""
    from . import pretrained

    path = Path(path)
    if path.is_dir() and pretrained.is_pretrained_folder(path):
        return pretrained.load_pretrained(path)
    checkpoint = load(resolve(path))
    keys = ("domain", "plugin", "plugin_version", "diffkit_version", "step", "config")
    return {**{key: checkpoint.get(key) for key in keys}, "ema": sampling_weights(checkpoint), "card": {}}


def sampling_weights(checkpoint: dict) -> dict:
    """The weights to sample with: the EMA when present, else the raw model."""
    return checkpoint.get("ema") or checkpoint["model"]
