"""``diffkit train --init-from``: a new run that starts from trained weights and their settings."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from diffkit import checkpoint as ckpt
from diffkit.cli import cli
from diffkit.config import resolve_config
from diffkit.runner import train
from run_checks import final_weights
from toy_domain import ToyDomain


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy run with a model width other than the default, so that settings taken from the
    weights can be told from the defaults."""
    folder = tmp_path_factory.mktemp("source")
    domain = ToyDomain()
    train(domain, resolve_config(domain, overrides={"model": {"hidden": 24}, "train": {"steps": 40}}),
          out=folder, progress=False)
    return folder


@pytest.fixture
def source(trained, toy_installed):
    return trained


def first_logged_loss(run_dir) -> float:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]


def test_a_finetuned_run_starts_from_the_ema_weights_and_their_settings(source, tmp_path):
    # With a learning rate of zero nothing moves, so the run ends with the weights it started from.
    out = tmp_path / "frozen"
    result = run("train", "--domain", "toy", "--init-from", str(source), "--steps", "2", "--set", "train.lr=0",
                 "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["hidden"] == 24
    assert config["train"]["init_from"] == str(ckpt.resolve(source))
    started, ended = ckpt.load(ckpt.resolve(source))["ema"], final_weights(out)
    for part in ("model", "ema"):
        for key, value in started.items():
            torch.testing.assert_close(ended[part][key], value, rtol=0, atol=0)


def test_finetuning_goes_on_from_where_the_weights_are(source, tmp_path):
    for name, extra in (("fresh", ("--set", "model.hidden=24")), ("tuned", ("--init-from", str(source)))):
        result = run("train", "--domain", "toy", "--steps", "5", "--out", str(tmp_path / name), "--no-progress", *extra)
        assert result.exit_code == 0, result.output
    # Same seed, so both runs' first steps see the same batches and noise: only the weights differ.
    assert first_logged_loss(tmp_path / "tuned") < 0.75 * first_logged_loss(tmp_path / "fresh")


def test_a_finetuned_run_resumes_without_its_source(source, tmp_path):
    copy = tmp_path / "source"
    shutil.copytree(source, copy)
    out = tmp_path / "tuned"
    args = ("train", "--domain", "toy", "--init-from", str(copy), "--out", str(out), "--no-progress",
            "--set", "train.checkpoint_every=5")
    assert run(*args, "--steps", "5").exit_code == 0
    shutil.rmtree(copy)
    result = run("train", "--domain", "toy", "--out", str(out), "--resume", "--steps", "10", "--no-progress")
    assert result.exit_code == 0, result.output
    assert final_weights(out)["step"] == 10


@pytest.mark.parametrize("args, message", [
    (("--preset", "cpu"), "--preset does not go with --init-from"),
    (("--set", "model.hidden=16"), "model.hidden: 24 there, 16 here"),
])
def test_finetuning_refuses_settings_that_do_not_fit_the_weights(args, message, source, tmp_path):
    result = run("train", "--domain", "toy", "--init-from", str(source), "--out", str(tmp_path / "run"), *args)
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_finetuning_names_a_missing_source_and_a_domain_without_weights(toy_installed, tmp_path):
    result = run("train", "--domain", "toy", "--init-from", str(tmp_path / "missing"), "--out", str(tmp_path / "run"))
    assert result.exit_code == 1 and "--init-from" in result.output and "does not exist" in result.output
    result = run("train", "--domain", "toy", "--init-from", "toy", "--out", str(tmp_path / "run"))
    assert result.exit_code == 1 and "the toy domain ships no weights" in result.output


def test_a_student_of_a_finetuned_teacher_starts_from_the_teacher(source, tmp_path):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    assert run("train", "--domain", "toy", "--init-from", str(source), "--steps", "5", "--out", str(teacher),
               "--no-progress").exit_code == 0
    result = run("distill", "--domain", "toy", "--checkpoint", str(teacher), "--student-steps", "2", "--steps", "2",
                 "--set", "train.lr=0", "--out", str(student), "--no-progress")
    assert result.exit_code == 0, result.output
    started, ended = final_weights(teacher)["ema"], final_weights(student)["model"]
    for key, value in started.items():
        torch.testing.assert_close(ended[key], value, rtol=0, atol=0)
