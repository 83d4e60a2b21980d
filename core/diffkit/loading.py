"""Loading what a run saved: its settings (always completed with the defaults of settings added
since it was saved) and its model, checked against the domain. The one way the CLI, the runner's
resume and the Python pipeline read checkpoints, run folders and exported weights folders."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt
from .config import fill_defaults
from .domain import Domain


def load_checkpoint(domain: Domain, path: str | Path) -> dict:
    """What sampling needs from a checkpoint file, a run folder (its latest checkpoint) or an
    exported folder (:func:`diffkit.checkpoint.load_sampling_state`), checked to belong to
    ``domain``, its config completed by :func:`diffkit.config.fill_defaults`."""
    state = ckpt.load_sampling_state(path)
    ckpt.check_domain(state, domain.name, path)
    state["config"] = fill_defaults(domain, state["config"])
    return state


def load_config(domain: Domain, path: str | Path) -> dict:
    """The completed settings of a checkpoint file, run folder or exported folder."""
    return load_checkpoint(domain, path)["config"]


def model_from_state(domain: Domain, state: dict, path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a loaded state, read from ``path`` (named in errors), in eval mode on ``device``."""
    model = domain.build_model(state["config"])
    try:
        model.load_state_dict(state["ema"])
    except RuntimeError as error:
        raise ckpt.CheckpointError(f"checkpoint {str(path)!r} does not fit the {domain.name} model "
                                   f"its config describes: {error}") from None
    return model.to(device).eval()


def load_for_sampling(domain: Domain, path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The EMA model (in eval mode on ``device``) and completed config of a checkpoint file, run
    folder or exported folder."""
    state = load_checkpoint(domain, path)
    return model_from_state(domain, state, path, device), state["config"]
