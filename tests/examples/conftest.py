"""Helpers for the tests of examples/: load a script or the example plugin's module by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
POINTCLOUD = EXAMPLES / "diffkit-pointcloud"


def load_module(path: Path, name: str):
    """Import the file at ``path`` as module ``name`` (kept in sys.modules for pickling and reuse)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def example():
    """``example("interpolation")`` -> the module of examples/interpolation.py."""
    return lambda stem: load_module(EXAMPLES / f"{stem}.py", f"diffkit_example_{stem}")


@pytest.fixture
def pointcloud():
    """The example plugin's module, imported from its source file (not installed)."""
    return load_module(POINTCLOUD / "diffkit_pointcloud.py", "diffkit_example_pointcloud")


