"""The denoiser: a graph transformer over the fully connected graph with edge features.

Every pair of atoms attends to each other; the edge state biases the attention and adds to its
values, and the edges are updated from the atoms at their ends and from the attention scores
(in the spirit of Dwivedi & Bresson 2021 and DiGress, Vignac et al. 2023). Time, molecular
properties (for classifier-free guidance) and graph-level structural features modulate every
block through adaptive layer norms (DiT, Peebles & Xie 2023). The network is permutation
equivariant and its edge output symmetric.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .chem import BOND_TYPES, max_valences
from .features import StructuralFeatures
from .state import pair_mask


class AtomPairs:
    """The pairs ``i < j`` of ``n`` atoms, for edge states kept as one row per pair.

    The edge state is symmetric (the input is, and every update is symmetric in ``i`` and ``j``), so
    the network computes each pair once, on ``(B, P, C)`` with ``P = n (n - 1) / 2``, and lays it
    out as ``(B, n, n, C)`` (zero diagonal) only where attention needs the square."""

    def __init__(self, n: int, device: torch.device):
        self.n = n
        self.first, self.second = torch.triu_indices(n, n, offset=1, device=device)
        self.upper = self.first * n + self.second  # (i, j) in a flattened (n, n)
        count = len(self.first)
        square = torch.full((n, n), count, dtype=torch.long, device=device)  # the diagonal: a zero row
        square[self.first, self.second] = torch.arange(count, device=device)
        square[self.second, self.first] = torch.arange(count, device=device)
        self.square_index = square.flatten()

    # index_select, not advanced indexing: several times faster on the CPU for these shapes.
    def rows(self, square: Tensor) -> Tensor:
        """``(B, n, n, ...) -> (B, P, ...)``: the upper triangle."""
        return square.flatten(1, 2).index_select(1, self.upper)

    def ends(self, atoms: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, n, C) -> (B, P, C)`` twice: the features of each pair's first and second atom."""
        return atoms.index_select(1, self.first), atoms.index_select(1, self.second)

    def square(self, rows: Tensor, diagonal: Tensor | None = None) -> Tensor:
        """``(B, P, C) -> (B, n, n, C)``: symmetric, ``diagonal (C,)`` (zero by default) on the diagonal."""
        fill = rows.new_zeros(rows.shape[0], 1, rows.shape[2])
        if diagonal is not None:
            fill = fill + diagonal.to(rows.dtype)
        square = torch.cat([rows, fill], dim=1).index_select(1, self.square_index)
        return square.view(rows.shape[0], self.n, self.n, rows.shape[2])


class GraphTransformerBlock(nn.Module):
    """One block: ``h (B, N, D)``, pair rows ``e (B, P, De)``, ``g (B, D)`` -> updated ``h``, ``e``."""

    def __init__(self, dim: int, edge_dim: int, heads: int, ff_mult: int = 2):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.hidden ({dim}) must be divisible by model.heads ({heads})")
        self.heads, self.head_dim = heads, dim // heads
        self.modulation = nn.Linear(dim, 6 * dim)
        self.norm_attention = nn.LayerNorm(dim, elementwise_affine=False)
        self.norm_ff = nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.edge_bias = nn.Linear(edge_dim, heads)
        self.edge_message = nn.Linear(heads * edge_dim, dim)
        self.attention_out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim))
        self.norm_edges = nn.LayerNorm(edge_dim)
        self.edge_from_nodes = nn.Linear(dim, 2 * edge_dim)
        self.edge_ff = nn.Sequential(nn.Linear(edge_dim + heads, ff_mult * edge_dim), nn.GELU(),
                                     nn.Linear(ff_mult * edge_dim, edge_dim))
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, h: Tensor, e: Tensor, g: Tensor, node_mask: Tensor, pair_rows: Tensor,
                pairs: AtomPairs) -> tuple[Tensor, Tensor]:
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = self.modulation(g).unsqueeze(1).chunk(6, dim=-1)
        x = self.norm_attention(h) * (1 + scale_a) + shift_a
        message, scores = self._attend(x, e, node_mask, pairs)
        h = h + (1 + gate_a) * self.attention_out(message)
        h = h + (1 + gate_f) * self.ff(self.norm_ff(h) * (1 + scale_f) + shift_f)
        h = h * node_mask.unsqueeze(-1)
        e = e + self._edge_update(h, e, scores, pairs) * pair_rows
        return h, e

    def _attend(self, x: Tensor, e: Tensor, node_mask: Tensor, pairs: AtomPairs) -> tuple[Tensor, Tensor]:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, N, N)
        # An atom's pair with itself has a zero edge state: its bias is the layer's constant term.
        scores = scores + pairs.square(self.edge_bias(e), self.edge_bias.bias).permute(0, 3, 1, 2)
        keys = node_mask.bool()[:, None, None, :]
        weights = softmax(scores.masked_fill(~keys, float("-inf")))
        # Edge features enter the values after aggregation (sum_j a_ij e_ij per head, then a
        # projection): the same function as projecting every edge first, at a fraction of the cost.
        # The diagonal's edge state is zero, as the square layout gives it.
        edge_message = torch.einsum("bhij,bijc->bihc", weights, pairs.square(e)).reshape(b, n, -1)
        message = (weights @ v).transpose(1, 2).reshape(b, n, -1) + self.edge_message(edge_message)
        return message, scores

    def _edge_update(self, h: Tensor, e: Tensor, scores: Tensor, pairs: AtomPairs) -> Tensor:
        # Symmetric in (i, j): sums and products of the two ends, symmetrised attention scores.
        first, second = pairs.ends(self.edge_from_nodes(h))
        a_i, c_i = first.chunk(2, dim=-1)
        a_j, c_j = second.chunk(2, dim=-1)
        pair = torch.addcmul(a_i + a_j, c_i, c_j)
        symmetric_scores = pairs.rows(((scores + scores.transpose(-1, -2)) / 2).permute(0, 2, 3, 1))
        return self.edge_ff(torch.cat([self.norm_edges(e) + pair, symmetric_scores], dim=-1))


class MoleculeDenoiser(nn.Module):
    """``model(x_t, t, cond=None, node_mask=None) -> prediction`` for states
    ``{"nodes": (B, N, K), "edges": (B, N, N, E)}``.

    ``cond (B, P)`` holds raw property values, NaN where a property is left free (a row of NaN,
    or ``cond=None``, is the unconditional model). With ``prediction="x0"`` the outputs are
    ``2 softmax(logits) - 1``: the clean one-hot state's expectation under the predicted types.

    With ``categorical=True`` the state holds class indices, ``{"nodes": (B, N), "edges": (B, N, N)}``
    (long), which the network reads as the one-hot state of the Gaussian model at ``t = 0``, and
    it returns the logits of ``x_0``: ``{"nodes": (B, N, K), "edges": (B, N, N, E)}``.
    ``component_features`` adds the connected pieces to the structural features it reads
    (:class:`~diffkit_molecule.features.StructuralFeatures`).

    Buffers set from the data (:meth:`fit`): ``size_counts`` (how many training molecules have
    each atom count), the mean/std used to normalise the properties and, for a categorical
    model, ``atom_counts`` and ``bond_counts`` (how often each atom type occurs among the atoms
    and each bond type among the pairs of distinct atoms: the marginal transitions' law)."""

    def __init__(self, atom_types: list[str], property_names: list[str], *, max_atoms: int, hidden: int = 128,
                 edge_hidden: int = 64, heads: int = 8, layers: int = 6, prediction: str = "x0",
                 property_drop: float = 0.1, categorical: bool = False, component_features: bool = False):
        super().__init__()
        self.atom_types, self.property_names = list(atom_types), list(property_names)
        self.prediction, self.property_drop, self.categorical = prediction, property_drop, categorical
        k, e, p = len(atom_types), len(BOND_TYPES), len(property_names)
        self.structure = StructuralFeatures(max_valences(atom_types), max_atoms, components=component_features)
        self.node_in = nn.Linear(k + self.structure.node_dim, hidden)
        self.edge_in = nn.Linear(e, edge_hidden)
        self.graph_in = nn.Linear(self.structure.graph_dim, hidden)
        self.time_in = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.cond_in = nn.Sequential(nn.Linear(2 * p, hidden), nn.SiLU(), nn.Linear(hidden, hidden)) if p else None
        self.blocks = nn.ModuleList(GraphTransformerBlock(hidden, edge_hidden, heads) for _ in range(layers))
        self.node_out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, k))
        self.edge_out = nn.Sequential(nn.LayerNorm(edge_hidden), nn.Linear(edge_hidden, e))
        self.register_buffer("size_counts", torch.zeros(max_atoms + 1))
        self.register_buffer("property_mean", torch.zeros(p))
        self.register_buffer("property_std", torch.ones(p))
        if categorical:  # only then: the Gaussian model's weights keep their layout
            self.register_buffer("atom_counts", torch.ones(k))
            self.register_buffer("bond_counts", torch.ones(e))

    # The vocabulary travels in the state dict, so that a checkpoint names what it generates.
    def get_extra_state(self) -> dict:
        return {"atom_types": self.atom_types, "property_names": self.property_names}

    def set_extra_state(self, state: dict) -> None:
        if state["atom_types"] != self.atom_types or state["property_names"] != self.property_names:
            raise ValueError(f"weights for atom types {state['atom_types']} and properties "
                             f"{state['property_names']} do not fit a model built for {self.atom_types} "
                             f"and {self.property_names}")

    @torch.no_grad()
    def fit(self, sizes: Tensor, properties: Tensor, atom_counts: Tensor | None = None,
            bond_counts: Tensor | None = None) -> None:
        """Record the atom-count histogram of ``sizes (M,)``, the statistics of ``properties (M, P)``
        and, for a categorical model, the class counts ``atom_counts (K,)`` and ``bond_counts (E,)``."""
        if self.categorical:
            if atom_counts is None or bond_counts is None:
                raise ValueError("a categorical model needs the atom and bond type counts of the data")
            self.atom_counts.copy_(atom_counts)
            self.bond_counts.copy_(bond_counts)
        if int(sizes.max()) >= len(self.size_counts):
            raise ValueError(f"molecules of {int(sizes.max())} atoms exceed data.max_atoms = {len(self.size_counts) - 1}")
        self.size_counts.copy_(torch.bincount(sizes, minlength=len(self.size_counts)).float())
        if properties.shape[1]:
            self.property_mean.copy_(properties.mean(0))
            self.property_std.copy_(properties.std(0).clamp(min=1e-6))

    def forward(self, x_t: dict[str, Tensor], t: Tensor, cond: Tensor | None = None,
                node_mask: Tensor | None = None) -> dict[str, Tensor]:
        nodes, edges = x_t["nodes"], x_t["edges"]
        if self.categorical:
            nodes, edges = self._one_hot(nodes, edges)
        else:  # in the network's precision (a float32 state meets a bfloat16 copy of the network)
            nodes, edges = nodes.to(self.node_in.weight.dtype), edges.to(self.node_in.weight.dtype)
        if node_mask is None:
            node_mask = torch.ones(nodes.shape[:-1], dtype=nodes.dtype, device=nodes.device)
        node_mask = node_mask.to(nodes.dtype)
        real_pairs = pair_mask(node_mask).unsqueeze(-1)
        # The network reads the symmetric part of the edges (all of them for a symmetric state).
        edges = (edges + edges.transpose(1, 2)) / 2
        nodes, edges = nodes * node_mask.unsqueeze(-1), edges * real_pairs
        node_features, graph_features = self.structure(nodes, edges, node_mask)
        pairs = AtomPairs(nodes.shape[1], nodes.device)
        pair_rows = pairs.rows(real_pairs)
        h = self.node_in(torch.cat([nodes, node_features], dim=-1)) * node_mask.unsqueeze(-1)
        e = self.edge_in(pairs.rows(edges)) * pair_rows
        g = self.time_in(timestep_embedding(t, h.shape[-1])) + self.graph_in(graph_features)
        g = F.silu(g + self._condition(cond, nodes))
        for block in self.blocks:
            h, e = block(h, e, g, node_mask, pair_rows, pairs)
        node_out = self.node_out(h)
        edge_out = self.edge_out(e)
        if self.prediction == "x0" and not self.categorical:
            node_out, edge_out = 2 * softmax(node_out) - 1, 2 * softmax(edge_out) - 1
        return {"nodes": node_out * node_mask.unsqueeze(-1), "edges": pairs.square(edge_out * pair_rows)}

    def _one_hot(self, nodes: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
        if nodes.is_floating_point() or edges.is_floating_point():
            raise TypeError(f"a categorical model reads class indices (integer tensors), got {nodes.dtype} "
                            f"and {edges.dtype}")
        dtype = self.node_in.weight.dtype
        nodes = F.one_hot(nodes.long(), len(self.atom_types)).to(dtype) * 2 - 1
        edges = F.one_hot(edges.long(), len(BOND_TYPES)).to(dtype) * 2 - 1
        return nodes, edges

    def _condition(self, cond: Tensor | None, like: Tensor) -> Tensor | float:
        if self.cond_in is None:
            return 0.0
        b, p = like.shape[0], len(self.property_names)
        if cond is None:
            cond = torch.full((b, p), float("nan"), device=like.device)
        cond = cond.to(like.dtype)
        present = ~torch.isnan(cond)
        if self.training and self.property_drop > 0:
            # Dropping properties one by one teaches the model partial conditions ("qed=0.8" alone).
            present = present & (torch.rand(present.shape, device=like.device) >= self.property_drop)
        normalised = torch.where(present, (cond - self.property_mean) / self.property_std, torch.zeros_like(cond))
        return self.cond_in(torch.cat([normalised, present.to(like.dtype)], dim=-1))


def add_component_inputs(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The weights of a network built without ``component_features``, laid out for one built with
    them: the new input columns of ``node_in`` and ``graph_in`` (the features come last) get zero
    weights, so the network computes the same function until training teaches it to read them."""
    widened = dict(state)
    for key in ("node_in.weight", "graph_in.weight"):
        weight = state[key]
        widened[key] = torch.cat([weight, weight.new_zeros(weight.shape[0], 1)], dim=1)
    return widened


def softmax(x: Tensor) -> Tensor:
    """Softmax over the last dimension. Written out because ``torch.softmax`` over a dimension of a
    few entries is slow on the CPU (13 ms against 2 ms for ``(1000, 8, 9, 9)`` on one thread)."""
    exp = (x - x.amax(-1, keepdim=True)).exp()
    return exp / exp.sum(-1, keepdim=True)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of ``t (B,)`` in [0, 1] (scaled by 1000, as for discrete steps): ``(B, dim)``."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000 * t.float().unsqueeze(-1) * frequencies
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding
