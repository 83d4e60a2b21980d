"""docs/cli.md is generated from the click definitions; these tests fail when the two disagree."""

from __future__ import annotations

import click

from doctools import DOCS, load_generator
from diffkit.cli import BUILTIN_COMMANDS, cli


def test_cli_md_matches_the_click_definitions():
    expected = load_generator().render()
    assert (DOCS / "cli.md").read_text() == expected, "docs/cli.md is out of date; run: python docs/generate_cli.py"


def test_every_option_of_every_command_is_in_its_section():
    text = (DOCS / "cli.md").read_text()
    sections = {part.split("`", 1)[0]: part for part in text.split("## `diffkit")[1:]}
    for name in BUILTIN_COMMANDS:
        section = sections[f" {name}"]
        for param in cli.commands[name].params:
            names = param.opts if isinstance(param, click.Option) else [param.human_readable_name]
            for option in names:
                assert f"`{option}`" in section, f"diffkit {name}: {option} is not documented in docs/cli.md"


def test_check_mode_reports_a_stale_page(tmp_path, monkeypatch, capsys):
    generator = load_generator()
    stale = tmp_path / "cli.md"
    stale.write_text((DOCS / "cli.md").read_text().replace("--resume", "--restart"))
    monkeypatch.setattr(generator, "CLI_MD", stale)
    assert generator.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    stale.write_text(generator.render())
    assert generator.main(["--check"]) == 0
