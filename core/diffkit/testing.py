"""A conformance kit for domain plugins: call it from your plugin's tests.

    from diffkit.testing import assert_domain_conforms

    def test_my_domain_conforms(tmp_path):
        assert_domain_conforms(MyDomain(), tmp_path)

It builds the domain's dataset and model from its default config (shrunk by ``overrides`` if
you like), and checks that the contract holds: item and batch structure, model output shapes and
dtypes, the noise, the loss mask, the null condition, that a few training steps lower the loss on
a fixed batch, that sampling and writing samples work, and that ``to_objects`` gives one object
per sample (of ``object_type`` when given). Every problem found is reported in plain words, all
at once.

The state, the model's output, the noise and the samples are checked against the process the
config describes (:func:`diffkit.generate.build_diffusion`; each leaf's own when the domain gives
them different ones, :meth:`~diffkit.Domain.processes`): floating-point leaves and outputs shaped
like them for Gaussian diffusion and flow matching; for categorical diffusion integer leaves
holding classes in ``[0, K)`` (:meth:`~diffkit.Domain.categories`), logits shaped like each leaf
plus a last axis of ``K``, noise of uniforms in ``[0, 1)`` and padding kept by sampling; and a
``sample.sampler`` of a kind the process runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import default_collate

from .config import check_config as check_settings, default_config, limits_of, lookup
from .domain import Domain, accepted_keywords, merge_config
from .generate import build_diffusion, sampler_kinds
from .kit import Output
from .samplers import SAMPLERS, sampler_kind
from .tree import SampleGenerators, State, leaves


class ConformanceError(AssertionError):
    pass


def assert_domain_conforms(domain: Domain, tmp_path: str | Path | None = None, *, data: str | None = None,
                           overrides: dict | None = None, train_steps: int = 30, batch_size: int = 8,
                           object_type: type | tuple[type, ...] | None = None) -> None:
    """Raise :class:`ConformanceError` listing every way ``domain`` breaks the contract.

    ``object_type``: what :meth:`~diffkit.Domain.to_objects` should return for each sample
    (e.g. ``PIL.Image.Image``; a tuple allows several, e.g. ``(Mol, type(None))``)."""
    problems = check_domain(domain, tmp_path, data=data, overrides=overrides, train_steps=train_steps,
                            batch_size=batch_size, object_type=object_type)
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise ConformanceError(f"domain {domain.name!r} does not conform:\n{listing}")


def check_domain(domain: Domain, tmp_path: str | Path | None = None, *, data: str | None = None,
                 overrides: dict | None = None, train_steps: int = 30, batch_size: int = 8,
                 object_type: type | tuple[type, ...] | None = None) -> list[str]:
    """The list of problems found (empty when the domain conforms)."""
    problems: list[str] = []
    if tmp_path is None:
        tmp_path = tempfile.mkdtemp(prefix="diffkit-conformance-")
    context: dict[str, Any] = {"domain": domain, "data": data, "tmp": Path(tmp_path),
                               "overrides": overrides or {}, "steps": train_steps, "batch_size": batch_size,
                               "object_type": object_type}
    for check in CHECKS:
        try:
            check(context)
        except _Stop as stop:
            problems.append(str(stop))
            break
        except Exception as error:  # a crash inside the domain is itself a finding
            problems.append(f"{check.__doc__.strip()}: raised {type(error).__name__}: {error}")
            if check in ESSENTIAL:
                break
        else:
            problems.extend(context.pop("problems", []))
    return problems


class _Stop(Exception):
    pass


def _fail(context: dict, message: str) -> None:
    context.setdefault("problems", []).append(message)


def check_identity(context: dict) -> None:
    """name and description"""
    domain = context["domain"]
    if not domain.name or not domain.name.replace("-", "_").isidentifier():
        _fail(context, f"name {domain.name!r} should be a short identifier, e.g. 'points'")
    if not domain.description:
        _fail(context, "description is empty; `diffkit plugins` shows it")


def check_config(context: dict) -> None:
    """default_config and presets"""
    domain = context["domain"]
    config = default_config(domain)
    for section in ("data", "model", "diffusion", "train", "sample"):
        if not isinstance(config.get(section), dict):
            raise _Stop(f"default_config() lacks the section {section!r}")
    presets = domain.presets()
    for name in ("cpu", "gpu"):
        if name not in presets:
            _fail(context, f"presets() has no {name!r} preset")
    limits = limits_of(domain)
    unknown = [key for key in domain.limits() if lookup(config, key) is None]
    if unknown:
        _fail(context, f"limits() names {unknown[0]!r}, which default_config() lacks")
    layers = {"default_config()": config, **{f"preset {name!r}": preset for name, preset in presets.items()}}
    for where, layer in layers.items():  # keys the defaults have, values within the limits
        try:
            merge_config(config, layer)
            check_settings(layer, config, limits=limits)
        except (KeyError, ValueError) as error:
            _fail(context, f"{where}: {error.args[0]}")
    context["config"] = merge_config(config, context["overrides"])
    kinds = sampler_kinds(context["config"], domain)
    sampler = context["config"]["sample"]["sampler"]
    if sampler in SAMPLERS and sampler_kind(SAMPLERS[sampler]) not in kinds:  # plugins' samplers are not known here
        _fail(context, f"sample.sampler {sampler!r} is a {sampler_kind(SAMPLERS[sampler])} sampler, but diffusion.kind "
                       f"is {context['config']['diffusion']['kind']!r}, whose process runs {' or '.join(kinds)} "
                       "samplers: set one of those in default_config()")


def check_dataset(context: dict) -> None:
    """build_dataset and its items"""
    domain, config = context["domain"], context["config"]
    dataset = domain.build_dataset(config, context["data"])
    if len(dataset) < context["batch_size"]:
        raise _Stop(f"build_dataset() returned {len(dataset)} items; the kit needs at least {context['batch_size']}")
    item = dataset[0]
    if not isinstance(item, dict) or "x" not in item:
        raise _Stop(f"dataset items must be dicts with the key 'x', got {type(item).__name__}")
    unknown = set(item) - {"x", "cond", "mask", "extra"}
    if unknown:
        _fail(context, f"dataset items have unknown keys {sorted(unknown)}; allowed: x, cond, mask, extra")
    batch = default_collate([dataset[i] for i in range(context["batch_size"])])
    if "mask" in batch:
        _check_same_structure(context, "the loss mask", batch["mask"], batch["x"], broadcast=True)
    context["dataset"], context["batch"] = dataset, batch


def check_model(context: dict) -> None:
    """build_model, the process and the model's output"""
    domain, config, batch = context["domain"], context["config"], context["batch"]
    model = domain.build_model(config)
    domain.fit_data(model, context["dataset"], config)
    context["model"] = model
    context["process"] = process = build_diffusion(domain, config, model=model)
    problems = process.check_state(batch["x"])
    if problems:
        raise _Stop(problems[0])
    t = torch.rand(context["batch_size"])
    with torch.no_grad():
        output = model(batch["x"], t, cond=batch.get("cond"), **batch.get("extra", {}))
    for problem in process.check_output(output, batch["x"]):
        _fail(context, problem)


def check_noise(context: dict) -> None:
    """noise"""
    domain, batch = context["domain"], context["batch"]
    extra = batch.get("extra", {})
    first = domain.noise(batch["x"], torch.Generator().manual_seed(0), **extra)
    again = domain.noise(batch["x"], torch.Generator().manual_seed(0), **extra)
    _check_same_structure(context, "noise", first, batch["x"])
    if not all(torch.equal(a, b) for a, b in zip(leaves(first), leaves(again))):
        _fail(context, "noise() is not reproducible with the same generator: draw from the generator it gets")
    for problem in context["process"].check_noise(first):
        _fail(context, problem)


def check_null_cond(context: dict) -> None:
    """null_cond"""
    domain, batch, model = context["domain"], context["batch"], context["model"]
    cond = batch.get("cond")
    if cond is None:
        return
    uncond = domain.null_cond(cond)
    if uncond is None:
        _fail(context, "items carry 'cond' but null_cond() returns None: guidance and condition dropout need it")
        return
    _check_same_structure(context, "null_cond()", uncond, cond)
    with torch.no_grad():
        model(batch["x"], torch.rand(context["batch_size"]), cond=uncond, **batch.get("extra", {}))


def check_training(context: dict) -> None:
    """a few training steps"""
    domain, config, batch, model = context["domain"], context["config"], context["batch"], context["model"]
    diffusion = context["process"]
    generator = torch.Generator().manual_seed(0)
    n = context["batch_size"]
    fixed = {"t": torch.linspace(0.05, 0.95, n), "noise": domain.noise(batch["x"], generator, **batch.get("extra", {}))}

    def loss() -> torch.Tensor:
        return diffusion.loss(model, batch["x"], cond=batch.get("cond"), mask=batch.get("mask"),
                              model_kwargs=batch.get("extra", {}), leaf_weights=domain.leaf_weights(config), **fixed)

    model.train()
    with torch.no_grad():
        before = float(loss())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(context["steps"]):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(loss())
    if not after < before:
        _fail(context, f"{context['steps']} Adam steps on one fixed batch did not lower the loss ({before:.4f} -> {after:.4f})")
    model.eval()


def check_sampling(context: dict) -> None:
    """prepare_sampling, sampling, decode and write_samples"""
    domain, config, model, diffusion = context["domain"], context["config"], context["model"], context["process"]
    generator = SampleGenerators.seeded(0, range(2))  # one per sample, as `diffkit sample` passes them
    try:
        batch = domain.prepare_sampling(model, 2, config, generator=generator)
    except TypeError as error:
        raise _Stop(f"prepare_sampling() failed with one generator per sample ({str(error).splitlines()[0]}): draw random "
                    "choices through diffkit.draw_per_sample, which takes a generator of either kind") from None
    cond = batch.get("cond")
    sampler = config["sample"]["sampler"]  # the process's default stands in for a plugin's sampler
    sampler = sampler if sampler in SAMPLERS and sampler_kind(SAMPLERS[sampler]) in diffusion.sampler_kinds else None
    with torch.no_grad():
        x = diffusion.sample(model, batch["x"], sampler=sampler, steps=3, generator=generator, cond=cond,
                             uncond=domain.null_cond(cond) if cond is not None else None,
                             guidance=2.0 if cond is not None else 1.0, model_kwargs=batch.get("extra"),
                             mask=batch.get("mask"))
    _check_same_structure(context, "a sample", x, batch["x"])
    for problem in diffusion.check_sample(x, batch["x"], batch.get("mask")):
        _fail(context, problem)
    batch["x"] = domain.decode(x, batch, **accepted_keywords(domain.decode, model=model, config=config))
    context["samples"] = batch
    out = context["tmp"] / "conformance-samples"
    written = domain.write_samples(batch, out, config)
    if not written:
        _fail(context, "write_samples() returned no outputs")
    if not all(isinstance(item, Output) for item in written):
        _fail(context, "write_samples() should return diffkit.kit.Output records (path, kind, role), "
                       "which the runner and TensorBoard read")
    paths = [item.path if isinstance(item, Output) else Path(item) for item in written]
    for path in paths:
        if not path.is_file() or path.stat().st_size == 0:
            _fail(context, f"write_samples() reported {path}, which is missing or empty")
    _check_no_overwrite(context, domain, batch, out, config, paths)


def _check_no_overwrite(context: dict, domain: Domain, batch: dict, out: Path, config: dict, paths: list[Path]) -> None:
    """Writing to the same place again must fail with FileExistsError and change nothing."""
    before = {path: path.read_bytes() for path in paths if path.is_file()}
    try:
        domain.write_samples(batch, out, config)
    except FileExistsError:
        pass
    else:
        _fail(context, f"write_samples() wrote to {out} again without an error; outputs must never "
                       "overwrite (use diffkit.kit.check_new / write_new)")
    changed = [str(path) for path, content in before.items() if not path.is_file() or path.read_bytes() != content]
    if changed:
        _fail(context, f"writing to {out} a second time changed {changed[0]}")


def check_objects(context: dict) -> None:
    """to_objects"""
    if "samples" not in context:
        return  # sampling failed, which is reported already
    domain, samples, expected = context["domain"], context["samples"], context["object_type"]
    objects = domain.to_objects(samples, context["config"])
    count = leaves(samples["x"])[0].shape[0]
    if not isinstance(objects, list) or len(objects) != count:
        _fail(context, f"to_objects() should return a list of one object per sample ({count} here), "
                       f"got {objects!r:.200}")
        return
    if expected is not None:
        wrong = [type(item).__name__ for item in objects if not isinstance(item, expected)]
        if wrong:
            _fail(context, f"to_objects() returned {', '.join(wrong)}, expected {_type_names(expected)}")


def _type_names(expected: type | tuple[type, ...]) -> str:
    return " or ".join(kind.__name__ for kind in (expected if isinstance(expected, tuple) else (expected,)))


CHECKS: list[Callable[[dict], None]] = [check_identity, check_config, check_dataset, check_model, check_noise,
                                        check_null_cond, check_training, check_sampling, check_objects]
ESSENTIAL = {check_config, check_dataset, check_model}


def _check_same_structure(context: dict, what: str, value: State, reference: State, broadcast: bool = False) -> None:
    if isinstance(reference, dict) != isinstance(value, dict):
        _fail(context, f"{what} is a {type(value).__name__} but the state is a {type(reference).__name__}")
        return
    if isinstance(reference, dict):
        if set(value) != set(reference):
            _fail(context, f"{what} has keys {sorted(value)} but the state has {sorted(reference)}")
            return
        for key in reference:
            _check_leaf(context, f"{what}[{key!r}]", value[key], reference[key], broadcast)
    else:
        _check_leaf(context, what, value, reference, broadcast)


def _check_leaf(context: dict, what: str, value: torch.Tensor, reference: torch.Tensor, broadcast: bool) -> None:
    if not isinstance(value, torch.Tensor):
        _fail(context, f"{what} is a {type(value).__name__}, expected a tensor")
        return
    if broadcast:
        try:
            torch.broadcast_shapes(value.shape, reference.shape)
        except RuntimeError:
            _fail(context, f"{what} has shape {tuple(value.shape)}, which does not broadcast to {tuple(reference.shape)}")
        return
    if value.shape != reference.shape:
        _fail(context, f"{what} has shape {tuple(value.shape)}, expected {tuple(reference.shape)}")
    elif value.dtype != reference.dtype and reference.is_floating_point():
        _fail(context, f"{what} has dtype {value.dtype}, expected {reference.dtype}")


__all__ = ["ConformanceError", "assert_domain_conforms", "check_domain"]
