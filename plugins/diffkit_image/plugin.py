"""Registers the built-in image domain with diffkit."""

import diffkit

from .domain import ImageDomain


@diffkit.hookimpl
def diffkit_register_domains(register):
    register(ImageDomain())
