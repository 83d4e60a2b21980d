"""Checks on training runs shared by the runner, categorical and distillation tests: stopping a
run part-way, and comparing the weights two runs end with."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

from diffkit import checkpoint as ckpt
from diffkit.runner import Trainer


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
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], **tolerance)
