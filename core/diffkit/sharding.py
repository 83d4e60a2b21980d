"""Fully sharded data parallel training (FSDP) and the full state dicts of checkpoints.

Under ``train.parallel = "fsdp"`` each process keeps only its share of the parameters, gradients
and optimizer state, and gathers a unit's parameters just before that unit runs. Checkpoints
always hold full, unsharded tensors keyed by parameter name, so a run saved under FSDP resumes
under DDP or on one process, and samples anywhere.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

PARALLEL_MODES = ("ddp", "fsdp")
# Full tensors, moved to the CPU; under FSDP only rank 0 receives them.
FULL_ON_CPU = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(model: nn.Module, unit_params: int) -> None:
    """Shard ``model`` in place across the process group.

    Every submodule holding at least ``unit_params`` parameters that no smaller unit holds becomes
    a unit of its own (gathered for its forward and backward, freed after), so that only about
    one unit is whole at a time; the root holds the rest."""
    from torch.distributed.fsdp import fully_shard

    in_units: set[int] = set()
    # Reversed pre-order visits every module after all of its descendants.
    for module in reversed(list(model.modules())):
        if module is model:
            continue
        free = [p for p in module.parameters() if id(p) not in in_units]
        if sum(p.numel() for p in free) >= unit_params:
            fully_shard(module)
            in_units.update(id(p) for p in module.parameters())  # sharding replaced them
    fully_shard(model)


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """Whether the next backward of a sharded model reduces gradients across processes (off for
    the micro-batches of gradient accumulation before the last)."""
    model.set_requires_gradient_sync(sync)


def full_model_state(model: nn.Module) -> dict:
    """The model's state dict with full tensors on the CPU. For a sharded model every process
    must call this (it gathers); rank 0 gets the tensors, the others an empty dict."""
    return get_model_state_dict(model, options=FULL_ON_CPU)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state dict keyed by parameter name, full tensors on the CPU (a collective
    for a sharded model, as :func:`full_model_state`)."""
    return get_optimizer_state_dict(model, optimizer, options=FULL_ON_CPU)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a state dict of :func:`full_optimizer_state` into a plain or sharded model's optimizer
    (or one of ``optimizer.state_dict()``, keyed by position, as diffkit 0.1.0 checkpoints hold)."""
    if any(isinstance(key, int) for key in state["state"]):
        state = _keyed_by_name(state, model)
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def _keyed_by_name(state: dict, model: nn.Module) -> dict:
    # Positions count the parameters in model.parameters() order, the order the runner's
    # optimizer was built with.
    names = [name for name, _ in model.named_parameters()]
    return {"state": {names[index]: value for index, value in state["state"].items()},
            "param_groups": [{**group, "params": [names[index] for index in group["params"]]}
                             for group in state["param_groups"]]}
