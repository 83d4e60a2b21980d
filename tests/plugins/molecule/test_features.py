"""The structural features against a second implementation: connected pieces from SciPy."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.csgraph import connected_components

from diffkit_molecule.chem import BOND_TYPES, max_valences
from diffkit_molecule.features import StructuralFeatures

ATOM_TYPES = ["C", "N", "O", "F"]


def random_graphs(count: int, n: int, bond_probability: float, seed: int):
    """One-hot atoms and symmetric one-hot bonds of ``count`` graphs of 1..n real atoms, and their mask."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, n + 1, (count,), generator=g)
    node_mask = (torch.arange(n) < sizes.unsqueeze(1)).float()
    bonded = torch.rand(count, n, n, generator=g) < bond_probability
    order = torch.randint(1, len(BOND_TYPES), (count, n, n), generator=g) * bonded
    order = torch.triu(order, 1)
    order = (order + order.transpose(1, 2)) * node_mask.unsqueeze(1) * node_mask.unsqueeze(2)
    nodes = F.one_hot(torch.randint(0, len(ATOM_TYPES), (count, n), generator=g), len(ATOM_TYPES)).float()
    return nodes, F.one_hot(order.long(), len(BOND_TYPES)).float(), node_mask, order


def test_component_features_match_scipys_connected_components():
    n = 9
    features = StructuralFeatures(max_valences(ATOM_TYPES), max_atoms=n, components=True)
    plain = StructuralFeatures(max_valences(ATOM_TYPES), max_atoms=n)
    for probability in (0.05, 0.15, 0.3):
        nodes, edges, node_mask, order = random_graphs(200, n, probability, seed=int(probability * 100))
        node_features, graph_features = features(nodes, edges, node_mask)
        pieces_seen = set()
        for b in range(len(nodes)):
            real = int(node_mask[b].sum())
            count, labels = connected_components(order[b, :real, :real].numpy() > 0, directed=False)
            pieces_seen.add(count)
            sizes = np.bincount(labels)[labels]
            assert torch.allclose(node_features[b, :real, -1], torch.tensor(sizes / real, dtype=torch.float32))
            assert float(graph_features[b, -1]) == (count - 1) / 4
        assert torch.all(node_features[node_mask == 0] == 0)
        assert len(pieces_seen) > 2  # the graphs drawn cover one piece and several
        # The other features are those of the network without the component features.
        without_node, without_graph = plain(nodes, edges, node_mask)
        assert torch.equal(node_features[..., :-1], without_node)
        assert torch.equal(graph_features[..., :-1], without_graph)


def test_networks_saved_before_the_component_features_load_without_them():
    from diffkit.config import default_config, fill_defaults
    from diffkit_molecule import MoleculeDomain

    domain = MoleculeDomain()
    config = default_config(domain)
    config["data"]["atom_types"] = ATOM_TYPES
    old = {section: dict(values) for section, values in config.items()}
    del old["model"]["component_features"]
    old_model = domain.build_model(fill_defaults(domain, old))
    new_model = domain.build_model(fill_defaults(domain, config))
    assert not old_model.structure.components and new_model.structure.components
    # Atom types, then degree, bond-order sum, free valence and four closed-walk counts.
    assert old_model.node_in.in_features == len(ATOM_TYPES) + 7
    assert new_model.node_in.in_features == len(ATOM_TYPES) + 8


def test_widened_weights_compute_the_same_function_with_the_component_features():
    from diffkit_molecule.model import MoleculeDenoiser, add_component_inputs

    torch.manual_seed(0)
    options = dict(max_atoms=6, hidden=16, edge_hidden=8, heads=2, layers=1, categorical=True)
    before = MoleculeDenoiser(ATOM_TYPES, [], **options).eval()
    after = MoleculeDenoiser(ATOM_TYPES, [], component_features=True, **options).eval()
    after.load_state_dict(add_component_inputs(before.state_dict()))
    nodes, edges, node_mask, order = random_graphs(16, 6, 0.2, seed=1)
    x = {"nodes": nodes.argmax(-1), "edges": order.long()}
    t = torch.rand(16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out_before, out_after = before(x, t, node_mask=node_mask), after(x, t, node_mask=node_mask)
    for key in out_before:
        torch.testing.assert_close(out_after[key], out_before[key], rtol=0, atol=1e-6)
    # The component features do reach the widened network: other weights on them change the output.
    with torch.no_grad():
        after.node_in.weight[:, -1] = torch.randn(after.node_in.weight.shape[0])
        assert not torch.allclose(after(x, t, node_mask=node_mask)["nodes"], out_before["nodes"], atol=1e-3)
