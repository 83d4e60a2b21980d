"""FSDP: which submodules become units, and a sharded run that equals a single-process one, with
checkpoints that resume without sharding."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.distributed as dist

from diffkit import checkpoint as ckpt
from diffkit import sharding
from diffkit.runner import train
from run_checks import assert_same_weights, final_weights, train_in_subprocesses
from test_runner import DOMAIN, toy_config
from toy_domain import PointDenoiser


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_submodules_over_the_unit_size_become_units_and_the_function_is_unchanged(one_process_group):
    from torch.distributed.fsdp import FSDPModule

    torch.manual_seed(0)
    model = PointDenoiser(hidden=64)
    x, t, cond = torch.randn(5, 2), torch.rand(5), torch.tensor([0, 1, 2, 3, 4])
    expected = model(x, t, cond)
    # Parameters: label 5x64 = 320, inp 4x64+64 = 320, net.1 64x64+64 = 4160, net.3 64x2+2 = 130.
    sharding.shard(model, unit_params=300)
    units = {name for name, module in model.named_modules() if isinstance(module, FSDPModule)}
    assert units == {"", "label", "inp", "net.1"}  # net (130 left over) stays with the root
    torch.testing.assert_close(model(x, t, cond), expected)


def test_full_states_of_a_sharded_model_equal_the_plain_ones(one_process_group):
    torch.manual_seed(0)
    plain = PointDenoiser(hidden=16)
    sharded = PointDenoiser(hidden=16)
    sharded.load_state_dict(plain.state_dict())
    sharding.shard(sharded, unit_params=50)
    full = sharding.full_model_state(sharded)
    assert full.keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert full[key].device.type == "cpu" and not hasattr(full[key], "placements")
        torch.testing.assert_close(full[key], value)


def test_an_unknown_parallel_mode_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"train\.parallel must be one of ddp, fsdp, got 'zero3'"):
        train(DOMAIN, toy_config(steps=2, parallel="zero3"), out=tmp_path, progress=False)


def test_a_single_process_ignores_fsdp(tmp_path):
    train(DOMAIN, toy_config(steps=6, checkpoint_every=6), out=tmp_path / "ddp", progress=False)
    train(DOMAIN, toy_config(steps=6, checkpoint_every=6, parallel="fsdp"), out=tmp_path / "fsdp", progress=False)
    assert_same_weights(final_weights(tmp_path / "ddp"), final_weights(tmp_path / "fsdp"), rtol=0, atol=0)


@pytest.mark.slow
def test_two_process_fsdp_run_matches_one_process_and_resumes_without_sharding(tmp_path, toy_installed):
    common = ["--domain", "toy", "--steps", "12", "--batch-size", "32", "--set", "train.checkpoint_every=6",
              "--set", "train.grad_accum=2", "--no-progress", "--device", "cpu"]
    train_in_subprocesses([*common, "--out", str(tmp_path / "one")])
    train_in_subprocesses([*common, "--parallel", "fsdp", "--set", "train.fsdp_unit_params=300",
                           "--set", "train.preview_every=12", "--out", str(tmp_path / "two")], processes=2, port=29537)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2
    assert_same_weights(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"), rtol=1e-4, atol=1e-5)
    assert (tmp_path / "two" / "previews" / "step_00000012" / "points.json").exists()

    # The sharded run's step-6 checkpoint (full tensors, optimizer state included) resumes on one
    # process to the same end.
    shutil.copytree(tmp_path / "two", tmp_path / "resumed")
    ckpt.checkpoint_path(tmp_path / "resumed", 12).unlink()
    config = toy_config(steps=12, batch_size=32, checkpoint_every=6, grad_accum=2, parallel="fsdp",
                        fsdp_unit_params=300, preview_every=12)
    train(DOMAIN, config, out=tmp_path / "resumed", resume=True, progress=False)
    assert_same_weights(final_weights(tmp_path / "one"), final_weights(tmp_path / "resumed"), rtol=1e-4, atol=1e-5)


def test_a_checkpoint_with_optimizer_state_keyed_by_position_still_resumes(tmp_path):
    config = toy_config(steps=10, checkpoint_every=5, keep_checkpoints=0)
    train(DOMAIN, config, out=tmp_path / "straight", progress=False)
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    ckpt.checkpoint_path(tmp_path / "resumed", 10).unlink()
    # Rewrite the step-5 checkpoint's optimizer state the way optimizer.state_dict() keys it.
    path = ckpt.checkpoint_path(tmp_path / "resumed", 5)
    state = ckpt.load(path)
    names = list(state["model"].keys())  # the toy model has no buffers: parameters in order
    by_name = state["optimizer"]
    state["optimizer"] = {
        "state": {names.index(name): value for name, value in by_name["state"].items()},
        "param_groups": [{**group, "params": [names.index(name) for name in group["params"]]}
                         for group in by_name["param_groups"]],
    }
    ckpt.save_atomic(state, path)
    train(DOMAIN, config, out=tmp_path / "resumed", resume=True, progress=False)
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed"), rtol=0, atol=0)
