"""The example scripts run with quick settings and show what their docstrings promise."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner

import diffkit
from diffkit.cli import DiffkitGroup
from diffkit.gmm import GaussianMixture
from diffkit.plugins import make_plugin_manager


def test_interpolation_slerp_keeps_samples_typical_and_lerp_does_not(example):
    table = example("interpolation").main(["--frames", "5", "--dim", "64", "--steps", "10"])
    middle = 2
    assert table["weight"][middle] == 0.5
    # Endpoints are shared; in the middle lerp shrinks the noise towards sqrt(1/2) of its norm.
    assert table["slerp_noise_norm"][0] == table["lerp_noise_norm"][0]
    assert table["lerp_noise_norm"][middle] < 0.8 < 0.9 < table["slerp_noise_norm"][middle]
    # The exact denoiser of unit-variance components maps a noise z to about mu_k + z, so a
    # sample's distance from its mean follows its noise's norm.
    for name in ("slerp", "lerp"):
        for norm, typical in zip(table[f"{name}_noise_norm"], table[f"{name}_typicality"]):
            assert typical == pytest.approx(norm, abs=0.08)


def test_inpainting_keeps_the_known_part_and_repaint_moves_towards_the_exact_conditional(example):
    results = example("inpainting").main(["-n", "1000", "--resample", "1", "4", "--steps", "20"])
    # Three known coordinates at 0.3: component 0 is 3 * (0.8^2 - 0.2^2) / (2 * 0.25) = 3.6 nats less likely.
    assert results["exact"] == pytest.approx(1 / (1 + math.exp(3.6)), rel=1e-9)
    assert results["known_kept"]
    replacement, repaint = results["inpainted"][1], results["inpainted"][4]
    assert abs(repaint - results["exact"]) < abs(replacement - results["exact"]) - 0.05


def test_guidance_raises_agreement_with_the_label(example):
    results = example("guided_generation").main(["--steps", "300", "-n", "1000", "--weights", "0", "1", "3"])
    assert results["guided"][0.0] < 0.4                                    # chance is 0.25
    assert results["guided"][1.0] == pytest.approx(results["exact"], abs=0.06)
    assert results["guided"][3.0] > results["guided"][1.0] + 0.05


def test_plugin_extras_register_a_schedule_a_sampler_and_a_command(example):
    extras = example("plugin_extras")
    registry = make_plugin_manager(builtins=(), entry_points=False, extra=[extras])
    assert all(info.status == "loaded" for info in registry.plugins)
    hooks = ("diffkit_register_schedules", "diffkit_register_samplers", "diffkit_cli_commands")
    assert all(getattr(registry.manager.hook, hook).get_hookimpls() for hook in hooks)
    # shifted by 2 log(64 / 128): alpha_bar(0.5) = sigmoid(0 - 2 log 2) = 1 / 5
    schedule = diffkit.make_schedule("shifted_cosine", schedules=registry.schedules)
    assert float(schedule.alpha_bar(torch.tensor(0.5, dtype=torch.float64))) == pytest.approx(0.2)
    assert float(schedule.t_from_log_snr(schedule.log_snr(torch.tensor(0.3)))) == pytest.approx(0.3, abs=1e-5)
    # the stochastic DDIM draws from N(1, 0.5^2) with the exact denoiser of that Gaussian (with
    # 50 steps ancestral sampling still underestimates the std by about 6%; 200 steps by about 2%)
    diffusion = diffkit.Diffusion(schedule, "eps", samplers=registry.samplers)
    gaussian = GaussianMixture(torch.ones(1), torch.ones(1, 1), stds=torch.tensor([0.5]))
    x = diffusion.sample(gaussian.denoiser(schedule, "eps"), torch.zeros(4000, 1, dtype=torch.float64),
                         sampler="ddim_eta1", steps=200, generator=torch.Generator().manual_seed(0))
    assert float(x.mean()) == pytest.approx(1.0, abs=0.04) and float(x.std()) == pytest.approx(0.5, abs=0.025)
    group = DiffkitGroup(name="diffkit")
    registry.manager.hook.diffkit_cli_commands(cli=group)
    assert group.commands["schedule-table"] is extras.schedule_table
    result = CliRunner().invoke(group, ["schedule-table", "--schedule", "cosine", "--points", "3"],
                                catch_exceptions=False)
    rows = [line.split() for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == ["0.000", "0.500", "1.000"]
    assert float(rows[1][1]) == pytest.approx(0.5, abs=1e-6)             # cos^2(pi / 4)


def test_scaffold_check_counts_validity_and_retention(example):
    scaffold = example("scaffold_molecules")
    scores = scaffold.check_molecules(["c1ccccc1O", "CCO", "C1=CC=CC=C1C", "not a molecule"], "c1ccccc1")
    assert scores == {"count": 4, "valid": 0.75, "with_scaffold": pytest.approx(2 / 3), "unique": 3}


def test_scaffold_script_explains_what_is_missing(example, tmp_path):
    scaffold = example("scaffold_molecules")
    with pytest.raises(scaffold.NotReady, match="does not exist"):
        scaffold.main(["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "out")])


def test_scaffold_generation_keeps_the_scaffold(example, tmp_path):
    scaffold = example("scaffold_molecules")
    try:
        domain = scaffold.molecule_domain()
        scaffold.weights_source(domain, None)
    except scaffold.NotReady as reason:
        pytest.skip(str(reason))
    scores = scaffold.main(["-n", "8", "--resample", "1", "--out", str(tmp_path / "out"), "--scaffold", "C1CC1"])
    assert scores["count"] == 8 and scores["valid"] > 0
    # the kept atoms and bonds form a three-membered ring, which stays aliphatic: every valid
    # completion contains it
    assert scores["with_scaffold"] == 1.0


def test_parquet_shards_give_each_process_only_the_files_of_its_part_and_train(example, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "arrow"))  # where training's part is loaded
    pytest.importorskip("datasets")
    import numpy as np
    from PIL import Image

    from diffkit.distributed import World
    from diffkit.runner import GlobalBatchSampler

    rng = np.random.default_rng(0)
    for index in range(50):
        folder = tmp_path / "pictures" / f"c{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{index}.png")
    shards = example("parquet_shards")
    files = shards.main(["write", str(tmp_path / "pictures"), str(tmp_path / "shards"), "--per-shard", "10",
                         "--image-size", "8"])
    assert [path.name for path in files] == [f"{k:05d}.parquet" for k in range(5)]
    whole = shards.ParquetPart(tmp_path / "shards", 0, 1, cache_dir=tmp_path / "arrow")
    parts = [shards.ParquetPart(tmp_path / "shards", rank, 2, cache_dir=tmp_path / "arrow") for rank in (0, 1)]
    # Rows 0..24 and 25..49: files 0-2 and 2-4 (file 2 holds rows 20..29).
    assert [[path.name for path in part.files] for part in parts] == [
        [f"{k:05d}.parquet" for k in (0, 1, 2)], [f"{k:05d}.parquet" for k in (2, 3, 4)]]
    for rank, part in enumerate(parts):
        sampler = GlobalBatchSampler(len(part), 10, seed=0, start=0, total=6, world=World(rank=rank, size=2),
                                     shard_data=True)
        for batch in sampler:
            for index, _ in batch:
                item = part[index]
                assert torch.equal(item["x"], whole[index]["x"]) and item["cond"] == whole[index]["cond"]
        with pytest.raises(IndexError, match="outside this process's part"):
            part[49 if rank == 0 else 0]
    result = shards.main(["train", str(tmp_path / "shards"), "--out", str(tmp_path / "run"), "--steps", "3",
                          "--batch-size", "10"])
    assert result.step == 3
