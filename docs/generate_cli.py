"""Write docs/cli.md from the click definitions of the ``diffkit`` command line.

    python docs/generate_cli.py           # rewrite docs/cli.md
    python docs/generate_cli.py --check   # exit 1 when docs/cli.md differs from the definitions

tests/docs/test_cli_doc.py fails when the two disagree. Only the built-in commands are listed;
commands added by installed plugins are left out, so the page does not depend on what is installed.
"""

from __future__ import annotations

import inspect
import sys
import textwrap
from pathlib import Path

import click

CLI_MD = Path(__file__).with_name("cli.md")

INTRO = """\
# Command line reference

`diffkit` (also `python -m diffkit`) trains, samples and scores diffusion models for every
installed domain. This page is generated from the command definitions by `docs/generate_cli.py`;
a test fails when the two disagree. `diffkit COMMAND --help` prints the same text.

Settings that the options do not cover are changed with `--config file.toml` (sections `data`,
`model`, `diffusion`, `train`, `sample`) and `--set section.key=value`; an unknown key is refused
with the closest known one. For `train` the layers apply in this order: the core's defaults, the
domain's defaults, the preset, the config file, `--set`, then the options `--steps`, `--batch-size`
and `--seed`. `train --resume` lays the same options over the run's own settings, so the command
that started a run resumes it; a value other than the run's is refused, naming the setting, unless
it does not change the steps already taken (`train.steps`, how often to log or save, ...).
`sample` lays `--config` and `--set` over the checkpoint's settings; the `data`, `model` and
`diffusion` settings the weights were trained with cannot change. The table `sample.options`
holds the sampler's own options (`--set sample.options.eta=0.5`); the sampler's signature says
which it takes.

Every value must have the type of its default (an integer passes for a number), every number must
be finite, and each numeric setting must lie in its range (step and batch counts at least 1,
`train.lr` not negative, rates in [0, 1], a network's widths at least 1, ...: `diffkit.config.LIMITS`
and each domain's `limits()`); a wrong one is refused before anything runs, naming the key, the
value and where it came from.

Every checkpoint carries a SHA-256 digest of its content, checked whenever it is read: a damaged
file is refused with the newest intact checkpoint of the run and how to use it; a file without a
digest (written by another program) is used with an `UncheckedWarning` that says so. An exported
folder's `config.json` records the digests of the weights, of the settings that describe them and
of its sampling settings: changed weights or settings are refused, changed `sample.*` settings are
used with a warning. Ctrl-C stops `train` with exit code 130 and the command that resumes the run
from its last checkpoint; `--resume` on a run that stopped before its first checkpoint says so and
gives the command that starts it again.
"""

OUTRO = """\
## Environment variables

| variable | effect |
| --- | --- |
| `DIFFKIT_DISABLE_PLUGINS=1` | load the built-in plugins only, none from the `diffkit` entry-point group |
| `DIFFKIT_TRACE_HOOKS=1` | print every plugin hook call and its result to stderr |

## Commands from plugins

A plugin can add commands through the `diffkit_cli_commands` hook (see
[writing-a-plugin.md](writing-a-plugin.md)); they appear in `diffkit --help` once the plugin is
installed. A plugin may not replace a built-in command. A plugin whose hook fails (or that
replaces a built-in command, or whose domain's `name` or `description` raises) is marked FAILED in
`diffkit plugins`, with every error it raised, and the other commands work as before, each saying
in one line on stderr which plugins failed to load. What a plugin prints while it loads goes to
stderr, so that standard output (JSON from `evaluate --json`, samples) stays the command's own.
"""


def render() -> str:
    """The whole of docs/cli.md."""
    from diffkit.cli import BUILTIN_COMMANDS, cli
    from diffkit.plugins import make_plugin_manager

    # The built-in plugins' option names (e.g. --scaffold) belong to the page, other plugins' not.
    make_plugin_manager(entry_points=False).manager.hook.diffkit_cli_commands(cli=cli)
    root = click.Context(cli, info_name="diffkit", **cli.context_settings)
    parts = [INTRO, _section(cli, root, "diffkit")]
    for name in BUILTIN_COMMANDS:
        command = cli.commands[name]
        context = click.Context(command, info_name=name, parent=root)
        parts.append(_section(command, context, f"diffkit {name}"))
    parts.append(OUTRO)
    return "\n".join(parts)


def _section(command: click.Command, context: click.Context, title: str) -> str:
    usage = " ".join([title] + command.collect_usage_pieces(context))
    lines = [f"## `{title}`", "", "```", usage, "```", "", _help_text(command.help or ""), ""]
    arguments = [param for param in command.params if isinstance(param, click.Argument)]
    options = [param for param in command.params if isinstance(param, click.Option)]
    if arguments:
        lines += ["Arguments: " + ", ".join(f"`{arg.make_metavar(context)}`" for arg in arguments), ""]
    lines += ["| option | value | description |", "| --- | --- | --- |"]
    for option in options + [command.get_help_option(context)]:
        if option is not None:
            lines.append(_option_row(option, context))
    return "\n".join(lines) + "\n"


def _help_text(text: str) -> str:
    """Click's help text as Markdown: ``\\b`` blocks (kept verbatim by click) become code blocks."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    rendered = []
    for paragraph in paragraphs:
        if paragraph.startswith("\b\n"):
            rendered.append("```\n" + textwrap.dedent(paragraph[2:]) + "\n```")
        else:
            rendered.append(" ".join(paragraph.split()))
    return "\n\n".join(rendered)


def _option_row(option: click.Option, context: click.Context) -> str:
    names = option.opts + option.secondary_opts
    if option.name == "help":  # click gathers the help option's names in a set: fix their order
        names = sorted(names, key=len)
    names = ", ".join(f"`{name}`" for name in names)
    if option.is_flag:
        value = "flag"
    else:
        value = "`{}`".format(option.make_metavar(context).replace("|", "\\|"))  # a choice's bar ends a cell
        if option.multiple:
            value += ", repeatable"
    if option.required:
        value += ", required"
    elif not option.is_flag and isinstance(option.default, (str, int, float)):
        value += f", default `{option.default}`"
    description = " ".join((option.help or "").split()).replace("|", "\\|")
    return f"| {names} | {value} | {description} |"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not CLI_MD.exists() or CLI_MD.read_text() != text:
            print(f"{CLI_MD} is out of date; run: python docs/generate_cli.py", file=sys.stderr)
            return 1
        return 0
    CLI_MD.write_text(text)
    print(f"wrote {CLI_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
