"""The molecule properties against RDKit's own functions."""

from __future__ import annotations

import gzip
import itertools

import pytest

from diffkit_molecule import chem, properties
from diffkit_molecule.sources import bundled_path

# Drug-like molecules, most with structural alerts (nitro, azo, Michael acceptor, aldehyde, thiol,
# halogenated alkyl).
ALERTING_SMILES = [
    "O=[N+]([O-])c1ccc(N=Nc2ccccc2)cc1", "C=CC(=O)Nc1ccc(C=O)cc1", "SCCc1ccncc1", "ClCCN(CCCl)c1ccccc1",
    "CC(=O)Oc1ccccc1C(=O)O", "CN1CCC[C@H]1c1cccnc1",
]


def _molecules():
    with gzip.open(bundled_path(), "rt") as lines:
        qm9 = [line.split()[0] for line in itertools.islice(lines, 300)]
    Chem = chem.rdkit()
    molecules = [Chem.MolFromSmiles(smiles) for smiles in qm9 + ALERTING_SMILES]
    return molecules + [Chem.AddHs(molecules[-1])]  # with its hydrogens as atoms


def test_qed_descriptors_equal_rdkits():
    from rdkit.Chem import QED

    ours = [properties.qed_descriptors(mol) for mol in _molecules()]
    theirs = [QED.properties(mol) for mol in _molecules()]  # fresh molecules: RDKit caches logP on them
    assert ours == theirs
    assert sum(descriptors.ALERTS > 0 for descriptors in ours) >= 6  # the alerts are counted, not all 0


def test_compute_equals_rdkits_functions():
    from rdkit.Chem import QED, Crippen, Descriptors

    for mol in _molecules()[-len(ALERTING_SMILES) - 1:]:
        qed, logp, weight = properties.compute(mol, ["qed", "logp", "mol_weight"])
        assert qed == pytest.approx(QED.qed(mol), abs=1e-12)
        assert logp == pytest.approx(Crippen.MolLogP(mol), abs=1e-12)
        assert weight == pytest.approx(Descriptors.MolWt(mol), abs=1e-9)
