"""Molecules <-> graphs: the round trip is exact, tokens and valences follow chemistry."""

from __future__ import annotations

import gzip
import itertools

import pytest
import torch

from diffkit_molecule import chem
from diffkit_molecule.sources import bundled_path


def round_trip(smiles: str, vocabulary: list[str]) -> str | None:
    Chem = chem.rdkit()
    prepared = chem.prepare(Chem.MolFromSmiles(smiles))
    atoms, bonds = chem.mol_to_graph(prepared, vocabulary)
    rebuilt = chem.sanitized(chem.graph_to_mol(atoms, bonds, vocabulary))
    return None if rebuilt is None else chem.canonical_smiles(rebuilt)


def canonical(smiles: str) -> str:
    return chem.canonical_smiles(chem.rdkit().MolFromSmiles(smiles))


def test_round_trip_is_exact_on_bundled_qm9_molecules():
    with gzip.open(bundled_path(), "rt") as file:
        smiles = [line.split()[0] for line in itertools.islice(file, 500)]
    vocabulary = chem.sort_tokens(t for s in smiles for t in chem.mol_tokens(chem.prepare(chem.rdkit().MolFromSmiles(s))))
    mismatches = [s for s in smiles if round_trip(s, vocabulary) != canonical(s)]
    assert mismatches == []


def test_round_trip_keeps_aromatic_rings_and_charges(valid_smiles):
    vocabulary = chem.sort_tokens(t for s in valid_smiles for t in chem.mol_tokens(chem.prepare(chem.rdkit().MolFromSmiles(s))))
    assert {"N+", "O-", "Cl"} <= set(vocabulary)
    for smiles in valid_smiles:
        assert round_trip(smiles, vocabulary) == canonical(smiles), smiles


def test_graph_is_kekulized_and_symmetric():
    atoms, bonds = chem.mol_to_graph(chem.prepare(chem.rdkit().MolFromSmiles("c1ccccc1")), ["C"])
    assert atoms.tolist() == [0] * 6
    assert torch.equal(bonds, bonds.T)
    # Benzene in Kekulé form: three single and three double bonds, each atom one of each.
    upper = bonds[torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)]
    assert sorted(upper[upper > 0].tolist()) == [1, 1, 1, 2, 2, 2]
    assert ((bonds == 2).sum(1) == 1).all() and ((bonds == 1).sum(1) == 1).all()


def test_unknown_atom_type_is_named():
    with pytest.raises(KeyError, match="Cl"):
        chem.mol_to_graph(chem.prepare(chem.rdkit().MolFromSmiles("CCl")), ["C"])


@pytest.mark.parametrize("token, parsed", [("C", ("C", 0)), ("N+", ("N", 1)), ("O-", ("O", -1)),
                                           ("S+2", ("S", 2)), ("Cl", ("Cl", 0)), ("Fe-3", ("Fe", -3))])
def test_atom_tokens_round_trip(token, parsed):
    assert chem.parse_token(token) == parsed
    assert chem.atom_token(*parsed) == token


def test_bad_atom_token_is_refused():
    with pytest.raises(ValueError, match="element symbol"):
        chem.parse_token("c+")


def test_max_valences_follow_isoelectronic_atoms():
    # C 4, N 3, O 2, F 1; N+ counts as C, O- as F, N- as O, C- as N.
    assert chem.max_valences(["C", "N", "O", "F", "N+", "O-", "N-", "C-"]) == [4, 3, 2, 1, 4, 1, 2, 3]


def test_sort_tokens_orders_by_atomic_number_then_charge():
    assert chem.sort_tokens(["F", "O-", "N+", "C", "N", "O", "C", "Cl"]) == ["C", "N", "N+", "O", "O-", "F", "Cl"]


def test_invalid_graph_does_not_sanitize_and_its_raw_smiles_does_not_parse():
    atoms = torch.zeros(6, dtype=torch.long)
    bonds = torch.zeros(6, 6, dtype=torch.long)
    bonds[0, 1:] = bonds[1:, 0] = 1  # a pentavalent carbon
    mol = chem.graph_to_mol(atoms, bonds, ["C"])
    assert chem.sanitized(mol) is None
    assert chem.rdkit().MolFromSmiles(chem.raw_smiles(mol)) is None
