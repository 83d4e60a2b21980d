"""Writing generated molecules: a SMILES file, an SDF and a grid picture.

Every sample gets a line in the SMILES file, in order: the canonical SMILES when RDKit sanitises
the molecule, otherwise the molecule written as it stands, which RDKit refuses to read back for
the same reason. So the file alone is enough to score strict validity later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import Tensor

from . import chem

WRITERS = (".smi", ".sdf", ".png")
GRID_LIMIT = 64  # molecules drawn in a grid picture


def molecules_from_graphs(atoms: Tensor, bonds: Tensor, vocabulary: Sequence[str]) -> list:
    """Unsanitised RDKit molecules of ``atoms (B, N)`` (-1 = padding) and ``bonds (B, N, N)``."""
    mols = []
    for row_atoms, row_bonds in zip(atoms, bonds):
        real = (row_atoms >= 0).nonzero().flatten()
        mols.append(chem.graph_to_mol(row_atoms[real], row_bonds[real][:, real], vocabulary))
    return mols


def smiles_lines(mols: list) -> list[str]:
    lines = []
    for mol in mols:
        clean = chem.sanitized(mol)
        lines.append(chem.canonical_smiles(clean) if clean is not None else chem.raw_smiles(mol))
    return lines


def write_molecules(mols: list, out: Path) -> list[Path]:
    """``out`` ending in .smi, .sdf or .png writes that file; any other path is a folder that
    receives ``samples.smi``, ``samples.sdf`` (when a molecule is valid) and ``grid.png``.
    Existing files are never replaced."""
    suffix = out.suffix.lower()
    if suffix in WRITERS:
        targets = [out]
    elif suffix:
        raise ValueError(f"--out {str(out)!r}: a molecule output is a .smi, .sdf or .png file, or a folder")
    else:
        targets = [out / "samples.smi", out / "samples.sdf", out / "grid.png"]
        if not any(chem.sanitized(mol) is not None for mol in mols):
            targets.remove(out / "samples.sdf")  # an SDF holds valid molecules only: none here
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise FileExistsError(f"{existing[0]} already exists; choose another --out or remove it")
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        {".smi": _write_smiles, ".sdf": _write_sdf, ".png": _write_grid}[path.suffix.lower()](mols, path)
    return targets


def _write_smiles(mols: list, path: Path) -> None:
    path.write_text("".join(line + "\n" for line in smiles_lines(mols)))


def _write_sdf(mols: list, path: Path) -> None:
    """Valid molecules with 2D coordinates; invalid ones are left out (their SMILES file line says why)."""
    Chem = chem.rdkit()
    from rdkit.Chem import AllChem

    with Chem.SDWriter(str(path)) as writer:
        for index, mol in enumerate(mols):
            clean = chem.sanitized(mol)
            if clean is None:
                continue
            AllChem.Compute2DCoords(clean)
            clean.SetProp("_Name", f"sample_{index}")
            writer.write(clean)


def _drawable(mol):
    """An unsanitisable molecule made drawable as it stands (valences unchecked, rings found)."""
    Chem = chem.rdkit()
    mol = Chem.Mol(mol)
    mol.UpdatePropertyCache(strict=False)
    Chem.FastFindRings(mol)
    return mol


def _write_grid(mols: list, path: Path) -> None:
    """The first molecules in a grid (one row for a short strip, e.g. an interpolation)."""
    from rdkit.Chem import Draw

    shown = mols[:GRID_LIMIT]
    clean = [chem.sanitized(mol) for mol in shown]
    legends = [chem.canonical_smiles(m) if m is not None else "invalid" for m in clean]
    cells = [m if m is not None else _drawable(raw) for m, raw in zip(clean, shown)]
    per_row = len(shown) if len(shown) <= 10 else 8
    image = Draw.MolsToGridImage(cells, molsPerRow=per_row, subImgSize=(200, 200), legends=legends)
    image.save(path)
