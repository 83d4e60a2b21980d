"""Sampling batches, decoding, writing samples and scaffold-constrained generation."""

from __future__ import annotations

import pytest
import torch

from diffkit.generate import build_diffusion
from diffkit_molecule import chem
from diffkit_molecule.outputs import molecules_from_graphs


def fitted_model(domain, config, smiles_file):
    dataset = domain.build_dataset(config, str(smiles_file))
    model = domain.build_model(config)
    domain.fit_data(model, dataset, config)
    return model.eval(), dataset


def random_graphs(n: int, atoms: int, types: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    nodes = torch.randint(0, types, (n, atoms), generator=generator)
    upper = torch.triu(torch.randint(0, 4, (n, atoms, atoms), generator=generator) * (torch.rand(n, atoms, atoms, generator=generator) < 0.3), 1)
    return {"nodes": nodes, "edges": upper + upper.transpose(1, 2)}


def test_sizes_are_drawn_from_the_training_distribution(domain, config, smiles_file):
    model, dataset = fitted_model(domain, config, smiles_file)
    batch = domain.prepare_sampling(model, 4000, config, generator=torch.Generator().manual_seed(0))
    drawn = torch.bincount(batch["extra"]["node_mask"].sum(1).long(), minlength=len(model.size_counts)).float()
    expected = torch.bincount(dataset.sizes, minlength=len(model.size_counts)).float()
    assert torch.allclose(drawn / 4000, expected / expected.sum(), atol=0.03)
    fixed = domain.prepare_sampling(model, 3, config, cond="atoms=4, qed=0.5")
    assert fixed["extra"]["node_mask"].sum(1).tolist() == [4, 4, 4]
    assert fixed["cond"][0, 0] == 0.5 and torch.isnan(fixed["cond"][0, 1:]).all()
    with pytest.raises(ValueError, match="unknown key 'sa'"):
        domain.prepare_sampling(model, 3, config, cond="sa=2")


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m"])
def test_the_same_seed_gives_the_same_molecules_whatever_the_batch_size(domain, gaussian_config, smiles_file, sampler):
    config = gaussian_config
    from diffkit.generate import SampleRequest, generate

    model, _ = fitted_model(domain, config, smiles_file)
    runs = [generate(domain, model, config, SampleRequest(n=8, steps=4, seed=5, sampler=sampler, batch_size=size))
            for size in (1, 3, 8)]  # chunks of different sizes draw different atom counts: they still join
    sizes = runs[0]["extra"]["node_mask"].sum(1)
    assert len(set(sizes.tolist())) > 1
    for run in runs[1:]:
        assert torch.equal(run["extra"]["node_mask"].sum(1), sizes)
        assert torch.equal(run["x"]["nodes"], runs[0]["x"]["nodes"]) and torch.equal(run["x"]["edges"], runs[0]["x"]["edges"])


def test_smiles_file_records_validity_that_evaluation_recovers(domain, config, smiles_file, tmp_path):
    vocabulary = ["C", "N", "O"]
    config["data"]["atom_types"] = vocabulary
    graphs = random_graphs(60, 5, 3, seed=0)
    node_mask = torch.ones(60, 5)
    domain.write_samples({"x": graphs, "extra": {"node_mask": node_mask}}, tmp_path / "out.smi", config)
    lines = (tmp_path / "out.smi").read_text().splitlines()
    mols = molecules_from_graphs(graphs["nodes"], graphs["edges"], vocabulary)
    sanitizes = [chem.sanitized(mol) is not None for mol in mols]
    assert 0 < sum(sanitizes) < 60  # the random graphs are a mix
    parses = [chem.rdkit().MolFromSmiles(line) is not None for line in lines]
    assert parses == sanitizes
    scores = domain.evaluate(tmp_path / "out.smi", smiles_file, config)
    assert scores["validity"] == pytest.approx(sum(sanitizes) / 60)


def test_folder_output_and_no_overwrite(domain, config, tmp_path):
    config["data"]["atom_types"] = ["C", "O"]
    samples = {"x": {"nodes": torch.tensor([[0, 1, -1]]), "edges": torch.tensor([[[0, 1, 0], [1, 0, 0], [0, 0, 0]]])},
               "extra": {"node_mask": torch.tensor([[1.0, 1.0, 0.0]])}}
    written = domain.write_samples(samples, tmp_path / "run", config)
    assert sorted((o.path.name, o.kind) for o in written) == [("grid.png", "image"), ("samples.sdf", "molecules"), ("samples.smi", "molecules")]
    assert (tmp_path / "run" / "samples.smi").read_text() == "CO\n"
    assert "$$$$" in (tmp_path / "run" / "samples.sdf").read_text()
    with pytest.raises(FileExistsError, match="samples.smi"):
        domain.write_samples(samples, tmp_path / "run", config)


def test_scaffold_atoms_and_bonds_are_kept(domain, gaussian_config, smiles_file):
    config = gaussian_config
    model, _ = fitted_model(domain, config, smiles_file)
    config["sample"]["num_atoms"] = 8
    batch = domain.load_known("c1ccncc1", None, 6, config)
    diffusion = build_diffusion(domain, config)
    x = diffusion.inpaint(model, batch["x"], batch["keep"], steps=5, model_kwargs=batch["extra"],
                          generator=torch.Generator().manual_seed(0))
    decoded = domain.decode(x, batch)
    scaffold_atoms, scaffold_bonds = chem.mol_to_graph(chem.prepare(chem.rdkit().MolFromSmiles("c1ccncc1")),
                                                       config["data"]["atom_types"])
    assert (decoded["nodes"][:, :6] == scaffold_atoms).all()
    assert (decoded["edges"][:, :6, :6] == scaffold_bonds).all()
    assert (decoded["nodes"] >= 0).sum(1).tolist() == [8] * 6
    with pytest.raises(ValueError, match="no --mask"):
        domain.load_known("c1ccncc1", "something", 2, config)
    with pytest.raises(ValueError, match="atom type 'S'"):
        domain.load_known("c1ccsc1", None, 2, config)


def test_the_grid_picture_stands_in_for_a_molecule_rdkit_cannot_lay_out(tmp_path):
    from PIL import Image

    from diffkit_molecule.outputs import _can_draw, as_it_stands, write_molecules

    # A graph of an untrained model: RDKit's layout puts atoms on top of each other.
    undrawable = "C123456#[N-]789%10%11=[N+]=1%12%13%14%15#[C-]=721%16#[O-]=%12382=C=4=9=1%133#[O-]=5=%10=%142=F#%156%11%163"
    mols = [chem.rdkit().MolFromSmiles(text, sanitize=False) for text in ("CCO", undrawable)]
    assert not _can_draw(as_it_stands(mols[1]))
    write_molecules(mols, tmp_path / "out")
    assert (tmp_path / "out" / "samples.smi").read_text().splitlines()[0] == "CCO"
    assert Image.open(tmp_path / "out" / "grid.png").size == (400, 200)  # both cells, one row


def test_asked_properties_no_molecule_has_are_refused_and_far_ones_are_warned_about(domain, config, smiles_file):
    import warnings

    model, dataset = fitted_model(domain, config, smiles_file)
    qed = dataset.properties[:, 0]  # data.properties: qed, logp, mol_weight
    mean, std = float(qed.mean()), float(qed.std())
    training = f"the training molecules' qed: mean {mean:.3g}, standard deviation {std:.3g}"
    for value in ("5", "50", "-0.1"):
        with pytest.raises(ValueError) as caught:
            domain.prepare_sampling(model, 2, config, cond=f"qed={value}")
        assert str(caught.value) == f"--cond qed={value}: qed is in [0, 1] for every molecule ({training})"
    far = mean + 5.2 * std
    assert far < 1
    with pytest.warns(UserWarning) as caught:
        domain.prepare_sampling(model, 2, config, cond=f"qed={far}")
    assert [str(w.message) for w in caught] == [
        f"--cond qed={far:g} is 5 standard deviations from what this model was trained on ({training}): "
        "expect the samples to miss it"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        domain.prepare_sampling(model, 2, config, cond=f"qed={mean + 3.9 * std}")
    with pytest.raises(ValueError, match="the value of 'qed' must be a finite number, got 'nan'"):
        domain.prepare_sampling(model, 2, config, cond="qed=nan")
