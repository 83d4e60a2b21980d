"""Helpers for sample states: a Tensor, or a dict of Tensors, batch dimension first.

The core never looks inside a state. Every operation maps over its leaves, and per-sample
coefficients are broadcast with :func:`append_dims`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Union

import torch
from torch import Tensor

State = Union[Tensor, Mapping[str, Any]]


def append_dims(x: Tensor, target_ndim: int) -> Tensor:
    """Append trailing singleton dimensions to ``x`` until it has ``target_ndim`` dimensions."""
    missing = target_ndim - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_ndim is {target_ndim}, which is less")
    return x[(...,) + (None,) * missing]


def tree_map(fn: Callable[..., Tensor], tree: State, *others: State) -> State:
    """Apply ``fn`` leaf by leaf to one or more states of the same structure."""
    if isinstance(tree, Tensor):
        return fn(tree, *others)
    if isinstance(tree, Mapping):
        for other in others:
            if not isinstance(other, Mapping) or other.keys() != tree.keys():
                raise ValueError(
                    f"states differ in structure: keys {sorted(tree)} vs "
                    f"{sorted(other) if isinstance(other, Mapping) else type(other).__name__}"
                )
        return {key: tree_map(fn, tree[key], *(other[key] for other in others)) for key in tree}
    raise TypeError(f"a state is a Tensor or a dict of Tensors, got {type(tree).__name__}")


def leaves(tree: State) -> list[Tensor]:
    """The tensors of a state, in key order."""
    if isinstance(tree, Tensor):
        return [tree]
    return [leaf for key in tree for leaf in leaves(tree[key])]


def batch_size(tree: State) -> int:
    return leaves(tree)[0].shape[0]


def first_leaf(tree: State) -> Tensor:
    return leaves(tree)[0]


def scale(coef: Tensor | float, tree: State) -> State:
    """Multiply every leaf by a per-sample coefficient (shape ``(B,)``) or a scalar; always a new state."""
    if isinstance(coef, Tensor) and coef.ndim == 1:
        return tree_map(lambda leaf: append_dims(coef.to(leaf.dtype), leaf.ndim) * leaf, tree)
    return tree_map(lambda leaf: leaf * float(coef), tree)


def combine(*terms: tuple[Tensor | float, State]) -> State:
    """The linear combination ``sum(coef * state)`` of ``(coef, state)`` pairs.

    Coefficients are scalars (numbers or 0-dim tensors) or per-sample tensors of shape ``(B,)``.
    The sum is accumulated in place in one fresh tensor per leaf, so a sampler step costs a few
    passes over the state rather than one allocation per term.
    """
    total = scale(*terms[0])
    for coef, tree in terms[1:]:
        total = tree_map(lambda acc, leaf: _accumulate(acc, coef, leaf), total, tree)
    return total


def _accumulate(acc: Tensor, coef: Tensor | float, leaf: Tensor) -> Tensor:
    if torch.broadcast_shapes(acc.shape, leaf.shape) != acc.shape:  # the sum is larger than acc
        return acc + scale(coef, leaf)
    if isinstance(coef, Tensor) and coef.ndim == 1:
        return acc.addcmul_(append_dims(coef.to(acc.dtype), leaf.ndim), leaf)
    return acc.add_(leaf, alpha=float(coef))


def gaussian_like(like: State, generator: torch.Generator | None = None, **_: Any) -> State:
    """Standard normal noise with the structure, dtype and device of ``like``."""
    return tree_map(
        lambda leaf: torch.randn(
            leaf.shape, generator=generator, dtype=leaf.dtype, device=leaf.device
        ),
        like,
    )


def standard_noise(like: State, generator: torch.Generator | None = None, **_: Any) -> State:
    """The noise of each leaf of a state: standard normal for floating-point leaves (Gaussian
    diffusion), and for integer leaves (categorical diffusion) the uniforms in ``[0, 1)``, float64,
    of one categorical draw per entry."""
    return tree_map(lambda leaf: _standard_noise_leaf(leaf, generator), like)


def _standard_noise_leaf(leaf: Tensor, generator: torch.Generator | None) -> Tensor:
    if leaf.is_floating_point():
        return torch.randn(leaf.shape, generator=generator, dtype=leaf.dtype, device=leaf.device)
    return torch.rand(leaf.shape, generator=generator, dtype=torch.float64, device=leaf.device)


def concat(trees: list[State]) -> State:
    """Concatenate states along the batch dimension."""
    return tree_map(lambda *parts: torch.cat(parts), trees[0], *trees[1:])


def split(tree: State, size: int) -> tuple[State, State]:
    """Split a state into its first ``size`` samples and the rest."""
    return tree_map(lambda leaf: leaf[:size], tree), tree_map(lambda leaf: leaf[size:], tree)


def to_device(tree: Any, device: torch.device | str, *, non_blocking: bool = False) -> Any:
    """Move every tensor in a (possibly nested) dict to ``device``; other values pass through.

    ``non_blocking`` (for a CUDA device) stages CPU tensors in pinned memory and copies them
    asynchronously: the host goes on queueing work instead of waiting for the device to get there.
    """
    if isinstance(tree, Tensor):
        if non_blocking and tree.device.type == "cpu" and not tree.is_pinned():
            tree = tree.pin_memory()
        return tree.to(device, non_blocking=non_blocking)
    if isinstance(tree, Mapping):
        return {key: to_device(value, device, non_blocking=non_blocking) for key, value in tree.items()}
    return tree
