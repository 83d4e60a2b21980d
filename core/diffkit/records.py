"""The record of how samples were made, written beside them by ``diffkit sample``.

A folder of samples gets ``samples.json`` (``samples-2.json`` and so on when the folder already
holds a record); a file ``mols.smi`` gets ``mols.smi.json``.
A record is never overwritten. It holds everything needed to draw the same samples again (the seed,
the checkpoint, the settings) and the files it describes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECORD_NAME = "samples"


def record_path(out: str | Path) -> Path:
    """Where the record of samples written to ``out`` goes; refuses a file output whose record exists.

    ``out`` is a folder when it exists as one or has no suffix (as the domains read it)."""
    out = Path(out)
    if out.is_dir() or not out.suffix:
        return _first_free(out)
    path = out.with_name(out.name + ".json")
    if path.exists():
        raise FileExistsError(f"{str(path)!r} already exists (the record of earlier samples); "
                              "choose another --out or remove it")
    return path


def write_record(path: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as JSON to ``path``, which must not exist yet. It is standard JSON: a value
    that is not a finite number (which the options refuse before sampling) is an error here."""
    try:
        text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise ValueError(f"the sample record {str(path)!r} was not written: it holds a number that is not finite, "
                         "which JSON cannot hold") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x") as file:
            file.write(text)
    except FileExistsError:
        raise FileExistsError(f"{str(path)!r} already exists; the sample record was not written") from None
    return path


def read_record(samples: str | Path) -> dict[str, Any] | None:
    """The record of the samples at ``samples`` (a folder or a file), or None when there is none,
    or when a folder holds several (samples of several runs, which no single record describes)."""
    samples = Path(samples)
    if samples.is_dir():
        found = sorted(samples.glob(f"{RECORD_NAME}*.json"))
        path = found[0] if len(found) == 1 else None
    else:
        path = samples.with_name(samples.name + ".json")
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"the sample record {str(path)!r} is not valid JSON: {error}") from None


def _first_free(folder: Path) -> Path:
    index = 1
    while True:
        name = f"{RECORD_NAME}.json" if index == 1 else f"{RECORD_NAME}-{index}.json"
        if not (folder / name).exists():
            return folder / name
        index += 1
