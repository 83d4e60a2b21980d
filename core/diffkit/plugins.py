"""Plugin discovery with pluggy: built-in plugins and those of the ``diffkit`` entry-point group
load through the same hooks. A plugin that fails to load is recorded with its reason, never fatal.
What a plugin prints while it loads goes to stderr: standard output belongs to the commands (whose
output may be JSON or samples).

Environment variables:

* ``DIFFKIT_DISABLE_PLUGINS=1`` loads the built-in plugins only (no entry points).
* ``DIFFKIT_TRACE_HOOKS=1`` prints every hook call and its result to stderr.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pluggy

from . import hookspecs
from .domain import Domain
from .samplers import SAMPLERS, register_sampler
from .schedules import SCHEDULES, register_schedule

hookimpl = pluggy.HookimplMarker("diffkit")

ENTRY_POINT_GROUP = "diffkit"
BUILTIN_PLUGINS = ("diffkit_image.plugin", "diffkit_audio.plugin", "diffkit_molecule.plugin")


@dataclass
class PluginInfo:
    name: str
    version: str
    status: str = "loaded"  # "loaded" or "failed"
    error: str = ""  # every failure, joined; each one is in ``errors``
    domains: list[str] = field(default_factory=list)
    builtin: bool = False
    registered: bool = field(default=False, repr=False)  # known to the manager under ``name``
    errors: list[str] = field(default_factory=list)

    def fail(self, error: BaseException | str) -> None:
        """Record a failure of this plugin (one of possibly several: each is kept)."""
        if isinstance(error, SystemExit):
            message = f"SystemExit: the plugin called sys.exit({'' if error.code is None else repr(error.code)})"
        else:
            message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.status = "failed"
        self.errors.append(message)
        self.error = "; ".join(self.errors)


# What a plugin may raise without taking the command down: any error, and SystemExit (a plugin that
# calls sys.exit() on import). KeyboardInterrupt is the user's and still stops everything.
PLUGIN_FAULTS = (Exception, SystemExit)


class PluginLoadError(Exception):
    pass


@dataclass
class Registry:
    """What the loaded plugins provide: domains, and the samplers and schedules usable by name
    (the built-in ones plus the plugins'), kept here rather than in module globals."""

    manager: pluggy.PluginManager
    plugins: list[PluginInfo]
    domains: dict[str, Domain]
    samplers: dict[str, Callable] = field(default_factory=lambda: dict(SAMPLERS))
    schedules: dict[str, Callable] = field(default_factory=lambda: dict(SCHEDULES))

    def domain(self, name: str) -> Domain:
        """The domain called ``name``; an unknown name is a ValueError listing the known ones."""
        if name in self.domains:
            return self.domains[name]
        failed = [p for p in self.plugins if p.status == "failed"]
        hint = "".join(f"\n  plugin {p.name} failed to load: {p.error}" for p in failed)
        available = ", ".join(sorted(self.domains)) or "none"
        raise ValueError(f"unknown domain {name!r}; available: {available}{hint}")

    def shipped(self, name: str) -> tuple[Domain, Path] | None:
        """The domain and folder of the shipped weights called ``name``
        (:meth:`~diffkit.Domain.pretrained_models`), or None when no domain ships such weights."""
        for domain in self.domains.values():
            found = domain.pretrained_models().get(name)
            if found is not None:
                return domain, Path(found)
        return None

    def implementations(self, hook_name: str) -> Iterator[tuple[PluginInfo, Any]]:
        """The ``(plugin, function)`` pairs implementing a hook, to call one plugin at a time and
        record a failure with ``plugin.fail(error)`` (catching :data:`PLUGIN_FAULTS`)."""
        by_name = {info.name: info for info in self.plugins if info.registered}
        trace = self.manager.trace.root.get("hook")
        for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
            trace(hook_name, f"plugin={impl.plugin_name}")
            yield by_name.get(impl.plugin_name) or PluginInfo(impl.plugin_name, "unknown"), impl.function


def make_plugin_manager(*, builtins: Iterable[str] = BUILTIN_PLUGINS, entry_points: bool | None = None,
                        extra: Iterable[Any] = ()) -> Registry:
    """Load plugins and collect what they register into a new :class:`Registry`: each call has its
    own manager, domains, samplers and schedules, so registrations never leak between calls.

    ``builtins`` are module names of built-in plugins; ``entry_points`` loads the ``diffkit``
    entry-point group (default: unless ``DIFFKIT_DISABLE_PLUGINS`` is set); ``extra`` are plugin
    objects or modules to register as well (tests use this).
    """
    manager = pluggy.PluginManager("diffkit")
    manager.add_hookspecs(hookspecs)
    if os.environ.get("DIFFKIT_TRACE_HOOKS"):
        manager.trace.root.setwriter(lambda message: sys.stderr.write(message))
        manager.enable_tracing()
    infos: list[PluginInfo] = []
    if entry_points is None:
        entry_points = not os.environ.get("DIFFKIT_DISABLE_PLUGINS")
    with plugin_output_to_stderr():
        for module_name in builtins:
            infos.append(_register(manager, module_name, lambda m=module_name: importlib.import_module(m),
                                   version=_version(), builtin=True))
        if entry_points:
            for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                version = entry_point.dist.version if entry_point.dist else "unknown"
                infos.append(_register(manager, entry_point.name, entry_point.load, version=version))
        for plugin in extra:
            name = getattr(plugin, "__name__", type(plugin).__name__)
            infos.append(_register(manager, name, lambda p=plugin: p, version="unknown"))
        domains = _collect_domains(manager, infos)
        samplers = _collect_named(manager, manager.hook.diffkit_register_samplers, register_sampler, SAMPLERS, infos)
        schedules = _collect_named(manager, manager.hook.diffkit_register_schedules, register_schedule, SCHEDULES, infos)
    # A plugin that failed in any hook contributes nothing.
    for info in infos:
        if info.status == "failed":
            for name in info.domains:
                domains.pop(name, None)
    return Registry(manager, infos, domains,
                    {name: fn for name, (fn, owner) in samplers.items() if _usable(owner)},
                    {name: fn for name, (fn, owner) in schedules.items() if _usable(owner)})


def plugin_output_to_stderr() -> contextlib.AbstractContextManager:
    """While plugins load or register, what they print goes to stderr, not to standard output."""
    return contextlib.redirect_stdout(sys.stderr)


def failed_plugins_line(plugins: Iterable[PluginInfo]) -> str | None:
    """One line saying which plugins failed to load, for commands other than the listing; None
    when none did."""
    failed = [info.name for info in plugins if info.status == "failed"]
    if not failed:
        return None
    which = f"plugin {failed[0]}" if len(failed) == 1 else f"{len(failed)} plugins ({', '.join(failed)})"
    return f"diffkit: {which} failed to load; `diffkit plugins` says why"


def _usable(owner: PluginInfo | None) -> bool:
    return owner is None or owner.status != "failed"


def _collect_named(manager: pluggy.PluginManager, hook, register: Callable, builtins: dict,
                   infos: list[PluginInfo]) -> dict[str, tuple[Callable, PluginInfo | None]]:
    """``name -> (object, owning plugin)`` of the built-ins (no owner) and what each plugin registers."""
    collected: dict[str, tuple[Callable, PluginInfo | None]] = {name: (fn, None) for name, fn in builtins.items()}

    def make_register(info: PluginInfo):
        def add(name: str, fn: Callable, **options) -> None:
            staged = {key: value for key, (value, _) in collected.items()}
            register(name, fn, registry=staged, **options)
            collected[name] = (staged[name], info)

        return add

    _call_per_plugin(manager, hook, make_register, infos)
    return collected


def _register(manager: pluggy.PluginManager, name: str, load, *, version: str, builtin: bool = False) -> PluginInfo:
    info = PluginInfo(name=name, version=version, builtin=builtin)
    try:
        manager.register(load(), name=name)
        info.registered = True
    except PLUGIN_FAULTS as error:  # a broken plugin is reported, the others still load
        info.fail(error)
    return info


def _collect_domains(manager: pluggy.PluginManager, infos: list[PluginInfo]) -> dict[str, Domain]:
    domains: dict[str, Domain] = {}

    def make_register(info: PluginInfo):
        def register(domain: Domain) -> None:
            _check_domain(domain, domains)
            domains[domain.name] = domain
            info.domains.append(domain.name)

        return register

    _call_per_plugin(manager, manager.hook.diffkit_register_domains, make_register, infos)
    return domains


def _check_domain(domain: Any, domains: dict[str, Domain]) -> None:
    if not isinstance(domain, Domain):
        raise PluginLoadError(f"registered {domain!r}, which is not a diffkit.Domain")
    for attribute in ("name", "description"):  # read once here, so that listing them cannot fail
        try:
            value = getattr(domain, attribute)
        except PLUGIN_FAULTS as error:
            raise PluginLoadError(f"{type(domain).__name__}.{attribute} raised {type(error).__name__}: {error}") from None
        if not isinstance(value, str):
            raise PluginLoadError(f"{type(domain).__name__}.{attribute} must be a string, got {value!r}")
    if not domain.name:
        raise PluginLoadError(f"{type(domain).__name__} has no name")
    if domain.name in domains:
        raise PluginLoadError(f"domain {domain.name!r} is already registered by another plugin")


def _call_per_plugin(manager: pluggy.PluginManager, hook, make_register, infos: list[PluginInfo]) -> None:
    """Call a registration hook plugin by plugin (not through the hook caller) so that a failure
    marks the plugin that caused it, and the others still register."""
    by_name = {info.name: info for info in infos if info.registered}
    trace = manager.trace.root.get("hook")
    for impl in hook.get_hookimpls():
        info = by_name.get(impl.plugin_name) or PluginInfo(impl.plugin_name, "unknown")
        trace(hook.name, f"plugin={impl.plugin_name}")
        try:
            impl.function(register=make_register(info))
        except PLUGIN_FAULTS as error:
            info.fail(error)


def _version() -> str:
    from . import __version__

    return __version__
