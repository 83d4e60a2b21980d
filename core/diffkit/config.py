"""Run configuration: the core's defaults, a domain's defaults and presets, the user's file and
``--set key=value`` overrides, merged in that order. Unknown keys are refused with a suggestion."""

from __future__ import annotations

import ast
import copy
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .domain import FREE_TABLES, Domain, merge_config, unknown_key_message

CORE_DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "cache_dir": "",            # derived files; "" = $DIFFKIT_CACHE_DIR, else ~/.cache/diffkit (diffkit.kit.cache)
    },
    "model": {},
    "diffusion": {
        "kind": "gaussian",         # gaussian | flow (flow matching) | categorical (integer states: see Domain.categories)
        "schedule": "cosine",       # linear | cosine | sigmoid | a registered name
        # eps | v | x0. v by default: at high noise an eps model's x0 estimate is its error divided
        # by a tiny alpha, which deterministic samplers amplify; v stays well conditioned.
        "prediction": "v",
        "weighting": "uniform",     # uniform | min_snr
        "min_snr_gamma": 5.0,
        "zero_terminal_snr": False,
        "transition": "uniform",    # categorical: uniform | absorbing (a mask state) | marginal (the data's law)
        "vb_weight": 0.0,           # categorical: weight of the variational-bound term beside the cross-entropy
        "path": "linear",           # flow: linear (x_t = (1 - t) x_0 + t eps, v = eps - x_0) | cosine
        "training_times": "uniform",    # flow: uniform | logit_normal (t = sigmoid(logit_mean + logit_std n))
        "logit_mean": 0.0,
        "logit_std": 1.0,
        "shift": 1.0,               # flow: SD3's time shift s t / (1 + (s - 1) t) of training and sampling times
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
        "ema_decay": 0.999,         # reached after a warm-up: step s decays by min(ema_decay, (1 + s) / (10 + s))
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
        "shard_data": False,        # under torchrun: each process draws its share from its own part of the data
        "init_from": "",            # fine-tuning: the weights to start from (a run folder, checkpoint, exported
                                    # folder, or a domain's name for its shipped weights); "" = fresh weights
        "stage": "diffusion",       # diffusion | autoencoder (the latent stage's autoencoder: diffkit.autoencoder)
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
    # The autoencoder of the latent stage (`diffkit train --stage autoencoder`, diffkit.autoencoder).
    "autoencoder": {
        "latent_channels": 4,
        "base_channels": 32,
        "channel_mults": [1, 2, 2],     # each level after the first halves the sides: latents 4x smaller per side
        "blocks_per_level": 1,
        "groups": 8,
        "posterior": "gaussian",        # gaussian (KL-regularised) | deterministic
        "kl_weight": 1e-5,              # weight of KL(q(z|x) || N(0, I)) per latent entry, beside the per-entry loss
        "adversarial_weight": 0.0,      # a patch discriminator's hinge term; 0 = none
        "adversarial_start": 0,         # the step from which the autoencoder takes the adversarial term
        "state_shape": [],              # the shape of one state it encodes: filled in from the data
    },
    # Diffusion on an autoencoder's latents (`diffkit train --autoencoder AE`, diffkit.latent).
    "latent": {
        "autoencoder": "",          # the autoencoder (absolute path or shipped name); "" = diffusion on the data itself
        "sha256": "",               # the digest of its weights, checked whenever they are read
        "settings": {},             # its settings, filled in from it: they describe the data it encodes
        "encode_batch": 64,         # states encoded at a time when the data's latents are computed
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


@dataclass(frozen=True)
class Limit:
    """The range a numeric setting must lie in: ``low`` and ``high`` (``None``: no bound), each
    included unless ``low_open``/``high_open``. A list setting's items must each lie in it. Every
    number must be finite as well, whatever its limit."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'greater than' if self.low_open else 'at least'} {self.low:g}"
        if self.high is not None:
            return f"{'less than' if self.high_open else 'at most'} {self.high:g}"
        return "a finite number"


def at_least(low: float) -> Limit:
    return Limit(low)


def above(low: float) -> Limit:
    return Limit(low, low_open=True)


#: Any finite number: for settings whose every value means something (a seed, a guidance weight).
FINITE = Limit()
#: A probability or a share: in [0, 1].
FRACTION = Limit(0, 1)

# Values outside these make a run do nothing, or fail far from the setting that caused it. A domain
# adds the limits of its own settings with Domain.limits(); every number must be finite.
LIMITS: dict[str, Limit] = {
    "diffusion.min_snr_gamma": above(0), "diffusion.vb_weight": at_least(0),
    "diffusion.logit_mean": FINITE, "diffusion.logit_std": above(0), "diffusion.shift": above(0),
    "train.steps": at_least(1), "train.batch_size": at_least(1), "train.lr": at_least(0),
    "train.weight_decay": at_least(0), "train.warmup_steps": at_least(0), "train.grad_clip": at_least(0),
    "train.grad_accum": at_least(1), "train.ema_decay": FRACTION, "train.cond_drop": FRACTION,
    # 0 turns these off (keep_checkpoints: keeps them all)
    "train.checkpoint_every": at_least(0), "train.keep_checkpoints": at_least(0),
    "train.preview_every": at_least(0), "train.log_every": at_least(0),
    "train.preview_count": at_least(1), "train.num_workers": at_least(0), "train.seed": FINITE,
    "train.fsdp_unit_params": at_least(1),
    "sample.steps": at_least(1), "sample.guidance": FINITE, "sample.batch_size": at_least(1),
    "sample.workers": at_least(0), "sample.resample": at_least(1),
    "distill.teacher_substeps": at_least(1), "distill.guidance": FINITE,
    "autoencoder.latent_channels": at_least(1), "autoencoder.base_channels": at_least(1),
    "autoencoder.channel_mults": at_least(1), "autoencoder.blocks_per_level": at_least(0),
    "autoencoder.groups": at_least(1), "autoencoder.kl_weight": at_least(0),
    "autoencoder.adversarial_weight": at_least(0), "autoencoder.adversarial_start": at_least(0),
    "autoencoder.state_shape": at_least(1), "latent.encode_batch": at_least(1),
}


def limits_of(domain: Domain) -> dict[str, Limit]:
    """The core's :data:`LIMITS` with the domain's own (:meth:`~diffkit.Domain.limits`) over them."""
    return {**LIMITS, **domain.limits()}


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
    the types of its values and their limits (:func:`check_config`)."""
    config = default_config(domain)
    defaults, limits = copy.deepcopy(config), limits_of(domain)
    if preset is not None:
        partial = preset_config(domain, preset)
        config = merge_config(config, partial)
        check_config(partial, defaults, source=f"preset {preset!r}", limits=limits)
    return apply_user_layers(config, defaults, file=file, sets=sets, overrides=overrides, limits=limits)


def apply_user_layers(config: dict, defaults: Mapping, *, file: str | Path | None = None, sets: list[str] = (),
                      overrides: Mapping[str, Any] | None = None, limits: Mapping[str, Limit] = LIMITS) -> dict:
    """``config`` under a user's TOML file, ``--set`` assignments and option overrides, in that
    order, each checked against ``defaults`` and ``limits`` (keys, types, ranges)."""
    below, layers = config, []
    if file is not None:
        layers.append(load_toml(file))
        config = merge_config(config, layers[-1])
        check_config(layers[-1], defaults, source=f"config file {str(file)!r}", limits=limits)
    for assignment in sets:
        layers.append(parse_assignment(assignment, config, limits=limits))
        config = merge_config(config, layers[-1])
    if overrides:
        layers.append(overrides)
        config = merge_config(config, overrides)
        check_config(overrides, defaults, limits=limits)
    return options_follow_sampler(below, sampler_follows_kind(below, config, layers), layers)


def sampler_follows_kind(below: Mapping, config: dict, layers: list[Mapping]) -> dict:
    """``config`` with its process's default sampler when the user's ``layers`` choose another
    ``diffusion.kind`` and no sampler, and the sampler of ``below`` is of a kind the new process
    does not run (``--set diffusion.kind=flow`` on a domain whose default sampler is categorical)."""
    from .generate import PROCESSES
    from .samplers import SAMPLERS, sampler_kind

    kind, sampler = config["diffusion"].get("kind"), config["sample"]["sampler"]
    if kind == below["diffusion"].get("kind") or kind not in PROCESSES or sampler not in SAMPLERS or any(
            isinstance(layer.get("sample"), Mapping) and "sampler" in layer["sample"] for layer in layers):
        return config
    if sampler_kind(SAMPLERS[sampler]) not in PROCESSES[kind].sampler_kinds:
        config = {**config, "sample": {**config["sample"], "sampler": PROCESSES[kind].defaults["sample"]["sampler"]}}
    return config


def options_follow_sampler(below: Mapping, config: dict, layers: list[Mapping]) -> dict:
    """``config`` (``below`` under the user's ``layers``) without the sampler options of
    ``below`` when the layers choose another sampler and give no options: they were the replaced
    sampler's. Considering the layers together makes the order of ``--set`` irrelevant."""
    sample = config.get("sample", {})
    if sample.get("sampler") != below.get("sample", {}).get("sampler") and not any(
            isinstance(layer.get("sample"), Mapping) and "options" in layer["sample"] for layer in layers):
        sample["options"] = {}
    return config


def check_config(config: Mapping, defaults: Mapping, *, source: str = "", where: str = "",
                 limits: Mapping[str, Limit] = LIMITS) -> None:
    """Refuse a value of ``config`` (a whole config or one layer of it) whose type differs from its
    default's, that is not finite, or that lies outside its limit in ``limits`` (the core's
    :data:`LIMITS` by default; :func:`limits_of` a domain adds its own). An integer passes for a
    float, a boolean does not pass for a number, a default of ``None`` takes anything and lists are
    checked element by element against the type of the default's elements. Keys absent from
    ``defaults`` are left to :func:`~diffkit.domain.merge_config`. The ValueError names the key,
    the value, what was expected and ``source`` (e.g. ``config file 'run.toml'``)."""
    for key, value in config.items():
        if key not in defaults:
            continue
        path = f"{where}.{key}" if where else key
        if isinstance(defaults[key], Mapping) and isinstance(value, Mapping):
            check_config(value, defaults[key], source=source, where=path, limits=limits)
        else:
            check_value(path, value, defaults[key], source=source, limits=limits)


def check_value(key: str, value: Any, default: Any, *, source: str = "",
                limits: Mapping[str, Limit] = LIMITS) -> None:
    """One setting against its default and its limit; see :func:`check_config`."""
    problem = value_problem(value, default, limits.get(key))
    if problem is not None:
        raise ValueError(f"config key {key!r} {problem}" + (f" from {source}" if source else ""))


def value_problem(value: Any, default: Any, limit: Limit | None = None) -> str | None:
    """What is wrong with ``value`` for a setting whose default is ``default`` and whose range is
    ``limit`` (e.g. ``"must be at least 1, got 0"``), or None. Any number must be finite."""
    return type_problem(value, default) or range_problem(value, limit)


def type_problem(value: Any, default: Any) -> str | None:
    """``"expects an integer (int), got '3' (str)"`` when ``value`` does not have the type of ``default``."""
    expected = _expected_type(value, default)
    return None if expected is None else f"expects {expected}, got {value!r} ({type(value).__name__})"


def range_problem(value: Any, limit: Limit | None = None) -> str | None:
    """``"must be at least 1, got 0"`` when a number (or an item of a list of numbers) is outside
    ``limit`` or is not finite."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if not all(_is_number(item) for item in items):
        return None
    limit = limit or FINITE
    if all(limit.admits(item) for item in items):
        return None
    if isinstance(value, (list, tuple)):
        return f"must be a list of numbers each {limit}, got {value!r}"
    return f"must be {limit}, got {value!r}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _expected_type(value: Any, default: Any) -> str | None:
    """What ``value`` should have been, when it does not fit the type of ``default``; else None."""
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false (bool)"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer (int)"
    if isinstance(default, float):
        return None if _is_number(value) else "a number (float)"
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
WEIGHT_SECTIONS = ("data", "model", "diffusion", "autoencoder", "latent")


def sampling_config(domain: Domain, saved: Mapping[str, Any], *, file: str | Path | None = None,
                    sets: list[str] = ()) -> dict:
    """A checkpoint's config with a user's file and ``--set`` assignments merged over it, for sampling.

    Any setting may be given, but one of :data:`WEIGHT_SECTIONS` may not take a value other than
    the checkpoint's: the weights were trained with it. The refusal names each such key.
    """
    base, limits = fill_defaults(domain, saved), limits_of(domain)
    config, layers = base, []
    if file is not None:
        layers.append(load_toml(file))
        config = merge_config(config, layers[-1])
        check_config(layers[-1], base, source=f"config file {str(file)!r}", limits=limits)
    for assignment in sets:
        layers.append(parse_assignment(assignment, config, limits=limits))
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


def parse_assignment(assignment: str, config: Mapping, *, limits: Mapping[str, Limit] = LIMITS) -> dict:
    """``"train.lr=1e-3"`` -> ``{"train": {"lr": 0.001}}``; the value is read as a Python
    literal when it is one (numbers, booleans, lists), as a number when ``float`` reads it
    (``nan``, ``inf``) and as a string otherwise. It is checked against the value it replaces in
    ``config`` and its limit in ``limits``."""
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
    check_value(dotted.strip(), value, node, source=f"--set {assignment.strip()}", limits=limits)
    nested: dict = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        nested = {key: nested}
    return nested


def _literal(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for read in (ast.literal_eval, float):  # float reads nan and inf, so that they are refused as numbers
        try:
            return read(raw)
        except (ValueError, SyntaxError):
            pass
    return raw


def _deep_update(base: dict, update: Mapping) -> dict:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base
