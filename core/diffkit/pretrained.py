"""Portable weights: a folder anyone can load without unpickling anything.

    my-model/
      model.safetensors   the EMA weights (tensors only, safetensors format)
      autoencoder.safetensors   a latent diffusion's autoencoder (:mod:`diffkit.latent`), apart
      config.json         the resolved config, domain, plugin, versions, step, non-tensor model
                          state, card facts, and the SHA-256 digests checked on load
      README.md           the model card: domain, data, training command, steps, hardware,
                          measured scores, licences

The digests: ``sha256`` of ``model.safetensors`` (and ``autoencoder_sha256`` of
``autoencoder.safetensors``); ``settings_sha256`` of what describes the
weights (the domain, the non-tensor model state, every setting but ``sample.*``);
``sample_sha256`` of the sampling settings. Changed weights or settings are refused (they
must stay as the weights were trained); changed sampling settings are used, with a warning
that says so (``diffkit export --set sample.KEY=VALUE`` writes a folder with other ones).
Missing digests (a folder written before they existed) give an
:class:`~diffkit.checkpoint.UncheckedWarning`.

``diffkit export RUN --out DIR``, :meth:`diffkit.pipeline.Pipeline.save_pretrained` and the
shipped weights of the built-in domains write this format; ``diffkit sample --checkpoint DIR``
and ``diffkit.load(DIR)`` read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .checkpoint import CheckpointError, warn_unchecked
from .kit.files import check_writable

FORMAT = "diffkit-pretrained/1"
WEIGHTS_FILE = "model.safetensors"
AUTOENCODER_FILE = "autoencoder.safetensors"
#: The names of a latent diffusion's autoencoder tensors (:class:`diffkit.latent.LatentModel`).
AUTOENCODER_PREFIX = "autoencoder."
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"

#: The facts a model card may state, with what each means. Unknown keys are refused.
CARD_FIELDS: dict[str, str] = {
    "data": "what the model was trained on",
    "data_license": "the licence of that data",
    "training_command": "the command(s) that trained it",
    "hardware": "where and for how long it trained",
    "scores": "measured scores, {name: value}",
    "scores_setup": "how the scores were measured",
    "license": "the licence of the weights",
    "notes": "anything else a user should know",
}
NOT_RECORDED = "not recorded"


class ChecksumError(CheckpointError):
    """``model.safetensors`` does not match the SHA-256 that ``config.json`` records."""


def is_pretrained_folder(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file() and (Path(path) / WEIGHTS_FILE).is_file()


def check_card(card: Mapping[str, Any], where: str = "the model card") -> dict:
    """``card`` as a plain dict; an unknown key is an error naming it and the known ones."""
    unknown = sorted(set(card) - set(CARD_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(CARD_FIELDS)}")
    if "scores" in card and not isinstance(card["scores"], Mapping):
        raise ValueError(f"{where}: 'scores' must be a table of name: value, got {card['scores']!r}")
    return json.loads(json.dumps(dict(card)))


def save_pretrained(state: Mapping[str, Any], out: str | Path, card: Mapping[str, Any] | None = None) -> Path:
    """Write the folder ``out`` from a sampling state (the keys of an exported checkpoint:
    ``domain``, ``config``, ``ema``, and ``plugin``, ``plugin_version``, ``diffkit_version``,
    ``step`` when known). ``card`` adds model-card facts over those in ``state["card"]``.

    ``out`` must not exist or be an empty folder: nothing is overwritten. The folder appears
    whole or not at all (it is written beside ``out`` and renamed into place). Where ``out``
    cannot be written, a PermissionError (or NotADirectoryError) says so before any work."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{str(out)!r} already exists and is not an empty folder; choose another "
                              "folder (nothing is overwritten)")
    check_writable(out.parent if out.is_dir() else out, "the weights folder")
    tensors, extra_state = _split_state(state["ema"])
    on_latents = bool((state["config"].get("latent") or {}).get("autoencoder"))
    autoencoder = {key: tensors.pop(key) for key in list(tensors) if on_latents and key.startswith(AUTOENCODER_PREFIX)}
    weights = _safetensors_bytes(tensors)
    facts = check_card({**(state.get("card") or {}), **(card or {})})
    config = {
        "format": FORMAT,
        "domain": state["domain"],
        "plugin": state.get("plugin") or "",
        "plugin_version": state.get("plugin_version") or "",
        "diffkit_version": state.get("diffkit_version") or "",
        "step": state.get("step"),
        "weights": WEIGHTS_FILE,
        "sha256": hashlib.sha256(weights).hexdigest(),
        "values": sum(tensor.numel() for tensor in tensors.values()),
        **({"autoencoder_weights": AUTOENCODER_FILE,
            "autoencoder_sha256": hashlib.sha256(autoencoder_bytes := _safetensors_bytes(autoencoder)).hexdigest(),
            "autoencoder_values": sum(tensor.numel() for tensor in autoencoder.values())} if autoencoder else {}),
        "extra_state": extra_state,
        "card": facts,
        "config": state["config"],
    }
    config = json.loads(json.dumps(config))  # as it reads back, so that its digests match on load
    config.update(settings_digests(config))
    files = {
        WEIGHTS_FILE: weights,
        **({AUTOENCODER_FILE: autoencoder_bytes} if autoencoder else {}),
        CONFIG_FILE: (json.dumps(config, indent=2) + "\n").encode(),
        CARD_FILE: model_card(config, tensors).encode(),
    }
    return _create_folder(out, files)


def load_pretrained(folder: str | Path) -> dict:
    """The sampling state of a folder written by :func:`save_pretrained`, shaped like an exported
    checkpoint (``domain``, ``config``, ``ema``, ``step``, ...), plus its ``card`` facts.

    Raises :class:`ChecksumError` when the weights file is not the one ``config.json`` names."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{str(config_path)!r} is not readable JSON: {error}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{str(config_path)!r} is not a diffkit weights config (expected format {FORMAT!r})")
    data = _checked_bytes(weights_path, config.get("sha256"), "sha256", config_path)
    if config.get("autoencoder_weights"):
        autoencoder = _checked_bytes(folder / config["autoencoder_weights"], config.get("autoencoder_sha256"),
                                     "autoencoder_sha256", config_path)
    _check_settings(config, config_path)
    from safetensors.torch import load as load_safetensors

    weights: dict[str, Any] = load_safetensors(data)
    if config.get("autoencoder_weights"):
        weights.update(load_safetensors(autoencoder))
    weights.update(config.get("extra_state", {}))
    keys = ("domain", "plugin", "plugin_version", "diffkit_version", "step", "config")
    return {**{key: config.get(key) for key in keys}, "card": config.get("card") or {}, "ema": weights}


def _checked_bytes(path: Path, recorded: str | None, key: str, config_path: Path) -> bytes:
    """The content of a weights file, checked against the SHA-256 that ``config.json`` records under ``key``."""
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r}, which {CONFIG_FILE} names, is missing; restore it or export again")
    data = path.read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if recorded is None:
        warn_unchecked(f"{str(config_path)!r} records no SHA-256 of {path.name}, so damage or changes to the "
                       "weights cannot be detected; they are used unchecked")
    elif found != recorded:
        raise ChecksumError(f"{str(path)!r} has SHA-256 {found}, but {CONFIG_FILE} records {key} "
                            f"{recorded}: the file is damaged or was replaced; restore it or export again")
    return data


def settings_digests(config: Mapping[str, Any]) -> dict[str, str]:
    """The SHA-256 digests of a ``config.json``'s settings (see the module docstring)."""
    settings = dict(config.get("config") or {})
    sample = settings.pop("sample", None)
    described = {"domain": config.get("domain"), "extra_state": config.get("extra_state"), "config": settings}
    return {"settings_sha256": _json_digest(described), "sample_sha256": _json_digest(sample)}


def _json_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_settings(config: Mapping[str, Any], path: Path) -> None:
    """Refuse a ``config.json`` whose settings changed since it was written; warn about changed
    sampling settings, and about digests it lacks."""
    recorded = {key: config.get(key) for key in ("settings_sha256", "sample_sha256")}
    if None in recorded.values():
        warn_unchecked(f"{str(path)!r} records no digest of its settings, so changes to them cannot be detected; "
                       "they are used unchecked")
        return
    found = settings_digests(config)
    if found["settings_sha256"] != recorded["settings_sha256"]:
        raise CheckpointError(f"{str(path)!r} was changed after it was written: its settings other than sample.* "
                              "(and its domain and model state) must stay as the weights were trained; restore it, "
                              "or export the weights again from their run folder or checkpoint")
    if found["sample_sha256"] != recorded["sample_sha256"]:
        warnings.warn(f"the sampling settings (sample.*) in {str(path)!r} were changed after it was written; "
                      "they are used as they are now", UserWarning, stacklevel=3)


def _split_state(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (contiguous CPU copies: safetensors refuses shared or strided storage) and the
    other entries (``get_extra_state`` values), which must be plain JSON values."""
    tensors, extra = {}, {}
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().to("cpu").contiguous().clone()
            continue
        try:
            extra[key] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            raise ValueError(f"model state entry {key!r} is a {type(value).__name__} that JSON cannot hold; "
                             "portable weights keep tensors and plain values (lists, numbers, strings) only") from None
    return tensors, extra


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata={"format": "pt"})


def _create_folder(out: Path, files: dict[str, bytes]) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    staging.mkdir()  # not mkdtemp: the folder should get the usual permissions, not 0700
    try:
        for name, content in files.items():
            (staging / name).write_bytes(content)
        if out.exists():
            out.rmdir()  # empty (checked by the caller); rmdir refuses if that changed since
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def export(source: str | Path, out: str | Path, card: Mapping[str, Any] | None = None, sets: Sequence[str] = ()) -> Path:
    """What ``diffkit export`` does: the sampling part of a checkpoint file, a run folder (its
    latest checkpoint) or an exported folder, written to ``out``. Card facts come from the source
    (an exported folder's card; a run folder's ``run.json`` says what data it trained on), then
    from ``card``. ``sets`` (``"sample.steps=20"``, ...) change the sampling settings the folder
    ships with, and only those."""
    from . import checkpoint as ckpt

    state = ckpt.load_sampling_state(source)
    state["config"] = shipped_sampling(state["config"], sets)
    facts = {**(state.get("card") or {}), **_run_folder_facts(Path(source)), **(card or {})}
    return save_pretrained(state, out, facts)


def shipped_sampling(config: dict, sets: Sequence[str]) -> dict:
    """``config`` with ``--set`` assignments to its ``sample`` section; any other key is refused:
    the other sections describe how the weights were made."""
    from .config import parse_assignment
    from .domain import merge_config

    for assignment in sets:
        key = assignment.split("=", 1)[0].strip()
        if not key.startswith("sample."):
            raise ValueError(f"export --set {assignment!r}: only the sampling settings the weights ship with "
                             "(sample.*) can be set; the other sections say how the weights were made")
        config = merge_config(config, parse_assignment(assignment, config))
    return config


def _run_folder_facts(source: Path) -> dict:
    from .checkpoint import read_run_info

    info = read_run_info(source) if source.is_dir() else {}
    if not info:
        return {}
    data = info.get("data")
    return {"data": "the domain's bundled default data" if data is None else f"{data} (as given to --data)"}


def read_card_file(path: str | Path) -> dict:
    """Model-card facts from a JSON file (keys: see :data:`CARD_FIELDS`)."""
    path = Path(path)
    try:
        facts = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"card file {str(path)!r} is not readable JSON: {error}") from None
    if not isinstance(facts, dict):
        raise ValueError(f"card file {str(path)!r} must hold a JSON object of {', '.join(CARD_FIELDS)}")
    return check_card(facts, where=f"card file {str(path)!r}")


# -- the model card --------------------------------------------------------------------------

def model_card(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """The README.md of a weights folder, from its ``config.json`` content."""
    card, domain, settings = config["card"], config["domain"], config["config"]
    dtypes = sorted({str(tensor.dtype).removeprefix("torch.") for tensor in tensors.values()})
    size = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    batch = settings.get("train", {}).get("batch_size")
    steps = "not recorded" if config["step"] is None else f"{config['step']:,}" + (f" of batch {batch}" if batch else "")
    made_by = " ".join(part for part in (config["plugin"], config["plugin_version"]) if part) or "plugin not recorded"
    rows = [
        ("domain", f"`{domain}` ({made_by}, diffkit {config['diffkit_version'] or 'version not recorded'})"),
        ("data", card.get("data", NOT_RECORDED)),
        ("data licence", card.get("data_license", NOT_RECORDED)),
        ("training command", _code(card.get("training_command"))),
        ("steps", steps),
        ("hardware", card.get("hardware", NOT_RECORDED)),
        ("weights", f"{config['values']:,} values ({', '.join(dtypes)}, {_size(size)}), the EMA of training"),
        *([("autoencoder", f"`{config['autoencoder_weights']}`: {config['autoencoder_values']:,} values, trained "
                           f"apart and frozen; the diffusion runs on its latents")] if config.get("autoencoder_weights") else []),
        ("weights licence", card.get("license", NOT_RECORDED)),
    ]
    lines = [f"# diffkit `{domain}` model", "",
             f"Weights for diffkit's `{domain}` domain: `{WEIGHTS_FILE}` (safetensors) and `{CONFIG_FILE}` "
             "(the configuration they were trained with, provenance, and the SHA-256 of the weights file, "
             "checked when they are loaded).", "",
             "| | |", "|---|---|", *(f"| {name} | {_cell(value)} |" for name, value in rows), ""]
    lines += _scores_section(card)
    lines += ["## Use", "", "```python", "import diffkit", "",
              'pipe = diffkit.load("path/to/this/folder")', "samples = pipe.sample(16, seed=0)", "```", "",
              "```bash", f"diffkit sample --domain {domain} --checkpoint path/to/this/folder -n 16 --out samples/",
              "```", ""]
    if card.get("notes"):
        lines += ["## Notes", "", str(card["notes"]), ""]
    return "\n".join(lines)


def _scores_section(card: Mapping[str, Any]) -> list[str]:
    scores = card.get("scores") or {}
    if not scores:
        return ["## Scores", "", "No scores recorded.", ""]
    lines = ["## Scores", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {name} | {_number(value)} |" for name, value in scores.items()]
    lines.append("")
    if card.get("scores_setup"):
        lines += [str(card["scores_setup"]), ""]
    return lines


def _size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


def _code(text: Any) -> str:
    return NOT_RECORDED if not text else f"`{text}`"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
