"""QM9 (Ramakrishnan et al. 2014) through the ``qm9pack`` package: the full set for ``--data qm9``
and the recipe of the subset bundled with the plugin."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

from .chem import canonical_smiles, rdkit

QM9_PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")


def qm9_smiles() -> list[str]:
    """The SMILES of all QM9 molecules, in QM9's order (about 131,000)."""
    import csv

    folder = qm9pack_data_folder()
    smiles: list[str] = []
    for part in QM9_PARTS:
        with open(folder / part, encoding="utf-8", newline="") as file:
            smiles.extend(row["SMILES"] for row in csv.DictReader(file))
    return smiles


def qm9pack_data_folder() -> Path:
    """Where qm9pack keeps its CSV files. Found without importing qm9pack, whose import needs
    pkg_resources (absent from recent setuptools); only its data files are read."""
    from importlib.util import find_spec

    spec = find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("--data qm9 needs the qm9pack package, which holds QM9: "
                          "pip install 'diffkit[qm9]' (or pip install qm9pack)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    missing = [part for part in QM9_PARTS if not (folder / part).is_file()]
    if missing:
        raise FileNotFoundError(f"qm9pack is installed but {folder / missing[0]} is missing; reinstall qm9pack")
    return folder


def qm9_file(cache_dir: Path) -> Path:
    """QM9's SMILES written once to a plain file in ``cache_dir`` (the dataset reads files)."""
    path = cache_dir / "qm9_all.smi"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text("".join(s + "\n" for s in qm9_smiles()))
        temporary.replace(path)
    return path


def write_subset(destination: Path, size: int, seed: int = 0) -> int:
    """The bundled subset: ``size`` QM9 molecules drawn at random with ``seed``, written as
    canonical SMILES without stereochemistry, gzip-compressed. Returns the number written."""
    Chem = rdkit()
    everything = qm9_smiles()
    chosen = random.Random(seed).sample(range(len(everything)), size)
    lines = []
    for index in sorted(chosen):
        mol = Chem.MolFromSmiles(everything[index])
        if mol is not None:
            lines.append(canonical_smiles(mol))
    if destination.exists():
        raise FileExistsError(f"{str(destination)!r} exists; remove it first to rebuild the subset")
    with gzip.open(destination, "wt", encoding="utf-8", compresslevel=9) as file:
        file.write("".join(line + "\n" for line in lines))
    return len(lines)


if __name__ == "__main__":  # python -m diffkit_molecule.qm9 DEST SIZE
    import sys

    written = write_subset(Path(sys.argv[1]), int(sys.argv[2]))
    print(f"wrote {written} molecules to {sys.argv[1]}")
