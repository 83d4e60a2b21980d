"""The domain kit against independent truth: closed-form Fréchet distances, the cache order,
the output policy (never overwrite, atomic), cached reference networks and the condition rules."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from diffkit import kit
from diffkit.kit.files import temporary_files


# -- Fréchet distance ---------------------------------------------------------------------------

def test_frechet_distance_of_diagonal_gaussians_has_a_closed_form():
    rng = np.random.default_rng(0)
    mean_a, mean_b = rng.normal(size=5), rng.normal(size=5)
    std_a, std_b = rng.uniform(0.5, 2, size=5), rng.uniform(0.5, 2, size=5)
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((std_a - std_b) ** 2)
    value = kit.gaussian_frechet_distance(mean_a, np.diag(std_a**2), mean_b, np.diag(std_b**2))
    assert value == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_on_full_covariances():
    from scipy import linalg

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    sigma1, sigma2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * np.real(linalg.sqrtm(sigma1 @ sigma2)))
    assert kit.gaussian_frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_feature_sets_fits_their_gaussians():
    # b is a rotated by 90 degrees: covariances diag(4, 1) and diag(1, 4); the distance is
    # tr(S_a + S_b - 2 (S_a S_b)^(1/2)) = 5 + 5 - 2 * (2 + 2) = 2.
    a = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * torch.tensor([2.0, 1.0])
    assert kit.frechet_distance(a, a.flip(1)) == pytest.approx(2.0, rel=0.02)
    assert kit.frechet_distance(a[:500], a[:500].numpy()) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        kit.frechet_distance(a[:1], a)
    with pytest.raises(ValueError, match="2 and 3 dimensions"):
        kit.frechet_distance(a[:10], torch.zeros(10, 3))


# -- the cache ----------------------------------------------------------------------------------

def test_cache_dir_follows_the_config_then_the_variable_then_xdg(tmp_path, monkeypatch):
    config = {"data": {"cache_dir": str(tmp_path / "mine")}}
    assert kit.cache_dir("image", config) == tmp_path / "mine" / "image"
    monkeypatch.setenv("DIFFKIT_CACHE_DIR", str(tmp_path / "env"))
    assert kit.cache_dir("audio", {"data": {"cache_dir": ""}}) == tmp_path / "env" / "audio"
    monkeypatch.delenv("DIFFKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kit.cache_dir("molecule") == tmp_path / "xdg" / "diffkit" / "molecule"


def test_the_suite_keeps_every_domain_cache_private(tmp_path_factory):
    private = tmp_path_factory.getbasetemp() / "cache"
    assert all(kit.cache_dir(name).parent == private for name in ("image", "audio", "molecule"))


# -- files and outputs --------------------------------------------------------------------------

def test_write_new_never_replaces_a_file(tmp_path):
    path = kit.write_new(tmp_path / "a" / "out.txt", b"first")
    with pytest.raises(kit.OutputExistsError, match="out.txt.*never overwritten"):
        kit.write_new(path, b"second")
    assert path.read_bytes() == b"first"
    assert temporary_files(path.parent) == []


def test_check_new_names_the_first_existing_file_and_counts_the_rest(tmp_path):
    for name in ("b", "c"):
        (tmp_path / name).write_text("x")
    with pytest.raises(FileExistsError, match=r"'.*b' \(and 1 more\) already exists"):
        kit.check_new([tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    kit.check_new([tmp_path / "a"])


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = kit.write_atomic(tmp_path / "state.bin", b"old")

    def broken(file):
        file.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        kit.write_atomic(path, broken)
    assert path.read_bytes() == b"old" and temporary_files(tmp_path) == []
    kit.write_atomic(path, lambda file: file.write(b"new"))
    assert path.read_bytes() == b"new"


def test_output_records_check_their_kind_and_role(tmp_path):
    record = kit.Output(tmp_path / "grid.png", "image", "overview")
    assert str(record.path) == str(tmp_path / "grid.png") and record.__fspath__() == str(record.path)
    with pytest.raises(ValueError, match="kind must be one of"):
        kit.Output(tmp_path / "x", "picture")
    assert kit.outputs_of([tmp_path / "x"])[0].kind == "data"


# -- reference networks -------------------------------------------------------------------------

def test_cached_network_trains_once_per_key_and_restores_the_same_weights(tmp_path):
    calls = []

    def train(network: nn.Module) -> dict:
        calls.append(1)
        with torch.no_grad():
            network.weight.fill_(len(calls))
        return {"accuracy": 0.5}

    build = lambda: nn.Linear(3, 2)  # noqa: E731
    key = kit.content_key("net", torch.arange(5), {"steps": 3})
    first, info = kit.cached_network(tmp_path, key, build, train)
    second, again = kit.cached_network(tmp_path, key, build, train)
    assert len(calls) == 1 and info == again == {"accuracy": 0.5}
    assert torch.equal(first.weight, second.weight) and not second.training
    other = kit.content_key("net", torch.arange(6), {"steps": 3})
    assert other != key and kit.content_key("net", torch.arange(5), {"steps": 3}) == key


# -- conditions ---------------------------------------------------------------------------------

def test_labels_name_classes_indices_cycled_lists_or_none():
    names = ["zero", "one", "two"]
    assert kit.parse_labels("1", names, 3).tolist() == [1, 1, 1]
    assert kit.parse_labels("two", names, 2).tolist() == [2, 2]
    assert kit.parse_labels("0, two", names, 5).tolist() == [0, 2, 0, 2, 0]
    assert kit.parse_labels("none", names, 2).tolist() == [kit.NULL_LABEL] * 2
    assert kit.parse_labels([2, "one"], names, 3).tolist() == [2, 1, 2]
    assert kit.parse_labels(1, names, 2).tolist() == [1, 1]
    with pytest.raises(ValueError, match="classes: zero, one, two"):
        kit.parse_labels("3", names, 1)
    with pytest.raises(ValueError, match="empty"):
        kit.parse_labels(" , ", names, 1)
    with pytest.raises(ValueError, match="empty"):
        kit.parse_labels("", names, 1)


def test_drawn_labels_follow_the_class_frequencies():
    drawn = kit.draw_labels(20_000, 3, torch.tensor([1.0, 0.0, 3.0]), torch.Generator().manual_seed(0))
    frequencies = torch.bincount(drawn, minlength=3).double() / len(drawn)
    # binomial standard error at p = 0.25 and n = 20,000 is 0.003
    assert frequencies.tolist() == pytest.approx([0.25, 0.0, 0.75], abs=0.015)
    uniform = kit.draw_labels(20_000, 4, None, torch.Generator().manual_seed(1))
    assert torch.bincount(uniform).double().div(20_000).tolist() == pytest.approx([0.25] * 4, abs=0.015)
    assert kit.draw_labels(3, 0).tolist() == [kit.NULL_LABEL] * 3
    assert kit.label_texts(torch.tensor([0, -1, 5]), ["a", "b"]) == ["a", "uncond", "5"]


def test_values_set_each_sample_free_values_are_nan():
    values, extras = kit.parse_values("qed=0.6, logp=1", ["qed", "logp", "mol_weight"], 2)
    assert values[:, :2].tolist() == [[0.6000000238418579, 1.0]] * 2 and torch.isnan(values[:, 2]).all()
    per_sample, _ = kit.parse_values("qed=0.5;qed=0.7", ["qed"], 3)
    assert per_sample[:, 0].tolist() == pytest.approx([0.5, 0.7, 0.5])
    from_python, extras = kit.parse_values([{"qed": 0.2, "atoms": 7}, {"logp": 2}], ["qed", "logp"], 2,
                                           extra_keys=("atoms",))
    assert from_python[0, 0] == pytest.approx(0.2) and math.isnan(from_python[0, 1])
    assert extras == [{"atoms": 7.0}, {}]
    none, _ = kit.parse_values("none", ["qed"], 2)
    assert torch.isnan(none).all()
    with pytest.raises(ValueError, match="unknown key 'sa'; this model knows: qed, atoms"):
        kit.parse_values("sa=1", ["qed"], 1, extra_keys=("atoms",))
    with pytest.raises(ValueError, match="not a number"):
        kit.parse_values("qed=high", ["qed"], 1)
    with pytest.raises(ValueError, match="key=value"):
        kit.parse_values("qed", ["qed"], 1)


def test_written_files_get_the_rights_of_any_new_file(tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        path = kit.write_new(tmp_path / "out.bin", b"x")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644


def test_numbered_names_sort_in_sample_order_at_any_count():
    assert kit.numbered_names("sample", 2, ".png") == ["sample-00000.png", "sample-00001.png"]
    assert kit.numbered_names("clip", 2, ".wav", ["C4", "7"]) == ["clip-00000-C4.wav", "clip-00001-7.wav"]
    many = kit.numbered_names("sample", 100_001, ".png")
    assert many[-1] == "sample-100000.png" and sorted(many) == many
    with pytest.raises(ValueError, match="3 samples but 2 labels"):
        kit.numbered_names("sample", 3, ".wav", ["a", "b"])


def test_frechet_distance_warns_when_the_samples_are_fewer_than_the_features():
    generator = np.random.default_rng(0)
    with pytest.warns(kit.FewSamplesWarning, match="from 16 samples of 32 features"):
        kit.frechet_distance(generator.normal(size=(16, 32)), generator.normal(size=(500, 32)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kit.frechet_distance(generator.normal(size=(33, 32)), generator.normal(size=(500, 32)))
