"""The code in docs/writing-a-plugin.md is the code of the example files that the tests run."""

from __future__ import annotations

import shlex

import click
import pytest

from diffkit.cli import BUILTIN_COMMANDS, cli
from doctools import ROOT, TUTORIAL, code_blocks, regions, snippet, sync

BLOCKS = code_blocks(TUTORIAL.read_text())
CODE = [(lang, code, note) for lang, code, note in BLOCKS if lang in ("python", "toml")]


def test_the_tutorial_quotes_code():
    assert len(CODE) >= 10


@pytest.mark.parametrize(("lang", "code", "note"), CODE, ids=[note or lang for _, _, note in CODE])
def test_each_code_block_is_a_region_of_an_example_file(lang, code, note):
    assert note.startswith("from: "), f"this {lang} block does not say which example file it comes from:\n{code}"
    assert code == snippet(note.removeprefix("from: ")), (
        f"the block <!-- {note} --> differs from its source; refresh it with: python tests/docs/doctools.py")


def test_the_refresh_tool_changes_nothing():
    text = TUTORIAL.read_text()
    assert sync(text) == text


def test_every_marked_region_of_the_example_plugin_is_quoted():
    quoted = {note.removeprefix("from: ") for _, _, note in CODE}
    for path in (ROOT / "examples" / "diffkit-pointcloud").rglob("*.py"):
        relative = path.relative_to(ROOT).as_posix()
        for name in regions(path):
            assert f"{relative}#{name}" in quoted, f"region {name!r} of {relative} is not in the tutorial"


def test_region_markers_must_match(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("# tutorial: a\nx = 1\n# end tutorial: b\n")
    with pytest.raises(ValueError, match="closes a region that is not open"):
        regions(broken)


def _commands(code: str):
    for line in code.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("DIFFKIT_"):
            line = line.split(" ", 1)[1]
        if line.startswith("diffkit "):
            yield shlex.split(line)


SHELL = [code for lang, code, _ in BLOCKS if lang == "bash"]


def test_diffkit_commands_in_the_tutorial_use_real_options():
    checked = 0
    for code in SHELL:
        for words in _commands(code):
            name = words[1]
            assert name in BUILTIN_COMMANDS, f"`{' '.join(words)}`: diffkit has no command {name!r}"
            command = cli.commands[name]
            known = {opt for param in command.params if isinstance(param, click.Option) for opt in param.opts}
            for word in words[2:]:
                if word.startswith("-"):
                    assert word in known, f"`{' '.join(words)}`: diffkit {name} has no option {word}"
            checked += 1
    assert checked >= 8
