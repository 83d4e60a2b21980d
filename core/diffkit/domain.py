"""The contract a domain plugin fulfils. Subclass :class:`Domain` and register an instance through
the ``diffkit_register_domains`` hook.

Data flow, the same for every domain:

* the dataset yields items ``{"x": state, "cond": ..., "mask": ..., "extra": {...}}``; only ``x``
  is required. ``cond`` is the condition for classifier-free guidance (e.g. a class label),
  ``mask`` marks the entries of ``x`` that count in the loss (1) and padding (0), ``extra`` holds
  tensors the model and the noise need besides ``x`` (e.g. a node mask). Items are batched with
  ``torch.utils.data.default_collate``.
* the model is called as ``model(x_t, t, cond=cond, **extra)`` with ``t`` of shape ``(B,)`` in
  [0, 1] and returns a state shaped like ``x_t`` (the prediction the config names).
* sampling starts from :meth:`Domain.prepare_sampling`, whose result has the same keys as a batch,
  and ends in :meth:`Domain.write_samples` (files) or :meth:`Domain.to_objects` (Python objects,
  for ``diffkit.load(...).sample``). A sampling batch may also carry the domain's own
  non-tensor entries (e.g. a list of label names) for :meth:`Domain.decode` and the writer; lists
  are joined across chunks, other values are taken from the first chunk.

Keyword arguments added to a method after plugins were written reach an override only when it
declares them (:func:`accepted_keywords`), so older plugins keep working.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .tree import State, batch_size, standard_noise, tree_map

if TYPE_CHECKING:
    from .config import Limit
    from .kit import Output

Batch = dict[str, Any]


class Domain:
    """Base class of a domain: override what your domain needs; the defaults suit dense tensors."""

    #: Short unique name used on the command line: ``diffkit train --domain NAME``.
    name: str = ""
    #: One line shown by ``diffkit plugins``.
    description: str = ""

    def default_config(self) -> dict:
        """The full default configuration, a nested dict of plain values with the sections
        ``data``, ``model``, ``diffusion``, ``train`` and ``sample``. Every key a user may set must
        be present here: unknown keys in user configs are refused against it."""
        raise NotImplementedError

    def limits(self) -> dict[str, Limit]:
        """The range of each of the domain's numeric settings, by dotted key, e.g.
        ``{"model.width": at_least(1), "model.dropout": Limit(0, 1, high_open=True)}``
        (:class:`diffkit.config.Limit`; for a list setting, the range of its items). A value
        outside is refused with its key before a run starts; the core's own settings have theirs
        (:data:`diffkit.config.LIMITS`). Every number must be finite. None by default."""
        return {}

    def presets(self) -> dict[str, dict]:
        """Named partial configs merged over the default, at least ``cpu`` and ``gpu``."""
        return {"cpu": {}, "gpu": {}}

    def default_preset(self, data: str | None, device: torch.device) -> tuple[str, str]:
        """The preset a run uses when none is named, and why (a few words ``diffkit train`` prints),
        for the user's ``data`` (``None``: the bundled data) on ``device``. By default ``gpu`` on a
        CUDA device and ``cpu`` elsewhere; override it where the data decides, e.g. a small
        bundled dataset that a large preset would only overfit."""
        if device.type == "cuda":
            return "gpu", "a CUDA device is available"
        return "cpu", "no CUDA device"

    def build_dataset(self, config: dict, data: str | None = None) -> Dataset:
        """The training data: the user's files at ``data``, or the embedded default when ``None``.

        It may fill in ``config`` values learned from the data (e.g. the atom types found); the
        runner records the config after this call, so checkpoints carry them."""
        raise NotImplementedError

    def build_model(self, config: dict) -> nn.Module:
        """The denoiser, ``model(x_t, t, cond=None, **extra) -> prediction``."""
        raise NotImplementedError

    def describe_data(self, dataset: Dataset, config: dict) -> list[str]:
        """Lines for the plan ``diffkit train`` prints before the first step: the settings this
        domain chose from the data in :meth:`build_dataset`, each with why (e.g. ``"clip length:
        0.7 s (98th percentile of 2,409 recordings)"``). None by default."""
        return []

    def fit_data(self, model: nn.Module, dataset: Dataset, config: dict) -> None:
        """Record in the model what sampling needs to know about the data (e.g. the distribution
        of sizes, or the mean and scale a dataset standardised with) as buffers, so that it travels
        with the checkpoint. Called once, before training, with the model :meth:`build_model` made
        and the dataset :meth:`build_dataset` made; the runner moves the model to its device after."""

    def build_autoencoder(self, config: dict, state_shape: tuple[int, ...]) -> nn.Module:
        """The autoencoder of the latent stage (``diffkit train --stage autoencoder``) for states of
        ``state_shape`` (one state, without the batch dimension, as the dataset yields it): a module
        with ``encode(x) -> Posterior``, ``decode(z) -> x`` and ``latent_shape``
        (:mod:`diffkit.nets.autoencoder`). By default the core's convolutional KL autoencoder
        (:class:`~diffkit.nets.autoencoder.ConvAutoencoder`) for states ``(C, L)`` or ``(C, H, W)``,
        sized by the ``autoencoder`` section; override it for another architecture (e.g. a fixed
        spectrogram front end and a learned vocoder)."""
        from .nets.autoencoder import ConvAutoencoder

        settings = config["autoencoder"]
        return ConvAutoencoder(state_shape, latent_channels=int(settings["latent_channels"]),
                               base_channels=int(settings["base_channels"]),
                               channel_mults=tuple(settings["channel_mults"]),
                               blocks_per_level=int(settings["blocks_per_level"]), groups=int(settings["groups"]),
                               posterior=str(settings["posterior"]))

    def reconstruction_loss(self, reconstruction: Tensor, x: Tensor, config: dict) -> Tensor:
        """Each sample's reconstruction error ``(B,)`` for the autoencoder stage: how far the
        decoded ``reconstruction`` is from the state ``x`` (both ``(B, *state_shape)``). By default
        the mean absolute error (:func:`diffkit.kit.reconstruction.mean_absolute_error`); a domain
        adds what its data needs (perceptual-like losses for pictures, spectral ones for sound:
        :mod:`diffkit.kit.reconstruction`)."""
        from .kit.reconstruction import mean_absolute_error

        return mean_absolute_error(reconstruction, x)

    def build_latent_model(self, config: dict, latent_shape: tuple[int, ...]) -> nn.Module:
        """The denoiser of a diffusion on an autoencoder's latents (``diffkit train --autoencoder``),
        ``model(z_t, t, cond=None) -> prediction`` for latents of ``latent_shape``; the domain's
        :meth:`fit_data`, :meth:`prepare_sampling` and :meth:`load_known` get this model. By default
        the core's U-Net (:class:`diffkit.nets.UNet`) for latents ``(C, H, W)``, sized by the keys of
        the ``model`` section it shares with the U-Net where the domain has them (``base_channels``,
        ``channel_mults``, ``blocks_per_level``, ``attention_resolutions``, ``attention_heads``,
        ``groups``, ``dropout``) and conditioned on ``model.num_classes`` labels (none when absent)."""
        from .nets.unet import UNet

        if len(latent_shape) != 3:
            raise ValueError(f"the {self.name} domain builds no denoiser for latents of shape {tuple(latent_shape)}: the "
                             "default (Domain.build_latent_model) is a U-Net for latents (C, H, W)")
        model = config["model"]
        keys = ("base_channels", "channel_mults", "blocks_per_level", "attention_resolutions", "attention_heads",
                "groups", "dropout")
        settings = {key: tuple(model[key]) if isinstance(model[key], list) else model[key] for key in keys if key in model}
        return UNet(image_size=tuple(latent_shape[1:]), channels=latent_shape[0],
                    num_classes=int(model.get("num_classes", 0)), **settings)

    def leaf_weights(self, config: dict) -> dict[str, float] | None:
        """Relative loss weights of the leaves of a dict state (e.g. ``{"edges": 5.0}``)."""
        return None

    def noise(self, like: State, generator: torch.Generator | None = None, **extra: Tensor) -> State:
        """Standard noise for a state (:func:`diffkit.tree.standard_noise`: Gaussian for float
        leaves, the uniforms of a categorical draw for integer leaves); override for structure
        (symmetric edges, zero padding). When sampling, the core calls it for one sample at a time
        (:func:`diffkit.draw_noise`), or once for the batch with a :class:`~diffkit.SampleGenerators`
        when the override is marked with :func:`diffkit.draws_per_sample`."""
        return standard_noise(like, generator)

    def categories(self, model: nn.Module, config: dict) -> tuple[int | dict, Any]:
        """For ``diffusion.kind = "categorical"``: ``(num_classes, marginal)`` of the state, each an
        int / a ``(K,)`` tensor, or a dict keyed like the state; ``marginal`` (the data's class
        frequencies, for ``diffusion.transition = "marginal"``) may be None otherwise. The model
        is at hand because what was learned from the data travels in its buffers."""
        raise NotImplementedError(f"the {self.name} domain does not declare its classes (Domain.categories), "
                                  "which categorical diffusion needs")

    def processes(self, config: dict) -> dict[str, str] | None:
        """For a dict state whose leaves use different processes: the kind of each leaf's process
        (``"gaussian"``, ``"flow"`` or ``"categorical"``), e.g. ``{"numbers": "flow", "colour":
        "categorical"}``; the leaves are trained and sampled jointly by one model with one time
        (:class:`diffkit.MixedProcess`). ``None`` (the default): ``diffusion.kind`` serves the whole
        state. Each leaf's noise is then drawn alone: :meth:`noise` is called with a dict of that
        leaf (:class:`diffkit.mixed.LeafNoise`) as well as with the whole state."""
        return None

    def upgrade_config(self, config: dict) -> dict:
        """A saved config (of a checkpoint or an exported model) in today's terms, before the
        settings it lacks are filled in at their defaults. Override it when a new setting's default
        differs from what older versions did (e.g. a new default network: a saved config without
        the setting meant the old one). Identity by default."""
        return config

    def null_cond(self, cond: Any) -> Any:
        """The unconditional value matching ``cond``, for classifier-free guidance; ``None``
        when the domain is unconditional. Any value the model reads as "no condition" will do,
        e.g. a label of -1 mapped to a learned null embedding."""
        return None

    def prepare_sampling(self, model: nn.Module, n: int, config: dict, *, cond: Any = None,
                         generator: torch.Generator | None = None) -> Batch:
        """A batch describing ``n`` new samples: ``x`` an example state (only its structure,
        dtype and device matter), and ``cond``/``extra`` as in training. ``cond`` is what the
        user asked for on the command line (a string) or ``None``. ``generator`` may be a
        :class:`~diffkit.tree.SampleGenerators` (one per sample, as ``diffkit sample`` passes
        it): draw random choices through :func:`diffkit.draw_per_sample`, which takes either kind."""
        raise NotImplementedError

    def load_known(self, init: str, mask: str | None, n: int, config: dict, *, model: nn.Module | None = None,
                   cond: str | None = None, generator=None) -> Batch:
        """For editing (``diffkit sample --init ... [--mask ...]``): a batch of ``n`` samples whose
        ``x`` is the known state read from ``init`` (a file or a domain-specific string, e.g. a
        scaffold SMILES), with ``keep`` (a state or a mask broadcastable to each leaf, 1 = keep,
        0 = generate) parsed from ``mask`` when given, plus ``cond``/``extra`` as in
        :meth:`prepare_sampling` (``model``, ``cond`` and ``generator`` are passed as there, so
        random choices, e.g. sizes, follow the seed). Without ``keep``
        the core edits the whole state (SDEdit)."""
        raise NotImplementedError(f"the {self.name} domain does not support editing")

    def decode(self, x: State, batch: Batch, *, model: nn.Module | None = None, config: dict | None = None) -> State:
        """Turn a sampled state into the domain's values (e.g. clamp pixels, undo the
        standardisation of the data); identity by default. ``batch`` is the sampling batch,
        ``model`` the denoiser that drew ``x`` (with what :meth:`fit_data` recorded in its
        buffers), ``config`` the settings it was trained with. An override declares the
        keywords it uses, e.g. ``def decode(self, x, batch, *, model)``."""
        return x

    def write_samples(self, samples: Batch, out: Path, config: dict) -> list[Output]:
        """Write a batch of samples (on the CPU; ``samples["x"]`` decoded) to ``out``, a folder or a
        file whose suffix picks the format where the domain supports it, and return one
        :class:`diffkit.kit.Output` record (path, kind, role) per file written."""
        raise NotImplementedError

    def to_objects(self, samples: Batch, config: dict) -> list:
        """A batch of samples (on the CPU, as :meth:`write_samples` gets it) as the objects people
        use in Python, one per sample: what ``diffkit.load(...).sample(n)`` returns (e.g. PIL
        images). Objects with a ``_repr_html_`` or ``_repr_png_`` method display in Jupyter.
        By default each sample's state: a tensor, or a dict of tensors."""
        x = samples["x"]
        return [tree_map(lambda leaf: leaf[index], x) for index in range(batch_size(x))]

    def evaluate(self, samples: Path, reference: Path | None, config: dict, *, cond: Any = None) -> dict[str, float]:
        """Scores for samples written by :meth:`write_samples` against ``reference`` (the
        default data when ``None``). ``cond`` is the condition the samples were asked for (as
        ``--cond`` reads it, from the record ``diffkit sample`` wrote beside them), or None; a
        domain may score how well the samples meet it (the core passes it only to an ``evaluate``
        that takes ``cond``)."""
        raise NotImplementedError(f"the {self.name} domain has no evaluation")

    def pretrained(self) -> Path | None:
        """Weights shipped with the plugin (an exported folder or a checkpoint file), used when
        ``sample`` gets no ``--checkpoint`` and by ``diffkit.load(name)``."""
        return None

    def pretrained_models(self) -> dict[str, Path]:
        """Every set of weights the plugin ships, by name: :meth:`pretrained` under the domain's
        name, and others under their own (e.g. ``{"audio": ..., "audio-digits": ...}``).
        ``diffkit.load(NAME)``, ``--checkpoint NAME`` and ``--init-from NAME`` find them by name."""
        default = self.pretrained()
        return {} if default is None else {self.name: Path(default)}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def accepted_keywords(method: Callable, **keywords: Any) -> dict[str, Any]:
    """The ``keywords`` that ``method`` (a domain's method, as a plugin wrote it) takes by name."""
    parameters = inspect.signature(method).parameters.values()
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return keywords
    named = {parameter.name for parameter in parameters if parameter.kind is not parameter.POSITIONAL_ONLY}
    return {key: value for key, value in keywords.items() if key in named}


# Tables whose keys are not known in advance: a sampler's keyword options, checked against it.
# The settings of a latent diffusion's autoencoder, copied whole from it.
FREE_TABLES = frozenset({"sample.options", "latent.settings"})


def merge_config(base: Mapping, override: Mapping, *, where: str = "") -> dict:
    """``base`` updated by ``override`` recursively; a key absent from ``base`` is an error that
    names it and suggests the closest known key (except in :data:`FREE_TABLES`)."""
    merged = dict(base)
    for key, value in override.items():
        path = f"{where}.{key}" if where else key
        if key not in base and (where in FREE_TABLES or path in FREE_TABLES):  # a free table or its keys
            merged[key] = value
            continue
        if key not in base:
            raise KeyError(unknown_key_message(path, key, base))
        if isinstance(base[key], Mapping) and isinstance(value, Mapping):
            merged[key] = merge_config(base[key], value, where=path)
        elif isinstance(base[key], Mapping):
            raise ValueError(f"config key {path!r} is a section; expected a table, got {value!r}")
        else:
            merged[key] = value
    return merged


def unknown_key_message(path: str, key: str, known: Mapping) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys here: {', '.join(sorted(known))}"
    return f"unknown config key {path!r}{hint}"
