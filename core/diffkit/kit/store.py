"""Decoded data sets on disk, read through memory maps.

A domain decodes its files once (pictures to pixels, SMILES to graphs) into a *store*: a folder
in the cache, named by a key of everything that shapes its content, holding one NumPy ``.npy``
file per field. Every process that trains on it maps those files read-only, so the decoded data
live once in the page cache of the machine, shared by torchrun's processes and their DataLoader
workers, and a set larger than memory is paged in as it is read; a process's own memory does not
grow with the set.

Decoding runs in worker processes, shard by shard: ``decode(task)`` turns one task (e.g. a list
of files) into its items, each a dict of arrays, or :class:`Skip` for an entry that cannot be
used, which the store keeps so that the warning naming it is given again on every start that
reads the store. A field is *fixed* (every item's array has one shape: stored as ``(N, ...)``) or
*variable* (items' arrays differ in their first dimension: stored as the concatenated values and
``N + 1`` offsets). Finished shards survive an interrupted fill and are not decoded again; the
store appears under its name whole, or not at all. One process fills a store while the others
(other ranks, other runs) wait for it on a file lock.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .files import write_atomic

#: Bump when the layout changes: stores of another format are filled again.
FORMAT = 1
MANIFEST = "store.json"
#: Tasks in flight per worker process: enough to keep each busy, few enough to bound the memory
#: that tasks waiting in the queue hold.
TASKS_PER_WORKER = 2


@dataclass(frozen=True)
class Skip:
    """An entry that cannot be used, and why (e.g. ``"cats/a.png (UnidentifiedImageError)"``);
    ``where`` optionally says where it is (e.g. its line in a file)."""

    reason: str
    where: int | None = None


class ItemStore:
    """The items of a filled store (see the module docstring), memory-mapped when first read.

    ``meta`` is what the filler recorded about the set (e.g. class names); ``skipped`` the
    :class:`Skip` entries of the fill, in the order of the tasks. A store pickles as its folder
    (a DataLoader worker maps the files again instead of receiving a copy)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = json.loads((self.folder / MANIFEST).read_text())
        self.count: int = manifest["count"]
        self.fields: dict[str, dict] = manifest["fields"]
        self.meta: dict = manifest["meta"]
        self.skipped = [Skip(reason, where) for reason, where in manifest["skipped"]]
        self._arrays: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"ItemStore({str(self.folder)!r}, {self.count} items, fields {', '.join(self.fields)})"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    def array(self, name: str) -> np.ndarray:
        """A fixed field ``(N, ...)``, or a variable field's values (all items' concatenated)."""
        return self._opened()[name]

    def offsets(self, name: str) -> np.ndarray:
        """``(N + 1,)``: item ``i`` of a variable field is ``values[offsets[i]:offsets[i + 1]]``."""
        return self._opened()[f"{name}.offsets"]

    def item(self, name: str, index: int) -> np.ndarray:
        """One item's array of a field (a view into the mapped file)."""
        if self.fields[name]["variable"]:
            offsets = self.offsets(name)
            return self.array(name)[offsets[index]:offsets[index + 1]]
        return self.array(name)[index]

    def lengths(self, name: str) -> np.ndarray:
        """``(N,)``: the first dimension of each item of a variable field."""
        return np.diff(self.offsets(name))

    def _opened(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {path.name[:-len(".npy")]: map_array(path) for path in self.folder.glob("*.npy")}
        return self._arrays


def open_store(folder: str | Path, tasks: Iterable, decode: Callable[[Any], Iterable[dict | Skip]], *,
               variable: Iterable[str] = (), meta: dict | None = None, workers: int | None = None,
               total: int | None = None, description: str = "decoding") -> ItemStore:
    """The store in ``folder``, filled first when it is not there (see the module docstring).

    ``tasks`` are picklable descriptions of the shards, in order (a generator is fine: only a few
    are held at a time); ``decode(task)`` yields their items (dicts of NumPy arrays with the same
    keys and dtypes) or :class:`Skip` entries. ``variable`` names the fields whose items differ in
    their first dimension. ``workers`` processes decode (default: one per CPU this process may
    use); ``total`` (the number of tasks; by default ``len(tasks)`` where it has one) and
    ``description`` label the progress bar, shown on a terminal. ``decode`` must be picklable (a module-level function or a ``functools.partial`` of
    one). An error ``decode`` raises stops the fill and is raised here; the shards finished by
    then are kept for the next try."""
    folder = Path(folder)
    if _complete(folder):
        return ItemStore(folder)
    if total is None and hasattr(tasks, "__len__"):
        total = len(tasks)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.parent / f".{folder.name}.lock"):
        if not _complete(folder):  # another process may have filled it while this one waited
            _fill(folder, tasks, decode, set(variable), meta or {}, workers or available_cpus(), total, description)
    return ItemStore(folder)


def in_shards(items: Sequence, size: int) -> list[Sequence]:
    """``items`` cut into tasks of ``size`` each (the last may hold fewer), for :func:`open_store`."""
    return [items[start:start + size] for start in range(0, len(items), size)]


def available_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _complete(folder: Path) -> bool:
    manifest = folder / MANIFEST
    return manifest.is_file() and json.loads(manifest.read_text()).get("format") == FORMAT


# -- filling ------------------------------------------------------------------------------------

def _fill(folder: Path, tasks: Iterable, decode: Callable, variable: set[str], meta: dict, workers: int,
          total: int | None, description: str) -> None:
    if folder.exists():  # a store of another format
        shutil.rmtree(folder)
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(exist_ok=True)
    done = {int(path.name.split(".")[0]) for path in partial.glob("*.shard.json")}
    from tqdm.auto import tqdm

    with tqdm(total=total, initial=len(done), desc=description, unit="shard", disable=None) as bar:
        pending = ((number, task) for number, task in enumerate(tasks) if number not in done)
        shards = len(done) + _run(pending, decode, partial, variable, workers, bar)
    _join(partial, shards, variable, meta)
    partial.rename(folder)


def _run(pending: Iterator[tuple[int, Any]], decode: Callable, partial: Path, variable: set[str], workers: int,
         bar) -> int:
    """Decode the pending shards in ``workers`` processes (here, for one); how many were done."""
    count = 0
    if workers <= 1:
        for number, task in pending:
            _decode_shard(decode, task, partial, number, variable)
            count += 1
            bar.update(1)
        return count
    with _process_pool(workers) as pool:
        running: set = set()
        for number, task in pending:
            running.add(pool.submit(_decode_shard, decode, task, partial, number, variable))
            if len(running) >= workers * TASKS_PER_WORKER:
                count += _collect(running, bar, concurrent.futures.FIRST_COMPLETED)
        count += _collect(running, bar, concurrent.futures.ALL_COMPLETED)
    return count


def _collect(running: set, bar, when: str) -> int:
    finished, _ = concurrent.futures.wait(running, return_when=when)
    for future in finished:
        future.result()  # a worker's error is raised here
        running.discard(future)
        bar.update(1)
    return len(finished)


@contextlib.contextmanager
def _process_pool(workers: int) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    import multiprocessing

    from ..workers import can_fork

    # Forked workers start at once; elsewhere they are spawned (decode must be importable).
    context = multiprocessing.get_context("fork" if can_fork() else "spawn")
    with warnings.catch_warnings():
        # Python 3.12+ warns on any fork of a threaded process; the workers only decode data and
        # take none of the locks the parent's idle threads could hold.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork.*")
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread)
        try:
            yield pool
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def _one_thread() -> None:
    """Workers decode one item at a time: intra-op threads would only compete with each other."""
    import torch

    torch.set_num_threads(1)


def _decode_shard(decode: Callable, task: Any, partial: Path, number: int, variable: set[str]) -> None:
    """Decode one task into the shard files ``partial/<number>.<field>.npy`` (and
    ``.<field>.offsets.npy``); its ``.shard.json``, written last, says it is complete."""
    items, skipped = [], []
    for result in decode(task):
        if isinstance(result, Skip):
            skipped.append([result.reason, result.where])
        else:
            items.append(result)
    fields = {}
    if items:
        names = sorted(items[0])
        for name in names:
            arrays = [np.asarray(item[name]) for item in items]
            if name in variable:
                _save(partial / f"{number:06d}.{name}.npy", np.concatenate(arrays))
                lengths = np.array([len(array) for array in arrays], dtype=np.int64)
                _save(partial / f"{number:06d}.{name}.lengths.npy", lengths)
            else:
                _save(partial / f"{number:06d}.{name}.npy", np.stack(arrays))
            fields[name] = {"variable": name in variable}
    summary = {"count": len(items), "fields": fields, "skipped": skipped}
    write_atomic(partial / f"{number:06d}.shard.json", json.dumps(summary).encode())


def _save(path: Path, array: np.ndarray) -> None:
    write_atomic(path, lambda file: np.save(file, array, allow_pickle=False))


def _join(partial: Path, shards: int, variable: set[str], meta: dict) -> None:
    """Concatenate the shards' fields into one file each (streamed through memory maps, a shard
    at a time), write the manifest and remove the shard files."""
    summaries = [json.loads((partial / f"{number:06d}.shard.json").read_text()) for number in range(shards)]
    filled = [number for number, summary in enumerate(summaries) if summary["count"]]
    fields = summaries[filled[0]]["fields"] if filled else {}
    for name in fields:
        parts = [map_array(partial / f"{number:06d}.{name}.npy") for number in filled]
        _concatenate(parts, partial / f"{name}.npy")
        if name in variable:
            lengths = np.concatenate([np.load(partial / f"{number:06d}.{name}.lengths.npy") for number in filled])
            _save(partial / f"{name}.offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    skipped = [entry for summary in summaries for entry in summary["skipped"]]
    manifest = {"format": FORMAT, "count": sum(summary["count"] for summary in summaries), "fields": fields,
                "meta": meta, "skipped": skipped}
    write_atomic(partial / MANIFEST, json.dumps(manifest).encode())
    for path in partial.iterdir():
        if path.name[0].isdigit():
            path.unlink()


def _concatenate(parts: list[np.ndarray], path: Path) -> None:
    rows = sum(len(part) for part in parts)
    shape, dtype = (rows, *parts[0].shape[1:]), parts[0].dtype
    if rows == 0 or math.prod(shape) == 0:
        _save(path, np.zeros(shape, dtype))
        return
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    start = 0
    for part in parts:
        out[start:start + len(part)] = part
        start += len(part)
    out.flush()
    del out


def map_array(path: str | Path) -> np.ndarray:
    """A ``.npy`` file mapped copy-on-write: read from the page cache, never written back (an
    empty array cannot be mapped and is read)."""
    try:
        return np.load(path, mmap_mode="c")
    except ValueError:  # numpy cannot map a file of no data
        return np.load(path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (waits while another process holds it); no lock where the
    system has no ``fcntl``."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a+b") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
