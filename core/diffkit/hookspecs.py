"""The hooks a diffkit plugin may implement. Mark implementations with ``@diffkit.hookimpl``."""

from __future__ import annotations

from typing import Callable

import click
import pluggy

hookspec = pluggy.HookspecMarker("diffkit")


@hookspec
def diffkit_register_domains(register: Callable) -> None:
    """Register the domains this plugin provides.

    Call ``register(domain)`` once per :class:`diffkit.Domain` instance. A domain's ``name``
    must be unique across all loaded plugins; registering a taken name is reported as a failure
    of the plugin that tried.

    :param register: the registration callback.
    """


@hookspec
def diffkit_register_samplers(register: Callable) -> None:
    """Register extra samplers.

    Call ``register(name, sampler)`` where ``sampler`` follows the sampler contract
    ``sampler(denoiser, x, times, *, generator=None, callback=None, **options) -> x0``
    (see :mod:`diffkit.samplers`). The name is then valid for ``--sampler``, for ``diffkit.load``
    pipelines and for ``Diffusion(samplers=registry.samplers).sample(sampler=...)``: it is kept in
    the plugin manager's registry, not added to the built-in ``diffkit.SAMPLERS``.
    A sampler for categorical states (see :mod:`diffkit.categorical_samplers`) is registered with
    ``register(name, sampler, kind="categorical")`` and is then valid for
    ``CategoricalDiffusion.sample(sampler=...)``; one integrating a flow's velocity
    (:mod:`diffkit.flow_samplers`) with ``kind="flow"``, for ``FlowMatching.sample(sampler=...)``.

    :param register: the registration callback.
    """


@hookspec
def diffkit_register_schedules(register: Callable) -> None:
    """Register extra noise schedules.

    Call ``register(name, factory)`` where ``factory(**options)`` returns a
    :class:`diffkit.Schedule`. The name is then valid in ``diffusion.schedule`` of a config (and in
    ``make_schedule(name, schedules=registry.schedules)``).

    :param register: the registration callback.
    """


@hookspec
def diffkit_cli_commands(cli: click.Group) -> None:
    """Add commands to the ``diffkit`` command line.

    Call ``cli.add_command(command)`` with a :class:`click.Command`. Names must not clash with
    the built-in commands.

    :param cli: the top-level ``diffkit`` click group.
    """
