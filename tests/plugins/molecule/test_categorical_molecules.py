"""Categorical diffusion on molecular graphs: class-index states, symmetric uniforms, the data's
marginal law, logits from the graph transformer, sampling and scaffolds."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

from diffkit.generate import SampleRequest, build_diffusion, generate
from diffkit.testing import assert_domain_conforms
from diffkit_molecule import chem
from diffkit_molecule.state import class_mask, decode, encode_classes, graph_uniforms, pair_mask



def fitted_model(domain, config, smiles_file):
    dataset = domain.build_dataset(config, str(smiles_file))
    model = domain.build_model(config)
    domain.fit_data(model, dataset, config)
    return model.eval(), dataset


@pytest.fixture
def categorical(config) -> dict:
    config["diffusion"]["kind"] = "categorical"
    config["sample"]["sampler"] = "discrete_flow"
    return config


def test_edge_uniforms_are_symmetric_in_range_and_zero_off_the_graph(domain):
    node_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)
    like = {"nodes": torch.zeros(2, 5, dtype=torch.long), "edges": torch.zeros(2, 5, 5, dtype=torch.long)}
    noise = domain.noise(like, torch.Generator().manual_seed(0), node_mask=node_mask)
    nodes, edges = noise["nodes"], noise["edges"]
    assert nodes.dtype == edges.dtype == torch.float64
    assert torch.equal(edges, edges.transpose(1, 2))
    assert torch.equal(edges == 0, pair_mask(node_mask) == 0)  # a uniform is 0 with probability 0
    assert torch.equal(nodes == 0, node_mask == 0)
    assert float(edges.max()) < 1 and float(nodes.max()) < 1


def test_edge_uniforms_are_uniform_and_do_not_depend_on_the_padding():
    like = {"nodes": torch.zeros(3000, 4, dtype=torch.long), "edges": torch.zeros(3000, 4, 4, dtype=torch.long)}
    edges = graph_uniforms(like, torch.Generator().manual_seed(1))["edges"]
    upper = edges[:, torch.triu(torch.ones(4, 4), diagonal=1).bool()].flatten()
    # 18,000 uniforms: the mean's standard error is 0.0022 and the std's about 0.0012.
    assert abs(upper.mean().item() - 0.5) < 0.01 and abs(upper.std().item() - 12 ** -0.5) < 0.006
    one = {"nodes": torch.zeros(1, 3, dtype=torch.long), "edges": torch.zeros(1, 3, 3, dtype=torch.long)}
    wide = {"nodes": torch.zeros(1, 6, dtype=torch.long), "edges": torch.zeros(1, 6, 6, dtype=torch.long)}
    narrow = graph_uniforms(one, torch.Generator().manual_seed(2), torch.ones(1, 3))
    padded = graph_uniforms(wide, torch.Generator().manual_seed(2), torch.tensor([[1.0, 1, 1, 0, 0, 0]]))
    assert torch.equal(padded["edges"][:, :3, :3], narrow["edges"])
    assert torch.equal(padded["nodes"][:, :3], narrow["nodes"])


def test_class_state_round_trips_through_decode():
    atoms = torch.tensor([[0, 2, 1, -1]])
    bonds = torch.tensor([[[0, 1, 0, 0], [1, 0, 3, 0], [0, 3, 0, 0], [0, 0, 0, 0]]])
    state, node_mask = encode_classes(atoms, bonds)
    assert state["nodes"].dtype == torch.long and state["nodes"][0, 3] == 0
    assert torch.equal(class_mask(node_mask)["edges"], pair_mask(node_mask))
    decoded = decode(state, node_mask)
    assert torch.equal(decoded["nodes"], atoms) and torch.equal(decoded["edges"], bonds)


def test_class_counts_match_the_molecules(domain, categorical, smiles_file):
    dataset = domain.build_dataset(categorical, str(smiles_file))
    atom_counts, bond_counts = dataset.class_counts()
    vocabulary = categorical["data"]["atom_types"]
    expected_atoms, expected_bonds = torch.zeros(len(vocabulary)), torch.zeros(len(chem.BOND_TYPES))
    pairs = 0
    for line in smiles_file.read_text().splitlines():
        mol = chem.prepare(chem.rdkit().MolFromSmiles(line.split()[0]))
        atoms, bonds = chem.mol_to_graph(mol, vocabulary)
        expected_atoms += torch.bincount(atoms, minlength=len(vocabulary))
        upper = bonds[torch.triu(torch.ones_like(bonds), diagonal=1).bool()]
        expected_bonds[1:] += 2 * torch.bincount(upper, minlength=4)[1:]  # both directions of a pair
        pairs += len(atoms) * (len(atoms) - 1)
    expected_bonds[0] = pairs - expected_bonds[1:].sum()
    assert torch.equal(atom_counts.float(), expected_atoms) and torch.equal(bond_counts.float(), expected_bonds)
    model = domain.build_model(categorical)
    domain.fit_data(model, dataset, categorical)
    num_classes, marginal = domain.categories(model, categorical)
    assert num_classes == {"nodes": len(vocabulary), "edges": 4}
    assert torch.equal(marginal["edges"], expected_bonds)


def test_items_hold_classes_and_the_model_returns_symmetric_equivariant_logits(domain, categorical, smiles_file):
    dataset = domain.build_dataset(categorical, str(smiles_file))
    batch = default_collate([dataset[i] for i in range(4)])
    x, node_mask = batch["x"], batch["extra"]["node_mask"]
    assert x["nodes"].dtype == torch.long and x["nodes"].shape == node_mask.shape
    assert torch.equal(batch["mask"]["edges"], pair_mask(node_mask))
    model = domain.build_model(categorical).eval()
    t = torch.full((4,), 0.5)
    with torch.no_grad():
        out = model(x, t, node_mask=node_mask)
        perm = torch.randperm(node_mask.shape[1], generator=torch.Generator().manual_seed(3))
        permuted = model({"nodes": x["nodes"][:, perm], "edges": x["edges"][:, perm][:, :, perm]}, t,
                         node_mask=node_mask[:, perm])
    k = len(categorical["data"]["atom_types"])
    assert out["nodes"].shape == (*x["nodes"].shape, k) and out["edges"].shape == (*x["edges"].shape, 4)
    assert torch.allclose(out["edges"], out["edges"].transpose(1, 2), atol=1e-6)
    assert torch.allclose(permuted["nodes"], out["nodes"][:, perm], atol=1e-5)
    assert torch.allclose(permuted["edges"], out["edges"][:, perm][:, :, perm], atol=1e-5)


def test_prior_draws_follow_the_data_marginal_and_keep_padding(domain, categorical, smiles_file):
    model, _ = fitted_model(domain, categorical, smiles_file)
    diffusion = build_diffusion(domain, categorical, model=model)
    batch = domain.prepare_sampling(model, 3000, categorical, generator=torch.Generator().manual_seed(0))
    x = diffusion.prior_sample(batch["x"], torch.Generator().manual_seed(1), model_kwargs=batch["extra"],
                               mask=batch["mask"])
    pairs = batch["mask"]["edges"].bool()
    assert torch.equal(x["edges"], x["edges"].transpose(1, 2)) and (x["edges"][~pairs] == 0).all()
    drawn = torch.bincount(x["edges"][pairs], minlength=4).double()
    law = model.bond_counts.double() / model.bond_counts.sum()
    # Symmetric draws: each pair counts twice, so about 40,000 independent draws; 4 standard errors.
    assert torch.allclose(drawn / drawn.sum(), law, atol=4 * (0.25 / (drawn.sum() / 2)) ** 0.5)


def test_samples_do_not_depend_on_the_batch_size(domain, categorical, smiles_file):
    model, _ = fitted_model(domain, categorical, smiles_file)
    runs = [generate(domain, model, categorical, SampleRequest(n=6, steps=4, seed=3, batch_size=size))
            for size in (1, 4, 6)]
    for run in runs[1:]:
        assert torch.equal(run["x"]["nodes"], runs[0]["x"]["nodes"])
        assert torch.equal(run["x"]["edges"], runs[0]["x"]["edges"])
    graphs = runs[0]["x"]
    real = runs[0]["extra"]["node_mask"].bool()
    assert ((graphs["nodes"] >= 0) == real).all() and torch.equal(graphs["edges"], graphs["edges"].transpose(1, 2))


def test_scaffold_atoms_and_bonds_are_kept(domain, categorical, smiles_file):
    model, _ = fitted_model(domain, categorical, smiles_file)
    categorical["sample"]["num_atoms"] = 8
    batch = domain.load_known("c1ccncc1", None, 5, categorical)
    assert batch["x"]["edges"].dtype == torch.long
    diffusion = build_diffusion(domain, categorical, model=model)
    x = diffusion.inpaint(model, batch["x"], batch["keep"], mask=batch["mask"], steps=5, model_kwargs=batch["extra"],
                          generator=torch.Generator().manual_seed(0))
    decoded = domain.decode(x, batch)
    atoms, bonds = chem.mol_to_graph(chem.prepare(chem.rdkit().MolFromSmiles("c1ccncc1")),
                                     categorical["data"]["atom_types"])
    assert (decoded["nodes"][:, :6] == atoms).all() and (decoded["edges"][:, :6, :6] == bonds).all()
    assert (decoded["nodes"] >= 0).sum(1).tolist() == [8] * 5


def test_absorbing_noise_is_refused_by_name(domain, categorical):
    categorical["diffusion"]["transition"] = "absorbing"
    categorical["data"]["atom_types"] = ["C", "N"]
    with pytest.raises(ValueError, match="diffusion.transition = 'absorbing'"):
        domain.build_model(categorical)


def test_categorical_domain_conforms_to_the_contract(domain, smiles_file, tmp_path):
    from rdkit import Chem

    overrides = {"data": {"cache_dir": str(tmp_path / "cache")},
                 "model": {"hidden": 32, "edge_hidden": 16, "heads": 4, "layers": 2},
                 "diffusion": {"kind": "categorical"}, "sample": {"sampler": "discrete_flow"}}
    assert_domain_conforms(domain, tmp_path / "conformance", data=str(smiles_file), overrides=overrides,
                           object_type=(Chem.Mol, type(None)))
