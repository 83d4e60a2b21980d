"""Run folders, checkpoints and exported folders that are incomplete, damaged or edited: nothing
is used silently, and every refusal names the file, what is wrong and how to go on."""

from __future__ import annotations

import json
import shlex
import shutil

import pytest
import torch
from click.testing import CliRunner

import diffkit
from diffkit import checkpoint as ckpt
from diffkit import pretrained
from diffkit.cli import cli
from diffkit.config import resolve_config
from diffkit.loading import load_for_sampling
from diffkit.runner import train
from run_checks import stop_at_step
from toy_domain import PointDenoiser, ToyDomain

DOMAIN = ToyDomain()


def run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A 10-step toy run folder with one checkpoint, trained once for the module."""
    folder = tmp_path_factory.mktemp("toy") / "run"
    config = resolve_config(DOMAIN, overrides={"train": {"steps": 10, "checkpoint_every": 10}})
    train(DOMAIN, config, out=folder, progress=False, plugin=("toy-points", "1.0"))
    return folder


@pytest.fixture
def run_copy(toy_run, tmp_path, toy_installed):
    """A copy of the toy run folder to damage, with the toy domain installed for the command line."""
    return shutil.copytree(toy_run, tmp_path / "run")


@pytest.fixture
def exported(toy_run, tmp_path, toy_installed):
    folder = tmp_path / "exported"
    assert run("export", toy_run, "--out", folder).exit_code == 0
    return folder


def edit_json(path, change) -> None:
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content, indent=2) + "\n")


def sample_points(checkpoint, out) -> list:
    result = run("sample", "--domain", "toy", "--checkpoint", checkpoint, "-n", 4, "--seed", 0, "--out", out,
                 "--no-progress")
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())["points"]


# -- resuming a run that has no checkpoint yet ---------------------------------------------------

def test_resume_before_the_first_checkpoint_says_the_run_can_start_again_with_a_command_that_works(
        tmp_path, toy_installed, monkeypatch):
    run_dir = tmp_path / "run"
    options = ("--domain", "toy", "--steps", "6", "--set", "train.checkpoint_every=5", "--seed", "3", "--out", run_dir,
               "--no-progress")
    stop_at_step(2, lambda: run("train", *options), monkeypatch)  # killed before step 5's checkpoint
    assert (run_dir / "run.json").is_file() and not ckpt.list_checkpoints(run_dir)

    refused = run("train", *options, "--resume")
    assert refused.exit_code == 1
    message = refused.output.strip()
    assert f"nothing to resume: the run in {str(run_dir)!r} stopped before its first checkpoint" in message
    command = shlex.split(message.split("without --resume: ")[1])
    assert command[:2] == ["diffkit", "train"] and "--resume" not in command
    started = run(*command[1:])
    assert started.exit_code == 0, started.output
    assert ckpt.load(ckpt.resolve(run_dir))["config"]["train"]["seed"] == 3  # the options kept


def test_resume_of_a_folder_without_a_run_says_so(tmp_path, toy_installed):
    refused = run("train", "--domain", "toy", "--out", tmp_path / "typo", "--resume")
    assert refused.exit_code == 1
    assert "holds no run (no checkpoints/ and no run.json); check --out, or start a run there with: " \
           f"diffkit train --domain toy --out {tmp_path / 'typo'}" in refused.output


def test_resuming_a_distillation_before_its_first_checkpoint_names_its_teacher_and_steps(toy_run, tmp_path,
                                                                                         toy_installed, monkeypatch):
    student = tmp_path / "student"
    stop_at_step(1, lambda: run("distill", "--domain", "toy", "--checkpoint", toy_run, "--student-steps", "2",
                                "--steps", "4", "--out", student, "--no-progress"), monkeypatch)
    refused = run("distill", "--domain", "toy", "--steps", "4", "--out", student, "--resume", "--no-progress")
    assert refused.exit_code == 1
    command = shlex.split(refused.output.strip().split("without --resume: ")[1])
    assert command[command.index("--checkpoint") + 1] == str(ckpt.resolve(toy_run).resolve())  # the teacher's file
    started = run(*command[1:])
    assert started.exit_code == 0, started.output
    assert "distilled 4 steps" in started.output and "the student samples in 2 model calls" in started.output


# -- checkpoints --------------------------------------------------------------------------------

def test_a_checkpoint_without_its_digest_is_used_only_with_a_warning(run_copy, tmp_path):
    path = ckpt.resolve(run_copy)
    state = torch.load(path, weights_only=True)
    del state[ckpt.DIGEST_KEY]
    for part in ("model", "ema"):
        state[part] = {key: -3 * value for key, value in state[part].items()}
    torch.save(state, path)
    unchecked = rf"{path.name}' records no SHA-256 digest"
    with pytest.warns(ckpt.UncheckedWarning, match=unchecked):
        sample_points(run_copy, tmp_path / "points.json")
    with pytest.warns(ckpt.UncheckedWarning, match=unchecked):
        diffkit.load(run_copy, device="cpu")
    with pytest.warns(ckpt.UncheckedWarning, match=unchecked):
        result = run("train", "--domain", "toy", "--steps", "12", "--out", run_copy, "--resume", "--no-progress")
    assert result.exit_code == 0, result.output


def test_weights_that_do_not_fit_their_settings_name_only_the_tensors_that_differ(run_copy):
    path = ckpt.resolve(run_copy)
    state = torch.load(path, weights_only=True)
    state["config"]["model"]["hidden"] = 32  # edited after the fact; the weights have 64 channels
    ckpt.save_atomic(state, path)
    with pytest.raises(ckpt.CheckpointError) as caught:
        load_for_sampling(DOMAIN, path)
    wide, narrow = PointDenoiser(64).state_dict(), PointDenoiser(32).state_dict()
    reshaped = sum(wide[key].shape != narrow[key].shape for key in wide)
    message = str(caught.value)
    assert message.startswith(f"the weights of {str(path)!r} do not fit the model their settings describe: "
                              f"{reshaped} of another shape (inp.bias: 64 in the weights, 32 in the model; ")
    assert message.endswith(f"; and {reshaped - 3} more)") and len(message) < 600


def test_an_invalid_run_file_names_itself_and_how_to_go_on(run_copy, tmp_path):
    (run_copy / "run.json").write_text("{\n")
    for args in (("train", "--domain", "toy", "--steps", "12", "--out", run_copy, "--resume", "--no-progress"),
                 ("export", run_copy, "--out", tmp_path / "exported")):
        refused = run(*args)
        assert refused.exit_code == 1
        assert f"{str(run_copy / 'run.json')!r} is not valid JSON (Expecting property name" in refused.output
        assert "delete it: resuming writes it again" in refused.output
    (run_copy / "run.json").unlink()  # the advice works
    assert run("train", "--domain", "toy", "--steps", "12", "--out", run_copy, "--resume", "--no-progress").exit_code == 0
    assert json.loads((run_copy / "run.json").read_text())["domain"] == "toy"


# -- exported folders ---------------------------------------------------------------------------

def test_edited_sampling_settings_of_an_exported_folder_are_used_and_reported(exported, tmp_path):
    before = sample_points(exported, tmp_path / "before.json")
    edit_json(exported / "config.json", lambda c: c["config"]["sample"].update(steps=3))
    with pytest.warns(UserWarning, match=r"sampling settings \(sample\.\*\) in .*config\.json' were changed"):
        after = sample_points(exported, tmp_path / "after.json")
    assert after != before
    assert json.loads((tmp_path / "after.json.json").read_text())["steps"] == 3  # the record says what was used


@pytest.mark.parametrize("change", [
    lambda c: c["config"]["model"].update(hidden=32),
    lambda c: c["config"]["diffusion"].update(prediction="x0"),
    lambda c: c.update(domain="image"),
])
def test_edited_settings_that_describe_the_weights_are_refused(exported, tmp_path, change):
    edit_json(exported / "config.json", change)
    refused = run("sample", "--domain", "toy", "--checkpoint", exported, "-n", 2, "--out", tmp_path / "p.json")
    assert refused.exit_code == 1
    assert f"{str(exported / 'config.json')!r} was changed after it was written" in refused.output
    with pytest.raises(ckpt.CheckpointError, match="was changed after it was written"):
        diffkit.load(exported)


def test_a_folder_without_digests_is_used_only_with_warnings(exported, tmp_path):
    edit_json(exported / "config.json", lambda c: [c.pop(key) for key in ("sha256", "settings_sha256", "sample_sha256")])
    with pytest.warns(ckpt.UncheckedWarning) as caught:
        sample_points(exported, tmp_path / "points.json")
    messages = {str(warning.message) for warning in caught}
    assert any("records no SHA-256 of model.safetensors" in message for message in messages)
    assert any("records no digest of its settings" in message for message in messages)


def test_written_digests_cover_what_they_say(exported):
    config = json.loads((exported / "config.json").read_text())
    assert {key: config[key] for key in ("settings_sha256", "sample_sha256")} == pretrained.settings_digests(config)
    changed = json.loads(json.dumps(config))
    changed["card"]["notes"] = "card facts are not settings"
    changed["step"] = 99
    assert pretrained.settings_digests(changed) == pretrained.settings_digests(config)
