"""Registers the audio domain with diffkit."""

import diffkit

from .domain import AudioDomain


@diffkit.hookimpl
def diffkit_register_domains(register):
    register(AudioDomain())
