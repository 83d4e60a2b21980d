"""Run configuration: the core's defaults, a domain's defaults and presets, the user's file and
``--set key=value`` overrides, merged in that order. Unknown keys are refused with a suggestion."""

from __future__ import annotations

import ast
import copy
import tomllib
from pathlib import Path
from typing import Any, Mapping

from .domain import FREE_TABLES, Domain, merge_config, unknown_key_message

CORE_DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "cache_dir": "",            # derived files; "" = $DIFFKIT_CACHE_DIR, else ~/.cache/diffkit (diffkit.kit.cache)
    },
    "model": {},
    "diffusion": {
        "kind": "gaussian",         # gaussian | categorical (integer states: see Domain.categories)
        "schedule": "cosine",       # linear | cosine | sigmoid | a registered name
        # eps | v | x0. v by default: at high noise an eps model's x0 estimate is its error divided
        # by a tiny alpha, which deterministic samplers amplify; v stays well conditioned.
        "prediction": "v",
        "weighting": "uniform",     # uniform | min_snr
        "min_snr_gamma": 5.0,
        "zero_terminal_snr": False,
        "transition": "uniform",    # categorical: uniform | absorbing (a mask state) | marginal (the data's law)
        "vb_weight": 0.0,           # categorical: weight of the variational-bound term beside the cross-entropy
    },
    "train": {
        "steps": 2000,
        "batch_size": 64,           # global: split across processes under torchrun
        "lr": 2e-4,
        "weight_decay": 0.0,
        "warmup_steps": 100,
        "lr_schedule": "cosine",    # cosine | constant
        "grad_clip": 1.0,
        "grad_accum": 1,
        "ema_decay": 0.999,
        "cond_drop": 0.1,           # probability of training a sample unconditionally (for guidance)
        "checkpoint_every": 500,
        "keep_checkpoints": 2,
        "preview_every": 500,
        "preview_count": 16,
        "preview_cond": "",         # the condition of previews, as --cond reads it; "" = the domain's default
        "log_every": 10,
        "num_workers": 0,
        "seed": 0,
        "compile": False,
        "parallel": "ddp",          # under torchrun: ddp replicates the model, fsdp shards it
        "fsdp_unit_params": 1_000_000,  # fsdp: submodules this large are gathered one at a time
        "init_from": "",            # fine-tuning: the weights to start from (a run folder, checkpoint, exported
                                    # folder, or a domain's name for its shipped weights); "" = fresh weights
    },
    "sample": {
        "sampler": "dpmpp_2m",
        "steps": 30,
        "spacing": "auto",           # auto: the spacing each sampler was tuned with
        "guidance": 1.0,
        "batch_size": 256,
        "precision": "float32",      # bfloat16: a bfloat16 copy of the network samples; auto: bfloat16 where native
        "workers": 0,                # CPU: processes sharing the chunks; 0 = one per core, at most 4
        "resample": 1,               # inpainting (--mask, a domain's kept part): rounds per step (RePaint)
        "options": {},               # the sampler's keyword options, e.g. {eta = 0.5} for ddim
    },
    # A few-step student (`diffkit distill`, diffkit.distill): how the teacher's targets are made.
    "distill": {
        "teacher": "",              # the domain's name (its shipped weights) or a path; "" = not a student
        "teacher_sampler": "dpmpp_2m",  # the solver that takes the teacher through one student step
        "teacher_substeps": 4,      # teacher solver steps per student step (model calls, but 2 a step for heun)
        "teacher_spacing": "uniform",   # uniform | log_snr: how the substeps divide a student step
        "weighting": "x0",          # x0 | step: the error of the clean-data estimate, or of where the step lands
        "guidance": 1.0,            # the teacher's guidance weight, learned by the student (which samples unguided)
    },
}


def default_config(domain: Domain) -> dict:
    """The core defaults updated by the domain's own defaults (which may add keys)."""
    return _deep_update(copy.deepcopy(CORE_DEFAULTS), domain.default_config())


def fill_defaults(domain: Domain, config: Mapping[str, Any]) -> dict:
    """``config`` completed with the settings it lacks (added since it was saved) at their defaults,
    after the domain's :meth:`~diffkit.Domain.upgrade_config` has read it in today's terms."""
    saved = domain.upgrade_config(copy.deepcopy(dict(config)))
    filled = _deep_update(default_config(domain), saved)
    for path in FREE_TABLES:  # a saved free table is whole: the defaults' keys are not added to it
        section, key = path.split(".")
        if isinstance(saved.get(section), Mapping) and key in saved[section]:
            filled[section][key] = copy.deepcopy(saved[section][key])
    return filled


def resolve_config(domain: Domain, *, preset: str | None = None, file: str | Path | None = None,
                   overrides: Mapping[str, Any] | None = None, sets: list[str] = ()) -> dict:
    """The effective configuration of a run; every layer is checked against the defaults: its keys,
    the types of its values and their minimums (:func:`check_config`)."""
    config = default_config(domain)
    defaults = copy.deepcopy(config)
    if preset is not None:
        partial = preset_config(domain, preset)
        config = merge_config(config, partial)
        check_config(partial, defaults, source=f"preset {preset!r}")
    return apply_user_layers(config, defaults, file=file, sets=sets, overrides=overrides)


def apply_user_layers(config: dict, defaults: Mapping, *, file: str | Path | None = None, sets: list[str] = (),
                      overrides: Mapping[str, Any] | None = None) -> dict:
    """``config`` under a user's TOML file, ``--set`` assignments and option overrides, in that
    order, each checked against ``defaults`` (keys, types, minimums)."""
    below, layers = config, []
    if file is not None:
        layers.append(load_toml(file))
        config = merge_config(config, layers[-1])
        check_config(layers[-1], defaults, source=f"config file {str(file)!r}")
    for assignment in sets:
        layers.append(parse_assignment(assignment, config))
        config = merge_config(config, layers[-1])
    if overrides:
        layers.append(overrides)
        config = merge_config(config, overrides)
        check_config(overrides, defaults)
    return options_follow_sampler(below, config, layers)


def options_follow_sampler(below: Mapping, config: dict, layers: list[Mapping]) -> dict:
    """``config`` (``below`` under the user's ``layers``) without the sampler options of
    ``below`` when the layers choose another sampler and give no options: they were the replaced
    sampler's. Considering the layers together makes the order of ``--set`` irrelevant."""
    sample = config.get("sample", {})
    if sample.get("sampler") != below.get("sample", {}).get("sampler") and not any(
            isinstance(layer.get("sample"), Mapping) and "options" in layer["sample"] for layer in layers):
        sample["options"] = {}
    return config


# Values below these make a run do nothing, or fail far from the setting that caused it.
MINIMUMS: dict[str, int] = {
    "train.steps": 1, "train.batch_size": 1, "train.grad_accum": 1, "sample.steps": 1, "sample.batch_size": 1, "sample.resample": 1,
    "sample.workers": 0, "distill.teacher_substeps": 1,
}


def check_config(config: Mapping, defaults: Mapping, *, source: str = "", where: str = "") -> None:
    """Refuse a value of ``config`` (a whole config or one layer of it) whose type differs from its
    default's, or that is below its minimum in :data:`MINIMUMS`. An integer passes for a float, a
    boolean does not pass for a number, a default of ``None`` takes anything and lists are checked
    element by element against the type of the default's elements. Keys absent from ``defaults``
    are left to :func:`~diffkit.domain.merge_config`. The ValueError names the key, the value, what
    was expected and ``source`` (e.g. ``config file 'run.toml'``)."""
    for key, value in config.items():
        if key not in defaults:
            continue
        path = f"{where}.{key}" if where else key
        if isinstance(defaults[key], Mapping) and isinstance(value, Mapping):
            check_config(value, defaults[key], source=source, where=path)
        else:
            check_value(path, value, defaults[key], source=source)


def check_value(key: str, value: Any, default: Any, *, source: str = "") -> None:
    """One setting against its default; see :func:`check_config`."""
    origin = f" from {source}" if source else ""
    expected = _expected_type(value, default)
    if expected is not None:
        raise ValueError(f"config key {key!r} expects {expected}, got {value!r} "
                         f"({type(value).__name__}){origin}")
    minimum = MINIMUMS.get(key)
    if minimum is not None and isinstance(value, (int, float)) and value < minimum:
        raise ValueError(f"config key {key!r} must be at least {minimum}, got {value!r}{origin}")


def _expected_type(value: Any, default: Any) -> str | None:
    """What ``value`` should have been, when it does not fit the type of ``default``; else None."""
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false (bool)"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer (int)"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number (float)"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string (str)"
    if isinstance(default, Mapping):
        return None if isinstance(value, Mapping) else "a table of settings"
    if isinstance(default, (list, tuple)):
        kinds = {type(item) for item in default}
        if not isinstance(value, (list, tuple)):
            return "a list"
        if len(kinds) == 1 and any(_expected_type(item, default[0]) for item in value):
            return f"a list whose items are each {_expected_type(None, default[0])}"
    return None


def preset_config(domain: Domain, preset: str) -> dict:
    """The partial config of one of the domain's presets; an unknown name lists the known ones."""
    presets = domain.presets()
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for domain {domain.name!r}; "
                         f"available: {', '.join(sorted(presets)) or 'none'}")
    return presets[preset]


# Sections that describe the weights: a checkpoint's values stay when sampling from it.
WEIGHT_SECTIONS = ("data", "model", "diffusion")


def sampling_config(domain: Domain, saved: Mapping[str, Any], *, file: str | Path | None = None,
                    sets: list[str] = ()) -> dict:
    """A checkpoint's config with a user's file and ``--set`` assignments merged over it, for sampling.

    Any setting may be given, but one of :data:`WEIGHT_SECTIONS` may not take a value other than
    the checkpoint's: the weights were trained with it. The refusal names each such key.
    """
    base = fill_defaults(domain, saved)
    config, layers = base, []
    if file is not None:
        layers.append(load_toml(file))
        config = merge_config(config, layers[-1])
    for assignment in sets:
        layers.append(parse_assignment(assignment, config))
        config = merge_config(config, layers[-1])
    config = options_follow_sampler(base, config, layers)
    fixed = [key for key in differing_keys(base, config) if key.split(".")[0] in WEIGHT_SECTIONS]
    if fixed:
        details = "; ".join(f"{key} is {lookup(base, key)!r} there, not {lookup(config, key)!r}" for key in fixed)
        raise ValueError(f"these settings are fixed by the checkpoint's weights: {details}")
    return config


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two configs (a key missing on one side differs)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys = sorted(set(a) | set(b))
        return [k for key in keys for k in differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def lookup(config: Mapping, dotted: str) -> Any:
    """The value at a dotted key, ``None`` where it is missing."""
    node: Any = config
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {error}") from None


def parse_assignment(assignment: str, config: Mapping) -> dict:
    """``"train.lr=1e-3"`` -> ``{"train": {"lr": 0.001}}``; the value is read as a Python
    literal when it is one (numbers, booleans, lists) and as a string otherwise."""
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value (e.g. train.lr=1e-3), got {assignment!r}")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    node: Any = config
    for depth, key in enumerate(keys):
        free_table, in_free_table = ".".join(keys[: depth + 1]) in FREE_TABLES, ".".join(keys[:depth]) in FREE_TABLES
        if isinstance(node, Mapping) and key not in node and (free_table or in_free_table):
            node = {} if free_table else None  # a free table's new key has no default to check against
            continue
        if not isinstance(node, Mapping) or key not in node:
            where = ".".join(keys[: depth + 1])
            raise KeyError(unknown_key_message(where, key, node if isinstance(node, Mapping) else {}))
        node = node[key]
    value = _literal(raw.strip())
    check_value(dotted.strip(), value, node, source=f"--set {assignment.strip()}")
    nested: dict = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        nested = {key: nested}
    return nested


def _literal(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _deep_update(base: dict, update: Mapping) -> dict:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base
