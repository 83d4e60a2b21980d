"""Checkpoint integrity: a content digest written with every checkpoint and checked on load, damage
reported with the newest intact checkpoint, leftovers of killed writes removed on the next start."""

from __future__ import annotations

import pytest
import torch

from diffkit import checkpoint as ckpt
from diffkit.config import resolve_config
from diffkit.loading import load_for_sampling
from diffkit.runner import train
from toy_domain import ToyDomain

DOMAIN = ToyDomain()


def train_toy(run_dir, steps=20, resume=False):
    config = resolve_config(DOMAIN, overrides={"train": {"steps": steps, "checkpoint_every": 10}})
    return train(DOMAIN, config, out=run_dir, resume=resume, progress=False)


def flip_bytes_of_tensor(path, tensor: torch.Tensor, count: int = 4096) -> None:
    """Invert ``count`` bytes of ``tensor``'s storage inside the file (storages are stored raw)."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().numpy().tobytes()
    start = data.find(raw)
    assert start >= 0 and len(raw) >= count
    for index in range(start, start + count):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def test_digest_depends_on_every_value_and_survives_a_round_trip(tmp_path):
    state = {"format": ckpt.FORMAT, "w": torch.arange(6.0).reshape(2, 3), "step": 3, "cfg": {"lr": 1e-3, "m": [1, 2]}}
    path = ckpt.save_atomic(state, tmp_path / "state.pt")
    loaded = ckpt.load(path)
    assert loaded[ckpt.DIGEST_KEY] == ckpt.content_digest(state) == ckpt.content_digest(loaded)
    one_weight_changed = state["w"].clone()
    one_weight_changed[0, 0] = 0.5
    changed = [{**state, "w": one_weight_changed}, {**state, "step": 4}, {**state, "cfg": {"lr": 1e-3, "m": [1, 3]}},
               {**state, "w": state["w"].reshape(3, 2)}, {**state, "w": state["w"].double()}]
    digests = {ckpt.content_digest(variant) for variant in changed}
    assert len(digests) == len(changed) and ckpt.content_digest(state) not in digests


def test_flipped_bytes_in_the_newest_checkpoint_name_the_intact_older_one(tmp_path):
    train_toy(tmp_path)
    older, newest = ckpt.list_checkpoints(tmp_path)
    flip_bytes_of_tensor(newest, torch.load(newest, weights_only=True)["ema"]["net.1.weight"])
    torch.load(newest, weights_only=True)  # torch itself reads the damaged file without complaint
    with pytest.raises(ckpt.DamagedCheckpointError) as caught:
        load_for_sampling(DOMAIN, tmp_path)
    assert str(caught.value) == (
        f"checkpoint {str(newest)!r} is damaged: its content no longer matches the SHA-256 digest stored when "
        f"it was written. The newest intact checkpoint of this run is {str(older)!r}: sample from it with "
        f"--checkpoint {older}, or resume from it by moving the damaged file aside "
        f"(mv {newest} {newest}.damaged) and running train --resume again")
    load_for_sampling(DOMAIN, older)  # the advice works


def test_an_unreadable_checkpoint_is_damage_too_and_says_when_nothing_older_is_intact(tmp_path):
    train_toy(tmp_path)
    older, newest = ckpt.list_checkpoints(tmp_path)
    for path in (older, newest):  # 4 KiB of zeros over the middle of each file
        data = bytearray(path.read_bytes())
        data[len(data) // 2:len(data) // 2 + 4096] = bytes(4096)
        path.write_bytes(bytes(data))
    with pytest.raises(ckpt.DamagedCheckpointError) as caught:
        ckpt.load(newest)
    assert str(caught.value).startswith(f"{str(newest)!r} is not a readable diffkit checkpoint: ")
    assert str(caught.value).endswith(". No older checkpoint of this run is intact")


def test_checkpoints_written_before_digests_existed_load_with_a_warning(tmp_path):
    train_toy(tmp_path, steps=10)
    path = ckpt.resolve(tmp_path)
    state = torch.load(path, weights_only=True)
    del state[ckpt.DIGEST_KEY]
    torch.save(state, path)  # as diffkit 0.1.0 wrote it
    with pytest.warns(ckpt.UncheckedWarning, match=r"step_00000010\.pt' records no SHA-256 digest .* used unchecked"):
        model, _ = load_for_sampling(DOMAIN, path)
    assert torch.equal(model.state_dict()["net.1.weight"], state["ema"]["net.1.weight"])


def test_an_empty_checkpoint_says_so_and_names_the_intact_one(tmp_path):
    train_toy(tmp_path)
    older, newest = ckpt.list_checkpoints(tmp_path)
    newest.write_bytes(b"")
    with pytest.raises(ckpt.DamagedCheckpointError) as caught:
        ckpt.load(newest)
    assert str(caught.value).startswith(f"checkpoint {str(newest)!r} is damaged: the file is empty (0 bytes). "
                                        f"The newest intact checkpoint of this run is {str(older)!r}")


def test_exported_weights_carry_a_digest_that_is_checked(tmp_path):
    train_toy(tmp_path / "run", steps=10)
    exported = ckpt.export_weights(tmp_path / "run", tmp_path / "toy.pt")
    state = torch.load(exported, weights_only=True)
    assert state[ckpt.DIGEST_KEY] == ckpt.content_digest(state)
    flip_bytes_of_tensor(exported, state["ema"]["net.1.weight"], count=64)
    with pytest.raises(ckpt.DamagedCheckpointError, match=r"toy\.pt' is damaged: its content no longer matches"):
        load_for_sampling(DOMAIN, exported)


def test_partial_writes_left_by_a_killed_run_are_removed_on_the_next_start(tmp_path):
    train_toy(tmp_path, steps=10)
    folder = tmp_path / "checkpoints"
    leftover = folder / ".step_00000020.pt.k2j4x9.tmp"  # the name save_atomic gives its temporary file
    leftover.write_bytes(b"half a checkpoint")
    unrelated = folder / "notes.txt"
    unrelated.write_text("mine")
    train_toy(tmp_path, steps=20, resume=True)
    assert not leftover.exists() and unrelated.read_text() == "mine"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "step_00000010.pt", "step_00000020.pt"]
