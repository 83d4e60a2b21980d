"""Evaluation scores against values worked out by hand."""

from __future__ import annotations

import math

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


# -- the MOSES metrics -----------------------------------------------------------------------------

def test_tanimoto_blocks_give_bit_overlaps_worked_out_by_hand(monkeypatch):
    from diffkit_molecule import moses

    a = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=np.uint8)
    b = np.array([[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=np.uint8)
    monkeypatch.setattr(moses, "PAIRS_PER_BLOCK", 4)  # one row of a at a time
    rows = np.concatenate([block for _, block in moses.tanimoto_blocks(a, b)])
    # |a & b| / |a | b|; two empty prints count as the same molecule.
    assert rows.tolist() == [[0.5, 0.0, 0.0], [0.25, 0.5, 0.0], [0.0, 0.0, 1.0]]
    assert moses.nearest_similarity(a, b).tolist() == [0.5, 0.5, 1.0]
    # Internal diversity of [1100], [1111]: T = [[1, .5], [.5, 1]].
    pair = a[:2]
    assert moses.internal_diversity(pair, 1) == pytest.approx(1 - 0.75)
    assert moses.internal_diversity(pair, 2) == pytest.approx(1 - np.sqrt((1 + 0.25) / 2))


def test_moses_scores_of_a_set_against_itself_and_against_others():
    from diffkit_molecule import moses

    drugs = ["CC(=O)Nc1ccc(O)cc1", "CN1CCC[C@H]1c1cccnc1", "O=C(O)c1ccccc1O", "c1ccc2c(c1)CCN2C(=O)C1CCCC1",
             "COc1ccc2[nH]cc(CCN)c2c1", "O=C1CCc2ccccc2N1Cc1ccccc1"]
    same = moses.moses_scores(drugs, drugs)
    assert same["snn"] == pytest.approx(1.0)
    assert same["fragment_similarity"] == pytest.approx(1.0) and same["scaffold_similarity"] == pytest.approx(1.0)
    assert 0 < same["internal_diversity_1"] < 1 and same["internal_diversity_2"] < same["internal_diversity_1"]
    copies = moses.moses_scores(drugs[:1] * 5, drugs)
    assert copies["internal_diversity_1"] == pytest.approx(0.0, abs=1e-12)
    small = moses.moses_scores(["CCO", "CCCO", "OCCO"], drugs)
    assert small["snn"] < 0.3 and small["fragment_similarity"] < 0.2
    assert math.isnan(small["scaffold_similarity"])  # no scaffold of two rings among the small ones


def test_filters_reject_charges_other_elements_large_rings_and_alerts_and_keep_plain_drugs():
    from diffkit_molecule import chem, moses

    Chem = chem.rdkit()
    rejected = {"C[N+](C)(C)C": "a charge", "CC[Si](C)C": "silicon", "C1CCCCCCC1": "a ring of 8",
                "CCC=O": "an aldehyde (MCF7)", "CN(C)CN(C)C": "an aminal (MCF18)",
                "S=C1SC(=Cc2ccccc2)C(=O)N1": "an ene-rhodanine (PAINS)"}
    for smiles, why in rejected.items():
        assert not moses.passes_filters(Chem.MolFromSmiles(smiles)), why
    assert moses._pains().HasMatch(Chem.AddHs(Chem.MolFromSmiles("S=C1SC(=Cc2ccccc2)C(=O)N1")))
    for smiles in ("CC(=O)Nc1ccc(O)cc1", "O=C(O)c1ccccc1O", "C1CCCCCC1", "CCOC(=O)c1ccccc1Cl"):
        assert moses.passes_filters(Chem.MolFromSmiles(smiles)), smiles
    assert moses.moses_scores(["CCC=O", "CCO", "C1CCCCCCC1", "CCN"], ["CCO"])["filters"] == pytest.approx(0.5)
