"""Registers the molecule domain with diffkit. Heavy modules (RDKit, torch-geometric) are imported
only when the domain is used, so listing plugins stays fast."""

import diffkit

from .domain import MoleculeDomain


@diffkit.hookimpl
def diffkit_register_domains(register):
    register(MoleculeDomain())
