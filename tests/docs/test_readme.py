"""The README's Python snippet for the core runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_core_snippet_runs_and_samples_the_asked_shape():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (snippet,) = [block for block in blocks if "from diffkit import Diffusion" in block]
    namespace: dict = {}
    exec(compile(snippet, str(README), "exec"), namespace)
    assert namespace["samples"].shape == (16, 2) and namespace["loss"].ndim == 0
