"""Reading molecule files into the cached graph dataset and its dense training items."""

from __future__ import annotations

import gzip
import itertools
import warnings
from pathlib import Path

import pytest
import torch

from diffkit_molecule import chem, dataset as dataset_module
from diffkit_molecule.dataset import DenseMolecules, Featurisation, load_graphs
from diffkit_molecule.sources import bundled_path


def build(domain, config, data) -> DenseMolecules:
    return domain.build_dataset(config, str(data))


def smiles_of(dataset: DenseMolecules) -> list[str]:
    """The canonical SMILES of each molecule, rebuilt from its stored graph."""
    return [chem.canonical_smiles(chem.sanitized(chem.graph_to_mol(*dataset.graph(i), dataset.vocabulary)))
            for i in range(len(dataset))]


def test_invalid_smiles_are_skipped_and_counted_in_one_warning(domain, config, tmp_path, valid_smiles, invalid_smiles):
    path = tmp_path / "mixed.smi"
    path.write_text("\n".join(valid_smiles[:5] + invalid_smiles + valid_smiles[5:8]) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = build(domain, config, path)
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(messages) == 1
    assert f"skipped {len(invalid_smiles)} of {8 + len(invalid_smiles)} molecules" in messages[0]
    assert f"{len(invalid_smiles)} unparsable" in messages[0]
    assert len(dataset) == 8


def test_oversized_molecules_are_counted_with_the_rest(domain, config, tmp_path):
    path = tmp_path / "sizes.smi"
    path.write_text("CCO\nCCCCCCCCCCCC\nC1CC\nCCCCC\n")  # 3, 12 (too big), invalid, 5 atoms
    config["data"]["max_atoms"] = 6
    with pytest.warns(UserWarning, match=r"skipped 2 of 4 molecules.*1 unparsable.*1 over 6 heavy atoms|"
                                         r"skipped 2 of 4 molecules.*1 over 6 heavy atoms.*1 unparsable"):
        dataset = build(domain, config, path)
    assert sorted(dataset.sizes.tolist()) == [3, 5]
    assert config["data"]["max_atoms"] == 5  # lowered to the largest molecule kept


def test_nothing_usable_is_an_error(domain, config, tmp_path, invalid_smiles):
    path = tmp_path / "bad.smi"
    path.write_text("\n".join(invalid_smiles) + "\n")
    with pytest.raises(ValueError, match="no usable molecules"):
        build(domain, config, path)


def test_atom_types_are_taken_from_the_data(domain, config, smiles_file):
    build(domain, config, smiles_file)
    assert config["data"]["atom_types"] == ["C", "N", "N+", "O", "O-", "F", "Cl"]


def test_chosen_atom_types_renumber_and_skip_the_rest(domain, gaussian_config, tmp_path):
    config = gaussian_config
    path = tmp_path / "halogens.smi"
    path.write_text("CCO\nCCl\nOCF\n")
    config["data"]["atom_types"] = ["O", "C", "F"]
    with pytest.warns(UserWarning, match="1 an atom type outside data.atom_types"):
        dataset = build(domain, config, path)
    assert sorted(smiles_of(dataset)) == ["CCO", "OCF"]
    item = dataset[smiles_of(dataset).index("OCF")]
    assert item["x"]["nodes"].argmax(-1).tolist() == [0, 1, 2]  # O, C, F in the chosen order


def test_csv_column_option(domain, config, tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("name,Structure\na,CCO\nb,c1ccccc1\n")
    config["data"]["smiles_column"] = "structure"
    dataset = build(domain, config, path)
    assert sorted(smiles_of(dataset)) == ["CCO", "c1ccccc1"]
    config["data"]["smiles_column"] = "smiles"
    with pytest.raises(ValueError, match="no column 'smiles'.*Structure"):
        build(domain, config, path)


def test_sdf_input_drops_explicit_hydrogens(domain, config, tmp_path):
    Chem = chem.rdkit()
    path = tmp_path / "mols.sdf"
    with Chem.SDWriter(str(path)) as writer:
        for smiles in ("CCO", "c1ccncc1"):
            writer.write(Chem.AddHs(Chem.MolFromSmiles(smiles)))
    dataset = build(domain, config, path)
    assert sorted(smiles_of(dataset)) == ["CCO", "c1ccncc1"]
    assert sorted(dataset.sizes.tolist()) == [3, 6]


def test_dense_items_match_the_molecule(domain, gaussian_config, tmp_path):
    config = gaussian_config
    path = tmp_path / "two.smi"
    path.write_text("C#N\nCC=O\n")
    dataset = build(domain, config, path)
    item = dataset[smiles_of(dataset).index("C#N")]
    vocabulary = config["data"]["atom_types"]
    nodes, edges = item["x"]["nodes"], item["x"]["edges"]
    assert nodes.shape == (3, len(vocabulary)) and edges.shape == (3, 3, 4)
    assert item["extra"]["node_mask"].tolist() == [1, 1, 0]
    assert nodes[:2].argmax(-1).tolist() == [vocabulary.index("C"), vocabulary.index("N")]
    assert edges[0, 1].tolist() == [-1, -1, -1, 1]  # triple bond
    assert edges[2].abs().sum() == 0 and nodes[2].abs().sum() == 0  # padding
    assert item["mask"]["edges"][..., 0].tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    assert item["cond"].shape == (3,)  # qed, logp, mol_weight
    assert item["cond"][2].item() == pytest.approx(27.026, abs=1e-3)  # HCN's molecular weight


def test_processed_once_then_cached(domain, config, smiles_file, monkeypatch):
    build(domain, config, smiles_file)

    def no_processing(*args, **kwargs):
        raise AssertionError("the cached graphs should have been reused")

    monkeypatch.setattr(dataset_module, "featurise", no_processing)
    assert len(build(domain, config, smiles_file)) == 20


def test_cache_is_invalidated_when_the_featurisation_changes(domain, config, smiles_file, tmp_path):
    cache = Path(config["data"]["cache_dir"])
    first = load_graphs(smiles_file, Featurisation(("qed",)), 40, cache)[0]
    second = load_graphs(smiles_file, Featurisation(("qed", "logp")), 40, cache)[0]
    assert first.store.array("properties").shape == (20, 1) and second.store.array("properties").shape == (20, 2)
    assert len(list((cache / "graphs").glob("*/store.json"))) == 2
    # Editing the source file invalidates too.
    smiles_file.write_text("CCO\n")
    third = load_graphs(smiles_file, Featurisation(("qed",)), 40, cache)[0]
    assert len(third) == 1


def test_qm9_without_qm9pack_names_the_extra(domain, config, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "qm9pack" else real(name, *a))
    with pytest.raises(ImportError, match=r"diffkit\[qm9\]"):
        domain.build_dataset(config, "qm9")


def test_the_skipped_warning_says_where_the_entries_are_and_the_cache_repeats_it(domain, config, tmp_path,
                                                                                 valid_smiles, invalid_smiles):
    path = tmp_path / "mixed.smi"
    lines = ["# a comment", valid_smiles[0], "", invalid_smiles[0], "CCCCCCCCCCCC"] + invalid_smiles[1:] * 2
    lines += valid_smiles[1:6]
    path.write_text("\n".join(lines) + "\n")
    # Unparsable: line 4, then lines 6.. 11 (the other three, twice); oversized: line 5.
    expected = (f"skipped 8 of 14 molecules of {str(path)!r}: 7 unparsable (lines 4, 6, 7, 8, 9 and 2 more), "
                "1 over 9 heavy atoms (line 5)")
    for read in ("processed", "from the cache"):
        config["data"].update(max_atoms=9, atom_types=[])  # a new run each time (a run lowers max_atoms)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = build(domain, config, path)
        assert [str(w.message) for w in caught if "skipped" in str(w.message)] == [expected], read
        assert len(dataset) == 6


def test_csv_and_sdf_entries_are_named_by_line_and_record(domain, config, tmp_path):
    table = tmp_path / "table.csv"
    table.write_text("name,smiles\na,CCO\nb,C1CC\nc,CCN\n")
    with pytest.warns(UserWarning, match=r"1 unparsable \(line 3\)$"):
        build(domain, config, table)
    Chem = chem.rdkit()
    sdf = tmp_path / "mols.sdf"
    with Chem.SDWriter(str(sdf)) as writer:
        for smiles in ("CCO", "CCCCCCCCCCCC", "CCN"):
            writer.write(Chem.MolFromSmiles(smiles))
    config["data"]["max_atoms"] = 9
    with pytest.warns(UserWarning, match=r"1 over 9 heavy atoms \(record 2\)$"):
        build(domain, config, sdf)


def rare_elements_file(tmp_path) -> Path:
    """200 molecules of carbon and oxygen, then one each with selenium, platinum, mercury and uranium."""
    path = tmp_path / "rare.smi"
    path.write_text("\n".join(["CCO"] * 150 + ["CC=O"] * 50 + ["C[Se]C", "Cl[Pt]Cl", "[Hg]", "CC[U]"]) + "\n")
    return path


def test_elements_too_rare_to_learn_are_named_with_the_atom_types_that_leave_them_out(domain, config, tmp_path):
    path = rare_elements_file(tmp_path)
    with pytest.warns(UserWarning) as caught:
        build(domain, config, path)
    assert [str(w.message) for w in caught] == [
        f"the atom types found in {str(path)!r} include elements in fewer than 1% of its 204 molecules, too few "
        "to learn them well: Cl (in 1), Se (in 1), Pt (in 1), Hg (in 1), U (in 1); to leave those molecules out, "
        "set data.atom_types = ['C', 'O']"]
    assert config["data"]["atom_types"] == ["C", "O", "Cl", "Se", "Pt", "Hg", "U"]
    # Following the advice (as fine-tuning fixed weights does) leaves them out, named.
    config["data"]["atom_types"] = ["C", "O"]
    with pytest.warns(UserWarning) as caught:
        dataset = build(domain, config, path)
    assert [str(w.message) for w in caught] == [
        f"skipped 4 of 204 molecules of {str(path)!r}: 4 an atom type outside data.atom_types "
        "(Cl, Se, Pt, Hg, U) (lines 201, 202, 203, 204)"]
    assert len(dataset) == 200



# Beside the valid ones: explicit hydrogens that RDKit restores ([nH], [NH3+]) or not ([CH2]: a
# radical; [SH2]: a hydrogen count the valence rule does not give), an isotope, a dative bond.
TRICKY_SMILES = ["c1cc[nH]c1", "[NH3+]CC([O-])=O", "C[CH2]", "[SH2]=O", "[13CH4]", "C[N+](C)(C)[O-]", "[Cu]<-N",
                 "OCC[13C](=O)[O-]", "[2H]C([2H])Cl", "N[C@@H](C)C(=O)O"]


def old_featurisation(smiles: str, names: tuple[str, ...]):
    """What a molecule became before the store (the graph path: prepare, mol_to_graph, rebuild,
    compare canonical SMILES, properties of the rebuilt molecule), or the reason it was skipped."""
    from diffkit_molecule.properties import PROPERTIES

    mol = chem.rdkit().MolFromSmiles(smiles)
    prepared = chem.prepare(mol) if mol is not None else None
    if prepared is None:
        return "unparsable"
    vocabulary = chem.sort_tokens(chem.mol_tokens(prepared))
    try:
        atoms, bonds = chem.mol_to_graph(prepared, vocabulary)
    except ValueError:
        return "bond_type"
    rebuilt = chem.sanitized(chem.graph_to_mol(atoms, bonds, vocabulary))
    if rebuilt is None or chem.canonical_smiles(rebuilt) != chem.canonical_smiles(chem.sanitized(prepared)):
        return "round_trip"
    tokens = [vocabulary[i] for i in atoms.tolist()]
    return tokens, bonds, [PROPERTIES[name](rebuilt) for name in names]


def test_stored_graphs_are_what_the_graph_path_makes_of_each_molecule(valid_smiles):
    from diffkit_molecule.dataset import atom_token, molecule_graph

    with gzip.open(bundled_path(), "rt") as file:
        qm9 = [line.split()[0] for line in itertools.islice(file, 300)]
    names = ("qed", "logp", "mol_weight")
    kept = 0
    for smiles in qm9 + valid_smiles + TRICKY_SMILES:
        expected = old_featurisation(smiles, names)
        graph = molecule_graph(chem.rdkit().MolFromSmiles(smiles), Featurisation(names))
        if isinstance(expected, str):
            assert graph == expected, smiles
            continue
        kept += 1
        tokens, bonds, values = expected
        assert [atom_token(code) for code in graph["atoms"]] == tokens, smiles
        dense = torch.zeros_like(bonds)
        for i, j, kind in graph["bonds"].tolist():
            assert i < j
            dense[i, j] = dense[j, i] = kind
        assert torch.equal(dense, bonds), smiles
        assert graph["properties"].tolist() == pytest.approx(values, rel=1e-6), smiles
    assert kept == 300 + len(valid_smiles) + len(TRICKY_SMILES) - 3  # the radical, [SH2]=O and the dative bond


def test_a_file_featurised_by_two_processes_in_shards_gives_the_same_dataset(domain, config, tmp_path, monkeypatch,
                                                                               valid_smiles, invalid_smiles):
    path = tmp_path / "mixed.smi"
    lines = ["# header", *valid_smiles[:7], "", *invalid_smiles, *TRICKY_SMILES, *valid_smiles[7:]]
    path.write_bytes("\r\n".join(lines).encode() + b"\r\n")  # Windows line ends
    with pytest.warns(UserWarning) as one_process:
        single = build(domain, dict(config, data=dict(config["data"])), path)
    monkeypatch.setattr(dataset_module, "SHARD_ENTRIES", 4)
    monkeypatch.setattr(dataset_module, "COUNT_CHUNK", 3)
    monkeypatch.setattr("diffkit.kit.store.available_cpus", lambda: 2)
    config["data"]["cache_dir"] = str(tmp_path / "other-cache")
    with pytest.warns(UserWarning) as two_processes:
        sharded = build(domain, config, path)
    assert [str(w.message) for w in one_process] == [str(w.message) for w in two_processes]
    assert "lines 10, 11, 12, 13" in str(one_process[0].message)  # the invalid SMILES, counted from 1
    assert len(sharded) == len(single) and sharded.vocabulary == single.vocabulary
    for i in range(len(single)):
        assert all(torch.equal(a, b) for a, b in zip(single.graph(i), sharded.graph(i)))
        assert torch.equal(single.properties[i], sharded.properties[i])


def test_class_counts_are_those_of_the_dense_items(domain, config, qm9_sample_file, monkeypatch):
    monkeypatch.setattr(dataset_module, "COUNT_CHUNK", 7)  # counted in many chunks of molecules
    config["data"]["max_atoms"] = 6  # leaves some out: the counts are of those kept
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = build(domain, config, qm9_sample_file)
    atoms, bonds = dataset.class_counts()
    expected_atoms = torch.zeros(len(dataset.vocabulary), dtype=torch.float64)
    expected_bonds = torch.zeros(len(chem.BOND_TYPES), dtype=torch.float64)
    for index in range(len(dataset)):
        types, adjacency = dataset.graph(index)
        expected_atoms += torch.bincount(types, minlength=len(dataset.vocabulary))
        off_diagonal = ~torch.eye(len(types), dtype=torch.bool)
        expected_bonds += torch.bincount(adjacency[off_diagonal], minlength=len(chem.BOND_TYPES))
    assert 0 < len(dataset) < 300
    assert torch.equal(atoms, expected_atoms) and torch.equal(bonds, expected_bonds)


def test_properties_share_qeds_descriptors_and_equal_rdkits_functions(valid_smiles):
    from rdkit.Chem import QED, Crippen, Descriptors

    from diffkit_molecule.properties import compute

    for smiles in valid_smiles:
        mol = chem.rdkit().MolFromSmiles(smiles)
        expected = [QED.qed(mol), Crippen.MolLogP(mol), Descriptors.MolWt(mol)]
        assert compute(mol, ("qed", "logp", "mol_weight")) == expected
        assert compute(mol, ("mol_weight", "logp")) == expected[:0:-1]


def test_graph_data_densified_by_torch_geometric_are_the_training_graphs(domain, config, qm9_sample_file):
    from diffkit_molecule.dataset import GraphData

    dataset_module.import_torch_geometric()
    from torch_geometric.loader import DataLoader
    from torch_geometric.utils import is_undirected, to_dense_adj, to_dense_batch

    config["data"]["max_atoms"] = 6  # leaves some out: graph_data follows the rows kept
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = build(domain, config, qm9_sample_file)
    width = dataset.num_nodes
    lines = qm9_sample_file.read_text().splitlines()
    checked = 0
    for batch in DataLoader(GraphData(dataset), batch_size=64):
        atoms, _ = to_dense_batch(batch.x + 1, batch.batch, max_num_nodes=width)
        bonds = to_dense_adj(batch.edge_index, batch.batch, batch.edge_attr, max_num_nodes=width)
        for k in range(batch.num_graphs):
            expected_atoms, expected_bonds = dataset.graph(checked + k, width)
            assert torch.equal(atoms[k] - 1, expected_atoms) and torch.equal(bonds[k].long(), expected_bonds)
            graph = batch.get_example(k)
            assert is_undirected(graph.edge_index, graph.edge_attr)
            assert torch.equal(graph.y[0], dataset.properties[checked + k])
            rebuilt = chem.graph_to_mol(graph.x, to_dense_adj(graph.edge_index, None, graph.edge_attr,
                                                              max_num_nodes=graph.num_nodes)[0].long(),
                                        dataset.vocabulary)
            smiles = lines[int(graph.where) - 1].split()[0]  # its line in the file, counted from 1
            assert chem.canonical_smiles(chem.sanitized(rebuilt)) == chem.canonical_smiles(
                chem.rdkit().MolFromSmiles(smiles))
        checked += batch.num_graphs
    assert 0 < checked == len(dataset) < 300
