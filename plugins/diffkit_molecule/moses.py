"""The MOSES metrics of generated molecules (Polykovskiy et al. 2020, "Molecular Sets (MOSES): A
Benchmarking Platform for Molecular Generation Models", Front. Pharmacol. 11:565644), computed
with RDKit as that paper defines them; validity, uniqueness, novelty and FCD are in
:mod:`.metrics`. Every score is of the valid samples against the valid reference molecules:

* ``unique_at_1000``, ``unique_at_10000``: distinct molecules among the first 1,000 (10,000) valid
  samples, over that count (given when there are that many);
* ``snn``: the mean, over samples, of the Tanimoto similarity to the nearest reference molecule
  (Morgan fingerprints of radius 2, 1,024 bits);
* ``fragment_similarity``: the cosine similarity of the counts of BRICS fragments;
* ``scaffold_similarity``: the cosine similarity of the counts of Bemis-Murcko scaffolds (of two
  rings or more, as MOSES counts them);
* ``internal_diversity_1``, ``internal_diversity_2``: one minus the mean over samples of
  ``(mean_j T_ij^p)^(1/p)``, ``T`` the Tanimoto similarities among the samples (self included);
* ``filters``: the share of samples that pass the filters MOSES built its data set with:
  no charged atoms, only C, N, S, O, F, Cl, Br and H, no ring of 8 atoms or more, and none of the
  medicinal-chemistry (:data:`MCF_SMARTS`) or PAINS patterns (RDKit's PAINS catalog, the set of
  Baell and Holloway 2010).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Sequence

import numpy as np

from . import chem

FINGERPRINT_RADIUS, FINGERPRINT_BITS = 2, 1024
#: Similarities computed at a time: (samples x reference) pairs in one product.
PAIRS_PER_BLOCK = 1 << 24
ALLOWED_ELEMENTS = {"C", "N", "S", "O", "F", "Cl", "Br", "H"}
LARGEST_RING = 7
#: The medicinal-chemistry filters of the MOSES data set (published with it, MIT licence).
MCF_SMARTS = (
    "[#6]=&!@[#6]-[#6]#[#7]", "[#6]=&!@[#6]-[#16](=[#8])=[#8]", "[#6]=&!@[#6&!H0]-&!@[#6](=[#8])-&!@[#7]",
    "[H]C([H])([#6])[F,Cl,Br,I]", "[#6]1-[#8]-[#6]-1", "[#6]-[#7]=[#6]=[#8]", "[#6&!H0]=[#8]",
    "[#6](=&!@[#7&!H0])-&!@[#6,#7,#8,#16]", "[#6]1-[#7]-[#6]-1", "[#6]~&!@[#7]~&!@[#7]~&!@[#6]", "[#7]=&!@[#7]",
    "[H][#6]-1=[#6]([H])-[#6]=[#6](-*)-[#8]-1", "[H][#6]-1=[#6]([H])-[#6]=[#6](-*)-[#16]-1",
    "[#17,#35,#53]-c(:*):[!#1!#6]:*", "[H][#7]([H])-[#6]-1=[#6]-[#6]=[#6]-[#6]=[#6]-1", "[#16]~[#16]",
    "[#7]~&!@[#7]~&!@[#7]", "[#7]-&!@[#6&!H0&!H1]-&!@[#7]", "[#6&!H0](-&!@[#8])-&!@[#8]", "[#35].[#35].[#35]",
    "[#17].[#17].[#17].[#17]", "[#9].[#9].[#9].[#9].[#9].[#9].[#9]",
)


def moses_scores(samples: Sequence[str], reference: Sequence[str]) -> dict[str, float]:
    """The scores of the module docstring (NaN where there are no valid samples)."""
    mine, theirs = _molecules(samples), _molecules(reference)
    scores: dict[str, float] = {}
    canonical = [chem.canonical_smiles(mol) for mol in mine]
    for count in (1000, 10_000):
        if len(canonical) >= count:
            scores[f"unique_at_{count}"] = len(set(canonical[:count])) / count
    if not mine:
        return {**scores, **{name: math.nan for name in ("snn", "fragment_similarity", "scaffold_similarity",
                                                         "internal_diversity_1", "internal_diversity_2", "filters")}}
    sample_prints = fingerprints(mine)
    scores["snn"] = float(nearest_similarity(sample_prints, fingerprints(theirs)).mean()) if theirs else math.nan
    scores["fragment_similarity"] = cosine_similarity(fragments(mine), fragments(theirs))
    scores["scaffold_similarity"] = cosine_similarity(scaffolds(mine), scaffolds(theirs))
    for power in (1, 2):
        scores[f"internal_diversity_{power}"] = internal_diversity(sample_prints, power)
    scores["filters"] = sum(passes_filters(mol) for mol in mine) / len(mine)
    return scores


def _molecules(smiles: Sequence[str]) -> list:
    Chem = chem.rdkit()
    return [mol for mol in (Chem.MolFromSmiles(text) if text else None for text in smiles) if mol is not None]


def fingerprints(mols: Sequence) -> np.ndarray:
    """``(M, 1024)`` uint8 Morgan fingerprints (radius 2) of RDKit molecules."""
    from rdkit.Chem import rdFingerprintGenerator

    generator = rdFingerprintGenerator.GetMorganGenerator(radius=FINGERPRINT_RADIUS, fpSize=FINGERPRINT_BITS)
    prints = [generator.GetFingerprintAsNumPy(mol) for mol in mols]
    return np.array(prints, dtype=np.uint8).reshape(-1, FINGERPRINT_BITS)


def tanimoto_blocks(a: np.ndarray, b: np.ndarray):
    """Yields ``(rows, similarities (len(rows), len(b)))``: the Tanimoto similarities of the
    fingerprints ``a[rows]`` to all of ``b``, a block of rows at a time (1 for two empty prints)."""
    left, right = a.astype(np.float32), b.astype(np.float32)
    bits_left, bits_right = left.sum(1), right.sum(1)
    step = max(1, PAIRS_PER_BLOCK // max(len(b), 1))
    for start in range(0, len(a), step):
        rows = slice(start, start + step)
        common = left[rows] @ right.T
        union = bits_left[rows, None] + bits_right[None, :] - common
        yield rows, np.divide(common, union, out=np.ones_like(common), where=union > 0)


def nearest_similarity(samples: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(M,)``: each sample's largest Tanimoto similarity to a reference fingerprint."""
    best = np.zeros(len(samples))
    for rows, similarity in tanimoto_blocks(samples, reference):
        best[rows] = similarity.max(1)
    return best


def internal_diversity(prints: np.ndarray, power: int) -> float:
    """``1 - mean_i (mean_j T_ij^p)^(1/p)`` over the samples' fingerprints (``j`` includes ``i``)."""
    means = np.zeros(len(prints))
    for rows, similarity in tanimoto_blocks(prints, prints):
        means[rows] = (similarity.astype(np.float64) ** power).mean(1) ** (1 / power)
    return float(1 - means.mean())


def fragments(mols: Sequence) -> Counter:
    """How often each BRICS fragment (canonical SMILES, with its attachment points) occurs."""
    Chem = chem.rdkit()
    found: Counter = Counter()
    for mol in mols:
        found.update(Chem.MolToSmiles(Chem.FragmentOnBRICSBonds(mol)).split("."))
    return found


def scaffolds(mols: Sequence, min_rings: int = 2) -> Counter:
    """How often each Bemis-Murcko scaffold of at least ``min_rings`` rings occurs."""
    from rdkit.Chem.Scaffolds import MurckoScaffold

    Chem = chem.rdkit()
    found: Counter = Counter()
    for mol in mols:
        try:
            scaffold = MurckoScaffold.GetScaffoldForMol(mol)
        except (ValueError, RuntimeError):
            continue
        if scaffold.GetRingInfo().NumRings() >= min_rings:
            found[Chem.MolToSmiles(scaffold)] += 1
    return found


def cosine_similarity(a: Counter, b: Counter) -> float:
    """The cosine similarity of two count vectors over their keys (NaN when one is empty)."""
    keys = sorted(set(a) | set(b))
    left = np.array([a.get(key, 0) for key in keys], dtype=np.float64)
    right = np.array([b.get(key, 0) for key in keys], dtype=np.float64)
    norm = np.linalg.norm(left) * np.linalg.norm(right)
    return float(left @ right / norm) if norm else math.nan


def passes_filters(mol) -> bool:
    """Whether a molecule passes the filters of the MOSES data set (see the module docstring)."""
    Chem = chem.rdkit()
    if any(len(ring) > LARGEST_RING for ring in mol.GetRingInfo().AtomRings()):
        return False
    if any(atom.GetFormalCharge() or atom.GetSymbol() not in ALLOWED_ELEMENTS for atom in mol.GetAtoms()):
        return False
    with_hydrogens = Chem.AddHs(mol)
    if any(with_hydrogens.HasSubstructMatch(pattern) for pattern in _mcf_patterns()):
        return False
    return not _pains().HasMatch(with_hydrogens)


@functools.lru_cache(maxsize=1)
def _mcf_patterns() -> tuple:
    Chem = chem.rdkit()
    return tuple(Chem.MolFromSmarts(smarts) for smarts in MCF_SMARTS)


@functools.lru_cache(maxsize=1)
def _pains():
    from rdkit.Chem import FilterCatalog

    params = FilterCatalog.FilterCatalogParams()
    params.AddCatalog(FilterCatalog.FilterCatalogParams.FilterCatalogs.PAINS)
    return FilterCatalog.FilterCatalog(params)
