"""The Python pipeline and the portable weights folder: diffkit.load, sample, save_pretrained,
diffkit export, and the conformance check of ``Domain.to_objects``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import diffkit
from diffkit import pretrained
from diffkit.cli import cli
from diffkit.generate import SampleRequest, generate
from diffkit.pipeline import SampleList, condition_text
from diffkit.loading import load_for_sampling
from diffkit.testing import check_domain
from toy_domain import ToyDomain


def run(*args: str):
    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A 10-step toy run folder, trained once for the module."""
    from diffkit.config import resolve_config
    from diffkit.runner import train

    folder = tmp_path_factory.mktemp("toy") / "run"
    domain = ToyDomain()
    config = resolve_config(domain, overrides={"train": {"steps": 10, "checkpoint_every": 10}})
    train(domain, config, out=folder, progress=False, plugin=("toy-points", "1.0"))
    return folder


def toy_points(objects) -> torch.Tensor:
    return torch.stack(list(objects))


# -- shipped weights by domain name --------------------------------------------------------------

def test_image_pipeline_gives_pil_images_with_the_pixels_of_the_cli_path():
    from PIL import Image

    pipe = diffkit.load("image", device="cpu")
    pictures = pipe.sample(3, seed=2, cond="7", steps=3)
    assert isinstance(pictures, list) and len(pictures) == 3
    assert all(isinstance(p, Image.Image) and p.mode == "L" and p.size == (16, 16) for p in pictures)
    # The same functions `diffkit sample` calls, with the same request, give the same pixels.
    model, config = load_for_sampling(pipe.domain, pipe.domain.pretrained())
    batch = generate(pipe.domain, model, config, SampleRequest(n=3, seed=2, cond="7", steps=3))
    expected = ((batch["x"].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()
    assert np.array_equal(np.stack([np.asarray(p) for p in pictures]), expected)


def test_audio_pipeline_gives_clips_with_their_rate_and_label():
    pipe = diffkit.load("audio", device="cpu")
    clips = pipe.sample(2, seed=0, cond=["A4", "C5"], steps=2)
    assert [clip.label for clip in clips] == ["A4", "C5"]
    for clip in clips:
        assert isinstance(clip.waveform, torch.Tensor) and clip.waveform.shape == (1, 4000)
        assert clip.sample_rate == 8000 and clip.waveform.abs().max() <= 1


def test_molecule_pipeline_gives_the_molecules_the_cli_writes(tmp_path):
    from rdkit import Chem

    pipe = diffkit.load("molecule", device="cpu")
    mols = pipe.sample(6, seed=3, cond={"mol_weight": 120}, guidance=2.0, steps=4, sampler="ancestral")
    assert len(mols) == 6 and all(mol is None or isinstance(mol, Chem.Mol) for mol in mols)
    assert any(mol is not None for mol in mols)
    out = tmp_path / "mols.smi"
    result = run("sample", "--domain", "molecule", "-n", 6, "--seed", 3, "--cond", "mol_weight=120", "--guidance", 2,
                 "--steps", 4, "--sampler", "ancestral", "--device", "cpu", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    for mol, line in zip(mols, lines):
        if mol is None:  # the CLI writes the rejected molecule as it stands, which RDKit refuses
            assert Chem.MolFromSmiles(line) is None
        else:
            assert Chem.MolToSmiles(mol, isomericSmiles=False) == line


def test_save_pretrained_then_load_gives_identical_samples(tmp_path):
    pipe = diffkit.load("image", device="cpu")
    folder = pipe.save_pretrained(tmp_path / "my-model")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (folder / "README.md").read_text()
    assert "`image`" in card and "CC BY 4.0" in card and "1,200 of batch 64" in card
    again = diffkit.load(folder, device="cpu")
    first = [np.asarray(p) for p in pipe.sample(4, seed=11, steps=3)]
    second = [np.asarray(p) for p in again.sample(4, seed=11, steps=3)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert again.info["card"] == pipe.info["card"] and again.config == pipe.config


def test_an_unknown_name_is_an_error_naming_the_domains(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a registered domain.*image"):
        diffkit.load(str(tmp_path / "nowhere"))


def test_weights_shipped_under_another_name_are_found_by_it(toy_run, tmp_path, toy_installed):
    folder = pretrained.export(toy_run, tmp_path / "other")

    class Shipping(ToyDomain):
        def pretrained_models(self):
            return {**super().pretrained_models(), "toy-other": folder}

    class Plugin:
        @diffkit.hookimpl
        def diffkit_register_domains(self, register):
            register(Shipping())

    registry = diffkit.make_plugin_manager(builtins=(), entry_points=False, extra=[Plugin()])
    assert registry.shipped("toy-other") == (registry.domain("toy"), folder) and registry.shipped("toy") is None
    named = toy_points(diffkit.load("toy-other", device="cpu", registry=registry).sample(8, seed=2))
    assert torch.equal(named, toy_points(diffkit.load(folder, device="cpu").sample(8, seed=2)))
    from diffkit.loading import load_checkpoint, weights_source

    assert weights_source(registry.domain("toy"), "toy-other", "--init-from") == ("toy-other", folder)
    assert load_checkpoint(registry.domain("toy"), "toy-other")["step"] == 10


# -- checkpoint -> export -> load ------------------------------------------------------------------

def test_checkpoint_export_load_gives_identical_samples(toy_run, tmp_path, toy_installed):
    out = tmp_path / "exported"
    result = run("export", toy_run, "--out", out)
    assert result.exit_code == 0, result.output
    from_run = toy_points(diffkit.load(toy_run, device="cpu").sample(20, seed=4))
    from_folder = toy_points(diffkit.load(out, device="cpu").sample(20, seed=4))
    assert torch.equal(from_run, from_folder)
    config = json.loads((out / "config.json").read_text())
    assert config["domain"] == "toy" and config["step"] == 10 and config["plugin"] == "toy-points"
    assert config["card"]["data"] == "the domain's bundled default data"
    # `diffkit sample` reads the folder too, and draws the same points.
    written = tmp_path / "points.json"
    result = run("sample", "--domain", "toy", "--checkpoint", out, "-n", 20, "--seed", 4, "--out", written,
                 "--no-progress")
    assert result.exit_code == 0, result.output
    assert torch.allclose(torch.tensor(json.loads(written.read_text())["points"]), from_folder)


def test_export_refuses_a_folder_that_is_not_empty(toy_run, tmp_path, toy_installed):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    result = run("export", toy_run, "--out", target)
    assert result.exit_code == 1 and "already exists" in result.output
    assert [p.name for p in target.iterdir()] == ["notes.txt"] and (target / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run("export", toy_run, "--out", empty).exit_code == 0
    assert (empty / "model.safetensors").is_file()


def test_a_card_file_states_facts_and_unknown_keys_are_refused(toy_run, tmp_path, toy_installed):
    facts = tmp_path / "card.json"
    facts.write_text(json.dumps({"hardware": "one CPU thread", "scores": {"distance": 0.25}, "license": "MIT"}))
    assert run("export", toy_run, "--out", tmp_path / "a", "--card", facts).exit_code == 0
    card = (tmp_path / "a" / "README.md").read_text()
    assert "| hardware | one CPU thread |" in card and "| distance | 0.25 |" in card
    facts.write_text(json.dumps({"hardwear": "one CPU thread"}))
    result = run("export", toy_run, "--out", tmp_path / "b", "--card", facts)
    assert result.exit_code == 1 and "unknown key 'hardwear'" in result.output
    assert not (tmp_path / "b").exists()


def test_export_ships_sampling_settings_and_only_those(toy_run, tmp_path, toy_installed):
    out = tmp_path / "fast"
    assert run("export", toy_run, "--out", out, "--set", "sample.steps=3").exit_code == 0
    assert json.loads((out / "config.json").read_text())["config"]["sample"]["steps"] == 3
    # The folder samples as the run does when asked for those steps.
    from_folder = toy_points(diffkit.load(out, device="cpu").sample(6, seed=2))
    from_run = toy_points(diffkit.load(toy_run, device="cpu").sample(6, seed=2, steps=3))
    assert torch.equal(from_folder, from_run)
    result = run("export", toy_run, "--out", tmp_path / "other", "--set", "model.hidden=8")
    assert result.exit_code == 1 and "only the sampling settings" in result.output
    assert not (tmp_path / "other").exists()


def test_damaged_weights_are_refused_by_checksum(toy_run, tmp_path, toy_installed):
    folder = pretrained.export(toy_run, tmp_path / "model")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor value
    weights.write_bytes(bytes(data))
    with pytest.raises(pretrained.ChecksumError, match=r"model\.safetensors.*SHA-256"):
        diffkit.load(folder, device="cpu")
    result = run("sample", "--domain", "toy", "--checkpoint", folder, "--out", tmp_path / "x.json", "--no-progress")
    assert result.exit_code == 1 and "damaged or was replaced" in result.output


# -- conditions and displays -------------------------------------------------------------------------

def test_conditions_are_written_as_the_cli_takes_them():
    assert condition_text({"qed": 0.6, "atoms": 9}) == "qed=0.6,atoms=9"
    assert condition_text(["C4", "A4"]) == "C4,A4"
    assert condition_text(7) == "7"
    assert condition_text(None) is None and condition_text("none") == "none"


def test_sample_lists_show_as_a_gallery_in_jupyter():
    from PIL import Image

    gallery = SampleList([Image.new("L", (4, 4)), None, "<b>"])._repr_html_()
    assert gallery.count("data:image/png;base64,") == 1
    assert "<pre>None</pre>" in gallery and "&lt;b&gt;" in gallery


# -- the conformance kit checks to_objects -------------------------------------------------------------

class NoObjects(ToyDomain):
    def to_objects(self, samples, config):
        return []


def test_the_conformance_kit_checks_the_objects(tmp_path):
    assert check_domain(ToyDomain(), tmp_path / "a", train_steps=5) == []
    assert check_domain(ToyDomain(), tmp_path / "b", train_steps=5, object_type=torch.Tensor) == []
    wrong_type = check_domain(ToyDomain(), tmp_path / "c", train_steps=5, object_type=str)
    assert wrong_type == ["to_objects() returned Tensor, Tensor, expected str"]
    missing = check_domain(NoObjects(), tmp_path / "d", train_steps=5)
    assert len(missing) == 1 and "one object per sample" in missing[0]


@pytest.mark.parametrize("name", ["image", "audio", "audio-digits", "molecule"])
def test_shipped_weights_carry_their_card_facts(name):
    from safetensors.torch import load_file

    _, folder = diffkit.make_plugin_manager(entry_points=False).shipped(name)
    config = json.loads((folder / "config.json").read_text())
    assert set(config["card"]) == set(pretrained.CARD_FIELDS) and config["card"]["scores"]
    tensors = load_file(folder / "model.safetensors")
    assert config["values"] == sum(t.numel() for t in tensors.values())
    assert (folder / "README.md").read_text() == pretrained.model_card(config, tensors)


# -- arguments of the wrong kind get named errors ------------------------------------------------

@pytest.mark.parametrize(("arguments", "error", "message"), [
    ({"n": "3"}, TypeError, "n expects an integer (int), got '3' (str)"),
    ({"n": 2.0}, TypeError, "n expects an integer (int), got 2.0 (float)"),
    ({"n": 0}, ValueError, "n must be at least 1, got 0"),
    ({"n": 2, "guidance": float("nan")}, ValueError, "guidance must be a finite number, got nan"),
    ({"n": 2, "guidance": float("inf")}, ValueError, "guidance must be a finite number, got inf"),
    ({"n": 2, "guidance": "2"}, TypeError, "guidance expects a number (float), got '2' (str)"),
    ({"n": 2, "steps": 0}, ValueError, "steps must be at least 1, got 0"),
    ({"n": 2, "seed": "0"}, TypeError, "seed expects an integer (int), got '0' (str)"),
])
def test_sample_arguments_are_checked_and_named(toy_run, toy_installed, arguments, error, message):
    pipe = diffkit.load(toy_run, device="cpu")
    with pytest.raises(error) as caught:
        pipe.sample(**arguments)
    assert str(caught.value) == message


def test_sample_takes_counts_of_any_integer_type(toy_run, toy_installed):
    pipe = diffkit.load(toy_run, device="cpu")
    assert torch.equal(toy_points(pipe.sample(np.int64(3), seed=np.int64(1))), toy_points(pipe.sample(3, seed=1)))


def test_load_names_what_it_takes_when_given_something_else():
    with pytest.raises(TypeError) as caught:
        diffkit.load(123)
    assert str(caught.value) == "diffkit.load takes a domain's name or a path (str or os.PathLike), got 123 (int)"


def test_a_list_of_dicts_is_one_condition_per_sample():
    assert condition_text([{"qed": 0.5}, {"qed": 0.7, "logp": 1}]) == "qed=0.5;qed=0.7,logp=1"
    pipe = diffkit.load("molecule", device="cpu")
    as_dicts = pipe.sample(4, seed=5, cond=[{"qed": 0.5}, {"qed": 0.7}], steps=2)
    as_text = pipe.sample(4, seed=5, cond="qed=0.5;qed=0.7", steps=2)
    assert [None if m is None else m.ToBinary() for m in as_dicts] == [None if m is None else m.ToBinary() for m in as_text]


@pytest.fixture
def read_only_folder(tmp_path, monkeypatch):
    """A folder that accepts no new files. Permission bits do not bind root: there the folder's
    refusal is what the operating system would answer anyone else."""
    import errno
    import tempfile

    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    if os.name != "posix" or os.geteuid() == 0:
        def refuse(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == folder:
                raise PermissionError(errno.EACCES, "Permission denied")
            return real(*args, dir=dir, **kwargs)

        real = tempfile.TemporaryFile
        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    yield folder
    folder.chmod(0o755)


def test_save_pretrained_in_a_read_only_folder_names_it_and_leaves_nothing(toy_run, read_only_folder, toy_installed):
    with pytest.raises(PermissionError) as caught:
        diffkit.load(toy_run, device="cpu").save_pretrained(read_only_folder / "model")
    assert str(caught.value) == (f"cannot write to the weights folder {str(read_only_folder / 'model')!r}: the "
                                 f"folder {str(read_only_folder)!r} does not accept new files (Permission denied)")
    assert list(read_only_folder.iterdir()) == []
    result = CliRunner().invoke(cli, ["export", str(toy_run), "--out", str(read_only_folder / "model")])
    assert result.exit_code == 1 and f"Error: {caught.value}" in result.output
