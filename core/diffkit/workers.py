"""Sampling chunks drawn by forked processes that share the CPU.

On the CPU one process spreads each product over its intra-op threads, which pays only for large
tensors. For small ones (molecule graphs) one single-thread process per core, each drawing its own
chunks, finishes the same job sooner (docs/benchmarks/molecule.md). On many cores a few processes
share the threads, which bounds the memory of the chunks drawn at once. Every sample draws from
its own seeded generators, so which process draws it does not change it.

The processes are forked: they start at once and share the loaded model's memory. Fork is safe
on Linux only, where diffkit uses it.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import pickle
import queue
import signal
import sys
import traceback
import warnings
from typing import Callable

import torch

from .distributed import World

# How long the parent waits on its queue before it checks that no process died without a word.
POLL_SECONDS = 1.0
# Auto never starts more: each worker holds a chunk's activations, and on a many-core machine
# fewer processes of several threads each keep memory bounded (large products use threads well).
MAX_AUTO_WORKERS = 4
# glibc's mallopt parameters, and the largest mmap threshold it accepts on 64-bit systems.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
LARGEST_MMAP_THRESHOLD = 32 << 20


class WorkerDied(RuntimeError):
    """A worker process ended without a result or an error (killed, e.g. when memory ran out)."""


class WorkerTraceback(Exception):
    """The traceback of an error raised in a worker process (the cause of the re-raised error)."""

    def __str__(self) -> str:
        return self.args[0]


def can_fork() -> bool:
    return sys.platform.startswith("linux")


def worker_count(setting: int, device: torch.device | str, world: World, chunks: int) -> int:
    """How many processes draw a rank's ``chunks`` chunks.

    ``setting`` is ``sample.workers``: 0 (auto) gives one per intra-op thread torch would use
    (so ``OMP_NUM_THREADS`` caps it), at most :data:`MAX_AUTO_WORKERS`, on the CPU outside
    torchrun, and 1 elsewhere. Never more than there are chunks. A count above 1 where processes
    cannot be forked is a ValueError."""
    device = torch.device(device)
    if setting == 0:
        if device.type != "cpu" or world.distributed or not can_fork():
            return 1
        setting = min(torch.get_num_threads(), MAX_AUTO_WORKERS)
    elif setting > 1 and device.type != "cpu":
        raise ValueError(f"sample.workers = {setting}: worker processes draw on the CPU; on {device} one process "
                         "drives the device (set 0 or 1)")
    elif setting > 1 and not can_fork():
        raise ValueError(f"sample.workers = {setting}: worker processes are forked, which diffkit does on Linux "
                         f"only, not on {sys.platform} (set 0 or 1)")
    return max(1, min(setting, chunks))


def draw_in_workers(draw: Callable[[list[int], object], dict], shares: list[list[int]], bar=None) -> dict:
    """``draw(share, progress)`` run in one forked process per share, which share this process's
    intra-op threads (one each at least); their results merged. ``progress.update(n)`` in a
    process advances ``bar`` (a tqdm bar, or None).

    An error raised in a process is raised here, with the process's traceback as its cause; a
    process that dies without one (killed, e.g. out of memory) is a :class:`WorkerDied`. The other
    processes are stopped either way."""
    context = multiprocessing.get_context("fork")
    messages = context.Queue()
    threads = max(1, torch.get_num_threads() // len(shares))
    processes = [context.Process(target=_work, args=(draw, share, threads, messages), daemon=True)
                 for share in shares]
    with warnings.catch_warnings():
        # Python 3.12+ warns on any fork of a threaded process. The other threads here (idle
        # intra-op pool threads, a progress bar's monitor) hold no lock the children take.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork.*")
        for process in processes:
            process.start()
    results: dict = {}
    try:
        finished = 0
        while finished < len(processes):
            try:
                kind, payload = messages.get(timeout=POLL_SECONDS)
            except queue.Empty:
                _check_alive(processes)
                continue
            if kind == "step" and bar is not None:
                bar.update(payload)
            elif kind == "done":
                results.update(pickle.loads(payload))
                finished += 1
            elif kind == "error":
                error, text = pickle.loads(payload)
                raise error from WorkerTraceback(text)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
    return results


class _QueueProgress:
    def __init__(self, messages):
        self.messages = messages

    def update(self, n: int = 1) -> None:
        self.messages.put(("step", n))


def _work(draw: Callable, share: list[int], threads: int, messages) -> None:
    torch.set_num_threads(threads)
    _reuse_freed_memory()
    try:
        result = draw(share, _QueueProgress(messages))
    except BaseException as error:  # noqa: BLE001 - every error goes back to the parent
        messages.put(("error", _picklable_error(error)))
        return
    # Pickled here so that tensors travel as bytes, not through torch's shared-memory handles.
    messages.put(("done", pickle.dumps(result)))


def _reuse_freed_memory() -> None:
    """Make glibc keep freed memory for reuse rather than hand it back to the system. Every
    sampling step allocates and frees the same large tensors, and memory fresh from the system
    costs a page fault per page: a tenth of a molecule worker's time. Only this short-lived
    process is affected; where the C library is not glibc nothing changes."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, LARGEST_MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass


def _picklable_error(error: BaseException) -> bytes:
    text = "".join(traceback.format_exception(error))
    try:
        payload = pickle.dumps((error, text))
        pickle.loads(payload)  # an exception whose arguments do not rebuild it fails only here
        return payload
    except Exception:  # noqa: BLE001
        return pickle.dumps((RuntimeError(f"{type(error).__name__}: {error}"), text))


def _check_alive(processes) -> None:
    for number, process in enumerate(processes, 1):
        code = process.exitcode
        if code not in (None, 0):
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            hint = " (the system kills with SIGKILL when memory runs out)" if code == -signal.SIGKILL else ""
            raise WorkerDied(f"sampling worker process {number} of {len(processes)} {how}{hint}; "
                             "--set sample.workers=1 samples in one process")
