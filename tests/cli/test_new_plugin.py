"""`diffkit new-plugin` makes a package that installs, lists, trains and passes its own tests."""

from __future__ import annotations

import os
import subprocess

import pytest
from click.testing import CliRunner

from diffkit.cli import cli
from nested_venv import nested_venv


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


@pytest.mark.slow
def test_scaffold_installs_lists_trains_and_passes_its_tests(tmp_path):
    result = CliRunner().invoke(cli, ["new-plugin", "waves", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    package = tmp_path / "diffkit-waves"
    # A virtual environment on top of this one, so the entry point does not leak into other tests.
    python = nested_venv(tmp_path / "venv")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}

    def call(*args, cwd=package):
        done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    call(python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", ".")
    assert "waves" in call(python, "-m", "diffkit", "plugins")
    assert "3 passed" in call(python, "-m", "pytest", "-q", "-p", "no:cacheprovider")
    call(python, "-m", "diffkit", "train", "--domain", "waves", "--steps", "20", "--out", "run", "--no-progress")
    call(python, "-m", "diffkit", "sample", "--domain", "waves", "--checkpoint", "run", "-n", "4", "--out",
         "s.csv", "--no-progress")
    assert len((package / "s.csv").read_text().splitlines()) == 4
