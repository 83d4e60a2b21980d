"""The example plugin examples/diffkit-pointcloud: conformance, installation, training, its own tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from diffkit.testing import assert_domain_conforms
from nested_venv import nested_venv

POINTCLOUD = Path(__file__).resolve().parents[2] / "examples" / "diffkit-pointcloud"

QUICK = ["--set", "data.count=128", "--set", "model.width=32", "--set", "model.layers=1",
         "--set", "train.checkpoint_every=10", "--set", "train.preview_every=0"]


def test_example_plugin_passes_the_conformance_kit(pointcloud, tmp_path):
    small = {"data": {"count": 64, "points": 32}, "model": {"width": 32, "layers": 1}}
    assert_domain_conforms(pointcloud.PointCloudDomain(), tmp_path, overrides=small)


def test_evaluation_ranks_true_shapes_far_above_noise(pointcloud, tmp_path):
    # A true-data round trip through the writer and evaluate: fresh shapes score far better than noise.
    domain = pointcloud.PointCloudDomain()
    config = {"data": {"points": 32, "seed": 0}}
    shapes, labels = pointcloud.make_shapes(32, 32, seed=7)
    domain.write_samples({"x": shapes, "cond": labels}, tmp_path / "shapes", config)
    blobs = 0.45 * pointcloud.torch.randn(32, 32, 2)
    domain.write_samples({"x": blobs, "cond": labels}, tmp_path / "blobs", config)
    good = domain.evaluate(tmp_path / "shapes", None, config)
    bad = domain.evaluate(tmp_path / "blobs", None, config)
    assert good["mmd_cd"] < bad["mmd_cd"] / 5
    assert good["label_agreement"] > 0.9


@pytest.mark.slow
def test_installs_lists_trains_samples_evaluates_and_passes_its_tests(tmp_path):
    package = tmp_path / "diffkit-pointcloud"
    shutil.copytree(POINTCLOUD, package, ignore=shutil.ignore_patterns("__pycache__", "runs", "*.egg-info"))
    # A virtual environment on top of this one, so the entry point does not leak into other tests.
    python = nested_venv(tmp_path / "venv")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    env.pop("DIFFKIT_DISABLE_PLUGINS", None)

    def call(*args):
        done = subprocess.run(args, cwd=package, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    # Editable, as the tutorial installs it (the example sets dev-mode-dirs, so this needs no extra package).
    call(python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "-e", ".")
    listing = call(python, "-m", "diffkit", "plugins")
    line = next(line for line in listing.splitlines() if line.startswith("pointcloud "))
    assert line.split()[1:4] == ["0.1.0", "pointcloud", "loaded"]
    assert "9 passed" in call(python, "-m", "pytest", "-q", "-p", "no:cacheprovider")
    call(python, "-m", "diffkit", "train", "--domain", "pointcloud", "--steps", "20", "--batch-size", "16",
         "--out", "run", "--no-progress", *QUICK)
    call(python, "-m", "diffkit", "sample", "--domain", "pointcloud", "--checkpoint", "run", "-n", "6",
         "--cond", "cross", "--steps", "5", "--out", "crosses.npz", "--no-progress")
    stored = np.load(package / "crosses.npz")
    assert stored["points"].shape == (6, 64, 2) and stored["labels"].tolist() == [3] * 6
    assert (package / "crosses.png").stat().st_size > 0
    scores = json.loads(call(python, "-m", "diffkit", "evaluate", "--domain", "pointcloud",
                             "--samples", "crosses.npz", "--json"))
    assert set(scores) == {"mmd_cd", "cov_cd", "label_agreement"}
