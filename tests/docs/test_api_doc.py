"""docs/api.md lists every public name of ``import diffkit``."""

from __future__ import annotations

import diffkit
from doctools import DOCS


def test_every_public_name_is_listed():
    text = (DOCS / "api.md").read_text()
    missing = [name for name in diffkit.__all__ if f"| `{name}` |" not in text]
    assert not missing, f"docs/api.md does not list: {missing}"


def test_every_name_listed_under_import_diffkit_is_public():
    text = (DOCS / "api.md").read_text()
    section = text.split("## `import diffkit`", 1)[1].split("\n## ", 1)[0]
    listed = [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]
    assert sorted(listed) == sorted(diffkit.__all__)


def test_every_built_in_sampler_is_named():
    text = (DOCS / "api.md").read_text()
    built_in = [name for name, fn in diffkit.SAMPLERS.items()
                if getattr(fn, "__module__", "") in ("diffkit.samplers", "diffkit.categorical_samplers")]
    assert "ddpm" in built_in and "ancestral" in built_in
    missing = [name for name in built_in if f"`{name}`" not in text]
    assert not missing, f"docs/api.md does not name the samplers {missing}"
