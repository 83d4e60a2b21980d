"""``diffkit train --stage autoencoder`` and ``--autoencoder``: the latent stage from the command line."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from diffkit import checkpoint as ckpt
from diffkit import pretrained
from diffkit.cli import cli

SMALL = ["--set", "train.checkpoint_every=4", "--set", "train.preview_every=0", "--steps", "4", "--batch-size", "16",
         "--no-progress"]
AUTOENCODER = ["--set", "autoencoder.base_channels=8", "--set", "autoencoder.channel_mults=[1,2]",
               "--set", "autoencoder.groups=4", "--set", "autoencoder.latent_channels=2"]
DENOISER = ["--set", "model.base_channels=16", "--set", "model.channel_mults=[1,2]",
            "--set", "model.attention_resolutions=[]", "--set", "model.groups=4"]


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "ae"
    result = run("train", "--domain", "image", "--stage", "autoencoder", "--set", "data.image_size=8", *SMALL,
                 *AUTOENCODER, "--out", str(folder))
    assert result.exit_code == 0, result.output
    assert f"diffkit train --domain image --autoencoder {folder} --out RUN" in result.output
    return folder


def test_a_diffusion_trains_on_the_autoencoders_latents_and_samples_decoded_pictures(autoencoder, tmp_path):
    result = run("train", "--domain", "image", "--autoencoder", str(autoencoder), *SMALL, *DENOISER,
                 "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert f"on the latents of {ckpt.resolve(autoencoder)}" in result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["stage"] == "diffusion"
    assert config["data"]["image_size"] == 8  # the autoencoder's data settings, given to it alone
    result = run("sample", "--checkpoint", str(tmp_path / "run"), "-n", "3", "--seed", "0", "--steps", "3",
                 "--out", str(tmp_path / "samples"), "--no-progress")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "samples").glob("sample-*.png"))) == 3
    result = run("export", str(tmp_path / "run"), "--out", str(tmp_path / "folder"))
    assert "autoencoder.safetensors" in result.output


def test_resuming_keeps_the_autoencoder_and_an_autoencoder_run_resumes_as_one(autoencoder, tmp_path):
    out = tmp_path / "run"
    assert run("train", "--domain", "image", "--autoencoder", str(autoencoder), *SMALL, *DENOISER,
               "--out", str(out)).exit_code == 0
    exported = pretrained.export(autoencoder, tmp_path / "exported")  # the same weights, named otherwise
    result = run("train", "--domain", "image", "--autoencoder", str(exported), "--out", str(out), "--resume")
    assert result.exit_code != 0 and "a run keeps the autoencoder it started with" in result.output
    result = run("train", "--domain", "image", "--autoencoder", str(autoencoder), "--out", str(out), "--resume",
                 "--steps", "6", "--no-progress")
    assert result.exit_code == 0, result.output
    # An autoencoder run resumes with its own settings: --stage need not be repeated.
    copy = tmp_path / "ae"
    shutil.copytree(autoencoder, copy)
    result = run("train", "--domain", "image", "--out", str(copy), "--resume", "--steps", "6", "--no-progress")
    assert result.exit_code == 0, result.output
    assert ckpt.resolve(copy).name == "step_00000006.pt"


@pytest.mark.parametrize("options, message", [
    (["--stage", "autoencoder", "--autoencoder", "x"], "--autoencoder does not go with --stage autoencoder"),
    (["--init-from", "image", "--autoencoder", "x"], "--autoencoder does not go with --init-from"),
])
def test_options_that_contradict_each_other_are_refused(options, message, tmp_path):
    result = run("train", "--domain", "image", *options, "--out", str(tmp_path / "run"))
    assert result.exit_code != 0 and message in result.output


def test_sampling_from_an_autoencoder_says_what_to_do_instead(autoencoder, tmp_path):
    result = run("sample", "--checkpoint", str(autoencoder), "--out", str(tmp_path / "s"), "--no-progress")
    assert result.exit_code != 0
    assert "holds an autoencoder" in result.output and "--autoencoder" in result.output
