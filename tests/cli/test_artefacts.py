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
