"""Molecules as heavy-atom graphs: atom tokens (element and formal charge), Kekulé bond types, and
the conversions RDKit molecule <-> integer graph.

A graph of ``n`` atoms is ``(atoms, bonds)``: ``atoms`` an int tensor ``(n,)`` of indices into
the atom vocabulary, ``bonds`` an int tensor ``(n, n)``, symmetric, of indices into
:data:`BOND_TYPES` (0 = no bond). Hydrogens are implicit: RDKit restores them from the valence of
each atom when the molecule is sanitised, so a molecule without radicals or unusual hydrogen
counts survives the round trip exactly (up to stereochemistry, which the graph does not hold).
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import torch
from torch import Tensor

#: Bond classes of the edge state; kekulized graphs have no aromatic bonds.
BOND_TYPES = ("none", "single", "double", "triple")
_RDKIT_BONDS = ("SINGLE", "DOUBLE", "TRIPLE")
_TOKEN = re.compile(r"^([A-Z][a-z]?)([+-]\d*)?$")


def rdkit():
    """RDKit's Chem module with its console logging off (we count failures ourselves)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    return Chem


def atom_token(symbol: str, charge: int) -> str:
    """``("N", 1) -> "N+"``, ``("O", -1) -> "O-"``, ``("C", 0) -> "C"``, ``("S", 2) -> "S+2"``."""
    if charge == 0:
        return symbol
    sign = "+" if charge > 0 else "-"
    return f"{symbol}{sign}{abs(charge) if abs(charge) > 1 else ''}"


def parse_token(token: str) -> tuple[str, int]:
    """The inverse of :func:`atom_token`: ``"N+" -> ("N", 1)``."""
    match = _TOKEN.match(token)
    if match is None:
        raise ValueError(f"atom type {token!r} is not an element symbol with an optional charge "
                         "such as 'C', 'N+', 'O-' or 'S+2'")
    symbol, charge = match.groups()
    if not charge:
        return symbol, 0
    size = int(charge[1:]) if len(charge) > 1 else 1
    return symbol, size if charge[0] == "+" else -size


def sort_tokens(tokens: Iterable[str]) -> list[str]:
    """Atom tokens in a stable order: by atomic number, then charge (neutral first)."""
    table = rdkit().GetPeriodicTable()

    def key(token: str) -> tuple[int, int, int]:
        symbol, charge = parse_token(token)
        return table.GetAtomicNumber(symbol), abs(charge), -charge

    return sorted(set(tokens), key=key)


def max_valences(tokens: Sequence[str]) -> list[int]:
    """The largest usual valence of each atom token. A charged atom counts as the element it is
    isoelectronic with (N+ like C: 4, O- like F: 1), which is how RDKit judges valences."""
    table = rdkit().GetPeriodicTable()
    valences = []
    for token in tokens:
        symbol, charge = parse_token(token)
        number = table.GetAtomicNumber(symbol) - charge
        allowed = [v for v in table.GetValenceList(max(number, 1)) if v >= 0] if number >= 1 else []
        valences.append(max(allowed, default=0))
    return valences


def prepare(mol):
    """A heavy-atom Kekulé copy of an RDKit molecule, or ``None`` when RDKit cannot kekulize it."""
    Chem = rdkit()
    try:
        mol = Chem.RemoveHs(mol)
        mol = Chem.Mol(mol)
        Chem.Kekulize(mol, clearAromaticFlags=True)
    except Exception:  # RDKit raises several exception types for bad molecules
        return None
    return mol


def mol_tokens(mol) -> list[str]:
    return [atom_token(atom.GetSymbol(), atom.GetFormalCharge()) for atom in mol.GetAtoms()]


def mol_to_graph(mol, vocabulary: Sequence[str]) -> tuple[Tensor, Tensor]:
    """``(atoms (n,), bonds (n, n))`` of a molecule prepared by :func:`prepare`.

    Raises ``KeyError`` naming an atom token outside ``vocabulary`` and ``ValueError`` for a bond
    that is not single, double or triple."""
    index = {token: i for i, token in enumerate(vocabulary)}
    tokens = mol_tokens(mol)
    missing = [token for token in tokens if token not in index]
    if missing:
        raise KeyError(missing[0])
    atoms = torch.tensor([index[token] for token in tokens], dtype=torch.long)
    bonds = torch.zeros(len(tokens), len(tokens), dtype=torch.long)
    for bond in mol.GetBonds():
        name = str(bond.GetBondType())
        if name not in _RDKIT_BONDS:
            raise ValueError(f"bond type {name} is not single, double or triple")
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bonds[i, j] = bonds[j, i] = _RDKIT_BONDS.index(name) + 1
    return atoms, bonds


def graph_to_mol(atoms: Tensor, bonds: Tensor, vocabulary: Sequence[str]):
    """The unsanitised RDKit molecule of a graph: ``atoms (n,)``, ``bonds (n, n)`` (the upper
    triangle is read). Use :func:`sanitized` to check it."""
    upper = torch.triu(bonds, diagonal=1)
    rows, cols = upper.nonzero(as_tuple=True)
    return mol_from_parts([parse_token(vocabulary[index]) for index in atoms.tolist()],
                          list(zip(rows.tolist(), cols.tolist(), upper[rows, cols].tolist())))


def mol_from_parts(atoms: Sequence[tuple[str | int, int]], bonds: Sequence[tuple[int, int, int]]):
    """The unsanitised RDKit molecule of ``atoms`` (element symbol or atomic number, formal
    charge) and ``bonds`` ``(i, j, index into BOND_TYPES)``."""
    Chem = rdkit()
    mol = Chem.RWMol()
    for element, charge in atoms:
        atom = Chem.Atom(element)
        atom.SetFormalCharge(charge)
        mol.AddAtom(atom)
    for i, j, kind in bonds:
        mol.AddBond(i, j, getattr(Chem.BondType, _RDKIT_BONDS[kind - 1]))
    return mol.GetMol()


def sanitized(mol):
    """A sanitised copy of ``mol``, or ``None`` when RDKit rejects it (valence, kekulization...).
    Strict: charges are never adjusted to make a molecule pass."""
    Chem = rdkit()
    mol = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(mol)
    except Exception:  # RDKit raises several exception types for bad molecules
        return None
    return mol


def canonical_smiles(mol) -> str:
    """Canonical SMILES without stereochemistry (a heavy-atom graph holds none)."""
    return rdkit().MolToSmiles(mol, isomericSmiles=False)


def raw_smiles(mol) -> str:
    """SMILES of a molecule that may not sanitise, written as it stands: reading it back with
    RDKit fails for the same reason the molecule does."""
    Chem = rdkit()
    mol = Chem.Mol(mol)
    mol.UpdatePropertyCache(strict=False)
    return Chem.MolToSmiles(mol, isomericSmiles=False, kekuleSmiles=True, canonical=False)
