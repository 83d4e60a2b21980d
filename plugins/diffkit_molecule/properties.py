"""Molecular properties computed with RDKit: what the model can be conditioned on and what the
evaluation compares between generated and reference molecules."""

from __future__ import annotations

from typing import Callable, Sequence


def _qed(mol) -> float:
    from rdkit.Chem import QED

    return QED.qed(mol)


def _logp(mol) -> float:
    from rdkit.Chem import Crippen

    return Crippen.MolLogP(mol)


def _mol_weight(mol) -> float:
    from rdkit.Chem import Descriptors

    return Descriptors.MolWt(mol)


#: name -> function of a sanitised RDKit molecule.
PROPERTIES: dict[str, Callable[[object], float]] = {"qed": _qed, "logp": _logp, "mol_weight": _mol_weight}


def check_names(names: Sequence[str], where: str = "data.properties") -> None:
    unknown = [name for name in names if name not in PROPERTIES]
    if unknown:
        raise ValueError(f"{where}: unknown property {unknown[0]!r}; known: {', '.join(PROPERTIES)}")


def compute(mol, names: Sequence[str]) -> list[float]:
    """The named properties of a sanitised molecule, in order."""
    return [float(PROPERTIES[name](mol)) for name in names]
