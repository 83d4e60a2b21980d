"""Molecular properties computed with RDKit: what the model can be conditioned on and what the
evaluation compares between generated and reference molecules."""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Sequence

from torch import Tensor

from diffkit.config import Limit, above


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


#: The values a property takes for any molecule: QED is a desirability in [0, 1] (Bickerton et al.
#: 2012), a molecular weight is positive; logP may be any real number.
POSSIBLE: dict[str, Limit] = {"qed": Limit(0, 1), "mol_weight": above(0)}
#: An asked value further than this many standard deviations from the training molecules' mean is
#: outside what the model has seen (a normal law puts 1 value in 16,000 there): a warning says so.
FAR_FROM_TRAINING = 4.0


def check_asked(names: Sequence[str], values: Tensor, mean: Tensor, std: Tensor) -> None:
    """Refuse asked property values ``values (n, P)`` (NaN: free) that no molecule has, and warn
    about those far from the training molecules (``mean``, ``std``: theirs, ``(P,)``)."""
    for index, name in enumerate(names):
        asked = values[:, index]
        asked = asked[~asked.isnan()].unique()
        if not len(asked):
            continue
        centre, spread = float(mean[index]), float(std[index])
        training = f"the training molecules' {name}: mean {centre:.3g}, standard deviation {spread:.3g}"
        possible = POSSIBLE.get(name)
        for value in asked.tolist():
            if possible is not None and not possible.admits(value):
                raise ValueError(f"--cond {name}={value:g}: {name} is {possible} for every molecule ({training})")
        farthest = max(asked.tolist(), key=lambda value: abs(value - centre))
        distance = abs(farthest - centre) / spread
        if distance > FAR_FROM_TRAINING:
            warnings.warn(f"--cond {name}={farthest:g} is {distance:.0f} standard deviations from what this model "
                          f"was trained on ({training}): expect the samples to miss it", stacklevel=4)


def check_names(names: Sequence[str], where: str = "data.properties") -> None:
    unknown = [name for name in names if name not in PROPERTIES]
    if unknown:
        raise ValueError(f"{where}: unknown property {unknown[0]!r}; known: {', '.join(PROPERTIES)}")


def compute(mol, names: Sequence[str]) -> list[float]:
    """The named properties of a sanitised molecule, in order. With ``qed`` among them, logP and
    the molecular weight are read from the descriptors QED computes anyway (RDKit's QED takes
    them from the same Crippen and weight functions), which halves the cost of the default three."""
    if "qed" not in names:
        return [float(PROPERTIES[name](mol)) for name in names]
    from rdkit.Chem import QED

    descriptors = qed_descriptors(mol)
    shared = {"qed": lambda: QED.qed(mol, qedProperties=descriptors), "logp": lambda: descriptors.ALOGP,
              "mol_weight": lambda: descriptors.MW}
    return [float(shared[name]() if name in shared else PROPERTIES[name](mol)) for name in names]


def qed_descriptors(mol):
    """RDKit's ``QED.properties(mol)``, the eight descriptors QED weighs, computed the same way
    but about a fifth faster, which matters when a file of millions of molecules is featurised:
    the molecule is copied without hydrogens only when it has hydrogen atoms, and the 116
    structural alerts are counted by one filter catalogue in C++ rather than one call each. (Hence
    RDKit's cached descriptors, e.g. logP, stay on a molecule without hydrogen atoms.)"""
    from rdkit import Chem
    from rdkit.Chem import Crippen, MolSurf, QED, rdMolDescriptors

    if mol.GetNumAtoms() != mol.GetNumHeavyAtoms():
        mol = Chem.RemoveHs(mol)
    acceptors = sum(len(mol.GetSubstructMatches(pattern)) for pattern in QED.Acceptors
                    if mol.HasSubstructMatch(pattern))
    aromatic_rings = len(Chem.GetSSSR(Chem.DeleteSubstructs(Chem.Mol(mol), QED.AliphaticRings)))
    strict = rdMolDescriptors.NumRotatableBondsOptions.Strict
    return QED.QEDproperties(
        MW=rdMolDescriptors._CalcMolWt(mol), ALOGP=Crippen.MolLogP(mol), HBA=acceptors,
        HBD=rdMolDescriptors.CalcNumHBD(mol), PSA=MolSurf.TPSA(mol),
        ROTB=rdMolDescriptors.CalcNumRotatableBonds(mol, strict), AROM=aromatic_rings,
        ALERTS=len(_alert_catalogue().GetMatches(mol)))


@functools.lru_cache(maxsize=1)
def _alert_catalogue():
    """QED's structural alerts (RDKit's ``QED.StructuralAlerts``) as one filter catalogue."""
    from rdkit.Chem import QED, FilterCatalog

    catalogue = FilterCatalog.FilterCatalog()
    for index, alert in enumerate(QED.StructuralAlerts):
        catalogue.AddEntry(FilterCatalog.FilterCatalogEntry(f"alert {index}", FilterCatalog.SmartsMatcher(alert)))
    return catalogue
