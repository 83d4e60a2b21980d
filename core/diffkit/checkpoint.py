"""Checkpoints: plain dicts of tensors and numbers, written atomically, loaded without unpickling
arbitrary objects (``torch.load(weights_only=True)``).

A training checkpoint holds the model, its EMA, the optimizer, the LR schedule, the step, the state
of the generator of timesteps and noise, the resolved config and the domain/plugin that made it.
:func:`export_weights` keeps only what sampling needs (the EMA weights and the config) in the same
format; :mod:`diffkit.pretrained` writes it as a portable folder (safetensors, config, model card).
:func:`load_sampling_state` reads all three.

Every checkpoint carries the SHA-256 of its content (:func:`content_digest`), checked on load, so
a file damaged on disk is refused instead of being trained or sampled from. A file without one
(written before the digest existed, or rewritten by another program) loads with an
:class:`UncheckedWarning`, since nothing can tell whether it is what diffkit wrote.

A run folder holds ``config.json`` (its settings), ``run.json`` (:func:`read_run_info`: its
domain, plugin, data, processes) and ``checkpoints/``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from .kit.files import save_torch_atomic, temporary_files

FORMAT = "diffkit-checkpoint/1"
CHECKPOINT_DIR = "checkpoints"
RUN_FILE = "run.json"
DIGEST_KEY = "sha256"


class CheckpointError(ValueError):
    pass


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file that cannot be read, or whose content no longer matches its digest."""


class UncheckedWarning(UserWarning):
    """Weights or settings are used although they record no digest to check them against."""


def save_atomic(obj: Any, path: Path) -> Path:
    """Write ``obj`` with ``torch.save`` to a temporary file beside ``path``, then rename it into
    place: a crash leaves either the old file or the new one, never half of one.

    A checkpoint (a dict of this module's ``FORMAT``) is written with a fresh content digest."""
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        obj = {**obj, DIGEST_KEY: content_digest(obj)}
    return save_torch_atomic(obj, path)


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a checkpoint file (no arbitrary unpickling) and check its content digest.

    A damaged file of a run folder is a :class:`DamagedCheckpointError` that names the newest
    intact checkpoint before it and how to use that one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        return _read_verified(path, map_location)
    except DamagedCheckpointError as error:
        raise DamagedCheckpointError(f"{str(error).rstrip('.')}{_intact_alternative(path)}") from None


def _read_verified(path: Path, map_location) -> dict:
    if path.stat().st_size == 0:
        raise DamagedCheckpointError(f"checkpoint {str(path)!r} is damaged: the file is empty (0 bytes)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a damaged archive, or one holding more than plain data
        raise DamagedCheckpointError(f"{str(path)!r} is not a readable diffkit checkpoint: {error}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a diffkit checkpoint (expected format {FORMAT!r})")
    expected = checkpoint.get(DIGEST_KEY)
    if expected is None:
        warn_unchecked(f"checkpoint {str(path)!r} records no SHA-256 digest of its content (diffkit writes one "
                       "into every checkpoint), so damage or changes to it cannot be detected; it is used unchecked")
    elif content_digest(checkpoint) != expected:
        raise DamagedCheckpointError(f"checkpoint {str(path)!r} is damaged: its content no longer matches "
                                     "the SHA-256 digest stored when it was written")
    return checkpoint


def warn_unchecked(message: str) -> None:
    warnings.warn(message, UncheckedWarning, stacklevel=2)


def _intact_alternative(damaged: Path) -> str:
    """For a damaged checkpoint of a run folder: the newest older one that is intact, and how to use it."""
    if damaged.parent.name != CHECKPOINT_DIR:
        return ""
    older = [p for p in list_checkpoints(damaged.parent.parent) if p.name < damaged.name]
    for candidate in reversed(older):
        try:
            _read_verified(candidate, "cpu")
        except CheckpointError:
            continue
        return (f". The newest intact checkpoint of this run is {str(candidate)!r}: sample from it with "
                f"--checkpoint {candidate}, or resume from it by moving the damaged file aside "
                f"(mv {damaged} {damaged}.damaged) and running train --resume again")
    return ". No older checkpoint of this run is intact" if older else ". The run has no older checkpoint"


def content_digest(checkpoint: Mapping) -> str:
    """The SHA-256 of a checkpoint's content: every entry but the digest itself, tensors by dtype,
    shape and bytes, other values by their ``repr``. It depends on the values only, not on how
    ``torch.save`` laid them out, so a checkpoint reads back to the digest it was written with."""
    hasher = hashlib.sha256()
    _feed(hasher, {key: value for key, value in checkpoint.items() if key != DIGEST_KEY})
    return hasher.hexdigest()


def _feed(hasher, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        hasher.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, Mapping):
        hasher.update(f"map {len(value)};".encode())
        for key, item in value.items():
            _feed(hasher, key)
            _feed(hasher, item)
    elif isinstance(value, (list, tuple)):
        hasher.update(f"sequence {len(value)};".encode())
        for item in value:
            _feed(hasher, item)
    else:
        text = repr(value).encode()
        hasher.update(f"value {len(text)};".encode() + text)


def remove_partial_writes(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files that :func:`save_atomic` left in a run's checkpoint folder when its
    process was killed mid-write; returns them. Call it only when no other process writes there."""
    partial = temporary_files(Path(run_dir) / CHECKPOINT_DIR, "step_*")
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


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
        if not found and (path / RUN_FILE).is_file():
            raise FileNotFoundError(f"the run in {str(path)!r} has written no checkpoint yet: it stopped (or is "
                                    "still running) before its first one, due every train.checkpoint_every steps")
        if not found:
            raise FileNotFoundError(f"folder {str(path)!r} has no checkpoints in {CHECKPOINT_DIR}/ and is not an "
                                    "exported weights folder (model.safetensors and config.json)")
        return found[-1]
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return path


def read_run_info(run_dir: str | Path) -> dict:
    """What a run folder's ``run.json`` records (domain, plugin, data, processes, ...); empty when
    the folder has none. An unreadable one is a :class:`CheckpointError` saying how to go on."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = f"is not valid JSON ({error})"
    else:
        if isinstance(info, dict):
            return info
        problem = f"holds a JSON {type(info).__name__}, not an object"
    raise CheckpointError(f"{str(path)!r} {problem}. It records the run's domain and data, written when the run "
                          "started; restore it, or delete it: resuming writes it again (pass --data again if the "
                          "run trained on your own data), and the checkpoints hold everything else")


def check_domain(checkpoint: dict, domain_name: str, path: str | Path) -> None:
    found = checkpoint.get("domain")
    if found != domain_name:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained for domain {found!r}, not {domain_name!r}; "
            f"use --domain {found} or another checkpoint"
        )


def sampling_part(checkpoint: Mapping) -> dict:
    """A checkpoint without its training state: EMA weights, config and provenance."""
    slim = {key: checkpoint[key] for key in ("format", "domain", "plugin", "plugin_version",
                                              "diffkit_version", "config", "step") if key in checkpoint}
    slim["ema"] = checkpoint["ema"]
    return slim


def export_weights(source: str | Path, destination: str | Path) -> Path:
    """Write the sampling part of a checkpoint (:func:`sampling_part`) to ``destination``."""
    return save_atomic(sampling_part(load(resolve(source))), Path(destination))


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
