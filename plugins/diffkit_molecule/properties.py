"""Molecular properties computed with RDKit: what the model can be conditioned on and what the
evaluation compares between generated and reference molecules."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor


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


def parse_condition(text: str, names: Sequence[str]) -> tuple[dict[str, float], int | None]:
    """``"qed=0.8, logp=1.5, atoms=7"`` -> ``({"qed": 0.8, "logp": 1.5}, 7)``.

    ``atoms`` fixes the number of atoms; the other keys must be among ``names``, the properties
    the model was trained on. Properties not named stay unconditioned."""
    values: dict[str, float] = {}
    atoms = None
    for part in filter(None, (piece.strip() for piece in text.replace(";", ",").split(","))):
        key, sep, raw = part.partition("=")
        key = key.strip().lower()
        if not sep:
            raise ValueError(f"--cond {text!r}: expected key=value pairs such as 'qed=0.8', got {part!r}")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"--cond {text!r}: the value of {key!r} is not a number: {raw.strip()!r}") from None
        if key == "atoms":
            if value != int(value) or value < 1:
                raise ValueError(f"--cond {text!r}: atoms must be a positive integer, got {raw.strip()!r}")
            atoms = int(value)
        elif key in names:
            values[key] = value
        else:
            known = ", ".join(list(names) + ["atoms"])
            raise ValueError(f"--cond {text!r}: unknown key {key!r}; this model knows: {known}")
    return values, atoms


def condition_tensor(values: dict[str, float], names: Sequence[str], n: int) -> Tensor:
    """``(n, P)`` raw property values; NaN marks a property left free (the null condition)."""
    row = torch.tensor([values.get(name, math.nan) for name in names], dtype=torch.float32)
    return row.expand(n, -1).clone()
