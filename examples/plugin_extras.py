"""A plugin that adds a noise schedule, a sampler and a command instead of a domain.

Besides domains, a diffkit plugin may implement three more hooks (see ``diffkit.hookspecs``):

* ``diffkit_register_schedules``: a schedule name usable in ``diffusion.schedule`` of a config;
  here ``shifted_cosine``, the cosine schedule with its log-SNR shifted by ``2 log(base / size)``
  (Hoogeboom et al. 2023), which adds noise sooner for large states;
* ``diffkit_register_samplers``: a sampler name usable with ``--sampler``; here ``ddim_eta1``,
  DDIM with ``eta = 1`` (stochastic, like DDPM) under a name of its own;
* ``diffkit_cli_commands``: a command of the ``diffkit`` program; here ``diffkit schedule-table``,
  which prints alpha_bar and the log-SNR of a schedule at a few times.

Install it like any plugin: an entry point in the ``diffkit`` group naming this module, e.g.
``extras = "plugin_extras"`` in ``[project.entry-points.diffkit]``. The registries are shared by
the whole process, so register module-level objects: registering the same object again is fine,
another object under a taken name is an error.

    python examples/plugin_extras.py      # prints the table, with the plugin registered by hand
"""

from __future__ import annotations

import functools
import math

import click
import torch

import diffkit
from diffkit.cli import current_registry
from diffkit.samplers import sample_ddim


# tutorial: extras
class ShiftedCosineSchedule(diffkit.CosineSchedule):
    """The cosine schedule with ``log_snr(t) + 2 log(base / size)``: for states larger than
    ``base`` (e.g. images of side ``size`` against 64) it removes signal sooner."""

    def __init__(self, size: float = 128.0, base: float = 64.0):
        super().__init__()
        self.size, self.base = size, base

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return super().log_snr(t) + 2 * math.log(self.base / self.size)

    def t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        return super().t_from_log_snr(log_snr - 2 * math.log(self.base / self.size))


ddim_eta1 = functools.partial(sample_ddim, eta=1.0)


@diffkit.hookimpl
def diffkit_register_schedules(register):
    register("shifted_cosine", ShiftedCosineSchedule)


@diffkit.hookimpl
def diffkit_register_samplers(register):
    register("ddim_eta1", ddim_eta1)


@diffkit.hookimpl
def diffkit_cli_commands(cli):
    cli.add_command(schedule_table)


@click.command("schedule-table")
@click.option("--schedule", default="cosine", show_default=True, help="A schedule name.")
@click.option("--points", type=int, default=5, show_default=True, help="How many times from 0 to 1.")
def schedule_table(schedule, points):
    """Print t, alpha_bar(t) and log-SNR(t) of a schedule."""
    chosen = diffkit.make_schedule(schedule, schedules=current_registry().schedules)
    for t in torch.linspace(0, 1, points, dtype=torch.float64):
        click.echo(f"{float(t):.3f}  {float(chosen.alpha_bar(t)):.6f}  {float(chosen.log_snr(t)):8.3f}")
# end tutorial: extras


if __name__ == "__main__":
    import sys

    # A registry with this module's hooks, as `diffkit schedule-table` would have once installed.
    registry = diffkit.make_plugin_manager(extra=[sys.modules[__name__]])
    with click.Context(schedule_table) as context:
        context.meta["diffkit.registry"] = registry
        context.invoke(schedule_table, schedule="shifted_cosine")
