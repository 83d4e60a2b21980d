"""Evaluation scores against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from diffkit_molecule import metrics

SAMPLES = ["CCO", "OCC", "c1ccccc1", "C(C)(C)(C)(C)C", "CC.O", "C1CC"]
REFERENCE = ["CCO", "CCN"]


def test_validity_connectivity_uniqueness_novelty_by_hand():
    scores = metrics.basic_scores(SAMPLES, REFERENCE)
    # Valid: CCO, OCC (the same molecule), benzene, CC.O (two fragments): 4 of 6.
    assert scores["validity"] == pytest.approx(4 / 6)
    # Valid and in one piece: CCO, OCC, benzene.
    assert scores["connected"] == pytest.approx(3 / 6)
    # Distinct among valid: ethanol, benzene, ethane + water.
    assert scores["uniqueness"] == pytest.approx(3 / 4)
    # Not in the reference: benzene, ethane + water.
    assert scores["novelty"] == pytest.approx(2 / 3)


def test_validity_is_strict_about_charges():
    # A neutral four-bonded nitrogen is not repaired into an ammonium ion.
    assert metrics.basic_scores(["CN(C)(C)C", "C[N+](C)(C)C"], [])["validity"] == pytest.approx(0.5)


def test_property_distance_by_hand():
    # Molecular weights: ethanol C2H6O 46.069, benzene C6H6 78.114, ethylamine C2H7N 45.085.
    # W1 between two equal-size samples is the mean absolute difference of the sorted values.
    expected = (abs(45.085 - 46.069) + abs(78.114 - 46.069)) / 2
    distances = metrics.property_distances(["CCO", "c1ccccc1"], REFERENCE)
    assert distances["w1_mol_weight"] == pytest.approx(expected, abs=2e-3)
    same = metrics.property_distances(REFERENCE, list(reversed(REFERENCE)))
    assert all(value == pytest.approx(0.0, abs=1e-12) for value in same.values())


def test_fcd_is_zero_for_identical_sets_and_positive_otherwise():
    pytest.importorskip("fcd_torch")
    alcohols = ["CCO", "CCCO", "CCCCO", "OCC(O)CO", "CC(C)O", "OCCO"]
    aromatics = ["c1ccccc1", "Cc1ccccc1", "c1ccncc1", "Oc1ccccc1", "c1ccc2ccccc2c1", "Nc1ccccc1"]
    assert metrics.fcd(alcohols, alcohols) == pytest.approx(0.0, abs=1e-3)
    assert metrics.fcd(alcohols, aromatics) > 1.0


def test_property_errors_against_values_asked_for_each_sample():
    import math

    import torch
    from rdkit import Chem
    from rdkit.Chem import QED

    smiles = ["CCO", "c1ccccc1", "not a molecule", "CC(=O)O"]
    exact = [QED.qed(Chem.MolFromSmiles(s)) if Chem.MolFromSmiles(s) else math.nan for s in smiles]
    asked = torch.tensor([[value + 0.1, math.nan] for value in exact], dtype=torch.float64)
    scores = metrics.property_errors(smiles, asked, ["qed", "logp"])
    assert scores["mae_qed"] == pytest.approx(0.1, abs=1e-6)
    assert "mae_logp" not in scores and scores["asked_valid"] == 3.0


def test_failure_kinds_name_the_atom_and_its_bond_orders():
    from diffkit_molecule.chem import graph_to_mol, mol_to_graph, prepare, rdkit
    from diffkit_molecule.outputs import smiles_lines

    cases = {
        "C(C)(C)(C)(C)C": "valence C 5",       # five single bonds on a carbon
        "[N+](C)(C)(C)(C)C": "valence N+ 5",   # N+ allows four
        "C=[O-]": "valence O- 2",              # O- allows one
        "FC=F": "valence F 2",
        "c1cccc1": "kekulize",                 # five aromatic atoms: no alternating bonds
        "CC(=O)[O-]": "valid",
        "": "unreadable",
    }
    assert {smiles: metrics.failure_kind(smiles) for smiles in cases} == cases
    # Samples are written as their graph stands: a graph with a five-bonded carbon keeps its reason.
    vocabulary = ["C", "O"]
    atoms, bonds = mol_to_graph(prepare(rdkit().MolFromSmiles("CC(C)(C)C")), vocabulary)
    bonds[1, 0] = bonds[0, 1] = 2
    (line,) = smiles_lines([graph_to_mol(atoms, bonds, vocabulary)])
    assert metrics.failure_kind(line) == "valence C 5"
