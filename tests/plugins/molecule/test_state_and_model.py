"""The graph state, its noise, the denoiser's symmetries, and a short training run."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

import diffkit
from diffkit.generate import build_diffusion
from diffkit.testing import assert_domain_conforms
from diffkit_molecule.state import decode, encode, graph_noise, pair_mask
from run_checks import assert_resume_is_exact


def small_batch(domain, config, smiles_file, n=8):
    dataset = domain.build_dataset(config, str(smiles_file))
    return dataset, default_collate([dataset[i] for i in range(n)])


def test_edge_noise_is_symmetric_without_self_loops_and_padding_untouched(domain):
    node_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)
    like = {"nodes": torch.zeros(2, 5, 3), "edges": torch.zeros(2, 5, 5, 4)}
    noise = domain.noise(like, torch.Generator().manual_seed(0), node_mask=node_mask)
    edges, nodes = noise["edges"], noise["nodes"]
    assert torch.equal(edges, edges.transpose(1, 2))
    assert torch.diagonal(edges, dim1=1, dim2=2).abs().sum() == 0
    assert edges[0, 3:].abs().sum() == 0 and edges[0, :, 3:].abs().sum() == 0
    assert nodes[0, 3:].abs().sum() == 0
    assert (edges[1, 0, 1] != 0).all() and (nodes[0, :3] != 0).all()


def test_edge_noise_entries_are_standard_normal():
    like = {"nodes": torch.zeros(4000, 4, 2), "edges": torch.zeros(4000, 4, 4, 4)}
    edges = graph_noise(like, torch.Generator().manual_seed(1))["edges"]
    off_diagonal = edges[:, pair_mask(torch.ones(4)).bool()]
    assert abs(off_diagonal.mean().item()) < 0.02
    assert abs(off_diagonal.std().item() - 1) < 0.02


@pytest.mark.parametrize("categorical", [False, True])
def test_noise_from_sample_generators_is_each_graph_drawn_alone(domain, categorical):
    """The noise takes the generators itself (one call for the batch); it must give every graph
    the numbers that drawing it alone, as a batch of one with its own generator, gives."""
    sizes = torch.tensor([3, 5, 1, 4, 5, 0])
    node_mask = (torch.arange(6) < sizes.unsqueeze(1)).float()
    if categorical:
        like = {"nodes": torch.zeros(6, 6, dtype=torch.long), "edges": torch.zeros(6, 6, 6, dtype=torch.long)}
    else:
        like = {"nodes": torch.zeros(6, 6, 3), "edges": torch.zeros(6, 6, 6, 4)}
    seeded = lambda: diffkit.SampleGenerators.seeded(7, range(6))  # noqa: E731
    batched = diffkit.draw_noise(domain.noise, like, seeded(), node_mask=node_mask)
    one_by_one = diffkit.draw_noise(lambda *a, **k: domain.noise(*a, **k), like, seeded(), node_mask=node_mask)
    for key in ("nodes", "edges"):
        assert torch.equal(batched[key], one_by_one[key])
    assert batched["nodes"][1].abs().sum() > 0 and batched["edges"][1, :5, :5].abs().sum() > 0
    assert batched["nodes"][5].abs().sum() == 0 and batched["edges"][:, :, 5].abs().sum() == 0


def test_encode_then_decode_returns_the_graph():
    atoms = torch.tensor([[0, 2, 1, -1]])
    bonds = torch.tensor([[[0, 1, 0, 0], [1, 0, 3, 0], [0, 3, 0, 0], [0, 0, 0, 0]]])
    state, node_mask = encode(atoms, bonds, 3)
    decoded = decode(state, node_mask)
    assert torch.equal(decoded["nodes"], atoms)
    assert torch.equal(decoded["edges"], bonds)


def test_model_is_permutation_equivariant_with_symmetric_edges(domain, gaussian_config, smiles_file):
    config = gaussian_config
    _, batch = small_batch(domain, config, smiles_file, n=4)
    model = domain.build_model(config).eval()
    x = diffkit.Diffusion("cosine", "x0", noise_fn=domain.noise).q_sample(batch["x"], torch.full((4,), 0.5))
    node_mask = batch["extra"]["node_mask"]
    t = torch.full((4,), 0.5)
    out = model(x, t, node_mask=node_mask)
    assert torch.allclose(out["edges"], out["edges"].transpose(1, 2), atol=1e-6)
    perm = torch.randperm(node_mask.shape[1], generator=torch.Generator().manual_seed(3))
    permuted = {"nodes": x["nodes"][:, perm], "edges": x["edges"][:, perm][:, :, perm]}
    out_permuted = model(permuted, t, node_mask=node_mask[:, perm])
    assert torch.allclose(out_permuted["nodes"], out["nodes"][:, perm], atol=1e-5)
    assert torch.allclose(out_permuted["edges"], out["edges"][:, perm][:, :, perm], atol=1e-5)
    # Padding is zero in the prediction.
    padding = node_mask == 0
    assert out["nodes"][padding].abs().sum() == 0


def test_a_bfloat16_copy_of_the_network_reads_a_float32_state(domain, gaussian_config, smiles_file):
    from diffkit.generate import network_at_precision

    config = gaussian_config
    _, batch = small_batch(domain, config, smiles_file, n=4)
    torch.manual_seed(0)
    model = domain.build_model(config).eval()
    x = diffkit.Diffusion("cosine", "x0", noise_fn=domain.noise).q_sample(batch["x"], torch.full((4,), 0.5))
    t, node_mask = torch.full((4,), 0.5), batch["extra"]["node_mask"]
    expected = model(x, t, node_mask=node_mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = network_at_precision(model, "bfloat16")(x, t, node_mask=node_mask)
    for key in ("nodes", "edges"):  # outputs in [-1, 1]; bfloat16 keeps about 3 significant digits
        torch.testing.assert_close(out[key].float(), expected[key], rtol=0, atol=0.05)


def _dense_block(block, h, e, g, node_mask, pairs):
    """A graph transformer block written on the square edge state ``(B, N, N, De)``: the layout the
    network's one-row-per-pair code must reproduce."""
    import math

    shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = block.modulation(g).unsqueeze(1).chunk(6, dim=-1)
    x = block.norm_attention(h) * (1 + scale_a) + shift_a
    b, n, _ = x.shape
    q, k, v = block.qkv(x).view(b, n, 3, block.heads, block.head_dim).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(block.head_dim) + block.edge_bias(e).permute(0, 3, 1, 2)
    weights = torch.softmax(scores.masked_fill(~node_mask.bool()[:, None, None, :], float("-inf")), dim=-1)
    edge_message = torch.einsum("bhij,bijc->bihc", weights, e).reshape(b, n, -1)
    message = (weights @ v).transpose(1, 2).reshape(b, n, -1) + block.edge_message(edge_message)
    h = h + (1 + gate_a) * block.attention_out(message)
    h = (h + (1 + gate_f) * block.ff(block.norm_ff(h) * (1 + scale_f) + shift_f)) * node_mask.unsqueeze(-1)
    a, c = block.edge_from_nodes(h).chunk(2, dim=-1)
    pair = a.unsqueeze(1) + a.unsqueeze(2) + c.unsqueeze(1) * c.unsqueeze(2)
    symmetric = ((scores + scores.transpose(-1, -2)) / 2).permute(0, 2, 3, 1)
    return h, e + block.edge_ff(torch.cat([block.norm_edges(e) + pair, symmetric], dim=-1)) * pairs


def test_the_pair_rows_network_equals_the_square_one(domain, gaussian_config, smiles_file):
    from diffkit_molecule.model import AtomPairs, timestep_embedding

    config = gaussian_config
    _, batch = small_batch(domain, config, smiles_file, n=6)
    torch.manual_seed(1)
    model = domain.build_model(config).eval()
    for block in model.blocks:  # zero at initialisation: give the modulation a part to play
        torch.nn.init.normal_(block.modulation.weight, std=0.05)
    x = diffkit.Diffusion("cosine", "x0", noise_fn=domain.noise).q_sample(batch["x"], torch.full((6,), 0.6))
    node_mask, t = batch["extra"]["node_mask"], torch.full((6,), 0.6)
    with torch.no_grad():
        out = model(x, t, node_mask=node_mask)
        pairs = pair_mask(node_mask).unsqueeze(-1)
        nodes, edges = x["nodes"] * node_mask.unsqueeze(-1), x["edges"] * pairs
        node_features, graph_features = model.structure(nodes, edges, node_mask)
        h = model.node_in(torch.cat([nodes, node_features], dim=-1)) * node_mask.unsqueeze(-1)
        e = model.edge_in(edges) * pairs
        g = torch.nn.functional.silu(model.time_in(timestep_embedding(t, h.shape[-1])) + model.graph_in(graph_features)
                                     + model._condition(None, nodes))
        for block in model.blocks:
            h, e = _dense_block(block, h, e, g, node_mask, pairs)
        node_out = 2 * model.node_out(h).softmax(-1) - 1
        edge_out = model.edge_out(e)
        edge_out = 2 * ((edge_out + edge_out.transpose(1, 2)) / 2).softmax(-1) - 1
    assert torch.allclose(out["nodes"], node_out * node_mask.unsqueeze(-1), atol=1e-5)
    assert torch.allclose(out["edges"], edge_out * pairs, atol=1e-5)
    square = torch.randn(2, 5, 5, 3)
    square = (square + square.transpose(1, 2)) * (1 - torch.eye(5)).unsqueeze(-1)
    layout = AtomPairs(5, square.device)
    assert torch.equal(layout.square(layout.rows(square)), square)


def test_a_few_steps_reduce_the_loss(domain, gaussian_config, smiles_file):
    config = gaussian_config
    torch.manual_seed(0)
    _, batch = small_batch(domain, config, smiles_file, n=16)
    model = domain.build_model(config)
    diffusion = build_diffusion(domain, config)
    t = torch.linspace(0.05, 0.95, 16)
    noise = domain.noise(batch["x"], torch.Generator().manual_seed(0), **batch["extra"])

    def loss() -> torch.Tensor:
        return diffusion.loss(model, batch["x"], cond=batch["cond"], mask=batch["mask"], model_kwargs=batch["extra"],
                              t=t, noise=noise, leaf_weights=domain.leaf_weights(config))

    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.eval()  # no property dropout: the same loss function before and after
    before = loss().item()
    for _ in range(40):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    after = loss().item()
    assert after < 0.7 * before, (before, after)


def test_domain_conforms_to_the_contract(domain, smiles_file, tmp_path):
    overrides = {"data": {"cache_dir": str(tmp_path / "cache")},
                 "model": {"hidden": 32, "edge_hidden": 16, "heads": 4, "layers": 2}}
    from rdkit import Chem

    assert_domain_conforms(domain, tmp_path / "conformance", data=str(smiles_file), overrides=overrides,
                           object_type=(Chem.Mol, type(None)))


def test_resume_is_exact_with_the_default_model(domain, config, smiles_file, tmp_path, monkeypatch):
    """The default model drops conditioning properties at random inside the network."""
    assert config["model"]["property_drop"] > 0
    config["train"]["batch_size"] = 8
    assert_resume_is_exact(domain, config, tmp_path, monkeypatch, data=str(smiles_file))


def test_unconditional_configuration_has_no_condition(domain, gaussian_config, smiles_file):
    config = gaussian_config
    config["data"]["properties"] = []
    dataset, batch = small_batch(domain, config, smiles_file, n=4)
    assert "cond" not in batch
    model = domain.build_model(config)
    domain.fit_data(model, dataset, config)
    out = model(batch["x"], torch.full((4,), 0.3), **batch["extra"])
    assert out["nodes"].shape == batch["x"]["nodes"].shape
    with torch.no_grad():
        model.eval()
        with_cond_none = model(batch["x"], torch.full((4,), 0.3), cond=None, **batch["extra"])
    assert torch.isfinite(with_cond_none["edges"]).all()


def test_null_condition_is_the_unconditional_model(domain, config, smiles_file):
    dataset, batch = small_batch(domain, config, smiles_file, n=4)
    model = domain.build_model(config).eval()
    domain.fit_data(model, dataset, config)
    for block in model.blocks:  # the modulation starts at zero, which would hide the condition
        torch.nn.init.normal_(block.modulation.weight, std=0.1)
    t = torch.full((4,), 0.4)
    with torch.no_grad():
        none = model(batch["x"], t, cond=None, **batch["extra"])
        null = model(batch["x"], t, cond=domain.null_cond(batch["cond"]), **batch["extra"])
        given = model(batch["x"], t, cond=batch["cond"], **batch["extra"])
    assert torch.allclose(none["nodes"], null["nodes"]) and torch.allclose(none["edges"], null["edges"])
    assert not torch.allclose(none["nodes"], given["nodes"])
