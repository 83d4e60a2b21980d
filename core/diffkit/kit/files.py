"""Writing files: atomically (a crash leaves the old file or the new one, never half of one), and
for outputs the user asked for, never over an existing file.

Writers of samples return :class:`Output` records: the path, what the file holds (``kind``) and
whether it holds samples or an overview of them (``role``). The runner and TensorBoard use these
records rather than guessing from file names.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

#: What an output file holds.
KINDS = ("image", "audio", "table", "molecules", "data")
#: The samples themselves (one or many a file), or an overview of them (e.g. a grid picture).
ROLES = ("samples", "overview")


@dataclass(frozen=True)
class Output:
    """A file written by a domain's writer.

    ``content`` optionally holds what was written in memory, for previews: an ``(H, W, 3)`` or
    ``(H, W)`` uint8 array for images, a ``(T,)`` float array for audio (with ``sample_rate``).
    """

    path: Path
    kind: str = "data"
    role: str = "samples"
    content: Any = None
    sample_rate: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Output kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.role not in ROLES:
            raise ValueError(f"Output role must be one of {', '.join(ROLES)}, got {self.role!r}")

    def __fspath__(self) -> str:
        return str(self.path)


class OutputExistsError(FileExistsError):
    """An output would replace a file that exists; nothing was written."""


def check_new(paths: Iterable[str | Path]) -> None:
    """Refuse, before anything is written, when any of ``paths`` exists already."""
    existing = [str(path) for path in paths if Path(path).exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputExistsError(f"{existing[0]!r}{more} already exists; outputs are never overwritten: "
                                "choose another --out or remove it")


#: What :func:`check_writable` raises.
UNWRITABLE = (NotADirectoryError, PermissionError)


def check_writable(path: str | Path, what: str) -> None:
    """Refuse, before any work is done, an output ``path`` that cannot be written: the nearest
    part of it that exists must be a folder that accepts new files (an existing file is left to
    the caller's rule about overwriting). The error (one of :data:`UNWRITABLE`) names ``what``
    (e.g. ``--out``), the path and the folder that refuses it."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot write to {what} {str(path)!r}: {str(folder)!r} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise PermissionError(f"cannot write to {what} {str(path)!r}: the folder {str(folder)!r} does not accept "
                              f"new files ({error.strerror or error})") from None


def write_atomic(path: str | Path, write: Callable[[Any], None] | bytes, *, exclusive: bool = False) -> Path:
    """Write a file through a temporary file beside it, flushed to disk, then moved into place.

    ``write`` is the content (bytes) or a function that writes to a binary file object. With
    ``exclusive`` the file must not exist: :class:`OutputExistsError` then, and nothing changes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; a new file gets the usual rights
    try:
        with os.fdopen(handle, "wb") as file:
            if isinstance(write, (bytes, bytearray, memoryview)):
                file.write(write)
            else:
                write(file)
            file.flush()
            os.fsync(file.fileno())
        if exclusive:
            _link_new(temporary, path)
        else:
            os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


def write_new(path: str | Path, write: Callable[[Any], None] | bytes) -> Path:
    """:func:`write_atomic` of an output: never replaces an existing file."""
    return write_atomic(path, write, exclusive=True)


def save_torch_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`write_atomic`."""
    import torch

    return write_atomic(path, lambda file: torch.save(obj, file))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def temporary_files(folder: str | Path, name_pattern: str = "*") -> list[Path]:
    """Temporary files that :func:`write_atomic` left in ``folder`` when its process was killed."""
    folder = Path(folder)
    return sorted(folder.glob(f".{name_pattern}.*.tmp")) if folder.is_dir() else []


def _link_new(temporary: str, path: Path) -> None:
    """Give the finished temporary file its name, failing if the name is taken (a hard link is
    created atomically and never replaces; where links are not supported, exclusive creation)."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise OutputExistsError(f"{str(path)!r} already exists; outputs are never overwritten: "
                                "choose another --out or remove it") from None
    except OSError:  # a file system without hard links
        try:
            with open(path, "xb") as target, open(temporary, "rb") as source:
                target.write(source.read())
        except FileExistsError:
            raise OutputExistsError(f"{str(path)!r} already exists; outputs are never overwritten: "
                                    "choose another --out or remove it") from None


def numbered_names(stem: str, count: int, suffix: str, labels: Sequence[str] | None = None) -> list[str]:
    """The file names of ``count`` samples: ``{stem}-00000{suffix}``, ... (or
    ``{stem}-00000-{label}{suffix}`` with ``labels``), numbered with at least five digits and
    all with the same number of digits, so that their sorted order is the samples' order."""
    if labels is not None and len(labels) != count:
        raise ValueError(f"{count} samples but {len(labels)} labels")
    width = max(5, len(str(count - 1)))
    tails = [f"-{label}" for label in labels] if labels is not None else [""] * count
    return [f"{stem}-{index:0{width}d}{tail}{suffix}" for index, tail in enumerate(tails)]


def outputs_of(written: Sequence[Output | str | Path]) -> list[Output]:
    """Writers' results as :class:`Output` records (plain paths become ``kind="data"``)."""
    return [item if isinstance(item, Output) else Output(Path(item)) for item in written]
