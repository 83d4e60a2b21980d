"""Writing generated molecules: a SMILES file, an SDF and a grid picture.

Every sample gets a line in the SMILES file, in order: the canonical SMILES when RDKit sanitises
the molecule, otherwise the molecule written as it stands, which RDKit refuses to read back for
the same reason. So the file alone is enough to score strict validity later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import Tensor

from diffkit.kit import Output, check_new, write_new

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


def smiles_lines(mols: list, clean: list | None = None) -> list[str]:
    """A line per molecule (see the module's docstring); ``clean`` holds their sanitised copies
    (``None`` where RDKit rejects one) when the caller has them already."""
    if clean is None:
        clean = [chem.sanitized(mol) for mol in mols]
    return [chem.canonical_smiles(good) if good is not None else chem.raw_smiles(mol)
            for mol, good in zip(mols, clean)]


def write_molecules(mols: list, out: Path) -> list[Output]:
    """``out`` ending in .smi, .sdf or .png writes that file; any other path is a folder that
    receives ``samples.smi``, ``samples.sdf`` (when a molecule is valid) and ``grid.png``.
    Existing files are never replaced: nothing is written when one of them exists."""
    suffix = out.suffix.lower()
    if suffix in WRITERS:
        targets = [out]
    elif suffix:
        raise ValueError(f"--out {str(out)!r}: a molecule output is a .smi, .sdf or .png file, or a folder")
    else:
        targets = [out / "samples.smi", out / "samples.sdf", out / "grid.png"]
    check_new(targets)
    clean = [chem.sanitized(mol) for mol in mols]
    if not suffix and not any(mol is not None for mol in clean):
        targets.remove(out / "samples.sdf")  # an SDF holds valid molecules only: none here
    written = []
    for path in targets:
        encode, kind, role = ENCODERS[path.suffix.lower()]
        write_new(path, encode(mols, clean))
        written.append(Output(path, kind, role))
    return written


# Each encoder takes the molecules and their sanitised copies (None where RDKit rejects one).

def _smiles_file(mols: list, clean: list) -> bytes:
    return "".join(line + "\n" for line in smiles_lines(mols, clean)).encode()


def _sdf_file(mols: list, clean: list) -> bytes:
    """Valid molecules with 2D coordinates; invalid ones are left out (their SMILES file line says why)."""
    import io

    Chem = chem.rdkit()
    from rdkit.Chem import AllChem

    text = io.StringIO()
    with Chem.SDWriter(text) as writer:
        for index, mol in enumerate(clean):
            if mol is None:
                continue
            mol = Chem.Mol(mol)  # coordinates and a name go on a copy
            AllChem.Compute2DCoords(mol)
            mol.SetProp("_Name", f"sample_{index}")
            writer.write(mol)
    return text.getvalue().encode()


def as_it_stands(mol):
    """A copy of a molecule that may not sanitise, usable as it stands (valences unchecked, rings
    found): for drawing, and for substructure searches of the graph as generated."""
    Chem = chem.rdkit()
    mol = Chem.Mol(mol)
    mol.UpdatePropertyCache(strict=False)
    Chem.FastFindRings(mol)
    return mol


def _grid_picture(mols: list, clean: list) -> bytes:
    """The first molecules in a grid (one row for a short strip, e.g. an interpolation), as PNG."""
    import io

    from rdkit.Chem import Draw

    shown, clean = mols[:GRID_LIMIT], clean[:GRID_LIMIT]
    legends = [chem.canonical_smiles(m) if m is not None else "invalid" for m in clean]
    cells = [m if m is not None else as_it_stands(raw) for m, raw in zip(clean, shown)]
    per_row = len(shown) if len(shown) <= 10 else 8
    try:
        image = Draw.MolsToGridImage(cells, molsPerRow=per_row, subImgSize=(200, 200), legends=legends)
    except RuntimeError:  # RDKit cannot lay out some invalid graphs (atoms on top of each other)
        for index, cell in enumerate(cells):
            if not _can_draw(cell):
                cells[index], legends[index] = chem.rdkit().Mol(), "invalid (not drawable)"
        image = Draw.MolsToGridImage(cells, molsPerRow=per_row, subImgSize=(200, 200), legends=legends)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _can_draw(mol) -> bool:
    from rdkit.Chem import Draw

    try:
        Draw.MolToImage(mol, size=(50, 50))
    except RuntimeError:
        return False
    return True


#: suffix -> (encoder, Output kind, Output role)
ENCODERS = {".smi": (_smiles_file, "molecules", "samples"), ".sdf": (_sdf_file, "molecules", "samples"),
            ".png": (_grid_picture, "image", "overview")}
