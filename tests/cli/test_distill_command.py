"""``diffkit distill`` end to end on the toy domain: a student run folder that ``sample``,
``export`` and ``--resume`` treat like any other, and clear refusals."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from diffkit.cli import cli
from diffkit.config import resolve_config
from diffkit.runner import train
from toy_domain import ToyDomain


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    domain = ToyDomain()
    train(domain, resolve_config(domain, overrides={"train": {"steps": 40}}), out=folder, progress=False)
    return folder


@pytest.fixture
def teacher(trained, toy_installed):
    """A toy run of `diffkit train`, with the toy domain installed for the command line."""
    return trained


def test_distill_then_sample_and_export_the_student(teacher, tmp_path):
    student = tmp_path / "student"
    result = run("distill", "--domain", "toy", "--checkpoint", str(teacher), "--student-steps", "2", "--steps", "10",
                 "--out", str(student), "--no-progress", "--set", "train.checkpoint_every=5")
    assert result.exit_code == 0, result.output
    assert "distilled 10 steps" in result.output and "samples in 2 model calls" in result.output
    config = json.loads((student / "config.json").read_text())
    assert (config["sample"]["sampler"], config["sample"]["steps"]) == ("ddim", 2)
    assert json.loads((student / "run.json").read_text())["teacher"]["step"] == 40

    out = tmp_path / "points.json"
    result = run("sample", "--domain", "toy", "--checkpoint", str(student), "-n", "8", "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    assert len(json.loads(out.read_text())["points"]) == 8
    assert run("export", str(student), "--out", str(tmp_path / "exported")).exit_code == 0
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())["config"]
    assert exported["sample"] == config["sample"] and exported["distill"]["teacher"] == config["distill"]["teacher"]

    result = run("distill", "--domain", "toy", "--steps", "15", "--out", str(student), "--resume", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "distilled 15 steps" in result.output
    # The student of a student takes the teacher's own steps as its targets.
    result = run("distill", "--domain", "toy", "--checkpoint", str(student), "--student-steps", "1", "--steps", "5",
                 "--out", str(tmp_path / "one"), "--no-progress")
    assert result.exit_code == 0, result.output
    distill = json.loads((tmp_path / "one" / "config.json").read_text())["distill"]
    assert (distill["teacher_sampler"], distill["teacher_substeps"]) == ("ddim", 2)


@pytest.mark.parametrize("args, message", [
    (("--steps", "5"), "--student-steps is required"),
    (("--student-steps", "0"), "--student-steps must be at least 1"),
    (("--student-steps", "2", "--set", "model.hidden=16"), "keeps the teacher's 'model' settings"),
    (("--student-steps", "2", "--set", "distill.teacher_substeps=0"), "distill.teacher_substeps' must be at least 1"),
])
def test_distill_errors_are_clear(args, message, teacher, tmp_path):
    result = run("distill", "--domain", "toy", "--checkpoint", str(teacher), "--out", str(tmp_path / "s"), *args)
    assert result.exit_code == 1 and message in result.output, result.output


def test_a_training_run_and_a_distillation_run_each_resume_as_themselves(teacher, tmp_path):
    result = run("distill", "--domain", "toy", "--out", str(teacher), "--resume")
    assert result.exit_code == 1 and "not a distillation; resume it with: diffkit train" in result.output
    result = run("distill", "--domain", "toy", "--checkpoint", str(teacher), "--out", str(teacher), "--resume")
    assert result.exit_code == 1 and "cannot be combined with --resume" in result.output
    result = run("distill", "--domain", "toy", "--checkpoint", str(tmp_path / "missing"), "--student-steps", "2",
                 "--out", str(tmp_path / "s"))
    assert result.exit_code == 1 and "does not exist" in result.output
