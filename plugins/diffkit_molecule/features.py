"""Structural features of a noisy graph, computed from its current most likely bonds. They give
the network what message passing alone sees poorly and validity depends on: how many bonds each
atom already has against its allowed valence, the rings it sits in and, optionally, whether the
graph is in one piece."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .state import pair_mask

WALK_LENGTHS = (3, 4, 5, 6)


class StructuralFeatures(nn.Module):
    """``(nodes (B, N, K), edges (B, N, N, E), node_mask (B, N))`` ->
    ``(node features (B, N, F_node), graph features (B, F_graph))``, in float32.

    Node features: degree, bond-order sum, free valence of the most likely atom type (clipped to
    [-2, 4]) and closed-walk counts of length 3..6 (``diag(A^k)``, which count the rings through
    an atom plus backtracking walks). Graph features: atom count, bond count, and the mean closed
    walks (``trace(A^k) / n``). With ``components=True`` also the share of the molecule's atoms
    in each atom's connected piece (a node feature) and the number of pieces beyond the first
    (a graph feature)."""

    def __init__(self, max_valences: list[int], max_atoms: int, components: bool = False):
        super().__init__()
        self.register_buffer("max_valence", torch.tensor(max_valences, dtype=torch.float32), persistent=False)
        self.max_atoms = max(max_atoms, 1)
        self.components = components
        self.node_dim = 3 + len(WALK_LENGTHS) + int(components)
        self.graph_dim = 2 + len(WALK_LENGTHS) + int(components)

    def forward(self, nodes: Tensor, edges: Tensor, node_mask: Tensor) -> tuple[Tensor, Tensor]:
        # float32 whatever the network runs in: walk counts and valences are counts.
        nodes, edges, node_mask = nodes.float(), edges.float(), node_mask.float()
        pairs = pair_mask(node_mask)
        bond_class = edges.argmax(-1)  # 0 = no bond, 1..3 = bond order
        order = bond_class.float() * pairs
        adjacency = (order > 0).float()
        degree = adjacency.sum(-1)
        valence_used = order.sum(-1)
        atom_valence = self.max_valence[nodes.argmax(-1)]
        free_valence = (atom_valence - valence_used).clamp(-2, 4)
        walks = _closed_walks(adjacency)  # (B, N, len(WALK_LENGTHS))
        count = node_mask.sum(-1).clamp(min=1)
        node_features = [degree.unsqueeze(-1) / 4, valence_used.unsqueeze(-1) / 4, free_valence.unsqueeze(-1) / 4,
                         torch.log1p(walks)]
        graph_features = [(count / self.max_atoms).unsqueeze(-1), (adjacency.sum((-1, -2)) / 2 / count).unsqueeze(-1),
                          torch.log1p(walks.sum(-2) / count.unsqueeze(-1))]
        if self.components:
            # Atoms in each atom's piece, itself included (padding: 0, clamped to avoid 0 / 0).
            piece_size = _reachable(adjacency, node_mask).sum(-1).clamp(min=1)
            pieces = (node_mask / piece_size).sum(-1).round()  # every piece's atoms add up to 1
            node_features.append((piece_size / count.unsqueeze(-1)).unsqueeze(-1))
            graph_features.append((pieces - 1).clamp(min=0).unsqueeze(-1) / 4)
        return torch.cat(node_features, dim=-1) * node_mask.unsqueeze(-1), torch.cat(graph_features, dim=-1)


def _closed_walks(adjacency: Tensor) -> Tensor:
    """``diag(A^k)`` for k in :data:`WALK_LENGTHS`: ``(B, N, N) -> (B, N, len)``."""
    power = adjacency @ adjacency
    found = []
    for k in range(3, max(WALK_LENGTHS) + 1):
        power = power @ adjacency
        if k in WALK_LENGTHS:
            found.append(torch.diagonal(power, dim1=-2, dim2=-1))
    return torch.stack(found, dim=-1)


def _reachable(adjacency: Tensor, node_mask: Tensor) -> Tensor:
    """``(B, N, N)``: 1 where atom ``j`` is reachable from atom ``i`` through bonds (``i`` from
    itself, real atoms only). Squaring ``I + A`` doubles the path length covered, so
    ``ceil(log2(N - 1))`` squarings reach every path of an ``N``-atom graph."""
    n = adjacency.shape[-1]
    reach = (adjacency + torch.diag_embed(node_mask)).clamp(max=1)
    for _ in range(math.ceil(math.log2(max(n - 1, 1)))):
        reach = (reach @ reach).clamp(max=1)
    return reach
