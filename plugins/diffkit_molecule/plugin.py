"""Registers the molecule domain with diffkit. Heavy modules (RDKit, torch-geometric) are imported
only when the domain is used, so listing plugins stays fast."""

import diffkit

from .domain import MoleculeDomain


@diffkit.hookimpl
def diffkit_register_domains(register):
    register(MoleculeDomain())


@diffkit.hookimpl
def diffkit_cli_commands(cli):
    """``diffkit sample --scaffold SMILES``: the molecule domain's name for ``--init``."""
    from diffkit.cli import add_option_alias

    add_option_alias(cli, "sample", "--init", "--scaffold")
