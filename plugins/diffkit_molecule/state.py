"""The state of a batch of molecular graphs and its structured noise, for both kinds of diffusion.

Gaussian diffusion: a graph of at most ``N`` atoms becomes ``{"nodes": (N, K), "edges": (N, N, E)}``:
each real atom a one-hot row over the ``K`` atom types and each pair of distinct real atoms a
one-hot row over the ``E`` bond types, both mapped from {0, 1} to {-1, 1}; padding atoms, pairs
involving them and the diagonal (no self-loops) are 0.

Categorical diffusion: the same graph as class indices, ``{"nodes": (N,), "edges": (N, N)}``
(long), the atom type of each atom and the bond type of each pair, symmetric; padding and the
diagonal hold class 0 and never change (:func:`class_mask`).

``node_mask (N,)`` is 1 for real atoms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffkit import SampleGenerators

from .chem import BOND_TYPES


def pair_mask(node_mask: Tensor) -> Tensor:
    """``(..., N) -> (..., N, N)``: 1 for pairs of distinct real atoms."""
    mask = node_mask.unsqueeze(-1) * node_mask.unsqueeze(-2)
    eye = torch.eye(node_mask.shape[-1], dtype=mask.dtype, device=mask.device)
    return mask * (1 - eye)


def encode(atoms: Tensor, bonds: Tensor, num_atom_types: int) -> tuple[dict[str, Tensor], Tensor]:
    """Integer graphs (``atoms (..., N)`` with -1 for padding, ``bonds (..., N, N)``) to the state
    and the node mask."""
    node_mask = (atoms >= 0).float()
    nodes = F.one_hot(atoms.clamp(min=0), num_atom_types).float() * 2 - 1
    edges = F.one_hot(bonds.clamp(min=0), len(BOND_TYPES)).float() * 2 - 1
    nodes = nodes * node_mask.unsqueeze(-1)
    edges = edges * pair_mask(node_mask).unsqueeze(-1)
    return {"nodes": nodes, "edges": edges}, node_mask


def encode_classes(atoms: Tensor, bonds: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Integer graphs (``atoms (..., N)`` with -1 for padding, ``bonds (..., N, N)``) to the
    categorical state and the node mask."""
    node_mask = (atoms >= 0).float()
    nodes = atoms.clamp(min=0).long()
    edges = bonds.clamp(min=0).long() * pair_mask(node_mask).long()
    return {"nodes": nodes, "edges": edges}, node_mask


def class_mask(node_mask: Tensor) -> dict[str, Tensor]:
    """The entries of a categorical state that count in the loss and may change when sampling:
    real atoms, and pairs of distinct real atoms."""
    return {"nodes": node_mask, "edges": pair_mask(node_mask)}


def decode(state: dict[str, Tensor], node_mask: Tensor) -> dict[str, Tensor]:
    """The most likely graph of a state: ``{"nodes": (B, N) long, -1 for padding,
    "edges": (B, N, N) long, symmetric}``. Edge scores are symmetrised before the argmax; a
    categorical state is its own graph (its upper triangle is mirrored, for safety)."""
    real = node_mask.bool()
    if not state["nodes"].is_floating_point():
        upper = torch.triu(state["edges"].long(), diagonal=1)
        bonds = (upper + upper.transpose(-1, -2)) * pair_mask(node_mask).long()
        return {"nodes": state["nodes"].long().masked_fill(~real, -1), "edges": bonds}
    atoms = state["nodes"].argmax(-1).masked_fill(~real, -1)
    edge_scores = (state["edges"] + state["edges"].transpose(-2, -3)) / 2
    bonds = edge_scores.argmax(-1) * pair_mask(node_mask).long()
    return {"nodes": atoms, "edges": bonds}


def loss_mask(node_mask: Tensor) -> dict[str, Tensor]:
    """Which state entries count in the loss: real atoms, and pairs of distinct real atoms."""
    return {"nodes": node_mask.unsqueeze(-1), "edges": pair_mask(node_mask).unsqueeze(-1)}


def graph_noise(like: dict[str, Tensor], generator: torch.Generator | SampleGenerators | None = None,
                node_mask: Tensor | None = None) -> dict[str, Tensor]:
    """Standard normal noise for a state: symmetric over edges, zero on the diagonal and, when
    ``node_mask`` is given, zero on padding. Each off-diagonal entry is still N(0, 1). It is drawn
    as wide as the atoms in use and zero padded from there, so a molecule's noise does not depend
    on how far its batch is padded; with :class:`~diffkit.SampleGenerators` each molecule's is
    drawn from its own generator, as wide as its own atoms."""
    nodes, edges = like["nodes"], like["edges"]
    if node_mask is None:
        node_mask = torch.ones(nodes.shape[:-1], dtype=nodes.dtype, device=nodes.device)
    node_mask = node_mask.to(nodes.dtype)
    node_noise = _padded_draws(_randn, generator, node_mask, nodes, pairs=False) * node_mask.unsqueeze(-1)
    raw = _padded_draws(_randn, generator, node_mask, edges, pairs=True)
    upper = torch.triu(torch.ones(edges.shape[-2], edges.shape[-2], device=edges.device), diagonal=1)
    upper = upper.to(edges.dtype).unsqueeze(-1)
    triangle = raw * upper
    edge_noise = (triangle + triangle.transpose(-2, -3)) * pair_mask(node_mask).unsqueeze(-1)
    return {"nodes": node_noise, "edges": edge_noise}


def graph_uniforms(like: dict[str, Tensor], generator: torch.Generator | SampleGenerators | None = None,
                   node_mask: Tensor | None = None) -> dict[str, Tensor]:
    """The noise of a categorical state: a uniform in ``[0, 1)`` (float64) per atom and per pair
    of atoms, the same for ``(i, j)`` and ``(j, i)``, so that symmetric laws give symmetric draws.
    Drawn as wide as the atoms in use, like :func:`graph_noise`; padding and the diagonal hold 0
    (their entries never change)."""
    nodes, edges = like["nodes"], like["edges"]
    if node_mask is None:
        node_mask = torch.ones(nodes.shape, device=nodes.device)
    node_mask = node_mask.to(torch.float64)
    node_noise = _padded_draws(_rand, generator, node_mask, nodes, pairs=False) * node_mask
    triangle = torch.triu(_padded_draws(_rand, generator, node_mask, edges, pairs=True), diagonal=1)
    edge_noise = (triangle + triangle.transpose(-1, -2)) * pair_mask(node_mask)
    return {"nodes": node_noise, "edges": edge_noise}


def _padded_draws(draw, generator, node_mask: Tensor, like: Tensor, *, pairs: bool) -> Tensor:
    """Random numbers shaped like ``like`` (``(B, N, ...)``, or ``(B, N, N, ...)`` with ``pairs``),
    drawn for the positions below the used width and zero beyond it. One generator draws the whole
    batch as wide as its widest graph; :class:`~diffkit.SampleGenerators` draw each graph as wide
    as its own, from its own generator: the numbers a batch of one would get, with one draw per
    graph and the rest done for the whole batch."""
    batch, width = like.shape[0], like.shape[1]
    tail = like.shape[3 if pairs else 2:]
    if not isinstance(generator, SampleGenerators):
        used = _used_width(node_mask)
        drawn = draw((batch, used, used, *tail) if pairs else (batch, used, *tail), generator, like)
        padding = [0, 0] * len(tail) + [0, width - used] * (2 if pairs else 1)
        return F.pad(drawn, padding)
    if len(generator) != batch:
        raise ValueError(f"{len(generator)} sample generators for a batch of {batch}")
    used = _used_widths(node_mask).tolist()
    drawn = [draw((u, u, *tail) if pairs else (u, *tail), g, like) for g, u in zip(generator, used)]
    out = torch.zeros(like.shape, dtype=drawn[0].dtype if drawn else like.dtype, device=like.device)
    for u in set(used):  # graphs of one width are placed together
        rows = [i for i, width_i in enumerate(used) if width_i == u]
        block = torch.stack([drawn[i] for i in rows])
        index = torch.tensor(rows, device=like.device)
        if pairs:
            out[index, :u, :u] = block
        else:
            out[index, :u] = block
    return out


def _used_width(node_mask: Tensor) -> int:
    """One past the last atom position that is real in some graph of the batch."""
    used = node_mask.reshape(-1, node_mask.shape[-1]).amax(0).nonzero()
    return int(used.max()) + 1 if len(used) else 0


def _used_widths(node_mask: Tensor) -> Tensor:
    """``(B,)``: one past the last real atom position of each graph (0 for a graph of none)."""
    positions = torch.arange(1, node_mask.shape[-1] + 1, device=node_mask.device)
    return ((node_mask > 0) * positions).amax(-1)


def _randn(shape, generator, like: Tensor) -> Tensor:
    # Drawn on the generator's device, then moved: a CPU generator may serve a GPU state.
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _rand(shape, generator, like: Tensor) -> Tensor:
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64).to(like.device)
