"""Sampling from Python in one line, returning the domain's own objects:

    import diffkit

    pipe = diffkit.load("molecule")                 # a domain's shipped weights
    mols = pipe.sample(100, seed=0, cond={"qed": 0.6}, guidance=2.0)
    pipe.save_pretrained("my-model")                # safetensors + config.json + README.md
    diffkit.load("my-model").sample(100, seed=0, cond={"qed": 0.6}, guidance=2.0)   # the same molecules

A :class:`Pipeline` is a thin layer over what ``diffkit sample`` calls
(:func:`diffkit.checkpoint.load_sampling_state`, :func:`diffkit.loading.model_from_state`,
:func:`diffkit.generate.generate`), so the same seed gives the same samples from either; the
domain's :meth:`~diffkit.Domain.to_objects` turns them into objects.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from . import checkpoint as ckpt
from .distributed import World, pick_device
from .domain import Domain
from .generate import SampleRequest, check_request, generate
from .plugins import Registry, make_plugin_manager

#: Provenance kept from the loaded weights and written again by ``save_pretrained``.
PROVENANCE = ("plugin", "plugin_version", "diffkit_version", "step", "card")


def load(name_or_path: str | Path, device: str | torch.device | None = None, *,
         registry: Registry | None = None) -> Pipeline:
    """A :class:`Pipeline` for shipped weights, by name (a domain's own, ``"image"``, or other
    weights a plugin ships, ``"audio-digits"``: :meth:`~diffkit.Domain.pretrained_models`), a run
    folder (its latest checkpoint), a checkpoint file, or an exported weights folder.

    A name of shipped weights wins over a folder of the same name: write ``"./image"`` for the
    folder. ``device`` defaults to CUDA when available; ``registry`` to the installed plugins."""
    from .config import fill_defaults
    from .loading import model_from_state

    registry = registry or make_plugin_manager()
    source, domain = _resolve(name_or_path, registry)
    state = ckpt.load_sampling_state(source)
    if domain is None:
        domain = _domain_of(state, source, registry)
    ckpt.check_domain(state, domain.name, source)
    state["config"] = fill_defaults(domain, state["config"])
    torch_device = pick_device(None if device is None else str(device), World())
    model = model_from_state(domain, state, source, torch_device)
    info = {key: state.get(key) for key in PROVENANCE}
    return Pipeline(domain, model, state["config"], info=info, device=torch_device, registry=registry)


def _resolve(name_or_path: str | Path, registry: Registry) -> tuple[Path, Domain | None]:
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"diffkit.load takes a domain's name or a path (str or os.PathLike), got {name_or_path!r} "
                        f"({type(name_or_path).__name__})")
    shipped = registry.shipped(name_or_path) if isinstance(name_or_path, str) else None
    if shipped is not None:
        return shipped[1], shipped[0]
    if isinstance(name_or_path, str) and name_or_path in registry.domains:
        raise FileNotFoundError(f"the {name_or_path} domain ships no weights; load a run folder, a checkpoint "
                                "or an exported folder instead")
    path = Path(name_or_path)
    if not path.exists():
        known = ", ".join(sorted(registry.domains)) or "none installed"
        raise FileNotFoundError(f"{str(name_or_path)!r} is neither a registered domain ({known}) nor an existing "
                                "run folder, checkpoint or exported folder")
    return path, None


def _domain_of(state: dict, source: Path, registry: Registry) -> Domain:
    try:
        return registry.domain(state["domain"])
    except ValueError as error:
        raise ValueError(f"{str(source)!r} holds weights for the domain {state['domain']!r}, which no loaded "
                         f"plugin provides: {error}") from None


class Pipeline:
    """A domain, its model and config, ready to sample.

    Attributes: ``domain`` (the :class:`~diffkit.Domain`), ``model`` (the denoiser, in eval
    mode), ``config`` (the resolved config the weights were trained with), ``device``, and
    ``info`` (provenance: plugin, versions, step, and model-card facts)."""

    def __init__(self, domain: Domain, model: nn.Module, config: dict, *, info: Mapping[str, Any] | None = None,
                 device: str | torch.device = "cpu", registry: Registry | None = None):
        self.domain, self.model, self.config = domain, model, config
        self.device = torch.device(device)
        self.info = dict(info or {})
        self.registry = registry  # resolves sampler names registered by plugins

    def sample(self, n: int = 16, seed: int = 0, cond: Any = None, guidance: float | None = None,
               steps: int | None = None, sampler: str | None = None, *, batch_size: int | None = None,
               progress: bool = False) -> list:
        """``n`` new samples as the domain's objects (:meth:`~diffkit.Domain.to_objects`), the
        same for the same seed and settings as ``diffkit sample`` draws.

        ``cond`` is what ``--cond`` takes: a string, or a value written as one (``{"qed": 0.6}``
        -> ``"qed=0.6"``, ``[{"qed": 0.5}, {"qed": 0.7}]`` -> ``"qed=0.5;qed=0.7"`` (one per
        sample, cycled), ``[0, 1]`` -> ``"0,1"``, ``7`` -> ``"7"``); ``guidance``, ``steps``,
        ``sampler`` and ``batch_size`` default to the config's ``sample`` section."""
        request = SampleRequest(n=n, seed=seed, cond=condition_text(cond), guidance=guidance, steps=steps,
                                sampler=sampler, batch_size=batch_size, progress=progress)
        check_request(request, self.registry, names={})  # errors name the arguments, not the command line's options
        batch = generate(self.domain, self.model, self.config, request, device=self.device, registry=self.registry)
        return SampleList(self.domain.to_objects(batch, self.config))

    def save_pretrained(self, directory: str | Path, card: Mapping[str, Any] | None = None) -> Path:
        """Write the weights folder ``directory`` (``model.safetensors``, ``config.json``,
        ``README.md``); ``card`` adds model-card facts (see :data:`diffkit.pretrained.CARD_FIELDS`)
        over those the loaded weights came with. ``directory`` must not exist or be empty."""
        from .pretrained import save_pretrained

        state = {**self.info, "domain": self.domain.name, "config": self.config, "ema": self.model.state_dict()}
        return save_pretrained(state, directory, card)

    def __repr__(self) -> str:
        step = self.info.get("step")
        trained = f", {step:,} steps" if isinstance(step, int) else ""
        return f"<Pipeline {self.domain.name!r}{trained} on {self.device}>"


def condition_text(cond: Any) -> Any:
    """A condition written as ``--cond`` takes it: mappings as ``key=value`` pairs, a sequence of
    mappings as one entry per sample separated by ``;``, other sequences comma-separated, numbers
    as text; strings, tensors and ``None`` pass unchanged."""
    if cond is None or isinstance(cond, (str, torch.Tensor)):
        return cond
    if isinstance(cond, Mapping):
        return ",".join(f"{key}={value}" for key, value in cond.items())
    if isinstance(cond, (list, tuple)) and cond and all(isinstance(item, Mapping) for item in cond):
        return ";".join(condition_text(item) for item in cond)
    if isinstance(cond, (list, tuple)):
        return ",".join(str(value) for value in cond)
    return str(cond)


class SampleList(list):
    """A plain list of samples that Jupyter shows as a gallery (each item's own picture, player
    or text; the first :attr:`GALLERY_LIMIT`)."""

    GALLERY_LIMIT = 64

    def _repr_html_(self) -> str:
        cells = [_cell_html(item, index) for index, item in enumerate(self[:self.GALLERY_LIMIT])]
        more = len(self) - self.GALLERY_LIMIT
        tail = f"<div>... and {more} more</div>" if more > 0 else ""
        return '<div style="display:flex;flex-wrap:wrap;gap:8px">' + "".join(cells) + "</div>" + tail


def _cell_html(item: Any, index: int) -> str:
    if hasattr(item, "_repr_html_"):
        body = item._repr_html_()
    elif hasattr(item, "_repr_png_") and (png := item._repr_png_()) is not None:
        body = f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    else:
        body = f"<pre>{html.escape(repr(item))}</pre>"
    return f'<div style="text-align:center"><div>{body}</div><small>{index}</small></div>'
