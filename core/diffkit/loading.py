"""Loading what a run saved: its settings (always completed with the defaults of settings added
since it was saved) and its model, checked against the domain. The one way the CLI, the runner's
resume and the Python API read checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt
from .config import fill_defaults
from .domain import Domain


def load_checkpoint(domain: Domain, path: str | Path) -> tuple[dict, Path]:
    """The checkpoint of a file or run folder (its latest), checked to belong to ``domain``,
    with its config completed by :func:`diffkit.config.fill_defaults`; and the file read."""
    path = ckpt.resolve(path)
    state = ckpt.load(path)
    ckpt.check_domain(state, domain.name, path)
    state["config"] = fill_defaults(domain, state["config"])
    return state, path


def load_config(domain: Domain, path: str | Path) -> dict:
    """The completed settings of a checkpoint file or run folder."""
    return load_checkpoint(domain, path)[0]["config"]


def load_for_sampling(domain: Domain, path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The EMA model (in eval mode on ``device``) and completed config of a checkpoint file or run folder."""
    state, path = load_checkpoint(domain, path)
    model = domain.build_model(state["config"])
    try:
        model.load_state_dict(ckpt.sampling_weights(state))
    except RuntimeError as error:
        raise ckpt.CheckpointError(f"checkpoint {str(path)!r} does not fit the {domain.name} model "
                                   f"its config describes: {error}") from None
    return model.to(device).eval(), state["config"]
