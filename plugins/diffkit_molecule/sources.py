"""Reading molecules from files: SMILES lists (.smi, .txt), CSV tables (a SMILES column), SDF;
each optionally gzip-compressed. Readers yield ``(text, mol or None)``: an entry RDKit cannot parse
comes out as ``None`` so that callers can count it."""

from __future__ import annotations

import csv
import gzip
import io
from importlib import resources
from pathlib import Path
from typing import Iterator

from .chem import rdkit

SMILES_SUFFIXES = (".smi", ".smiles", ".txt")
SUPPORTED = SMILES_SUFFIXES + (".csv", ".sdf")
BUNDLED_NAME = "qm9_subset.smi.gz"


def bundled_path() -> Path:
    """The QM9 subset shipped with the plugin (see data/README.md for its origin)."""
    return Path(str(resources.files("diffkit_molecule") / "data" / BUNDLED_NAME))


def format_of(path: Path) -> str:
    """The reader for ``path`` from its suffix, ignoring a trailing ``.gz``."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix in SUPPORTED:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{str(path)!r}: unsupported molecule file; expected one of "
                     f"{', '.join(SUPPORTED)} (optionally .gz)")


def read_molecules(path: str | Path, smiles_column: str = "smiles") -> Iterator[tuple[str, object]]:
    """``(text, mol)`` for every entry of a molecule file; ``mol`` is ``None`` when unparsable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"molecule file {str(path)!r} does not exist")
    kind = format_of(path)
    if kind == ".sdf":
        yield from _read_sdf(path)
    elif kind == ".csv":
        yield from _parse_all(_csv_smiles(path, smiles_column))
    else:
        yield from _parse_all(_smiles_lines(path))


def read_smiles_texts(path: str | Path, smiles_column: str = "smiles") -> list[str]:
    """The raw SMILES strings of a SMILES or CSV file (no parsing), e.g. generated samples."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"molecule file {str(path)!r} does not exist")
    kind = format_of(path)
    if kind == ".sdf":
        raise ValueError(f"{str(path)!r}: expected a SMILES file here, not SDF")
    return list(_csv_smiles(path, smiles_column) if kind == ".csv" else _smiles_lines(path))


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def _smiles_lines(path: Path) -> Iterator[str]:
    """The first whitespace-separated field of each non-empty, non-comment line."""
    with _open_text(path) as file:
        for line in file:
            fields = line.split()
            if fields and not fields[0].startswith("#"):
                yield fields[0]


def _csv_smiles(path: Path, column: str) -> Iterator[str]:
    with _open_text(path) as file:
        reader = csv.DictReader(file)
        header = reader.fieldnames or []
        matches = [name for name in header if name.strip().lower() == column.lower()]
        if not matches:
            raise ValueError(f"{str(path)!r} has no column {column!r} (columns: {', '.join(header)}); "
                             "set data.smiles_column")
        for row in reader:
            yield (row[matches[0]] or "").strip()


def _parse_all(texts: Iterator[str]) -> Iterator[tuple[str, object]]:
    Chem = rdkit()
    for text in texts:
        yield text, Chem.MolFromSmiles(text) if text else None


def _read_sdf(path: Path) -> Iterator[tuple[str, object]]:
    Chem = rdkit()
    if path.name.lower().endswith(".gz"):
        supplier = Chem.ForwardSDMolSupplier(gzip.open(path, "rb"), removeHs=False)
    else:
        supplier = Chem.ForwardSDMolSupplier(str(path), removeHs=False)
    for index, mol in enumerate(supplier):
        yield f"{path.name}#{index}", mol
