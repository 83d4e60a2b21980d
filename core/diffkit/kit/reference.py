"""Reference networks (e.g. the classifier whose features a Fréchet distance uses) trained once
per reference set and kept in the cache, keyed by a hash of everything that shapes them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .files import save_torch_atomic


def content_key(*parts: Any) -> str:
    """A short hash of tensors, arrays, bytes and plain values (their exact contents)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(_bytes_of(part))
        digest.update(b"\x00")
    return digest.hexdigest()[:24]


def cached_network(folder: Path | None, key: str, build: Callable[[], nn.Module],
                   train: Callable[[nn.Module], dict]) -> tuple[nn.Module, dict]:
    """The network stored as ``folder/<key>.pt``, or a new one from ``build()`` fitted by
    ``train(network)`` and stored there (no storing when ``folder`` is None).

    ``train`` returns a dict of plain values about the fit (e.g. a held-out accuracy), kept with
    the weights and returned beside the network, which is in eval mode on the CPU."""
    path = Path(folder) / f"{key}.pt" if folder is not None else None
    network = build()
    if path is not None and path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(stored["state"])
        return network.eval(), dict(stored["info"])
    with torch.enable_grad():  # callers may be sampling under no_grad
        info = train(network)
    network = network.cpu().eval()
    if path is not None:
        save_torch_atomic({"state": network.state_dict(), "info": info}, path)
    return network, info


def _bytes_of(part: Any) -> bytes:
    if isinstance(part, torch.Tensor):
        return part.detach().cpu().contiguous().numpy().tobytes() + repr((part.dtype, tuple(part.shape))).encode()
    if hasattr(part, "tobytes"):  # numpy arrays
        return part.tobytes() + repr((str(part.dtype), part.shape)).encode()
    if isinstance(part, bytes):
        return part
    if isinstance(part, dict):
        return repr(sorted(part.items())).encode()
    if isinstance(part, Iterable) and not isinstance(part, str):
        return b"".join(_bytes_of(item) for item in part)
    return repr(part).encode()
