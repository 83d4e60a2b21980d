"""The kit's store of decoded items against independent truth: what the decoder yields, in order,
whatever the number of worker processes; one fill for concurrent openers; finished shards kept
across an interrupted fill; pages shared with the page cache rather than copied."""

from __future__ import annotations

import functools
import json
import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest

from diffkit import kit
from diffkit.kit import store as store_module


def numbers(task, *, log: Path | None = None, fail_on: int | None = None):
    """Items of a task (a range of ints): every 7th is skipped; ``log`` gets a line per task."""
    if log is not None:
        with open(log, "a") as file:
            file.write(f"{task[0]}\n")
    for i in task:
        if i == fail_on:
            raise RuntimeError(f"cannot decode {i}")
        if i % 7 == 3:
            yield kit.Skip(f"entry {i} is bad", where=i + 1)
        else:
            yield {"square": np.full((2, 3), i * i, np.int64), "digits": np.array([int(c) for c in str(i)], np.int8),
                   "pairs": np.arange(2 * (i % 3), dtype=np.int16).reshape(-1, 2)}


def tasks(count: int, size: int = 10):
    return (list(range(start, min(start + size, count))) for start in range(0, count, size))


def expected_items(count: int) -> list[dict]:
    return [dict(next(numbers([i]))) for i in range(count) if i % 7 != 3]


def read_all(store: kit.ItemStore) -> list[dict]:
    return [{name: store.item(name, index) for name in ("square", "digits", "pairs")} for index in range(len(store))]


def same_items(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x[k], y[k]) and x[k].dtype == y[k].dtype
                                    for x, y in zip(a, b) for k in x)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_store_holds_the_decoded_items_in_order_with_the_skipped_entries(tmp_path, workers):
    store = kit.open_store(tmp_path / "numbers", tasks(95), numbers, variable=["digits", "pairs"],
                           meta={"made_of": "numbers"}, workers=workers)
    assert same_items(read_all(store), expected_items(95))
    assert len(store) == 95 - 14 and store.meta == {"made_of": "numbers"}
    assert store.skipped == [kit.Skip(f"entry {i} is bad", i + 1) for i in range(3, 95, 7)]
    assert store.array("square").shape == (len(store), 2, 3)
    assert store.lengths("digits").tolist() == [len(str(i)) for i in range(95) if i % 7 != 3]
    assert store.array("pairs").shape == (sum(i % 3 for i in range(95) if i % 7 != 3), 2)
    # Read again, from the files alone.
    assert same_items(read_all(kit.ItemStore(tmp_path / "numbers")), expected_items(95))


def test_a_list_cut_into_shards_fills_the_store_its_tasks_would(tmp_path):
    assert kit.in_shards(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    store = kit.open_store(tmp_path / "numbers", kit.in_shards(list(range(95)), 10), numbers,
                           variable=["digits", "pairs"], workers=1)
    assert same_items(read_all(store), expected_items(95))


def test_a_filled_store_is_read_without_decoding_and_pickles_as_its_folder(tmp_path):
    log = tmp_path / "log"
    decode = functools.partial(numbers, log=log)
    first = kit.open_store(tmp_path / "s", tasks(500), decode, variable=["digits", "pairs"], workers=1)
    assert len(log.read_text().split()) == 50
    again = kit.open_store(tmp_path / "s", tasks(500), decode, variable=["digits", "pairs"], workers=1)
    assert len(log.read_text().split()) == 50 and again.skipped == first.skipped
    first.array("square")  # mapped now
    payload = pickle.dumps(first)
    assert len(payload) < 10_000 < first.array("square").nbytes
    assert same_items(read_all(pickle.loads(payload)), expected_items(500))


def test_an_interrupted_fill_keeps_its_finished_shards_and_leaves_no_store(tmp_path):
    log = tmp_path / "log"
    with pytest.raises(RuntimeError, match="cannot decode 42"):
        kit.open_store(tmp_path / "s", tasks(95), functools.partial(numbers, log=log, fail_on=42),
                       variable=["digits", "pairs"], workers=1)
    assert not (tmp_path / "s").exists()
    assert log.read_text().split() == ["0", "10", "20", "30", "40"]
    store = kit.open_store(tmp_path / "s", tasks(95), functools.partial(numbers, log=log),
                           variable=["digits", "pairs"], workers=1)
    assert log.read_text().split()[5:] == ["40", "50", "60", "70", "80", "90"]  # from the failed shard on
    assert same_items(read_all(store), expected_items(95))
    assert sorted(path.name for path in tmp_path.iterdir()) == [".s.lock", "log", "s"]


def test_a_store_of_another_format_is_filled_again(tmp_path):
    kit.open_store(tmp_path / "s", tasks(20), numbers, variable=["digits", "pairs"], workers=1)
    manifest = tmp_path / "s" / store_module.MANIFEST
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": store_module.FORMAT - 1}))
    log = tmp_path / "log"
    store = kit.open_store(tmp_path / "s", tasks(20), functools.partial(numbers, log=log),
                           variable=["digits", "pairs"], workers=1)
    assert log.read_text().split() == ["0", "10"] and same_items(read_all(store), expected_items(20))


def test_a_store_of_nothing_but_skipped_entries_is_empty(tmp_path):
    store = kit.open_store(tmp_path / "s", [[3, 10, 17]], numbers, workers=1)
    assert len(store) == 0 and [skip.where for skip in store.skipped] == [4, 11, 18]


def _open_and_report(folder: Path, log: Path, results) -> None:
    store = kit.open_store(folder, tasks(300), functools.partial(numbers, log=log), variable=["digits", "pairs"],
                           workers=1)
    results.put(len(store))


def test_processes_opening_one_store_at_once_fill_it_once(tmp_path):
    context = multiprocessing.get_context("fork" if _can_fork() else "spawn")
    results = context.Queue()
    log = tmp_path / "log"
    processes = [context.Process(target=_open_and_report, args=(tmp_path / "s", log, results)) for _ in range(3)]
    for process in processes:
        process.start()
    counts = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join()
    assert counts == [300 - 43] * 3
    assert sorted(map(int, log.read_text().split())) == list(range(0, 300, 10))  # each task decoded once


def _can_fork() -> bool:
    from diffkit.workers import can_fork

    return can_fork()


def _resident(kind: str) -> int:
    """This process's resident memory of a kind (``RssAnon``, ``RssFile``), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(kind + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(kind)


def _read_whole_field(folder: Path, results) -> None:
    store = kit.ItemStore(folder)
    before = _resident("RssAnon"), _resident("RssFile")
    total = int(store.array("block").sum(dtype=np.int64))  # touches every page
    results.put((total, _resident("RssAnon") - before[0], _resident("RssFile") - before[1]))


def blocks(task):
    for i in task:
        yield {"block": np.full(1 << 20, i % 251, np.uint8)}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_reading_a_store_maps_the_page_cache_instead_of_copying_it(tmp_path):
    count = 48  # MiB
    kit.open_store(tmp_path / "s", tasks(count, 8), blocks, workers=1)
    context = multiprocessing.get_context("spawn")  # a fresh process: nothing inherited
    results = context.Queue()
    process = context.Process(target=_read_whole_field, args=(tmp_path / "s", results))
    process.start()
    total, anonymous, file_backed = results.get(timeout=120)
    process.join()
    assert total == sum(i % 251 for i in range(count)) << 20
    assert file_backed >= (count - 2) << 20  # the data is in the page cache, mapped
    assert anonymous < 8 << 20  # and not copied into the process's own memory


def process_ids(task):
    import os

    for _ in task:
        yield {"pid": np.array(os.getpid())}


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="needs CPU affinity")
def test_a_process_allowed_one_cpu_decodes_the_fill_itself(tmp_path):
    # The default number of workers follows this process's CPU affinity, not the machine's CPUs:
    # a process confined to one CPU would only crowd it with workers.
    import os

    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        store = kit.open_store(tmp_path / "s", [[0], [1], [2], [3]], process_ids)
    finally:
        os.sched_setaffinity(0, allowed)
    assert [int(store.item("pid", i)) for i in range(4)] == [os.getpid()] * 4
