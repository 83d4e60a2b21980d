"""Plugin discovery: built-ins and entry points through the same hooks, failures reported."""

from __future__ import annotations

import click
import pytest
import torch

import diffkit
from diffkit.plugins import make_plugin_manager
from toy_domain import ToyDomain


def test_builtins_register_through_the_manager():
    registry = make_plugin_manager(entry_points=False)
    names = {info.name for info in registry.plugins}
    assert {"diffkit_image.plugin", "diffkit_audio.plugin", "diffkit_molecule.plugin"} <= names
    assert all(info.builtin for info in registry.plugins)


def test_entry_point_plugin_is_discovered(toy_installed):
    registry = make_plugin_manager()
    assert isinstance(registry.domain("toy"), ToyDomain)
    info = next(info for info in registry.plugins if info.name == "toy-points")
    assert (info.status, info.version, info.domains) == ("loaded", "1.0", ["toy"])


def test_broken_plugin_is_reported_and_others_still_load(plugin_site):
    plugin_site({"broken": "no_such_module_for_diffkit", "toy-points": "toy_domain"})
    registry = make_plugin_manager()
    broken = next(info for info in registry.plugins if info.name == "broken")
    assert broken.status == "failed"
    assert "no_such_module_for_diffkit" in broken.error
    assert "toy" in registry.domains


def test_environment_variable_disables_external_plugins(toy_installed, monkeypatch):
    monkeypatch.setenv("DIFFKIT_DISABLE_PLUGINS", "1")
    registry = make_plugin_manager()
    assert "toy" not in registry.domains
    assert all(info.builtin for info in registry.plugins)


def test_trace_environment_variable_prints_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv("DIFFKIT_TRACE_HOOKS", "1")
    make_plugin_manager(entry_points=False, extra=[_ToyPlugin()])
    assert "diffkit_register_domains" in capsys.readouterr().err


class _ToyPlugin:
    @diffkit.hookimpl
    def diffkit_register_domains(self, register):
        register(ToyDomain())


class _NotADomainPlugin:
    @diffkit.hookimpl
    def diffkit_register_domains(self, register):
        register(object())


def test_duplicate_domain_name_fails_the_second_plugin_only():
    registry = make_plugin_manager(builtins=(), entry_points=False, extra=[_ToyPlugin(), _ToyPlugin()])
    statuses = sorted(info.status for info in registry.plugins)
    assert statuses == ["failed", "loaded"]
    failed = next(info for info in registry.plugins if info.status == "failed")
    assert "already registered" in failed.error
    assert "toy" in registry.domains


def test_registering_something_else_than_a_domain_is_refused():
    registry = make_plugin_manager(builtins=(), entry_points=False, extra=[_NotADomainPlugin()])
    assert registry.plugins[0].status == "failed"
    assert "not a diffkit.Domain" in registry.plugins[0].error


def test_unknown_domain_lists_the_available_ones():
    registry = make_plugin_manager(builtins=(), entry_points=False, extra=[_ToyPlugin()])
    with pytest.raises(ValueError, match=r"unknown domain 'nope'; available: toy"):
        registry.domain("nope")


def _halfway(denoiser, x, times, *, generator=None, callback=None):
    x0, _ = denoiser(x, times[0])
    return x0


class _SamplerPlugin:
    @diffkit.hookimpl
    def diffkit_register_samplers(self, register):
        register("one_shot_test", _halfway)


def test_plugin_sampler_becomes_usable_by_name_within_its_registry_only():
    registry = make_plugin_manager(builtins=(), entry_points=False, extra=[_SamplerPlugin()])
    model = lambda x, t, cond=None: torch.zeros_like(x)  # noqa: E731  x0-prediction of 0
    diffusion = diffkit.Diffusion("cosine", "x0", samplers=registry.samplers)
    out = diffusion.sample(model, (3, 2), sampler="one_shot_test", steps=4)
    assert torch.equal(out, torch.zeros(3, 2))
    assert "one_shot_test" not in diffkit.SAMPLERS  # nothing leaks into the built-in registry
    assert "one_shot_test" not in make_plugin_manager(builtins=(), entry_points=False).samplers


class _HalfBrokenPlugin:
    @diffkit.hookimpl
    def diffkit_register_domains(self, register):
        raise RuntimeError("no domain today")

    @diffkit.hookimpl
    def diffkit_register_samplers(self, register):
        register("half_broken_test", _halfway)


def test_a_plugin_that_fails_in_one_hook_contributes_nothing():
    registry = make_plugin_manager(builtins=(), entry_points=False, extra=[_HalfBrokenPlugin()])
    assert registry.plugins[0].status == "failed" and "no domain today" in registry.plugins[0].error
    assert "half_broken_test" not in registry.samplers


class _CommandPlugin:
    @diffkit.hookimpl
    def diffkit_cli_commands(self, cli):
        @cli.command(name="hello-test")
        def hello():
            click.echo("hello from a plugin")


def test_plugin_cli_command_is_added():
    from diffkit.cli import DiffkitGroup

    registry = make_plugin_manager(builtins=(), entry_points=False, extra=[_CommandPlugin()])
    group = DiffkitGroup(name="diffkit")
    context = click.Context(group, obj=None)
    context.meta["diffkit.registry"] = registry
    assert "hello-test" in group.list_commands(context)


class _ClashingSamplerPlugin:
    @diffkit.hookimpl
    def diffkit_register_samplers(self, register):
        register("ddim", _halfway)  # the name is taken by a built-in sampler


def test_a_clashing_sampler_name_fails_that_plugin_only():
    registry = make_plugin_manager(builtins=(), entry_points=False, extra=[_ClashingSamplerPlugin(), _ToyPlugin()])
    clash, toy = registry.plugins
    assert clash.status == "failed" and "already registered" in clash.error
    assert toy.status == "loaded" and "toy" in registry.domains
    assert diffkit.get_sampler("ddim") is not _halfway


class _FailsInEveryHook:
    @diffkit.hookimpl
    def diffkit_register_domains(self, register):
        raise RuntimeError("no domain today")

    @diffkit.hookimpl
    def diffkit_register_samplers(self, register):
        raise KeyError("no sampler either")


def test_every_failure_of_a_plugin_is_kept():
    registry = make_plugin_manager(builtins=(), entry_points=False, extra=[_FailsInEveryHook(), _ToyPlugin()])
    failing, toy = registry.plugins
    assert failing.status == "failed"
    assert failing.errors == ["RuntimeError: no domain today", "KeyError: 'no sampler either'"]
    assert failing.error == "RuntimeError: no domain today; KeyError: 'no sampler either'"
    assert toy.status == "loaded" and "toy" in registry.domains


def test_a_plugin_that_exits_on_import_is_reported_and_the_others_load(plugin_site, tmp_path):
    site = plugin_site({"exits": "exits_on_import_for_diffkit", "toy-points": "toy_domain"})
    (site / "exits_on_import_for_diffkit.py").write_text("import sys\nsys.exit(3)\n")
    registry = make_plugin_manager()
    exits = next(info for info in registry.plugins if info.name == "exits")
    assert (exits.status, exits.errors) == ("failed", ["SystemExit: the plugin called sys.exit(3)"])
    assert "toy" in registry.domains


def test_a_keyboard_interrupt_while_loading_plugins_still_stops():
    class Interrupts:
        @diffkit.hookimpl
        def diffkit_register_domains(self, register):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_plugin_manager(builtins=(), entry_points=False, extra=[Interrupts()])


def test_a_domain_picks_its_preset_by_device_unless_it_says_otherwise():
    domain = ToyDomain()
    assert domain.default_preset(None, torch.device("cuda"))[0] == "gpu"
    assert domain.default_preset("data/", torch.device("cpu"))[0] == "cpu"
