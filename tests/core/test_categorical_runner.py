"""A categorical domain through the runner, checkpoints, sampling, the conformance kit and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from diffkit.cli import cli
from diffkit.config import resolve_config
from diffkit.generate import SampleRequest, generate, sample_settings
from diffkit.loading import load_for_sampling
from diffkit.runner import train
from diffkit.testing import assert_domain_conforms, check_domain
from run_checks import assert_same_weights, final_weights, stop_at_step
from toy_categorical import ToyCategoricalDomain, is_ramp

DOMAIN = ToyCategoricalDomain()


def toy_config(**train_settings):
    return resolve_config(DOMAIN, overrides={"train": train_settings} if train_settings else None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of 80 steps: enough to learn most of the ramps."""
    run = tmp_path_factory.mktemp("categorical") / "run"
    train(DOMAIN, toy_config(steps=80, checkpoint_every=80), out=run, progress=False)
    return run


def test_training_lowers_the_loss_and_sampling_learns_the_ramps(trained):
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    # The floor is far from 0: at high noise the start token is anyone's guess (log 4 = 1.39).
    assert records[-1]["loss"] < 0.7 * records[0]["loss"]
    model, config = load_for_sampling(DOMAIN, trained)
    batch = generate(DOMAIN, model, config, SampleRequest(n=200, seed=0))
    x, mask = batch["x"], batch["mask"]
    assert x.dtype == torch.long and (x[mask == 0] == 0).all()  # padding is never touched
    # Tokens drawn at random make a ramp of n tokens with probability 4^-(n-1), 2 % over the lengths
    # 3..6; the model makes 61-63 % ramps after these 80 steps (three training seeds).
    assert is_ramp(x, mask).float().mean() > 0.4


def test_interrupted_then_resumed_run_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    config = toy_config(steps=30, checkpoint_every=10)
    train(DOMAIN, config, out=tmp_path / "straight", progress=False)
    stop_at_step(15, lambda: train(DOMAIN, config, out=tmp_path / "resumed", progress=False), monkeypatch)
    train(DOMAIN, config, out=tmp_path / "resumed", resume=True, progress=False)
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert straight["step"] == 30
    assert_same_weights(straight, resumed, rtol=0, atol=0)


def test_samples_do_not_depend_on_the_batch_size(trained):
    model, config = load_for_sampling(DOMAIN, trained)
    runs = [generate(DOMAIN, model, config, SampleRequest(n=7, seed=4, batch_size=size)) for size in (1, 3, 7)]
    for run in runs[1:]:
        assert torch.equal(run["x"], runs[0]["x"]) and torch.equal(run["mask"], runs[0]["mask"])
    assert len(set(runs[0]["mask"].sum(1).tolist())) > 1  # chunks held sequences of different lengths


def test_exported_weights_sample_what_the_run_samples(trained, tmp_path):
    from diffkit import pretrained

    folder = pretrained.export(trained, tmp_path / "weights")
    draws = []
    for source in (trained, folder):
        model, config = load_for_sampling(DOMAIN, source)
        draws.append(generate(DOMAIN, model, config, SampleRequest(n=5, seed=8))["x"])
    assert torch.equal(draws[0], draws[1])


def test_inpainting_keeps_the_known_tokens(trained):
    model, config = load_for_sampling(DOMAIN, trained)
    request = SampleRequest(n=50, seed=1, init="2 ? ? 1 ?", mask=None)
    x = generate(DOMAIN, model, config, request)["x"]
    assert (x[:, 0] == 2).all() and (x[:, 3] == 1).all() and (x[:, 5] == 0).all()
    # The one ramp through the known tokens is 2 3 0 1 2: 1.6 % of random fillings, 72-84 % of the
    # model's (three training seeds).
    assert (x[:, :5] == torch.tensor([2, 3, 0, 1, 2])).all(1).float().mean() > 0.4
    # The request's resample count reaches the categorical inpainting (RePaint rounds).
    resampled = generate(DOMAIN, model, config, SampleRequest(n=50, seed=1, init="2 ? ? 1 ?", resample=3))["x"]
    assert (resampled[:, 0] == 2).all() and (resampled[:, 3] == 1).all() and not torch.equal(resampled, x)


def test_editing_changes_less_at_lower_strength(trained):
    model, config = load_for_sampling(DOMAIN, trained)
    changed = []
    for strength in (0.2, 1.0):
        request = SampleRequest(n=100, seed=2, init="0 1 2 3 0 1", strength=strength)
        x = generate(DOMAIN, model, config, request)["x"]
        changed.append((x != torch.tensor([0, 1, 2, 3, 0, 1])).float().mean())
    assert changed[0] < changed[1]


def test_domain_conforms_and_the_kit_finds_categorical_mistakes(tmp_path):
    assert_domain_conforms(DOMAIN, tmp_path)

    class FloatState(ToyCategoricalDomain):
        def build_dataset(self, config, data=None):
            dataset = super().build_dataset(config, data)
            dataset.tokens = dataset.tokens.float()
            return dataset

    class GaussianNoise(ToyCategoricalDomain):
        def noise(self, like, generator=None, **extra):
            return torch.randn(like.shape, generator=generator, dtype=torch.float64)

    class WrongSampler(ToyCategoricalDomain):
        def default_config(self):
            config = super().default_config()
            config["sample"]["sampler"] = "ddim"
            return config

    problems = check_domain(FloatState(), tmp_path / "a", train_steps=2)
    assert any("class indices (an integer dtype), got torch.float32" in p for p in problems)
    problems = check_domain(GaussianNoise(), tmp_path / "b", train_steps=2)
    assert any("should lie in [0, 1)" in p for p in problems)
    problems = check_domain(WrongSampler(), tmp_path / "c", train_steps=2)
    assert any("sample.sampler 'ddim' is a gaussian sampler, but diffusion.kind is 'categorical'" in p for p in problems)


def test_the_kit_wants_logits_with_a_class_axis(tmp_path):
    class ProbabilitiesOfOneClass(ToyCategoricalDomain):
        def build_model(self, config):
            model = super().build_model(config)
            forward = model.forward
            model.forward = lambda x, t, cond=None, lengths=None: forward(x, t, cond, lengths)[..., 0]
            return model

    problems = check_domain(ProbabilitiesOfOneClass(), tmp_path, train_steps=2)
    assert any("logits of shape (8, 6, 4)" in p and "got (8, 6)" in p for p in problems)


def test_a_sampler_of_the_other_kind_is_refused_by_name(tmp_path):
    config = toy_config()
    with pytest.raises(ValueError, match=r"--sampler: 'ddpm' is a gaussian sampler, but a categorical one "
                                         r"is needed here; valid: ancestral, discrete_flow"):
        sample_settings(config, SampleRequest(sampler="ddpm"))
    config["sample"]["sampler"] = "euler"
    with pytest.raises(ValueError, match=r"sample.sampler: 'euler' is a gaussian sampler.*--set sample.sampler=NAME"):
        train(DOMAIN, config, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before the first step


def test_cli_trains_and_samples_a_categorical_domain(tmp_path, plugin_site, monkeypatch):
    plugin_site({"toy-categorical": "toy_categorical"})
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--domain", "toycat", "--steps", "10", "--out", "run", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["sample", "--domain", "toycat", "--checkpoint", "run", "-n", "5", "--seed", "0",
                                 "--sampler", "ancestral", "--steps", "4", "--out", "s.json", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "s.json").read_text())) == 5
    assert json.loads((tmp_path / "s.json.json").read_text())["sampler"] == "ancestral"
    result = runner.invoke(cli, ["sample", "--domain", "toycat", "--checkpoint", "run", "-n", "5", "--seed", "0",
                                 "--sampler", "dpmpp_2m", "--out", "t.json", "--no-progress"])
    assert result.exit_code == 1 and "'dpmpp_2m' is a gaussian sampler" in result.output
    result = runner.invoke(cli, ["sample", "--domain", "toycat", "--checkpoint", "run", "--interpolate", "3",
                                 "--out", "u.json", "--no-progress"])
    assert result.exit_code == 1 and "--interpolate" in result.output and "categorical" in result.output
