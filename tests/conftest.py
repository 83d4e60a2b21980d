"""Shared fixtures: a private cache for every test, and the toy domain as an installed third-party
plugin (entry point ``diffkit``)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch

# The suite's tensors are small: one thread avoids oversubscription on shared CI machines.
torch.set_num_threads(1)

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))


def install_entry_points(site: Path, dist: str, entry_points: dict[str, str]) -> Path:
    """Write a minimal ``*.dist-info`` so that ``importlib.metadata`` finds the entry points."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[diffkit]\n{lines}")
    return site


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Keep evaluation classifiers and decoded data caches out of the user's home."""
    monkeypatch.setenv("DIFFKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    """A site folder on sys.path (and PYTHONPATH, for subprocesses) holding plugin entry points.

    Call it with ``{entry_name: module}`` to install a distribution; the tests folder (with
    ``toy_domain``) is importable too.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    paths = [str(site), str(TESTS), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    monkeypatch.delenv("DIFFKIT_DISABLE_PLUGINS", raising=False)
    counter = iter(range(1000))

    def install(entry_points: dict[str, str]) -> Path:
        install_entry_points(site, f"plugin{next(counter)}", entry_points)
        importlib.invalidate_caches()
        return site

    return install


@pytest.fixture
def toy_installed(plugin_site):
    """The toy domain installed as a third-party plugin called ``toy-points``."""
    return plugin_site({"toy-points": "toy_domain"})
