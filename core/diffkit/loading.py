"""Loading what a run saved: its settings (always completed with the defaults of settings added
since it was saved) and its model, checked against the domain. The one way the CLI, the runner's
resume and the Python pipeline read checkpoints, run folders and exported weights folders."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt
from .config import apply_user_layers, default_config, differing_keys, fill_defaults, limits_of, lookup
from .domain import Domain, merge_config
from .pretrained import is_pretrained_folder


def load_checkpoint(domain: Domain, path: str | Path) -> dict:
    """What sampling needs from a checkpoint file, a run folder (its latest checkpoint) or an
    exported folder (:func:`diffkit.checkpoint.load_sampling_state`), checked to belong to
    ``domain``, its config completed by :func:`diffkit.config.fill_defaults`. ``path`` may also
    name weights the domain ships (:meth:`~diffkit.Domain.pretrained_models`)."""
    path = domain.pretrained_models().get(str(path), path)
    state = ckpt.load_sampling_state(path)
    ckpt.check_domain(state, domain.name, path)
    state["config"] = fill_defaults(domain, state["config"])
    return state


def load_config(domain: Domain, path: str | Path) -> dict:
    """The completed settings of a checkpoint file, run folder or exported folder."""
    return load_checkpoint(domain, path)["config"]


def model_from_state(domain: Domain, state: dict, path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a loaded state, read from ``path`` (named in errors), in eval mode on ``device``:
    the domain's denoiser, or a :class:`~diffkit.latent.LatentModel` when the state's config names
    an autoencoder. An autoencoder's own state is refused: it does not sample."""
    from .latent import latent_stage

    if state["config"]["train"].get("stage", "diffusion") == "autoencoder":
        raise ckpt.CheckpointError(f"{str(path)!r} holds an autoencoder (diffkit train --stage autoencoder), which does "
                                   f"not sample; train a diffusion on its latents with: diffkit train --domain "
                                   f"{domain.name} --autoencoder {path} --out RUN")
    model = latent_stage(domain, state["config"]).build_model(state["config"])
    load_weights(model, state["ema"], f"the weights of {str(path)!r}")
    return model.to(device).eval()


def load_weights(model: nn.Module, weights: dict, what: str) -> None:
    """``model.load_state_dict(weights)``; weights that do not fit are a :class:`CheckpointError`
    naming ``what`` and the tensors that differ (not every tensor of the model)."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        differences = weights_mismatch(model.state_dict(), weights) or str(error).splitlines()[0]
        raise ckpt.CheckpointError(f"{what} do not fit the model their settings describe: {differences}") from None


def weights_mismatch(expected: dict, found: dict, shown: int = 3) -> str:
    """The tensors of ``found`` that differ from the model's ``expected`` state, in a line: those of
    another shape, then the missing and the unexpected ones (``shown`` of each kind)."""
    def names(keys: list[str]) -> str:
        more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    def shape(value) -> str:
        return "x".join(map(str, value.shape)) or "scalar"

    tensors = {key for key in expected.keys() & found.keys()
               if isinstance(expected[key], torch.Tensor) and isinstance(found[key], torch.Tensor)}
    reshaped = sorted(key for key in tensors if expected[key].shape != found[key].shape)
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    parts = []
    if reshaped:
        details = "; ".join(f"{key}: {shape(found[key])} in the weights, {shape(expected[key])} in the model"
                            for key in reshaped[:shown])
        more = f"; and {len(reshaped) - shown} more" if len(reshaped) > shown else ""
        parts.append(f"{len(reshaped)} of another shape ({details}{more})")
    if missing:
        parts.append(f"{len(missing)} missing ({names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({names(unexpected)})")
    return ", ".join(parts)


def load_for_sampling(domain: Domain, path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The EMA model (in eval mode on ``device``) and completed config of a checkpoint file, run
    folder or exported folder."""
    state = load_checkpoint(domain, path)
    return model_from_state(domain, state, path, device), state["config"]


def weights_source(domain: Domain, source: str | Path | None, option: str) -> tuple[str, Path]:
    """How a config names a model's weights, and where they are: the name of shipped weights
    (``source`` None: the domain's own), else the absolute path of a checkpoint file,
    an exported folder or a run folder's latest checkpoint (fixed now: a run that goes on must
    not change the weights named). ``option`` (e.g. ``--checkpoint``) is named in errors."""
    named = domain.pretrained_models()
    if source is None or str(source) == domain.name:
        if domain.name not in named:
            raise FileNotFoundError(f"the {domain.name} domain ships no weights; pass {option} (a run folder, "
                                    "a checkpoint file or an exported folder)")
        return domain.name, named[domain.name]
    if str(source) in named:
        return str(source), named[str(source)]
    path = Path(source).resolve()
    if not path.exists():
        raise FileNotFoundError(f"{option} {str(source)!r} does not exist (expected a run folder, a checkpoint "
                                f"file, an exported folder or {domain.name!r} for the shipped weights)")
    if path.is_dir() and not is_pretrained_folder(path):
        path = ckpt.resolve(path)
    return str(path), path


# What must match between a fine-tuned model and the weights it starts from.
SECTIONS_OF_THE_WEIGHTS = ("model", "diffusion", "autoencoder", "latent")


def start_from(domain: Domain, model: nn.Module, config: dict) -> None:
    """Load the EMA weights that ``train.init_from`` names into ``model`` (a new run's), after
    checking that ``config`` describes the same model and diffusion as theirs."""
    source, path = weights_source(domain, config["train"]["init_from"], "train.init_from")
    state = load_checkpoint(domain, path)
    differing = [key for key in differing_keys(state["config"], config)
                 if key.split(".")[0] in SECTIONS_OF_THE_WEIGHTS]
    if differing:
        details = "; ".join(f"{key}: {lookup(state['config'], key)!r} there, {lookup(config, key)!r} here"
                            for key in differing)
        raise ckpt.CheckpointError(f"cannot start from {source!r}: its weights were trained with other settings "
                                   f"({details}); `diffkit train --init-from` takes them from the weights")
    load_weights(model, state["ema"], f"the weights of {source!r}")


def finetune_config(domain: Domain, source: str | Path, *, file: str | Path | None = None, sets: list[str] = (),
                    overrides: dict | None = None) -> dict:
    """The config of a new run that starts from the weights ``source`` names: the settings they
    were trained with (a student's distillation settings dropped), ``train.init_from`` naming
    them, under the user's TOML ``file``, ``--set`` assignments and ``overrides``."""
    name, path = weights_source(domain, source, "--init-from")
    defaults = default_config(domain)
    config = merge_config(load_config(domain, path), {"train": {"init_from": name}, "distill": defaults["distill"]})
    return apply_user_layers(config, defaults, file=file, sets=sets, overrides=overrides, limits=limits_of(domain))
