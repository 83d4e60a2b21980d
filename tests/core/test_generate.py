"""Sampling with a domain: each sample depends on the seed and its index, not on the batching."""

from __future__ import annotations

import pytest
import torch

from diffkit.config import resolve_config
from diffkit.generate import SampleRequest, generate

from toy_domain import ToyDomain


@pytest.fixture(scope="module")
def toy():
    domain = ToyDomain()
    config = resolve_config(domain)
    torch.manual_seed(0)
    return domain, domain.build_model(config).eval(), config


def draw(toy, **options):
    domain, model, config = toy
    return generate(domain, model, config, SampleRequest(n=8, steps=6, **options))


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m"])  # noise at every step; noise only at the start
def test_the_same_seed_gives_the_same_samples_whatever_the_batch_size(toy, sampler):
    whole = draw(toy, seed=5, sampler=sampler, batch_size=8)
    for batch_size in (1, 3):
        chunked = draw(toy, seed=5, sampler=sampler, batch_size=batch_size)
        assert torch.equal(chunked["cond"], whole["cond"])
        # The same arithmetic per sample; only float32 rounding of batched products may differ.
        torch.testing.assert_close(chunked["x"], whole["x"], rtol=0, atol=1e-5)
    other = draw(toy, seed=6, sampler=sampler, batch_size=8)
    assert (other["x"] - whole["x"]).abs().amax(dim=1).min() > 1e-3  # every sample changes with the seed
    assert torch.cdist(whole["x"], whole["x"]).add(torch.eye(8)).min() > 1e-3  # and samples differ


def test_a_shorter_run_draws_the_first_samples_of_a_longer_one(toy):
    domain, model, config = toy
    short = generate(domain, model, config, SampleRequest(n=3, steps=6, seed=5, sampler="ddpm"))
    long = draw(toy, seed=5, sampler="ddpm", batch_size=8)
    torch.testing.assert_close(short["x"], long["x"][:3], rtol=0, atol=1e-5)


class ScaledPoints(ToyDomain):
    """Decodes with what it needs: the model that drew the samples and the config."""

    def decode(self, x, batch, *, model, config):
        return x * model.scale + config["data"]["size"]


class OldStylePoints(ToyDomain):
    """A plugin written before decode took keywords."""

    def decode(self, x, batch):
        return -x


def test_decode_gets_the_model_and_config_it_declares_and_old_overrides_still_work(toy):
    _, model, config = toy
    plain = draw(toy, seed=3)["x"]
    model.register_buffer("scale", torch.tensor(2.0))  # what fit_data would record
    try:
        assert torch.equal(generate(ScaledPoints(), model, config, SampleRequest(n=8, steps=6, seed=3))["x"],
                           plain * 2 + config["data"]["size"])
    finally:
        del model.scale
    assert torch.equal(generate(OldStylePoints(), model, config, SampleRequest(n=8, steps=6, seed=3))["x"], -plain)


def test_accepted_keywords_are_those_a_method_takes():
    from diffkit.domain import accepted_keywords

    def positional(x, batch, model=None): ...
    def keywords_only(x, batch, *, config): ...
    def anything(x, batch, **options): ...
    offered = {"model": 1, "config": 2}
    assert accepted_keywords(positional, **offered) == {"model": 1}
    assert accepted_keywords(keywords_only, **offered) == {"config": 2}
    assert accepted_keywords(anything, **offered) == offered


def test_the_conformance_kit_reports_draws_that_ignore_per_sample_generators(tmp_path):
    from diffkit.testing import check_domain

    class DrawsDirectly(ToyDomain):
        def prepare_sampling(self, model, n, config, *, cond=None, generator=None):
            return {"x": torch.zeros(n, 2), "cond": torch.randint(0, 4, (n,), generator=generator)}

    assert check_domain(ToyDomain(), tmp_path / "toy") == []
    (problem,) = check_domain(DrawsDirectly(), tmp_path / "direct")
    assert problem.startswith("prepare_sampling() failed with one generator per sample")
    assert "diffkit.draw_per_sample" in problem


class Watched(torch.nn.Module):
    """``model``, calling ``record(self)`` before every forward pass."""

    def __init__(self, model, record):
        super().__init__()
        self.inner, self.record = model, record

    def forward(self, *args, **kwargs):
        self.record(self)
        return self.inner(*args, **kwargs)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_sample_precision_sets_autocast_and_weights_for_the_model_only(toy, precision):
    domain, model, config = toy
    seen, weights = [], []

    def record(network):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        weights.extend({p.dtype for p in network.parameters()})

    settings = {**config, "sample": {**config["sample"], "precision": precision}}
    out = generate(domain, Watched(model, record), settings, SampleRequest(n=4, steps=3))
    expected = torch.bfloat16 if precision == "bfloat16" else torch.float32
    assert seen and set(seen) == {expected if precision == "bfloat16" else False}
    assert set(weights) == {expected}
    # The caller's model keeps its float32 weights: the network is a copy.
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert out["x"].dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    reference = generate(domain, model, config, SampleRequest(n=4, steps=3))
    assert torch.allclose(out["x"], reference["x"], atol=0.1 if precision == "bfloat16" else 1e-6)


@pytest.mark.parametrize("amx, avx512_bf16", [(False, False), (True, False), (False, True)])
def test_auto_precision_is_bfloat16_where_the_cpu_computes_it(toy, monkeypatch, amx, avx512_bf16):
    domain, model, config = toy
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    weights = []
    settings = {**config, "sample": {**config["sample"], "precision": "auto"}}
    generate(domain, Watched(model, lambda network: weights.extend({p.dtype for p in network.parameters()})),
             settings, SampleRequest(n=2, steps=2))
    assert set(weights) == {torch.bfloat16 if amx or avx512_bf16 else torch.float32}


def test_an_unknown_precision_is_refused_by_name(toy):
    domain, model, config = toy
    settings = {**config, "sample": {**config["sample"], "precision": "fp8"}}
    with pytest.raises(ValueError, match="sample.precision must be one of float32, bfloat16, auto, got 'fp8'"):
        generate(domain, model, settings, SampleRequest(n=2, steps=2))


def test_sample_options_reach_the_config_sampler_only(toy, monkeypatch):
    from diffkit.samplers import SAMPLERS, sample_ddim

    domain, model, config = toy
    seen = []

    def ddim(denoiser, x, times, *, generator=None, callback=None, eta: float = 0.0):
        seen.append(eta)
        return sample_ddim(denoiser, x, times, generator=generator, callback=callback, eta=eta)

    monkeypatch.setitem(SAMPLERS, "ddim", ddim)
    settings = {**config, "sample": {**config["sample"], "sampler": "ddim", "options": {"eta": 0.7}}}
    generate(domain, model, settings, SampleRequest(n=2, steps=3, seed=0))
    assert seen == [0.7]
    # A sampler named by the request runs with its own defaults: the options were the config's sampler's.
    generate(domain, model, {**config, "sample": {**config["sample"], "options": {"eta": 0.7}}},
             SampleRequest(n=2, steps=3, seed=0, sampler="ddim"))
    assert seen == [0.7, 0.0]


@pytest.mark.parametrize("options, message", [
    ({"eta": "high"}, r"config key 'sample.options.eta' expects a number \(float\), got 'high'"),
    ({"order": 2}, r"sample.options.order: the ddim sampler has no option 'order' \(its options: eta\)"),
])
def test_sample_options_the_sampler_does_not_take_are_refused_before_sampling(toy, options, message):
    domain, model, config = toy
    settings = {**config, "sample": {**config["sample"], "sampler": "ddim", "options": options}}
    with pytest.raises(ValueError, match=message):
        generate(domain, model, settings, SampleRequest(n=2, steps=3))


# -- requests larger than memory are refused before any sample is drawn ----------------------------

def test_a_sample_takes_the_bytes_of_its_prepared_tensors(toy):
    from diffkit.generate import sample_bytes

    domain, model, config = toy
    # A toy sample is a point (2 float32 values) and its label (one int64).
    assert sample_bytes(domain, model, config, SampleRequest(n=5)) == 2 * 4 + 8


def test_more_samples_than_memory_holds_are_refused_with_what_they_would_take(toy, monkeypatch):
    import diffkit.generate as generation

    domain, model, config = toy
    monkeypatch.setattr(generation, "available_memory", lambda: 40_000)  # 1,250 toy samples, held twice
    drawn = []
    monkeypatch.setattr(generation, "_generate_chunk", lambda *args, **kwargs: drawn.append(1))
    with pytest.raises(ValueError) as caught:
        generate(domain, model, config, SampleRequest(n=10_000, steps=6, batch_size=64))
    assert str(caught.value) == (
        "10,000 samples (157 batches of 64, 6 sampling steps each) would take about 320.0 kB of memory until they "
        "are written (16 B a sample, held twice while the batches are joined), more than the 40.0 kB available: "
        "draw at most 1,250 at a time (runs with different seeds draw different samples)")
    assert drawn == []
    monkeypatch.undo()
    monkeypatch.setattr(generation, "available_memory", lambda: 40_000)
    assert len(generate(domain, model, config, SampleRequest(n=1_250, steps=1, batch_size=1_250))["x"]) == 1_250
