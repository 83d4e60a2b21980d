"""Faults and bad input on the command line: each gives a named error (never a traceback) that says
what was wrong and what to do, before any work is done where that is possible."""

from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner

from diffkit import checkpoint as ckpt
from diffkit.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def train_toy(run_dir, *extra: str):
    result = invoke("train", "--domain", "toy", "--out", str(run_dir), "--no-progress", *extra)
    assert result.exit_code == 0, result.output
    return result


def assert_named_error(result, message: str) -> None:
    assert isinstance(result.exception, SystemExit), result.exception  # not an error that escaped
    assert result.exit_code == 1, result.output
    assert f"Error: {message}" in result.output


# -- settings ---------------------------------------------------------------------------------

def test_a_setting_of_the_wrong_type_is_refused_before_training(tmp_path, toy_installed):
    result = invoke("train", "--domain", "toy", "--out", str(tmp_path / "run"), "--set", "train.lr=abc")
    assert_named_error(result, "config key 'train.lr' expects a number (float), got 'abc' (str) from --set train.lr=abc")
    assert not (tmp_path / "run").exists()


def test_a_toml_value_of_the_wrong_type_names_the_file(tmp_path, toy_installed):
    (tmp_path / "run.toml").write_text('[train]\nlr = "abc"\n')
    result = invoke("train", "--domain", "toy", "--out", str(tmp_path / "run"), "--config", str(tmp_path / "run.toml"))
    assert_named_error(result, f"config key 'train.lr' expects a number (float), got 'abc' (str) from config file "
                               f"{str(tmp_path / 'run.toml')!r}")


@pytest.mark.parametrize(("args", "message"), [
    (("--set", "train.steps=-5"), "config key 'train.steps' must be at least 1, got -5 from --set train.steps=-5"),
    (("--steps", "0"), "config key 'train.steps' must be at least 1, got 0"),
    (("--batch-size", "0"), "config key 'train.batch_size' must be at least 1, got 0"),
    (("--set", "train.lr=-1"), "config key 'train.lr' must be at least 0, got -1 from --set train.lr=-1"),
    (("--set", "train.checkpoint_every=-1"),
     "config key 'train.checkpoint_every' must be at least 0, got -1 from --set train.checkpoint_every=-1"),
])
def test_training_nothing_is_an_error_not_a_success(args, message, tmp_path, toy_installed):
    assert_named_error(invoke("train", "--domain", "toy", "--out", str(tmp_path / "run"), *args), message)
    assert not (tmp_path / "run").exists()


def test_a_domain_setting_outside_its_range_is_refused_before_training(tmp_path):
    result = invoke("train", "--domain", "image", "--out", str(tmp_path / "run"), "--set", "model.base_channels=0")
    assert_named_error(result, "config key 'model.base_channels' must be at least 1, got 0 "
                               "from --set model.base_channels=0")
    assert not (tmp_path / "run").exists()


def test_resume_checks_the_types_of_what_it_changes(tmp_path, toy_installed):
    train_toy(tmp_path / "run", "--steps", "10")
    (tmp_path / "more.toml").write_text("[train]\nsteps = \"many\"\n")
    result = invoke("train", "--domain", "toy", "--out", str(tmp_path / "run"), "--resume",
                    "--config", str(tmp_path / "more.toml"))
    assert_named_error(result, "config key 'train.steps' expects an integer (int), got 'many' (str)")


# -- sampling: checked before the model is loaded ---------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (("-n", "0"), "-n/--num-samples must be at least 1, got 0"),
    (("--steps", "0"), "--steps must be at least 1, got 0"),
    (("--batch-size", "-1"), "--batch-size must be at least 1, got -1"),
    (("--sampler", "ddmi"), "--sampler: unknown sampler 'ddmi'; valid: gaussian: ddim, ddpm"),
    (("--interpolate", "1"), "--interpolate draws samples between two ends, so it needs at least 2, got 1"),
    (("--init", "x.json", "--strength", "1.5"), "--strength must be in (0, 1], got 1.5"),
    (("--init", "x.json", "--strength", "nan"), "--strength must be in (0, 1], got nan"),
    (("--guidance", "nan"), "--guidance must be a finite number, got nan"),
    (("--guidance", "-inf"), "--guidance must be a finite number, got -inf"),
    (("--device", "foo"), "--device 'foo' is not a device; use cpu, cuda, cuda:N or mps"),
])
def test_sampling_requests_are_checked_before_the_checkpoint_is_read(args, message, tmp_path, toy_installed):
    # The checkpoint does not exist: the request must be refused before anything is loaded.
    result = invoke("sample", "--domain", "toy", "--checkpoint", str(tmp_path / "nowhere.pt"),
                    "--out", str(tmp_path / "s.json"), *args)
    assert_named_error(result, message)


def test_cuda_without_cuda_is_a_named_error(tmp_path, toy_installed, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = invoke("sample", "--domain", "toy", "--checkpoint", str(tmp_path / "nowhere.pt"),
                    "--out", str(tmp_path / "s.json"), "--device", "cuda")
    assert_named_error(result, "--device cuda was asked for, but CUDA is not available here; use --device cpu")
    result = invoke("train", "--domain", "toy", "--out", str(tmp_path / "run"), "--device", "cuda")
    assert_named_error(result, "--device cuda was asked for, but CUDA is not available here; use --device cpu")


def test_an_output_below_a_file_is_refused_before_work(tmp_path, toy_installed):
    (tmp_path / "taken").write_text("a file")
    result = invoke("sample", "--domain", "toy", "--checkpoint", str(tmp_path / "nowhere.pt"),
                    "--out", str(tmp_path / "taken" / "s.json"))
    assert_named_error(result, f"cannot write to --out {str(tmp_path / 'taken' / 's.json')!r}: "
                               f"{str(tmp_path / 'taken')!r} is a file, not a folder")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permission bits do not bind root")
def test_a_read_only_output_folder_is_refused_before_work(tmp_path, toy_installed):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = invoke("train", "--domain", "toy", "--out", str(locked / "run"))
    finally:
        locked.chmod(0o755)
    assert_named_error(result, f"cannot write to --out {str(locked / 'run')!r}: the folder {str(locked)!r} "
                               "does not accept new files (Permission denied)")


# -- damaged checkpoints ----------------------------------------------------------------------

def test_a_damaged_newest_checkpoint_names_the_intact_one_and_its_advice_works(tmp_path, toy_installed):
    run_dir = tmp_path / "run"
    train_toy(run_dir, "--steps", "20", "--set", "train.checkpoint_every=10")
    older, newest = ckpt.list_checkpoints(run_dir)
    data = bytearray(newest.read_bytes())
    weight = torch.load(newest, weights_only=True)["ema"]["net.1.weight"].numpy().tobytes()
    start = data.find(weight)
    data[start:start + 4096] = bytes(b ^ 0xFF for b in data[start:start + 4096])
    newest.write_bytes(bytes(data))

    advice = (f"The newest intact checkpoint of this run is {str(older)!r}: sample from it with --checkpoint {older}, "
              f"or resume from it by moving the damaged file aside (mv {newest} {newest}.damaged) and running "
              "train --resume again")
    damaged = f"checkpoint {str(newest)!r} is damaged: its content no longer matches the SHA-256 digest"
    for command in (("sample", "--domain", "toy", "--checkpoint", str(run_dir), "--out", str(tmp_path / "s.json")),
                    ("train", "--domain", "toy", "--out", str(run_dir), "--resume", "--steps", "30")):
        result = invoke(*command, "--no-progress")
        assert_named_error(result, damaged)
        assert advice in result.output

    assert invoke("sample", "--domain", "toy", "--checkpoint", str(older), "--out", str(tmp_path / "s.json"),
                  "--no-progress").exit_code == 0
    newest.rename(f"{newest}.damaged")
    result = invoke("train", "--domain", "toy", "--out", str(run_dir), "--resume", "--steps", "30", "--no-progress")
    assert result.exit_code == 0 and "trained 30 steps" in result.output


# -- Ctrl-C -----------------------------------------------------------------------------------

def test_ctrl_c_during_a_checkpoint_write_stops_cleanly_and_says_how_to_resume(tmp_path, toy_installed, monkeypatch):
    common = ("--steps", "30", "--set", "train.checkpoint_every=10", "--no-progress")
    train_toy(tmp_path / "straight", *common)
    run_dir = tmp_path / "run"
    save, calls = torch.save, []

    def ctrl_c_on_the_second_checkpoint(obj, file):
        calls.append(1)
        if len(calls) == 2:
            file.write(b"the first bytes of a checkpoint")
            raise KeyboardInterrupt
        save(obj, file)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", ctrl_c_on_the_second_checkpoint)
        result = invoke("train", "--domain", "toy", "--out", str(run_dir), *common)
    first = ckpt.checkpoint_path(run_dir, 10)
    assert result.exit_code == 130
    assert result.output.splitlines()[-1] == (f"interrupted at step 20; the last checkpoint is {str(first)!r}; "
                                              f"resume with: diffkit train --domain toy --out {run_dir} --resume")
    assert "Traceback" not in result.output
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [first.name]  # no temporary file left

    result = invoke("train", "--domain", "toy", "--out", str(run_dir), "--resume", *common)
    assert result.exit_code == 0, result.output
    resumed, straight = ckpt.load(ckpt.resolve(run_dir)), ckpt.load(ckpt.resolve(tmp_path / "straight"))
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


# -- plugins ----------------------------------------------------------------------------------

FAILING_COMMANDS = '''
import diffkit

@diffkit.hookimpl
def diffkit_register_domains(register):
    raise RuntimeError("no domain today")

@diffkit.hookimpl
def diffkit_cli_commands(cli):
    @cli.command(name="half-added")
    def half_added():
        pass
    raise RuntimeError("no commands today")
'''

REPLACES_TRAIN = '''
import click
import diffkit

@diffkit.hookimpl
def diffkit_cli_commands(cli):
    @cli.command(name="train")
    def train():
        click.echo("not the real train")
'''


def test_a_plugin_whose_commands_fail_is_reported_and_the_cli_still_works(plugin_site, toy_installed):
    site = plugin_site({"bad-commands": "bad_commands_for_diffkit", "takes-train": "takes_train_for_diffkit"})
    (site / "bad_commands_for_diffkit.py").write_text(FAILING_COMMANDS)
    (site / "takes_train_for_diffkit.py").write_text(REPLACES_TRAIN)

    result = invoke("--help")
    assert result.exit_code == 0 and "train" in result.output and "half-added" not in result.output
    result = invoke("no-such-command")
    assert result.exit_code == 2 and "No such command 'no-such-command'" in result.output

    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    bad = lines.index(next(line for line in lines if line.startswith("bad-commands")))
    assert lines[bad].endswith("FAILED: RuntimeError: no domain today")
    assert lines[bad + 1].strip() == "FAILED: RuntimeError: no commands today"
    assert next(line for line in lines if line.startswith("takes-train")).endswith(
        "FAILED: PluginLoadError: tried to replace the built-in command 'train'")
    assert next(line for line in lines if line.startswith("toy-points")).split()[3] == "loaded"

    result = invoke("train", "--domain", "toy", "--steps", "0")  # the built-in train, not the plugin's
    assert "config key 'train.steps' must be at least 1" in result.output


def test_a_plugin_that_exits_on_import_does_not_stop_the_cli(plugin_site, toy_installed):
    site = plugin_site({"exits": "exits_for_diffkit"})
    (site / "exits_for_diffkit.py").write_text("import sys\nsys.exit('bye')\n")
    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    assert next(line for line in result.output.splitlines() if line.startswith("exits")).endswith(
        "FAILED: SystemExit: the plugin called sys.exit('bye')")
    assert invoke("--help").exit_code == 0


def test_a_sample_record_is_standard_json_or_is_not_written(tmp_path):
    import json

    from diffkit.records import write_record

    with pytest.raises(ValueError, match="holds a number that is not finite"):
        write_record(tmp_path / "samples.json", {"guidance": float("nan")})
    assert not (tmp_path / "samples.json").exists()

    def refuse(constant):
        raise AssertionError(f"{constant} is not standard JSON")

    write_record(tmp_path / "samples.json", {"guidance": 2.0})
    assert json.loads((tmp_path / "samples.json").read_text(), parse_constant=refuse) == {"guidance": 2.0}


def test_more_samples_than_memory_holds_are_refused_before_any_is_drawn(tmp_path, toy_installed):
    train_toy(tmp_path / "run", "--steps", "2")
    # 16 bytes a toy sample, held twice: 32 TB, more than any machine that runs these tests.
    result = invoke("sample", "--checkpoint", str(tmp_path / "run"), "-n", str(10**12), "--seed", "0",
                    "--out", str(tmp_path / "samples"), "--no-progress")
    assert_named_error(result, "1,000,000,000,000 samples (15,625,000,000 batches of 64, 10 sampling steps each) "
                               "would take about 32.0 TB of memory")
    assert "draw at most" in result.output and not (tmp_path / "samples").exists()


LOUD_AND_BROKEN = '''
import diffkit
from toy_domain import ToyDomain

print("hello from a plugin")


class NoDescription(ToyDomain):
    name = "mute"

    @property
    def description(self):
        raise RuntimeError("no words today")


@diffkit.hookimpl
def diffkit_register_domains(register):
    print("registering")
    register(NoDescription())
'''


def test_a_plugin_that_prints_or_whose_description_fails_leaves_every_command_working(plugin_site, toy_installed,
                                                                                        tmp_path):
    import json

    site = plugin_site({"loud": "loud_for_diffkit"})
    (site / "loud_for_diffkit.py").write_text(LOUD_AND_BROKEN)
    notice = "diffkit: plugin loud failed to load; `diffkit plugins` says why"

    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    assert next(line for line in result.stdout.splitlines() if line.startswith("loud")).endswith(
        "FAILED: PluginLoadError: NoDescription.description raised RuntimeError: no words today")
    assert "hello" not in result.stdout and "registering" not in result.stdout
    assert result.stderr.splitlines() == ["hello from a plugin", "registering"]  # the listing says it failed

    # Every other command says so in one line on stderr, and its standard output stays its own.
    (tmp_path / "points.json").write_text(json.dumps({"points": [[2.0, 0.0], [0.0, 2.1]], "labels": [0, 1]}))
    result = invoke("evaluate", "--domain", "toy", "--samples", str(tmp_path / "points.json"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"mean_distance_to_center": pytest.approx(0.05)}
    assert notice in result.stderr.splitlines() and result.stderr.count("failed to load") == 1
    result = invoke("train", "--domain", "toy", "--steps", "0")
    assert notice in result.stderr.splitlines() and result.stderr.count("failed to load") == 1
