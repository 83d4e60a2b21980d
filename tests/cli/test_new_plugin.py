"""`diffkit new-plugin` makes a package that installs, lists, trains and passes its own tests."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import diffkit
import diffkit_image
from diffkit.cli import cli
from nested_venv import nested_venv


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A virtual environment on top of this one, shared by this module's tests, so the entry points
    of the packages they install do not leak into other tests; it imports the diffkit under test
    (with its built-in plugins) ahead of any installed one."""
    python = nested_venv(tmp_path_factory.mktemp("venv") / "venv")
    under_test = {str(Path(module.__file__).parents[1]) for module in (diffkit, diffkit_image)}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sorted(under_test))}

    def call(*args, cwd):
        done = subprocess.run([python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    return call


def test_name_must_be_a_python_identifier(tmp_path):
    result = CliRunner().invoke(cli, ["new-plugin", "My-Plugin", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "must be lowercase letters" in result.output


@pytest.mark.parametrize("name", ["image", "audio", "molecule"])
def test_names_of_built_in_plugins_are_refused(name, tmp_path):
    result = CliRunner().invoke(cli, ["new-plugin", name, "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert f"'{name}' is taken by a built-in plugin" in result.output
    assert list(tmp_path.iterdir()) == []


def test_every_built_in_domain_name_is_reserved():
    import diffkit
    from diffkit.scaffold import builtin_names

    registry = diffkit.make_plugin_manager(entry_points=False)
    assert set(registry.domains) <= builtin_names()


def test_existing_folder_is_not_overwritten(tmp_path):
    (tmp_path / "diffkit-waves").mkdir()
    result = CliRunner().invoke(cli, ["new-plugin", "waves", "--dir", str(tmp_path)])
    assert "already exists" in result.output
    assert list((tmp_path / "diffkit-waves").iterdir()) == []


def install_test_and_train(package, domain: str, passed: str, venv) -> None:
    """Install a generated plugin into ``venv``, see ``diffkit plugins`` list its domain, run its
    own tests (``passed``: pytest's count line) and train it for 20 steps into ``package/run``."""
    venv("-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", ".", cwd=package)
    assert domain in venv("-m", "diffkit", "plugins", cwd=package)
    assert passed in venv("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=package)
    venv("-m", "diffkit", "train", "--domain", domain, "--steps", "20", "--out", "run", "--no-progress", cwd=package)


@pytest.mark.slow
def test_scaffold_installs_lists_trains_and_passes_its_tests(tmp_path, venv):
    result = CliRunner().invoke(cli, ["new-plugin", "waves", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    package = tmp_path / "diffkit-waves"
    install_test_and_train(package, "waves", "4 passed", venv)
    venv("-m", "diffkit", "sample", "--domain", "waves", "--checkpoint", "run", "-n", "4", "--out", "s.csv",
         "--no-progress", cwd=package)
    assert len((package / "s.csv").read_text().splitlines()) == 4


@pytest.mark.slow
def test_categorical_scaffold_installs_trains_samples_and_passes_its_tests(tmp_path, venv):
    result = CliRunner().invoke(cli, ["new-plugin", "bases", "--kind", "categorical", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    package = tmp_path / "diffkit-bases"
    install_test_and_train(package, "bases", "5 passed", venv)
    venv("-m", "diffkit", "sample", "--domain", "bases", "--checkpoint", "run", "-n", "4", "--cond", "gc=0.5",
         "--out", "s.fasta", "--no-progress", cwd=package)
    assert (package / "s.fasta").read_text().count(" gc=0.5000\n") == 4
    scores = json.loads(venv("-m", "diffkit", "evaluate", "--domain", "bases", "--samples", "s.fasta", "--json",
                             cwd=package))
    assert set(scores) == {"kmer_distance", "stem_pairing", "gc_error"} and 0 <= scores["gc_error"] <= 0.5


@pytest.mark.slow
def test_tabular_scaffold_installs_trains_samples_and_passes_its_tests(tmp_path, venv):
    result = CliRunner().invoke(cli, ["new-plugin", "tables", "--kind", "tabular", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    package = tmp_path / "diffkit-tables"
    install_test_and_train(package, "tables", "7 passed", venv)
    venv("-m", "diffkit", "sample", "--domain", "tables", "--checkpoint", "run", "-n", "5", "--init", "colour=blue",
         "--out", "blue.csv", "--no-progress", cwd=package)
    lines = (package / "blue.csv").read_text().splitlines()
    assert lines[0] == "weight,height,colour,size" and [line.split(",")[2] for line in lines[1:]] == ["blue"] * 5
    scores = json.loads(venv("-m", "diffkit", "evaluate", "--domain", "tables", "--samples", "blue.csv", "--json",
                             cwd=package))
    assert set(scores) == {"category_distance", "conditional_mean_error"}


def test_unknown_kind_is_refused(tmp_path):
    result = CliRunner().invoke(cli, ["new-plugin", "bases", "--kind", "discrete", "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "'discrete' is not one of 'gaussian', 'categorical', 'tabular'" in result.output
    assert list(tmp_path.iterdir()) == []
