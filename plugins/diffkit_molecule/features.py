"""Structural features of a noisy graph, computed from its current most likely bonds. They give
the network what message passing alone sees poorly and validity depends on: how many bonds each
atom already has against its allowed valence, and the rings it sits in."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .state import pair_mask

WALK_LENGTHS = (3, 4, 5, 6)


class StructuralFeatures(nn.Module):
    """``(nodes (B, N, K), edges (B, N, N, E), node_mask (B, N))`` ->
    ``(node features (B, N, F_node), graph features (B, F_graph))``.

    Node features: degree, bond-order sum, free valence of the most likely atom type (clipped to
    [-2, 4]) and closed-walk counts of length 3..6 (``diag(A^k)``, which count the rings through
    an atom plus backtracking walks). Graph features: atom count, bond count, and the mean closed
    walks (``trace(A^k) / n``)."""

    node_dim = 3 + len(WALK_LENGTHS)
    graph_dim = 2 + len(WALK_LENGTHS)

    def __init__(self, max_valences: list[int], max_atoms: int):
        super().__init__()
        self.register_buffer("max_valence", torch.tensor(max_valences, dtype=torch.float32), persistent=False)
        self.max_atoms = max(max_atoms, 1)

    def forward(self, nodes: Tensor, edges: Tensor, node_mask: Tensor) -> tuple[Tensor, Tensor]:
        pairs = pair_mask(node_mask)
        bond_class = edges.argmax(-1)  # 0 = no bond, 1..3 = bond order
        order = bond_class.to(nodes.dtype) * pairs
        adjacency = (order > 0).to(nodes.dtype)
        degree = adjacency.sum(-1)
        valence_used = order.sum(-1)
        atom_valence = self.max_valence.to(nodes.dtype)[nodes.argmax(-1)]
        free_valence = (atom_valence - valence_used).clamp(-2, 4)
        walks = _closed_walks(adjacency)  # (B, N, len(WALK_LENGTHS))
        node_features = torch.cat([
            degree.unsqueeze(-1) / 4, valence_used.unsqueeze(-1) / 4, free_valence.unsqueeze(-1) / 4,
            torch.log1p(walks),
        ], dim=-1) * node_mask.unsqueeze(-1)
        count = node_mask.sum(-1).clamp(min=1)
        graph_features = torch.cat([
            (count / self.max_atoms).unsqueeze(-1), (adjacency.sum((-1, -2)) / 2 / count).unsqueeze(-1),
            torch.log1p(walks.sum(-2) / count.unsqueeze(-1)),
        ], dim=-1)
        return node_features, graph_features


def _closed_walks(adjacency: Tensor) -> Tensor:
    """``diag(A^k)`` for k in :data:`WALK_LENGTHS`: ``(B, N, N) -> (B, N, len)``."""
    power = adjacency @ adjacency
    found = []
    for k in range(3, max(WALK_LENGTHS) + 1):
        power = power @ adjacency
        if k in WALK_LENGTHS:
            found.append(torch.diagonal(power, dim1=-2, dim2=-1))
    return torch.stack(found, dim=-1)
