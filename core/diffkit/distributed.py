"""torch.distributed set-up for runs started with torchrun (one process per device)."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The process's place in a torchrun launch (a single process when not launched by torchrun)."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def pick_device(requested: str | None, world: World) -> torch.device:
    """``cuda`` when present (one GPU per local rank under torchrun), else ``cpu``; or as requested.

    A name that is not a device, or a device this machine lacks, is a ValueError that says so."""
    if requested in (None, "", "auto"):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {requested!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {requested} was asked for, but CUDA is not available here; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", world.local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"so there is no cuda:{device.index}")
        torch.cuda.set_device(device)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {requested} was asked for, but MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "mps"):
        raise ValueError(f"--device {requested!r}: diffkit runs on cpu, cuda or mps")
    return device


def init(world: World, device: torch.device) -> None:
    if world.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def shutdown(world: World, *, wait: bool = True) -> None:
    """Leave the process group; ``wait`` first for every rank (not after an error, where the
    other ranks may never arrive)."""
    if world.distributed and dist.is_initialized():
        # Objects that hold the group (a DDP wrapper) and are only reachable through reference
        # cycles would otherwise be freed at interpreter exit, where freeing the backend's threads
        # can abort the process ("terminate called without an active exception").
        gc.collect()
        # A rank that tears the group down while another still has collective work in flight
        # aborts the other.
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def all_mean(value: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        value = value.clone()
        dist.all_reduce(value)
        value /= world.size
    return value


def all_true(flag: bool, world: World) -> bool:
    """Whether ``flag`` holds on every rank (the same answer on each)."""
    if not world.distributed:
        return flag
    flags = [None] * world.size
    dist.all_gather_object(flags, bool(flag))
    return all(flags)


def broadcast_object(value, world: World):
    """Rank 0's ``value`` on every rank (e.g. a seed drawn on one process for all)."""
    if not world.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
