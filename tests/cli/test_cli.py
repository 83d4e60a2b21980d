"""The command line end to end, on the toy domain installed as a third-party plugin."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
import torch
from click.testing import CliRunner

from diffkit.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_plugins_lists_versions_domains_and_status(toy_installed, plugin_site):
    plugin_site({"broken": "no_such_module_for_diffkit"})
    result = run("plugins")
    assert result.exit_code == 0
    toy_line = next(line for line in result.output.splitlines() if line.startswith("toy-points"))
    assert toy_line.split()[1:4] == ["1.0", "toy", "loaded"]
    assert "FAILED: ModuleNotFoundError" in result.output
    assert "toy: 2-D points" in result.output


def test_train_sample_evaluate_end_to_end(tmp_path, toy_installed):
    run_dir = tmp_path / "run"
    result = run("train", "--domain", "toy", "--steps", "60", "--out", str(run_dir), "--no-progress",
                 "--set", "train.checkpoint_every=30")
    assert result.exit_code == 0, result.output
    assert "trained 60 steps" in result.output
    out = tmp_path / "samples.json"
    result = run("sample", "--domain", "toy", "--checkpoint", str(run_dir), "-n", "50", "--cond", "2",
                 "--seed", "0", "--out", str(out), "--no-progress")  # seeded: the score is a draw's
    assert result.exit_code == 0, result.output
    labels = json.loads(out.read_text())["labels"]
    assert labels == [2] * 50
    result = run("evaluate", "--domain", "toy", "--samples", str(out), "--json")
    assert json.loads(result.output)["mean_distance_to_center"] < 1.0


def test_resume_continues_the_run_with_more_steps(tmp_path, toy_installed):
    run_dir = str(tmp_path / "run")
    assert run("train", "--domain", "toy", "--steps", "20", "--out", run_dir, "--no-progress").exit_code == 0
    result = run("train", "--domain", "toy", "--steps", "30", "--out", run_dir, "--resume", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "trained 30 steps" in result.output
    result = run("train", "--domain", "toy", "--out", run_dir, "--no-progress")
    assert result.exit_code == 1 and "pass --resume" in result.output


def test_train_states_its_plan_first_and_how_to_sample_last(tmp_path, toy_installed):
    from toy_domain import PointDenoiser

    run_dir = tmp_path / "run"
    result = run("train", "--domain", "toy", "--steps", "20", "--out", str(run_dir), "--no-progress",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    parameters = sum(p.numel() for p in PointDenoiser(64).parameters())  # 4,930: shown as 4.9k
    assert lines[0] == "domain: toy  data: bundled (512 items)  preset: cpu (no CUDA device)"
    assert lines[1] == f"model: {parameters / 1000:.1f}k parameters  steps: 20  batch: 32  device: cpu"
    assert lines[2] == f"run folder: {run_dir}"
    assert lines[-1] == f"sample with: diffkit sample --domain toy --checkpoint {run_dir} --out samples/"


def test_resume_accepts_the_command_line_that_started_the_run(tmp_path, toy_installed):
    def command(preset="cpu", lr="1e-3", steps="20"):
        return ["train", "--domain", "toy", "--preset", preset, "--set", f"train.lr={lr}", "--steps", steps,
                "--out", str(tmp_path / "run"), "--no-progress"]

    assert run(*command()).exit_code == 0
    again = run(*command(), "--resume")
    assert again.exit_code == 0, again.output
    assert "preset: cpu" in again.output and "resuming at 20" in again.output
    longer = run(*command(steps="30"), "--resume")  # more steps may be asked for
    assert longer.exit_code == 0 and "trained 30 steps" in longer.output, longer.output
    changed = CliRunner().invoke(cli, [*command(lr="2e-3"), "--resume"])
    assert changed.exit_code == 1
    assert "train.lr: 0.001 -> 0.002" in changed.output
    other_preset = CliRunner().invoke(cli, [*command(preset="gpu"), "--resume"])
    assert other_preset.exit_code == 1 and "train.batch_size: 32 -> 256" in other_preset.output


def test_resume_of_a_run_saved_before_a_setting_existed_uses_its_default(tmp_path, toy_installed):
    from diffkit import checkpoint as ckpt

    run_dir = tmp_path / "run"
    assert run("train", "--domain", "toy", "--steps", "20", "--out", str(run_dir), "--no-progress").exit_code == 0
    path = ckpt.resolve(run_dir)
    state = ckpt.load(path)
    del state["config"]["train"]["parallel"]  # as in a checkpoint of diffkit 0.1.0
    del state["config"]["train"]["init_from"]  # a setting that a resume may not change
    ckpt.save_atomic(state, path)
    result = run("train", "--domain", "toy", "--steps", "30", "--out", str(run_dir), "--resume", "--no-progress")
    assert result.exit_code == 0, result.output
    saved = ckpt.load(ckpt.resolve(run_dir))["config"]["train"]
    assert (saved["parallel"], saved["init_from"]) == ("ddp", "")


def test_sampling_is_reproducible_with_a_seed(tmp_path, toy_installed):
    run_dir = str(tmp_path / "run")
    run("train", "--domain", "toy", "--steps", "10", "--out", run_dir, "--no-progress")
    outputs = []
    for name in ("a.json", "b.json"):
        run("sample", "--domain", "toy", "--checkpoint", run_dir, "-n", "5", "--seed", "7", "--out",
            str(tmp_path / name), "--no-progress")
        outputs.append((tmp_path / name).read_text())
    assert outputs[0] == outputs[1]


def test_sample_without_a_seed_draws_prints_and_records_a_fresh_one(tmp_path, toy_installed):
    run_dir = str(tmp_path / "run")
    run("train", "--domain", "toy", "--steps", "10", "--out", run_dir, "--no-progress")
    first = run("sample", "--domain", "toy", "--checkpoint", run_dir, "-n", "5", "--out", str(tmp_path / "a.json"),
                "--no-progress")
    assert first.exit_code == 0, first.output
    seed = int(first.output.split("seed: ")[1].split()[0])
    assert f"(pass --seed {seed} to repeat)" in first.output
    record = json.loads((tmp_path / "a.json.json").read_text())
    assert record["seed"] == seed and record["n"] == 5 and record["checkpoint"] == run_dir
    assert (record["sampler"], record["steps"], record["spacing"]) == ("dpmpp_2m", 10, "trimmed")  # auto, resolved
    assert record["files"] == ["a.json"] and record["domain"] == "toy"
    second = run("sample", "--domain", "toy", "--checkpoint", run_dir, "-n", "5", "--out", str(tmp_path / "b.json"),
                 "--no-progress")
    assert json.loads((tmp_path / "b.json.json").read_text())["seed"] != seed
    repeat = run("sample", "--domain", "toy", "--checkpoint", run_dir, "-n", "5", "--out", str(tmp_path / "c.json"),
                 "--no-progress", "--seed", str(seed))
    assert repeat.exit_code == 0 and "seed:" not in repeat.output
    assert (tmp_path / "c.json").read_text() == (tmp_path / "a.json").read_text()
    assert second.exit_code == 0 and (tmp_path / "b.json").read_text() != (tmp_path / "a.json").read_text()
    before = (tmp_path / "a.json").read_text()
    refused = CliRunner().invoke(cli, ["sample", "--domain", "toy", "--checkpoint", run_dir, "-n", "5",
                                       "--out", str(tmp_path / "a.json"), "--no-progress"])
    assert refused.exit_code == 1 and "a.json' already exists; outputs are never overwritten" in refused.output
    assert (tmp_path / "a.json").read_text() == before


def test_sample_into_a_folder_of_earlier_samples_is_refused_before_sampling(tmp_path, toy_installed, monkeypatch):
    run_dir = str(tmp_path / "run")
    run("train", "--domain", "toy", "--steps", "10", "--out", run_dir, "--no-progress")
    out = tmp_path / "samples"
    first = run("sample", "--checkpoint", run_dir, "-n", "3", "--seed", "4", "--out", str(out), "--no-progress")
    assert first.exit_code == 0, first.output  # --domain comes from the checkpoint
    record = json.loads((out / "samples.json").read_text())
    assert record["seed"] == 4 and record["files"] == ["points.json"] and record["domain"] == "toy"
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    import diffkit.generate

    monkeypatch.setattr(diffkit.generate, "generate", lambda *a, **k: pytest.fail("sampled before refusing"))
    again = CliRunner().invoke(cli, ["sample", "--checkpoint", run_dir, "-n", "3", "--out", str(out), "--no-progress"])
    assert again.exit_code == 1 and "already holds samples (see its samples.json)" in again.output
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_sample_takes_settings_from_config_and_set_but_keeps_the_weights_settings(tmp_path, toy_installed,
                                                                                   monkeypatch):
    run_dir = str(tmp_path / "run")
    run("train", "--domain", "toy", "--steps", "10", "--out", run_dir, "--no-progress")
    settings = tmp_path / "sample.toml"
    settings.write_text('[sample]\nsampler = "ddim"\nsteps = 4\n')
    result = run("sample", "--domain", "toy", "--checkpoint", run_dir, "-n", "3", "--seed", "1", "--no-progress",
                 "--config", str(settings), "--set", "sample.spacing=quadratic", "--out", str(tmp_path / "s.json"))
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "s.json.json").read_text())
    assert (record["sampler"], record["steps"], record["spacing"]) == ("ddim", 4, "quadratic")
    assert record["precision"] == "float32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    result = run("sample", "--domain", "toy", "--checkpoint", run_dir, "-n", "3", "--no-progress",
                 "--set", "sample.precision=auto", "--out", str(tmp_path / "auto.json"))
    assert json.loads((tmp_path / "auto.json.json").read_text())["precision"] == "bfloat16"  # resolved
    refused = CliRunner().invoke(cli, ["sample", "--domain", "toy", "--checkpoint", run_dir, "-n", "3",
                                       "--set", "model.hidden=32", "--out", str(tmp_path / "t.json")])
    assert refused.exit_code == 1
    assert "fixed by the checkpoint's weights: model.hidden is 64 there, not 32" in refused.output
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "--domain", "nope"), "unknown domain 'nope'; available:"),
        (("train", "--domain", "toy", "--set", "train.lrr=1"), "unknown config key 'train.lrr'; did you mean 'lr'?"),
        (("train", "--domain", "toy", "--set", "trian.lr=1"), "did you mean 'train'?"),
        (("train", "--domain", "toy", "--config", "missing.toml"), "config file 'missing.toml' does not exist"),
        (("train", "--domain", "toy", "--preset", "huge"), "unknown preset 'huge' for domain 'toy'; available: cpu, gpu"),
        (("sample", "--domain", "toy", "--out", "x"), "the toy domain ships no weights; pass --checkpoint"),
        (("sample", "--domain", "toy", "--checkpoint", "nowhere.pt", "--out", "x"), "checkpoint 'nowhere.pt' does not exist"),
    ],
)
def test_errors_are_clear(args, message, toy_installed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code != 0
    assert message in result.output


def test_every_option_of_every_command_is_explained():
    context = click.Context(cli)
    for name in ("plugins", "train", "sample", "evaluate", "new-plugin"):
        command = cli.get_command(context, name)
        assert command.help, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts} has no help"


def test_python_dash_m_diffkit_works():
    result = subprocess.run([sys.executable, "-m", "diffkit", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "train" in result.stdout and "sample" in result.stdout


def test_warnings_show_as_one_line_naming_their_kind(monkeypatch):
    import warnings

    from diffkit.kit import FewSamplesWarning

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored afterwards
    assert run("plugins").exit_code == 0
    shown = warnings.formatwarning(FewSamplesWarning("from 8 samples"), FewSamplesWarning, "frechet.py", 20, "code")
    assert shown == "FewSamplesWarning: from 8 samples\n"


@pytest.mark.slow
def test_sampling_sharded_over_two_processes_equals_one_process(tmp_path, toy_installed):
    import os

    run_dir = str(tmp_path / "run")
    run("train", "--domain", "toy", "--steps", "10", "--out", run_dir, "--no-progress")
    common = ["-m", "diffkit", "sample", "--domain", "toy", "--checkpoint", run_dir, "-n", "50",
              "--batch-size", "8", "--seed", "3", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one.json")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29533", *common, "--out", str(tmp_path / "two.json")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    merged = json.loads((tmp_path / "two.json").read_text())
    assert len(merged["points"]) == 50
    assert merged == json.loads((tmp_path / "one.json").read_text())


def test_evaluate_reads_the_settings_of_a_checkpoint(tmp_path, toy_installed):
    run_dir = str(tmp_path / "run")
    run("train", "--domain", "toy", "--steps", "10", "--out", run_dir, "--no-progress")
    run("sample", "--domain", "toy", "--checkpoint", run_dir, "-n", "5", "--out", str(tmp_path / "s.json"),
        "--no-progress")
    result = run("evaluate", "--domain", "toy", "--samples", str(tmp_path / "s.json"), "--checkpoint", run_dir)
    assert result.exit_code == 0 and "mean_distance_to_center" in result.output
    result = CliRunner().invoke(cli, ["evaluate", "--domain", "toy", "--samples", str(tmp_path / "s.json"),
                                      "--set", "data.sise=3"])
    assert "unknown config key 'data.sise'; did you mean 'size'?" in result.output


def test_the_molecule_plugin_names_init_scaffold(tmp_path):
    """--scaffold comes from the molecule plugin, not the core, and means --init."""
    common = ["sample", "--domain", "molecule", "-n", "3", "--steps", "4", "--seed", "5", "--no-progress"]
    by_init = run(*common, "--init", "c1ccncc1", "--out", str(tmp_path / "init.smi"))
    by_scaffold = run(*common, "--scaffold", "c1ccncc1", "--out", str(tmp_path / "scaffold.smi"))
    assert by_init.exit_code == by_scaffold.exit_code == 0, by_scaffold.output
    assert (tmp_path / "init.smi").read_text() == (tmp_path / "scaffold.smi").read_text()


def test_a_scaffold_is_resampled_as_the_molecule_config_says(tmp_path):
    """Without --resample, inpainting takes sample.resample from the config (8 for the shipped
    molecule weights): the same molecules as --resample 8, other ones than --resample 1, and the
    record says 8."""
    common = ["sample", "--domain", "molecule", "-n", "3", "--steps", "4", "--seed", "5", "--no-progress",
              "--scaffold", "c1ccncc1"]
    outputs = {}
    for name, extra in (("default", []), ("eight", ["--resample", "8"]), ("one", ["--resample", "1"])):
        result = run(*common, *extra, "--out", str(tmp_path / f"{name}.smi"))
        assert result.exit_code == 0, result.output
        outputs[name] = (tmp_path / f"{name}.smi").read_text()
    assert outputs["default"] == outputs["eight"] != outputs["one"]
    record = json.loads((tmp_path / "default.smi.json").read_text())
    assert record["resample"] == 8


def test_sampler_options_are_set_from_the_command_line_and_checked_against_the_sampler(tmp_path, toy_installed):
    run_dir = str(tmp_path / "run")
    run("train", "--domain", "toy", "--steps", "10", "--out", run_dir, "--no-progress")
    common = ["sample", "--domain", "toy", "--checkpoint", run_dir, "-n", "3", "--seed", "1", "--no-progress",
              "--set", "sample.sampler=ddim", "--steps", "4"]
    plain = run(*common, "--out", str(tmp_path / "plain.json"))
    noisy = run(*common, "--set", "sample.options.eta=1.0", "--out", str(tmp_path / "noisy.json"))
    assert plain.exit_code == 0 and noisy.exit_code == 0, plain.output + noisy.output
    record = json.loads((tmp_path / "noisy.json.json").read_text())
    assert record["sample_config"]["options"] == {"eta": 1.0}
    # eta = 1 adds noise at every step: other samples from the same seed.
    assert (tmp_path / "plain.json").read_text() != (tmp_path / "noisy.json").read_text()
    refused = CliRunner().invoke(cli, [*common, "--set", "sample.options.etta=1.0", "--out", str(tmp_path / "x.json")])
    assert refused.exit_code == 1
    assert "sample.options.etta: the ddim sampler has no option 'etta' (its options: eta)" in refused.output
    assert not (tmp_path / "x.json").exists()
