"""The training runner: exact resume, atomic checkpoints, NaN stop, logs, DDP equivalence."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from diffkit import checkpoint as ckpt
from diffkit.config import resolve_config
from diffkit.loading import load_for_sampling
from diffkit.runner import TrainingError, train
from run_checks import (assert_resume_is_exact, assert_same_weights, differing_tensors, final_weights, stop_at_step,
                        train_in_subprocesses)
from toy_domain import PointDenoiser, ToyDomain

DOMAIN = ToyDomain()


def toy_config(**train_settings):
    return resolve_config(DOMAIN, overrides={"train": train_settings} if train_settings else None)


def test_training_reduces_the_loss_and_writes_its_logs(tmp_path):
    result = train(DOMAIN, toy_config(steps=60, preview_every=30), out=tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(5, 61, 5))
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]
    assert (tmp_path / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "run" / "previews" / "step_00000030" / "points.json").exists()
    assert result.checkpoint == ckpt.checkpoint_path(tmp_path / "run", 60)


def test_interrupted_then_resumed_run_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    config = toy_config(steps=40, checkpoint_every=10)
    train(DOMAIN, config, out=tmp_path / "straight", progress=False)
    stop_at_step(25, lambda: train(DOMAIN, config, out=tmp_path / "resumed", progress=False), monkeypatch)
    assert ckpt.resolve(tmp_path / "resumed").name == "step_00000020.pt"
    train(DOMAIN, config, out=tmp_path / "resumed", resume=True, progress=False)

    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed"), rtol=0, atol=0)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "log lines of the interrupted stretch must not repeat"


def test_resume_is_exact_when_the_model_draws_from_the_global_generator(tmp_path, monkeypatch):
    config = resolve_config(DOMAIN, overrides={"model": {"dropout": 0.3}})
    straight = assert_resume_is_exact(DOMAIN, config, tmp_path, monkeypatch, steps=12, every=4, stop=6)
    # The yardstick can fail: dropout draws change what the run learns.
    no_dropout = {**config, "model": {**config["model"], "dropout": 0.0}}
    train(DOMAIN, no_dropout, out=tmp_path / "plain", progress=False)
    assert differing_tensors(straight["model"], ckpt.load(ckpt.resolve(tmp_path / "plain"))["model"])


def test_a_run_folder_with_checkpoints_is_not_overwritten(tmp_path):
    train(DOMAIN, toy_config(steps=10, checkpoint_every=10), out=tmp_path, progress=False)
    with pytest.raises(TrainingError, match="already holds checkpoints; pass --resume"):
        train(DOMAIN, toy_config(steps=10), out=tmp_path, progress=False)


def test_resume_refuses_a_changed_config_naming_the_key(tmp_path):
    train(DOMAIN, toy_config(steps=10, checkpoint_every=10), out=tmp_path, progress=False)
    with pytest.raises(ckpt.CheckpointError, match=r"train\.lr: 0\.003 -> 0\.1"):
        train(DOMAIN, toy_config(steps=20, lr=0.1), out=tmp_path, resume=True, progress=False)
    # More steps is fine: the steps already taken do not change.
    assert train(DOMAIN, toy_config(steps=20, checkpoint_every=10), out=tmp_path, resume=True, progress=False).step == 20


def test_checkpoint_of_another_domain_is_refused(tmp_path):
    train(DOMAIN, toy_config(steps=10, checkpoint_every=10), out=tmp_path, progress=False)

    class OtherDomain(ToyDomain):
        name = "other"

    with pytest.raises(ckpt.CheckpointError, match="trained for domain 'toy', not 'other'"):
        load_for_sampling(OtherDomain(), tmp_path)


def test_checkpoints_load_without_unpickling_objects(tmp_path):
    train(DOMAIN, toy_config(steps=10, checkpoint_every=10), out=tmp_path, progress=False)
    path = ckpt.resolve(tmp_path)
    torch.load(path, weights_only=True)  # raises if anything but tensors and plain data is inside
    evil = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "payload": PointDenoiser()}, evil)
    with pytest.raises(ckpt.CheckpointError, match="not a readable diffkit checkpoint"):
        ckpt.load(evil)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "state.pt"
    ckpt.save_atomic({"format": ckpt.FORMAT, "value": torch.ones(3)}, target)

    def crash(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_atomic({"format": ckpt.FORMAT, "value": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.equal(ckpt.load(target)["value"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


class ExplodingDomain(ToyDomain):
    """Its model returns NaN from the 13th call on."""

    def build_model(self, config):
        model = super().build_model(config)
        calls = {"n": 0}
        forward = model.forward

        def exploding(x, t, cond=None):
            calls["n"] += 1
            out = forward(x, t, cond)
            return out * float("nan") if calls["n"] > 12 else out

        model.forward = exploding
        return model


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = toy_config(steps=40, checkpoint_every=10, log_every=5)
    with pytest.raises(TrainingError, match=r"NaN or infinite at step 13;.*step_00000010\.pt"):
        train(ExplodingDomain(), config, out=tmp_path, progress=False)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000010.pt"]
    state = ckpt.load(ckpt.resolve(tmp_path))
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_export_weights_keeps_what_sampling_needs(tmp_path):
    train(DOMAIN, toy_config(steps=10, checkpoint_every=10), out=tmp_path / "run", progress=False)
    slim = ckpt.export_weights(tmp_path / "run", tmp_path / "toy.pt")
    state = ckpt.load(slim)
    assert "optimizer" not in state and state["domain"] == "toy"
    model, config = load_for_sampling(DOMAIN, slim)
    full = ckpt.load(ckpt.resolve(tmp_path / "run"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, full["ema"][key])


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    train(DOMAIN, toy_config(steps=10, checkpoint_every=10), out=tmp_path / "full", progress=False)
    train(DOMAIN, toy_config(steps=10, checkpoint_every=10, grad_accum=4), out=tmp_path / "accum", progress=False)
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "accum"), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_process_ddp_run_matches_one_process_with_the_same_global_batch(tmp_path, toy_installed):
    common = ["--domain", "toy", "--steps", "12", "--batch-size", "32", "--set", "train.checkpoint_every=12",
              "--no-progress", "--device", "cpu"]
    train_in_subprocesses([*common, "--out", str(tmp_path / "one")])
    train_in_subprocesses([*common, "--out", str(tmp_path / "two")], processes=2)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2
    assert_same_weights(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_dropout_under_two_processes_matches_one_process_with_as_many_micro_batches(tmp_path, toy_installed):
    """The model's own draws are seeded per piece of the global batch: process r's micro-batch k is
    piece r * grad_accum + k, as one process's micro-batch of that number is."""
    common = ["--domain", "toy", "--steps", "6", "--batch-size", "32", "--set", "train.checkpoint_every=6",
              "--set", "model.dropout=0.3", "--no-progress", "--device", "cpu"]
    train_in_subprocesses([*common, "--set", "train.grad_accum=2", "--out", str(tmp_path / "one")])
    train_in_subprocesses([*common, "--out", str(tmp_path / "two")], processes=2, port=29535)
    assert_same_weights(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"), rtol=1e-4, atol=1e-5)


def test_item_randomness_depends_on_the_step_and_place_not_on_the_process():
    from diffkit.distributed import World
    from diffkit.runner import GlobalBatchSampler, SeededItems

    class Flips(torch.utils.data.Dataset):  # augmentation drawn from the global generator
        def __len__(self):
            return 12

        def __getitem__(self, index):
            return index + torch.rand(()).item()

    one = list(GlobalBatchSampler(12, 8, seed=3, start=0, total=4))
    halves = [list(GlobalBatchSampler(12, 8, seed=3, start=0, total=4, world=World(rank=r, size=2))) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == one  # the same (index, seed) pairs, split by rank
    items = SeededItems(Flips())
    torch.manual_seed(0)
    before = torch.rand(())
    first = [items[key] for batch in one for key in batch]
    torch.manual_seed(0)
    assert torch.rand(()) == before  # the caller's generator is left as it was
    again = [items[key] for batch in reversed(one) for key in reversed(batch)][::-1]
    assert first == again  # order of reading does not matter
    assert len({round(value % 1, 6) for value in first}) == len(first)  # every place draws anew


def test_sharded_data_gives_each_rank_its_own_part_and_resumes_exactly():
    from diffkit.distributed import World
    from diffkit.runner import GlobalBatchSampler

    size, batch, steps = 23, 6, 12  # parts of 11 and 12 items; 3 a step each: 3 and 4 steps an epoch
    ranks = [list(GlobalBatchSampler(size, batch, seed=5, start=0, total=steps, world=World(rank=r, size=2),
                                     shard_data=True)) for r in (0, 1)]
    parts = [set(range(0, 11)), set(range(11, 23))]
    for rank, batches in enumerate(ranks):
        indices = [index for batch_ in batches for index, _ in batch_]
        assert set(indices) <= parts[rank] and all(len(batch_) == 3 for batch_ in batches)
        per_epoch = len(parts[rank]) // 3
        for epoch in range(steps // per_epoch):  # every epoch visits distinct items of the part
            visited = indices[epoch * per_epoch * 3:(epoch + 1) * per_epoch * 3]
            assert len(set(visited)) == len(visited)
        # Exact resume: starting at step 5 yields what the uninterrupted run yields from step 5.
        again = list(GlobalBatchSampler(size, batch, seed=5, start=5, total=steps, world=World(rank=rank, size=2),
                                        shard_data=True))
        assert again == batches[5:]
    # The items' seeds are those of their places in the global batch, as without sharding.
    whole = list(GlobalBatchSampler(size, batch, seed=5, start=0, total=steps))
    assert [[seed for _, seed in a + b] for a, b in zip(*ranks)] == [[seed for _, seed in b] for b in whole]


def test_a_sharded_run_resumes_only_with_as_many_processes_and_resumes_exactly(tmp_path, monkeypatch):
    config = toy_config(steps=12, checkpoint_every=4, shard_data=True)
    assert_resume_is_exact(DOMAIN, config, tmp_path, monkeypatch, steps=12, every=4, stop=6)
    run_file = tmp_path / "resumed" / ckpt.RUN_FILE
    run_file.write_text(json.dumps({**json.loads(run_file.read_text()), "processes": 2}))
    with pytest.raises(TrainingError, match=r"trained by 2 process\(es\) with train.shard_data.*resume it with 2"):
        train(DOMAIN, toy_config(steps=16, checkpoint_every=4, shard_data=True), out=tmp_path / "resumed",
              resume=True, progress=False)


# Runs the CLI and, at exit, prints how many of gloo's native threads are still alive: threads that
# outlive the process group are torn down during interpreter exit, which sometimes aborts the process.
GLOO_THREAD_PROBE = """
import atexit, os, sys

def report():
    names = [open(f"/proc/self/task/{task}/comm").read() for task in os.listdir("/proc/self/task")]
    print(f"gloo threads at exit: {sum('gloo' in name for name in names)}", file=sys.stderr)

atexit.register(report)
from diffkit.cli import main
sys.argv[0] = "diffkit"
main()
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_two_process_training_frees_the_process_group_before_exit_every_time(tmp_path, toy_installed):
    probe = tmp_path / "probe.py"
    probe.write_text(GLOO_THREAD_PROBE)
    for attempt in range(3):
        run_dir = tmp_path / f"run{attempt}"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                   str(29541 + attempt), str(probe), "train", "--domain", "toy", "--steps", "4", "--batch-size", "32",
                   "--set", "train.checkpoint_every=4", "--no-progress", "--device", "cpu", "--out", str(run_dir)]
        done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        assert "terminate called" not in done.stderr
        assert done.stderr.count("gloo threads at exit: 0") == 2, done.stderr
        assert ckpt.load(ckpt.resolve(run_dir))["step"] == 4
