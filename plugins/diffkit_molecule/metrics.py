"""Scores of generated molecules (SMILES strings) against reference molecules.

* ``validity``: the fraction RDKit parses and sanitises as a whole (no charge fixing, no keeping
  of the largest fragment).
* ``connected``: the fraction of all samples that are valid and in one piece.
* ``uniqueness``: distinct canonical SMILES among the valid ones, over the valid ones.
* ``novelty``: distinct valid molecules absent from the reference (or from the training molecules,
  when given), over the distinct valid ones.
* ``fcd``: the Fréchet ChemNet distance (Preuer et al. 2018) between valid samples and reference,
  with the ChemNet weights the ``fcd-torch`` package ships (skipped when it is not installed).
* ``w1_<property>``: the Wasserstein-1 distance between the property's distributions.
* the other MOSES metrics (:mod:`.moses`): ``unique_at_1000``, ``unique_at_10000``, ``snn``,
  ``fragment_similarity``, ``scaffold_similarity``, ``internal_diversity_1``,
  ``internal_diversity_2``, ``filters``.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

from diffkit.kit import frechet_distance

from . import chem, properties

EVALUATED_PROPERTIES = ("qed", "logp", "mol_weight")


def canonical_valid(smiles: Sequence[str]) -> list[str | None]:
    """Canonical SMILES (no stereo) of each entry, ``None`` for those RDKit rejects."""
    Chem = chem.rdkit()
    out = []
    for text in smiles:
        mol = Chem.MolFromSmiles(text) if text else None
        out.append(chem.canonical_smiles(mol) if mol is not None else None)
    return out


def basic_scores(samples: Sequence[str], reference: Sequence[str]) -> dict[str, float]:
    """validity, connected, uniqueness and novelty (see the module docstring)."""
    canonical = canonical_valid(samples)
    valid = [s for s in canonical if s is not None]
    distinct = set(valid)
    known = {s for s in canonical_valid(reference) if s is not None}
    total = max(len(samples), 1)
    return {
        "validity": len(valid) / total,
        "connected": sum("." not in s for s in valid) / total,
        "uniqueness": len(distinct) / len(valid) if valid else 0.0,
        "novelty": len(distinct - known) / len(distinct) if distinct else 0.0,
    }


def property_distances(samples: Sequence[str], reference: Sequence[str]) -> dict[str, float]:
    """``w1_<name>`` between the property distributions of the valid samples and the reference."""
    from scipy.stats import wasserstein_distance

    mine, theirs = _property_table(samples), _property_table(reference)
    if not len(mine) or not len(theirs):
        return {f"w1_{name}": math.nan for name in EVALUATED_PROPERTIES}
    return {f"w1_{name}": float(wasserstein_distance(mine[:, k], theirs[:, k]))
            for k, name in enumerate(EVALUATED_PROPERTIES)}


def _property_table(smiles: Sequence[str]) -> np.ndarray:
    Chem = chem.rdkit()
    rows = [properties.compute(mol, EVALUATED_PROPERTIES)
            for mol in (Chem.MolFromSmiles(s) for s in smiles) if mol is not None]
    return np.array(rows, dtype=np.float64).reshape(-1, len(EVALUATED_PROPERTIES))


def chemnet_activations(smiles: Sequence[str], batch_size: int = 512) -> np.ndarray:
    """ChemNet's penultimate activations ``(M, 512)`` for SMILES (fcd-torch's weights)."""
    import os

    import torch
    from fcd_torch import utils as fcd_utils
    from torch.utils.data import DataLoader

    weights = os.path.join(os.path.dirname(fcd_utils.__file__), "ChemNet_v0.13_pretrained.pt")
    model = fcd_utils.load_imported_model(torch.load(weights, weights_only=True)).eval()
    loader = DataLoader(fcd_utils.SmilesDataset(list(smiles)), batch_size=batch_size)
    with torch.no_grad():
        parts = [model(batch.transpose(1, 2).float()).numpy() for batch in loader]
    return np.concatenate(parts, axis=0)


def fcd(samples: Sequence[str], reference: Sequence[str]) -> float:
    """The Fréchet ChemNet distance between the valid ``samples`` and ``reference`` (NaN when
    either has fewer than two valid molecules)."""
    mine = [s for s in canonical_valid(samples) if s is not None]
    theirs = [s for s in canonical_valid(reference) if s is not None]
    if len(mine) < 2 or len(theirs) < 2:
        return math.nan
    a, b = chemnet_activations(mine), chemnet_activations(theirs)
    return frechet_distance(a, b)


def property_errors(samples: Sequence[str], asked, names: Sequence[str]) -> dict[str, float]:
    """``mae_<name>``: the mean absolute error between each valid sample's property and the value
    asked for it (``asked (N, P)``, NaN where a property was left free), for every asked property;
    ``asked_valid`` counts the valid samples that had an asked value."""
    Chem = chem.rdkit()
    errors: dict[str, list[float]] = {name: [] for name in names}
    for smiles, row in zip(samples, asked.tolist()):
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            continue
        for name, value in zip(names, row):
            if not math.isnan(value):
                errors[name].append(abs(properties.compute(mol, [name])[0] - value))
    scores = {f"mae_{name}": float(np.mean(found)) for name, found in errors.items() if found}
    if scores:
        scores["asked_valid"] = float(max(len(found) for found in errors.values()))
    return scores


def failure_kind(smiles: str) -> str:
    """Why RDKit rejects a sample written as :func:`~diffkit_molecule.outputs.smiles_lines` writes
    it (the graph as it stands): ``"valid"``, ``"unreadable"``, ``"valence <atom> <bonds>"`` for
    the first atom whose bond orders exceed what its element and charge allow (e.g.
    ``"valence N+ 5"``), or the type of RDKit's first complaint (``"kekulize"``, ...)."""
    Chem = chem.rdkit()
    mol = Chem.MolFromSmiles(smiles, sanitize=False) if smiles else None
    if mol is None:
        return "unreadable"
    problems = Chem.DetectChemistryProblems(mol)
    if not problems:
        return "valid"
    problem = problems[0]
    if problem.GetType() == "AtomValenceException":
        atom = mol.GetAtomWithIdx(problem.GetAtomIdx())
        bonds = sum(bond.GetBondTypeAsDouble() for bond in atom.GetBonds())
        return f"valence {chem.atom_token(atom.GetSymbol(), atom.GetFormalCharge())} {bonds:g}"
    return problem.GetType().removesuffix("Exception").lower()


def evaluate_smiles(samples: Sequence[str], reference: Sequence[str], *, training: Sequence[str] | None = None,
                    with_fcd: bool = True) -> dict[str, float]:
    """All scores; novelty against ``training`` when given; FCD only when ``fcd-torch`` is
    installed (a warning says so otherwise)."""
    from .moses import moses_scores

    scores = basic_scores(samples, reference if training is None else training)
    scores.update(property_distances(samples, reference))
    scores.update(moses_scores(samples, reference))
    if with_fcd:
        try:
            import fcd_torch  # noqa: F401
        except ImportError:
            warnings.warn("FCD skipped: it needs the fcd-torch package (pip install 'diffkit[fcd]')")
        else:
            scores["fcd"] = fcd(samples, reference)
    return scores
