"""Latent diffusion: any process on the latents of a trained autoencoder (``diffkit train --autoencoder AE``).

The diffusion is unchanged; only its state is another one. With the autoencoder's encoder mean
``mu(x)`` and decoder ``D``, a data state ``x`` becomes

    z = (mu(x) - shift) * scale

where ``shift`` and ``scale`` (the mean and the inverse standard deviation of all the data's
latents' entries) are measured once and saved with the model, so that the process sees states
of unit scale, as its schedules assume. A sample ``z`` goes back through ``D(z / scale + shift)``
and then the domain's own :meth:`~diffkit.Domain.decode`.

:class:`LatentDomain` wraps a domain so that the runner, generation, previews, distillation and
the pipeline work unchanged: its dataset is the data's latents (computed once and cached under
the kit's cache, keyed by the autoencoder's weights and the data's content), its model is a
:class:`LatentModel` (the domain's :meth:`~diffkit.Domain.build_latent_model` denoiser, beside the
frozen autoencoder and the two statistics, so that checkpoints and exported folders carry both
networks), and its decode runs the decoder. Everything about the data (reading it, preparing and
decoding states, editing inputs, writing and scoring samples) uses the autoencoder's settings
(``latent.settings``): they describe the data it encodes. An inpainting keeps whole latent cells
where the latent grid tiles the data's (pictures), and is refused with the reason elsewhere; the
kept part of the result is the input's, exactly.

:func:`latent_stage` is the one place that decides whether a config runs on latents; the runner,
:func:`~diffkit.generate.generate` and :func:`~diffkit.loading.model_from_state` call it.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import secrets
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from . import checkpoint as ckpt
from . import distributed, kit
from .config import apply_user_layers, default_config, differing_keys, fill_defaults, limits_of, lookup, preset_config
from .domain import Batch, Domain, accepted_keywords, merge_config
from .loading import load_checkpoint, load_weights, weights_source
from .nets.autoencoder import downsampling
from .tree import State, standard_noise, tree_map, where

#: Bumped when what the cache of a data set's latents holds changes. 2: a ``.npy`` file, written in batches.
LATENT_CACHE_VERSION = 2
#: The autoencoder's weights in the EMA of an autoencoder run (:class:`diffkit.autoencoder.AutoencoderTraining`)
#: and in a :class:`LatentModel`.
PREFIX = "autoencoder."


def latent_stage(domain: Domain, config: dict) -> Domain:
    """``domain`` itself, or a :class:`LatentDomain` on its latents when ``config`` names an
    autoencoder (``latent.autoencoder``); a latent domain passes through."""
    if isinstance(domain, LatentDomain) or not lookup(config, "latent.autoencoder"):
        return domain
    return LatentDomain(domain, config)


# -- the autoencoder a run names ----------------------------------------------------------------

def autoencoder_weights(weights: dict) -> dict:
    """The autoencoder's part of an autoencoder run's (or a latent model's) weights, unprefixed."""
    return {key[len(PREFIX):]: value for key, value in weights.items() if key.startswith(PREFIX)}


def weights_digest(weights: dict) -> str:
    """The SHA-256 of a set of weights (their values, in name order)."""
    return ckpt.content_digest(dict(sorted(weights.items())))


def read_autoencoder(domain: Domain, source: str | Path, option: str) -> tuple[str, dict, dict]:
    """How a config names the autoencoder ``source`` (a run folder, checkpoint, exported folder),
    its completed settings and its EMA weights; something else than an autoencoder is refused."""
    name, path = weights_source(domain, source, option)
    state = load_checkpoint(domain, path)
    stage = state["config"]["train"].get("stage", "diffusion")
    if stage != "autoencoder":
        raise ValueError(f"{option} {str(source)!r} holds a {stage} model, not an autoencoder; train one with: "
                         f"diffkit train --domain {domain.name} --stage autoencoder --out AE")
    return name, state["config"], autoencoder_weights(state["ema"])


def latent_config(domain: Domain, source: str | Path, *, preset: str | None = None, file: str | Path | None = None,
                  sets: list[str] = (), overrides: dict | None = None) -> dict:
    """The config of a new diffusion on the latents of the autoencoder ``source``: the defaults,
    ``preset``, the autoencoder's ``data`` (but ``data.cache_dir``, where derived files go) and
    ``autoencoder`` sections and ``latent`` naming it (with its weights' digest and its settings),
    then the user's TOML ``file``, ``--set`` assignments and ``overrides``. Those may not change
    what the autoencoder fixed: the refusal names each such key."""
    name, settings, weights = read_autoencoder(domain, source, "--autoencoder")
    defaults, limits = default_config(domain), limits_of(domain)
    config = merge_config(defaults, preset_config(domain, preset)) if preset else copy.deepcopy(defaults)
    # The data settings describe the data, but for where derived files go.
    data = {key: value for key, value in settings["data"].items() if key != "cache_dir"}
    fixed = {"data": data, "autoencoder": settings["autoencoder"],
             "latent": {"autoencoder": name, "sha256": weights_digest(weights),
                        "settings": {key: value for key, value in settings.items() if key != "latent"}}}
    for section, values in fixed.items():
        config[section] = {**config[section], **copy.deepcopy(values)}
    config = apply_user_layers(config, defaults, file=file, sets=sets, overrides=overrides, limits=limits)
    changed = [key for section, values in fixed.items()
               for key in differing_keys({section: values}, {section: {k: config[section].get(k) for k in values}})]
    if changed:
        details = "; ".join(f"{key} is {lookup(fixed, key)!r} there, not {lookup(config, key)!r}" for key in changed)
        raise ValueError(f"these settings are the autoencoder's (they describe the data it encodes): {details}")
    return config


# -- the model ------------------------------------------------------------------------------------

class LatentModel(nn.Module):
    """A denoiser on latents beside the frozen autoencoder and the latents' ``latent_scale`` and
    ``latent_shift`` (buffers): ``model(z_t, t, cond=None, **extra)`` is the denoiser's;
    :meth:`encode` and :meth:`decode` map between data states and the diffusion's states."""

    def __init__(self, denoiser: nn.Module, autoencoder: nn.Module):
        super().__init__()
        self.denoiser = denoiser
        self.autoencoder = autoencoder.requires_grad_(False).eval()
        self.register_buffer("latent_scale", torch.ones(()))
        self.register_buffer("latent_shift", torch.zeros(()))

    def forward(self, x: Tensor, t: Tensor, cond: Any = None, **extra: Any) -> Tensor:
        return self.denoiser(x, t, cond=cond, **extra)

    def train(self, mode: bool = True) -> "LatentModel":
        super().train(mode)
        self.autoencoder.eval()  # frozen: it never trains
        return self

    @torch.no_grad()
    def encode(self, data: Tensor) -> Tensor:
        """Data states -> the diffusion's states: the posterior's mean, shifted and scaled."""
        mean = self.autoencoder.encode(data.to(self.latent_scale.device)).mean.float()
        return (mean - self.latent_shift) * self.latent_scale

    @torch.no_grad()
    def decode(self, state: Tensor) -> Tensor:
        """The diffusion's states -> data states, through the decoder."""
        return self.autoencoder.decode(state.float() / self.latent_scale + self.latent_shift).float()


# -- the data's latents ---------------------------------------------------------------------------

class LatentDataset(Dataset):
    """Items ``{"x": (z - shift) * scale, "cond": ...}`` of the latents ``z`` cached in ``path``
    (:func:`save_latents`), mapped from the file, with their ``scale`` and ``shift``
    (:func:`latent_statistics`); ``data`` is the data set they were encoded from (for
    :meth:`Domain.fit_data`). Pickled (for a DataLoader worker that is spawned rather than forked)
    it carries the path, and the worker maps the file again instead of receiving a copy."""

    def __init__(self, path: Path, cond: State | None, data: Dataset):
        self.path, self.cond, self.data = path, cond, data
        self.latents = load_latents(path)
        self.scale, self.shift = latent_statistics(self.latents)

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "latents"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.latents = load_latents(self.path)

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict:
        item = {"x": (self.latents[index] - self.shift) * self.scale}
        if self.cond is not None:
            item["cond"] = tree_map(lambda leaf: leaf[index], self.cond)
        return item

    def __repr__(self) -> str:
        return (f"LatentDataset({len(self)} latents of shape {tuple(self.latents.shape[1:])}, "
                f"scale {self.scale:.4g}, shift {self.shift:.4g})")


def latent_statistics(latents: Tensor, chunk: int = 4096) -> tuple[float, float]:
    """``(scale, shift)``: the inverse standard deviation and the mean of all entries, summed in
    float64 ``chunk`` latents at a time (a memory-mapped file is not copied whole)."""
    count = latents.numel()
    shift = sum(float(part.double().sum()) for part in latents.split(chunk)) / count
    squares = sum(float((part.double() - shift).square().sum()) for part in latents.split(chunk))
    std = math.sqrt(squares / (count - 1)) if count > 1 else float("nan")
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"the data's latents have standard deviation {std}: the autoencoder encodes every state alike")
    return 1.0 / std, shift


def read_items(dataset: Dataset) -> tuple[State | None, tuple[int, ...] | None, str]:
    """The collated conditions of every item, the first item's state shape, and a digest of every
    item's state and condition; each item is read with the global generators seeded by its index
    (augmentation drawn once, the same every time). States are read and let go one at a time, so
    that memory does not grow with the data."""
    states, conds, digest, shape = _seeded_items(dataset), [], hashlib.sha256(), None
    for item in states:
        extras = sorted(key for key in ("mask", "extra") if key in item)
        if extras:
            raise ValueError(f"the data's items carry {' and '.join(extras)}, which latents cannot keep")
        shape = shape or tuple(item["x"].shape)
        digest.update(kit.content_key(item["x"]).encode())
        if "cond" in item:
            conds.append(item["cond"])
            digest.update(kit.content_key(item["cond"]).encode())
    return default_collate(conds) if conds else None, shape, digest.hexdigest()


def _seeded_items(dataset: Dataset, indices: range | None = None):
    """The items of ``dataset`` (all, or those of ``indices``) in order, each read with the global
    generators seeded by its index."""
    from .runner import SeededItems

    items = SeededItems(dataset)
    return (items[index, index] for index in (indices if indices is not None else range(len(dataset))))


@torch.no_grad()
def encode_states(autoencoder: nn.Module, dataset: Dataset, batch: int, device: torch.device,
                  indices: range | None = None) -> Iterator[Tensor]:
    """The posterior means of the states of ``dataset``'s items (all, or those of ``indices``;
    read as :func:`read_items` reads them), ``batch`` at a time on ``device``: float32 batches on
    the CPU, one after another."""
    autoencoder = autoencoder.to(device).eval()
    states = []
    for item in _seeded_items(dataset, indices):
        states.append(item["x"])
        if len(states) == batch:
            yield autoencoder.encode(torch.stack(states).to(device)).mean.float().cpu()
            states = []
    if states:
        yield autoencoder.encode(torch.stack(states).to(device)).mean.float().cpu()
    autoencoder.cpu()


def save_latents(batches: Iterable, count: int, path: Path) -> None:
    """``count`` latents arriving a batch at a time (tensors or arrays) as the float32 ``.npy``
    file ``path``, written through a temporary file and never held in memory whole."""
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise ValueError(f"no latents to save in {str(path)!r}: the data holds no items")
    first = np.asarray(first, dtype=np.float32)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
              "shape": (count, *first.shape[1:])}

    def write(file) -> None:
        np.lib.format.write_array_header_2_0(file, header)
        written = 0
        for part in itertools.chain([first], batches):
            part = np.ascontiguousarray(part, dtype=np.float32)
            if part.shape[1:] != first.shape[1:]:
                raise ValueError(f"latents of shape {part.shape[1:]} after latents of shape {first.shape[1:]}: "
                                 "the data's items differ in shape")
            file.write(part.tobytes())
            written += len(part)
        if written != count:
            raise RuntimeError(f"{written} latents were encoded where the data holds {count}")

    kit.write_atomic(path, write)


def load_latents(path: Path) -> Tensor:
    """The cached latents of :func:`save_latents`, mapped from the file (:func:`diffkit.kit.map_array`),
    so the processes of a run share one copy and memory does not grow with the data."""
    return torch.from_numpy(kit.map_array(path))


def encode_into_cache(autoencoder: nn.Module, dataset: Dataset, path: Path, batch: int,
                      world: distributed.World) -> None:
    """The latents of ``dataset`` (:func:`encode_states`) saved to ``path``; every process calls
    this together. Under torchrun each process encodes its contiguous part into a file of its own
    and, where every process sees every part (one machine, or a cache on shared storage), the main
    process joins them; otherwise (each machine with a cache of its own) every process encodes the
    whole data set, as a single process does."""
    from .runner import data_part

    device = encoding_device()
    if world.distributed and len(dataset) >= world.size:
        token = distributed.broadcast_object(secrets.token_hex(4), world)  # this run's parts, no other's
        parts = [path.with_name(f"{path.stem}.{token}.part-{rank}-of-{world.size}.npy") for rank in range(world.size)]
        first, count = data_part(len(dataset), world)
        try:
            save_latents(encode_states(autoencoder, dataset, batch, device, range(first, first + count)), count,
                         parts[world.rank])
            distributed.barrier(world)
            shared = distributed.all_true(all(part.is_file() for part in parts), world)
            if shared and world.is_main:
                _join_parts(parts, path, batch)
            distributed.barrier(world)
        finally:
            parts[world.rank].unlink(missing_ok=True)
        if shared:
            return
    save_latents(encode_states(autoencoder, dataset, batch, device), len(dataset), path)


def _join_parts(parts: list[Path], path: Path, batch: int) -> None:
    """The latents of ``parts`` (in order) as one file ``path``, ``batch`` at a time. Returning
    releases the parts' mappings, so that they can be removed (Windows refuses a mapped file)."""
    mapped = [kit.map_array(part) for part in parts]
    save_latents((array[start:start + batch] for array in mapped for start in range(0, len(array), batch)),
                 sum(len(array) for array in mapped), path)


def encoding_device() -> torch.device:
    """Where the data is encoded: a GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# -- the domain -----------------------------------------------------------------------------------

class LatentDomain(Domain):
    """``inner`` on the latents of the autoencoder ``config`` names (module docstring)."""

    def __init__(self, inner: Domain, config: dict):
        self.inner = inner
        self.name, self.description = inner.name, inner.description
        section = config["latent"]
        self.source, self.sha256 = section["autoencoder"], section["sha256"]
        self.settings = fill_defaults(inner, section["settings"])
        self.settings["data"]["cache_dir"] = config["data"]["cache_dir"]  # the run's: derived files go there
        self.state_shape = tuple(self.settings["autoencoder"]["state_shape"])
        self.latent_shape = tuple(self.untrained_autoencoder().latent_shape)
        self.trained: nn.Module | None = None

    def __getattr__(self, name: str) -> Any:
        # The inner domain's own methods (e.g. a plugin's extra hooks) remain reachable.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # -- settings ---------------------------------------------------------------------------

    def default_config(self) -> dict:
        return self.inner.default_config()

    def presets(self) -> dict[str, dict]:
        return self.inner.presets()

    def limits(self):
        return self.inner.limits()

    def upgrade_config(self, config: dict) -> dict:
        return self.inner.upgrade_config(config)

    def default_preset(self, data: str | None, device: torch.device) -> tuple[str, str]:
        return self.inner.default_preset(data, device)

    # -- the autoencoder ---------------------------------------------------------------------

    def build_autoencoder(self, config: dict, state_shape: tuple[int, ...]) -> nn.Module:
        return self.inner.build_autoencoder(config, state_shape)

    def untrained_autoencoder(self) -> nn.Module:
        """The autoencoder the settings describe, for weights read from elsewhere. Its random
        initial weights leave torch's global generator as it was, so that the denoiser's are the
        same whether the data's latents come from the cache or not."""
        with torch.random.fork_rng(devices=[]):
            return self.build_autoencoder(self.settings, self.state_shape)

    def trained_autoencoder(self) -> nn.Module:
        """The autoencoder the config names, with its weights, checked against their recorded digest."""
        if self.trained is None:
            name, _, weights = read_autoencoder(self.inner, self.source, "latent.autoencoder")
            found = weights_digest(weights)
            if self.sha256 and found != self.sha256:
                raise ckpt.CheckpointError(f"the autoencoder {name!r} is not the one this run was made with: its "
                                           f"weights' SHA-256 is {found}, the run recorded {self.sha256}")
            autoencoder = self.untrained_autoencoder()
            load_weights(autoencoder, weights, f"the weights of the autoencoder {name!r}")
            self.trained = autoencoder.requires_grad_(False).eval()
        return self.trained

    # -- training ----------------------------------------------------------------------------

    def build_dataset(self, config: dict, data: str | None = None) -> LatentDataset:
        """The data's latents: read from the cache (keyed by the autoencoder's weights and every
        item's content), or encoded once and cached; the items are read twice then (once for the
        key, once to encode them), so that the data is never held in memory whole."""
        states_of = self.inner.build_dataset(self.settings, data)
        cond, shape, content = read_items(states_of)
        if shape is not None and shape != self.state_shape:
            raise ValueError(f"the data's states have shape {shape}, but the autoencoder encodes "
                             f"states of shape {self.state_shape}: give data of the kind it was trained on")
        key = kit.content_key("latents", LATENT_CACHE_VERSION, self.sha256, content)
        path = kit.cache_dir(self.name, config) / "latents" / f"{key}.npy"
        world = distributed.world_from_env()
        if not distributed.all_true(path.is_file(), world):  # one decision for every process
            encode_into_cache(self.trained_autoencoder(), states_of, path, int(config["latent"]["encode_batch"]), world)
        return LatentDataset(path, cond, states_of)

    def build_model(self, config: dict) -> LatentModel:
        denoiser = self.inner.build_latent_model(config, self.latent_shape)
        return LatentModel(denoiser, self.untrained_autoencoder())

    def fit_data(self, model: LatentModel, dataset: LatentDataset, config: dict) -> None:
        """The autoencoder's weights and the latents' statistics into the model, and what the
        domain records of the data into the denoiser."""
        model.autoencoder.load_state_dict(self.trained_autoencoder().state_dict())
        model.latent_scale.fill_(dataset.scale)
        model.latent_shift.fill_(dataset.shift)
        self.inner.fit_data(model.denoiser, dataset.data, self.settings)

    def leaf_weights(self, config: dict) -> None:
        return None

    def noise(self, like: State, generator: torch.Generator | None = None, **extra: Tensor) -> State:
        return standard_noise(like, generator)

    def processes(self, config: dict) -> None:
        return None

    def null_cond(self, cond: Any) -> Any:
        return self.inner.null_cond(cond)

    # -- sampling ----------------------------------------------------------------------------

    def prepare_sampling(self, model: LatentModel, n: int, config: dict, *, cond: Any = None,
                         generator: torch.Generator | None = None) -> Batch:
        batch = self.inner.prepare_sampling(model.denoiser, n, self.settings, cond=cond, generator=generator)
        batch["x"] = torch.zeros(n, *self.latent_shape, device=model.latent_scale.device)
        return batch

    def load_known(self, init: str, mask: str | None, n: int, config: dict, *, model: LatentModel | None = None,
                   cond: str | None = None, generator=None) -> Batch:
        """The domain's known input, encoded; its kept part on the latent grid (a latent cell is
        kept when all it covers is), with the input and its kept part in data space beside them,
        for :meth:`decode` to put back exactly."""
        if model is None:
            raise ValueError("editing on latents needs the model, whose autoencoder encodes the input")
        batch = self.inner.load_known(init, mask, n, self.settings, model=model.denoiser, cond=cond,
                                      generator=generator)
        if "keep" in batch:
            batch["data_known"], batch["data_keep"] = batch["x"], batch["keep"]
            batch["keep"] = keep_on_latent_grid(batch["keep"], self.state_shape, self.latent_shape)
        batch["x"] = model.encode(batch["x"])
        return batch

    def decode(self, x: Tensor, batch: Batch, *, model: LatentModel, config: dict | None = None) -> State:
        data = model.decode(x)
        if "data_keep" in batch:
            known = batch["data_known"].to(data.device)
            data = where(batch["data_keep"].to(data.device) > 0.5, known.to(data.dtype), data)
        keywords = accepted_keywords(self.inner.decode, model=model.denoiser, config=self.settings)
        return self.inner.decode(data, batch, **keywords)

    def write_samples(self, samples: Batch, out: Path, config: dict) -> list:
        return self.inner.write_samples(samples, out, self.settings)

    def to_objects(self, samples: Batch, config: dict) -> list:
        return self.inner.to_objects(samples, self.settings)

    def evaluate(self, samples: Path, reference: Path | None, config: dict, **keywords: Any) -> dict[str, float]:
        return self.inner.evaluate(samples, reference, self.settings,
                                   **accepted_keywords(self.inner.evaluate, **keywords))

    def pretrained(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"<LatentDomain {self.name!r} on latents {self.latent_shape} of {self.source!r}>"


def keep_on_latent_grid(keep: Tensor, state_shape: tuple[int, ...], latent_shape: tuple[int, ...]) -> Tensor:
    """An inpainting's kept part ``(n, 1 or C, *sides)`` (1 = keep; a side may be 1 for all of it) on the latent grid
    ``(n, 1, *latent_sides)``: a latent cell is kept when every entry it covers is kept in every
    channel. Refused with the reason when the latent grid does not tile the data's."""
    factors = downsampling(state_shape, latent_shape)
    sides = tuple(state_shape[1:])
    try:  # a side of 1 stands for all of it (e.g. every mel band of the frames kept)
        keep = keep.expand(*keep.shape[:2], *sides) if keep.ndim == 2 + len(sides) else keep
    except RuntimeError:
        pass
    if factors is None or tuple(keep.shape[2:]) != sides:
        shape = "x".join(map(str, keep.shape[1:]))
        raise ValueError(f"the part to keep is given on the data's grid ({shape}), which the autoencoder's latents "
                         f"({'x'.join(map(str, latent_shape))}) do not tile, so it does not say which latents to keep; "
                         "edit the whole input instead (--init without --mask, with --strength)")
    generated = (keep < 0.5).float().amax(dim=1, keepdim=True)
    pool = F.max_pool1d if len(factors) == 1 else F.max_pool2d
    return 1.0 - pool(generated, kernel_size=factors)
