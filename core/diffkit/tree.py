"""Helpers for sample states: a Tensor, or a dict of Tensors, batch dimension first.

The core never looks inside a state. Every operation maps over its leaves, and per-sample
coefficients are broadcast with :func:`append_dims`.
"""

from __future__ import annotations

import hashlib
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


def where(condition: State, a: State, b: State) -> State:
    """``a`` where ``condition`` is nonzero and ``b`` elsewhere, leaf by leaf (``condition``
    broadcasts against each leaf). A tensor ``condition`` serves every leaf of a dict state; a dict
    one may leave leaves out, which keep ``b``."""
    if isinstance(b, Tensor):
        return torch.where(condition.bool(), a, b)
    if not isinstance(b, Mapping):
        raise TypeError(f"a state is a Tensor or a dict of Tensors, got {type(b).__name__}")
    out = {}
    for key in b:
        part = condition.get(key) if isinstance(condition, Mapping) else condition
        out[key] = b[key] if part is None else where(part, a[key], b[key])
    return out


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


class SampleGenerators:
    """One random generator per sample, in batch order.

    Passed where a ``torch.Generator`` goes (``generator=`` of sampling, noise functions,
    :meth:`Domain.prepare_sampling`), it makes each sample's randomness come from its own stream,
    so a sample depends on its seed alone and not on the batch it was drawn in. Noise is drawn
    sample by sample by :func:`draw_noise`; other draws go through :func:`draw_per_sample`.
    """

    def __init__(self, generators: list[torch.Generator]):
        self.generators = list(generators)

    @classmethod
    def seeded(cls, seed: int, indices: range | list[int], device: torch.device | str = "cpu") -> "SampleGenerators":
        """Generators for the samples numbered ``indices`` of the run with ``seed``."""
        return cls([torch.Generator(device=device).manual_seed(sample_seed(seed, i)) for i in indices])

    @property
    def device(self) -> torch.device:
        return self.generators[0].device

    def __len__(self) -> int:
        return len(self.generators)

    def __iter__(self):
        return iter(self.generators)

    def __repr__(self) -> str:
        return f"SampleGenerators({len(self)} on {self.device})"


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` of a run seeded with ``seed`` (a hash: no two pairs collide in practice)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # below 2**63, as every generator accepts


def draw_per_sample(draw: Callable[[torch.Generator | None, int], Tensor], n: int, generator) -> Tensor:
    """``draw(generator, count)``, a tensor of ``count`` rows, for ``n`` samples. With
    :class:`SampleGenerators` each row comes from its own sample's generator (``draw(g_i, 1)``)."""
    if not isinstance(generator, SampleGenerators):
        return draw(generator, n)
    if len(generator) != n:
        raise ValueError(f"{len(generator)} sample generators for {n} samples")
    return torch.cat([draw(g, 1) for g in generator])


def draws_per_sample(noise: Callable[..., State]) -> Callable[..., State]:
    """Mark a noise function that takes a :class:`SampleGenerators` itself and draws each sample's
    noise from that sample's generator alone, as :func:`draw_noise` would one sample at a time:
    :func:`draw_noise` then calls it once for the whole batch, without the per-sample loop."""
    noise.draws_per_sample = True
    return noise


def draw_noise(noise: Callable[..., State], like: State, generator=None, **extra: Any) -> State:
    """``noise(like, generator, **extra)``; with :class:`SampleGenerators` the noise of each sample
    is drawn alone, from its own generator, with its own slice of ``like`` and of the batched
    ``extra`` tensors, so that it does not depend on the rest of the batch (a noise function
    marked with :func:`draws_per_sample` is given the generators and does this itself)."""
    if not isinstance(generator, SampleGenerators) or getattr(noise, "draws_per_sample", False):
        return noise(like, generator, **extra)
    n = batch_size(like)
    if len(generator) != n:
        raise ValueError(f"{len(generator)} sample generators for a batch of {n}")
    parts = []
    for i, g in enumerate(generator):
        one = lambda value: _sample_slice(value, i, n)  # noqa: E731
        parts.append(noise(one(like), g, **{key: one(value) for key, value in extra.items()}))
    return concat(parts)


def _sample_slice(value: Any, i: int, n: int) -> Any:
    """Sample ``i`` of a batched tensor or state (kept as a batch of one); other values pass through."""
    if isinstance(value, Tensor):
        return value[i:i + 1] if value.ndim and value.shape[0] == n else value
    if isinstance(value, Mapping):
        return {key: _sample_slice(item, i, n) for key, item in value.items()}
    return value


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
