"""Checks on training runs shared by the runner, categorical, distillation and domain tests:
stopping a run part-way, comparing the weights two runs end with, and exact resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from diffkit import checkpoint as ckpt
from diffkit.runner import Trainer, train


class Interrupt(Exception):
    pass


def stop_at_step(step: int, run: Callable[[], object], monkeypatch) -> None:
    """Call ``run`` with the trainer raising :class:`Interrupt` when it reaches ``step``; the
    trainer is itself again afterwards."""
    original = Trainer._train_step

    def dies_at_step(self, batch):
        if self.step == step:
            raise Interrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", dies_at_step)
    try:
        with pytest.raises(Interrupt):
            run()
    finally:
        monkeypatch.setattr(Trainer, "_train_step", original)


def final_weights(run_dir: Path) -> dict:
    state = ckpt.load(ckpt.resolve(run_dir))
    return {"model": state["model"], "ema": state["ema"], "step": state["step"]}


def assert_same_weights(a: dict, b: dict, **tolerance):
    """Tensors equal within ``tolerance``; other state (e.g. class names) equal."""
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        for key in a[part]:
            if isinstance(a[part][key], torch.Tensor):
                torch.testing.assert_close(a[part][key], b[part][key], **tolerance)
            else:
                assert a[part][key] == b[part][key], key


def differing_tensors(a, b, name: str = "") -> list[str]:
    """The names of the tensors that differ (in any bit) between two nested checkpoint values."""
    if isinstance(a, torch.Tensor):
        return [] if torch.equal(a, b) else [name]
    if isinstance(a, dict):
        assert a.keys() == b.keys(), name
        return [found for key in a for found in differing_tensors(a[key], b[key], f"{name}.{key}")]
    if isinstance(a, (list, tuple)):
        return [found for i, (x, y) in enumerate(zip(a, b)) for found in differing_tensors(x, y, f"{name}[{i}]")]
    return []


def assert_resume_is_exact(domain, config: dict, folder: Path, monkeypatch, *, data: str | None = None,
                           steps: int = 6, every: int = 2, stop: int = 3) -> dict:
    """Train ``steps`` steps straight, and again stopped at ``stop`` and resumed from the checkpoint
    before it; the two end with the same model, EMA, optimizer and generator state, bit for bit.
    Returns the straight run's final checkpoint."""
    config = {**config, "train": {**config["train"], "steps": steps, "checkpoint_every": every, "preview_every": 0}}
    train(domain, config, out=folder / "straight", data=data, progress=False)
    stop_at_step(stop, lambda: train(domain, config, out=folder / "resumed", data=data, progress=False), monkeypatch)
    assert ckpt.list_checkpoints(folder / "resumed")[-1] == ckpt.checkpoint_path(folder / "resumed", stop - stop % every)
    train(domain, config, out=folder / "resumed", data=data, resume=True, progress=False)
    straight, resumed = (ckpt.load(ckpt.resolve(folder / run)) for run in ("straight", "resumed"))
    assert resumed["step"] == steps
    parts = ("model", "ema", "optimizer", "rng")
    differing = differing_tensors({key: straight[key] for key in parts}, {key: resumed[key] for key in parts})
    assert not differing, f"{len(differing)} tensors differ after resuming, e.g. {differing[:3]}"
    return straight


def train_in_subprocesses(args: list[str], processes: int = 1, port: int = 29531, timeout: int = 300) -> None:
    """``diffkit train ARGS`` in a fresh process, or under torchrun with ``processes`` of them."""
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(port)]
    command = [sys.executable, *(launcher if processes > 1 else []), "-m", "diffkit", "train", *args]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr
