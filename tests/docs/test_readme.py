"""The README's Python snippet for the core runs as written; CI runs its test command as written,
in a fresh virtual environment."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def test_the_core_snippet_runs_and_samples_the_asked_shape():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (snippet,) = [block for block in blocks if "from diffkit import Diffusion" in block]
    namespace: dict = {}
    exec(compile(snippet, str(README), "exec"), namespace)
    assert namespace["samples"].shape == (16, 2) and namespace["loss"].ndim == 0


def test_ci_runs_the_readme_test_command_in_a_fresh_virtual_environment():
    (command,) = [line for line in README.read_text().splitlines() if line.endswith("python -m pytest")]
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in lines  # verbatim
    creates = next(i for i, line in enumerate(lines) if " -m venv " in line)
    activates = next(i for i, line in enumerate(lines) if line.startswith("source ") and "bin/activate" in line)
    assert creates < activates < lines.index(command)
    assert "--system-site-packages" not in lines[creates]  # fresh: nothing from this machine's packages
