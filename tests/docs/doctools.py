"""Helpers for the documentation meta-tests, and the tool that copies example code into the tutorial.

Code blocks of docs/writing-a-plugin.md are copies of regions of the example files. A block
preceded by ``<!-- from: PATH#NAME -->`` holds the lines between ``# tutorial: NAME`` and
``# end tutorial: NAME`` of PATH (dedented); ``<!-- from: PATH -->`` holds the whole file.

    python tests/docs/doctools.py     # refresh those blocks after changing the examples
"""

from __future__ import annotations

import importlib.util
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TUTORIAL = DOCS / "writing-a-plugin.md"

FENCE = re.compile(r"(?:^<!--\s*(?P<note>[^>]*?)\s*-->\n)?^```(?P<lang>[\w-]*)\n(?P<code>.*?)^```$",
                   re.MULTILINE | re.DOTALL)


def load_generator():
    """docs/generate_cli.py as a module."""
    spec = importlib.util.spec_from_file_location("diffkit_docs_generate_cli", DOCS / "generate_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_blocks(markdown: str) -> list[tuple[str, str, str]]:
    """``(language, code, the HTML comment just above the fence or "")`` of every fenced block."""
    return [(m["lang"], m["code"], m["note"] or "") for m in FENCE.finditer(markdown)]


def regions(path: Path) -> dict[str, str]:
    """The marked regions of a file, by name, dedented."""
    found, current, lines = {}, None, []
    for line in path.read_text().splitlines(keepends=True):
        marker = line.strip()
        if marker.startswith("# tutorial: "):
            current, lines = marker.removeprefix("# tutorial: "), []
        elif marker.startswith("# end tutorial: "):
            if marker.removeprefix("# end tutorial: ") != current:
                raise ValueError(f"{path}: '{marker}' closes a region that is not open (open: {current})")
            found[current], current = textwrap.dedent("".join(lines)), None
        elif current is not None:
            lines.append(line)
    if current is not None:
        raise ValueError(f"{path}: region {current!r} is never closed")
    return found


def snippet(reference: str) -> str:
    """The code a ``from: PATH#NAME`` (or ``from: PATH``) note refers to."""
    path, _, name = reference.partition("#")
    file = ROOT / path
    if not name:
        return file.read_text()
    found = regions(file)
    if name not in found:
        raise KeyError(f"{path} has no region {name!r}; it has {sorted(found)}")
    return found[name]


def sync(markdown: str) -> str:
    """``markdown`` with every block under a ``from:`` note replaced by the code it refers to."""

    def replace(match: re.Match) -> str:
        note = match["note"] or ""
        if not note.startswith("from: "):
            return match[0]
        return f"<!-- {note} -->\n```{match['lang']}\n{snippet(note.removeprefix('from: '))}```"

    return FENCE.sub(replace, markdown)


if __name__ == "__main__":
    TUTORIAL.write_text(sync(TUTORIAL.read_text()))
    print(f"refreshed the code blocks of {TUTORIAL}", file=sys.stderr)
