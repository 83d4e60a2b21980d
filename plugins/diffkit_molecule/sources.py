"""Reading molecules from files: SMILES lists (.smi, .txt), CSV tables (a SMILES column), SDF;
each optionally gzip-compressed. Readers yield ``(where, text, mol or None)``: where the entry is
in the file (its line, or its record in an SDF file; see :func:`entry_unit`), and ``None`` for
an entry RDKit cannot parse, so that callers can count it and say where it is.

:func:`entry_tasks` cuts a file into tasks for worker processes that parse the entries
themselves: a plain SMILES file into line ranges each worker reads, other files into lists of
entries read here."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator, Union

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


def entry_unit(path: Path) -> str:
    """What the ``where`` of :func:`read_molecules` counts in this file: ``"line"`` or ``"record"``."""
    return "record" if format_of(path) == ".sdf" else "line"


def read_molecules(path: str | Path, smiles_column: str = "smiles") -> Iterator[tuple[int, str, object]]:
    """``(where, text, mol)`` for every entry of a molecule file: ``where`` is its line (1-based;
    in a CSV file the line where its row ends) or its record in an SDF file; ``mol`` is ``None``
    when unparsable."""
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
    entries = _csv_smiles(path, smiles_column) if kind == ".csv" else _smiles_lines(path)
    return [text for _, text in entries]


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def _smiles_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, first whitespace-separated field)`` of each non-empty, non-comment line."""
    with _open_text(path) as file:
        yield from _first_fields(enumerate(file, start=1))


def _csv_smiles(path: Path, column: str) -> Iterator[str]:
    with _open_text(path) as file:
        reader = csv.DictReader(file)
        header = reader.fieldnames or []
        matches = [name for name in header if name.strip().lower() == column.lower()]
        if not matches:
            raise ValueError(f"{str(path)!r} has no column {column!r} (columns: {', '.join(header)}); "
                             "set data.smiles_column")
        for row in reader:
            yield reader.line_num, (row[matches[0]] or "").strip()


def _parse_all(entries: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str, object]]:
    Chem = rdkit()
    for where, text in entries:
        yield where, text, Chem.MolFromSmiles(text) if text else None


def _read_sdf(path: Path) -> Iterator[tuple[int, str, object]]:
    Chem = rdkit()
    if path.name.lower().endswith(".gz"):
        supplier = Chem.ForwardSDMolSupplier(gzip.open(path, "rb"), removeHs=False)
    else:
        supplier = Chem.ForwardSDMolSupplier(str(path), removeHs=False)
    for index, mol in enumerate(supplier):
        yield index + 1, f"{path.name}#{index}", mol


#: What a task holds of an entry: SMILES text, an RDKit molecule's binary form (SDF), or None
#: (an SDF record RDKit could not read).
Payload = Union[str, bytes, None]


@dataclass(frozen=True)
class LineRange:
    """The lines of a plain SMILES file in bytes ``start .. end``, the first being line
    ``first_line``, read by whoever parses them."""

    path: str
    start: int
    end: int
    first_line: int

    def entries(self) -> Iterator[tuple[int, Payload]]:
        with open(self.path, "rb") as file:
            file.seek(self.start)
            text = file.read(self.end - self.start).decode("utf-8")
        yield from _first_fields(enumerate(io.StringIO(text, newline=""), start=self.first_line))


@dataclass(frozen=True)
class EntryList:
    """Entries read from the file already: ``(where, payload)`` pairs."""

    items: tuple[tuple[int, Payload], ...]

    def entries(self) -> Iterator[tuple[int, Payload]]:
        return iter(self.items)


def entry_tasks(path: str | Path, per_task: int, smiles_column: str = "smiles") -> Iterator[LineRange | EntryList]:
    """A molecule file cut into tasks of ``per_task`` lines (plain SMILES files) or entries (the
    rest), in file order; each task's ``entries()`` gives ``(where, payload)`` as
    :func:`read_molecules` would, before parsing (see :func:`parse_payload`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"molecule file {str(path)!r} does not exist")
    kind = format_of(path)
    if kind in SMILES_SUFFIXES and not path.name.lower().endswith(".gz"):
        yield from _line_ranges(path, per_task)
        return
    if kind == ".sdf":
        entries = ((where, mol.ToBinary() if mol is not None else None) for where, _, mol in _read_sdf(path))
    else:
        entries = _csv_smiles(path, smiles_column) if kind == ".csv" else _smiles_lines(path)
    while batch := tuple(itertools.islice(entries, per_task)):
        yield EntryList(batch)


def parse_payload(payload: Payload):
    """The RDKit molecule of a task's entry, or None when it does not parse."""
    Chem = rdkit()
    if isinstance(payload, bytes):
        return Chem.Mol(payload)
    return Chem.MolFromSmiles(payload) if payload else None


def _line_ranges(path: Path, per_task: int) -> Iterator[LineRange]:
    """Byte ranges of ``per_task`` lines each, split where the text reader splits lines."""
    start = position = 0
    number = 0
    with _open_text(path) as file:
        for number, line in enumerate(file, start=1):
            position += len(line.encode("utf-8"))
            if number % per_task == 0:
                yield LineRange(str(path), start, position, number - per_task + 1)
                start = position
    if position > start:
        yield LineRange(str(path), start, position, number - (number % per_task) + 1)


def _first_fields(lines) -> Iterator[tuple[int, str]]:
    for number, line in lines:
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            yield number, fields[0]
