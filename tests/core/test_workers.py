"""Sampling in forked worker processes: how many, what comes back (results, progress, errors,
deaths), and samples that equal those of one process."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from diffkit import workers
from diffkit.config import resolve_config
from diffkit.distributed import World
from diffkit.generate import SampleRequest, generate
from diffkit.workers import WorkerDied, WorkerTraceback, draw_in_workers, worker_count

from toy_domain import ToyDomain

pytestmark = pytest.mark.skipif(not workers.can_fork(), reason="worker processes are forked on Linux only")


def test_auto_gives_one_worker_per_thread_on_the_cpu_and_one_elsewhere(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert worker_count(0, "cpu", World(), chunks=10) == 3
    assert worker_count(0, "cpu", World(), chunks=2) == 2  # never more than the chunks
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    assert worker_count(0, "cpu", World(), chunks=100) == workers.MAX_AUTO_WORKERS
    assert worker_count(0, "cpu", World(rank=0, size=2), chunks=10) == 1  # torchrun shares the work itself
    assert worker_count(0, "cuda", World(), chunks=10) == 1
    assert worker_count(3, "cpu", World(), chunks=10) == 3
    assert worker_count(1, "cuda", World(), chunks=10) == 1
    monkeypatch.setattr(workers, "can_fork", lambda: False)
    assert worker_count(0, "cpu", World(), chunks=10) == 1


def test_worker_counts_that_cannot_run_are_refused_by_name(monkeypatch):
    with pytest.raises(ValueError, match=r"sample.workers = 2: .* on cuda"):
        worker_count(2, "cuda", World(), chunks=10)
    monkeypatch.setattr(workers, "can_fork", lambda: False)
    with pytest.raises(ValueError, match=r"sample.workers = 2: .* Linux only"):
        worker_count(2, "cpu", World(), chunks=10)


def test_each_share_is_drawn_in_its_own_process_and_the_results_merge():
    class Bar:
        total = 0

        def update(self, n):
            self.total += n

    def draw(share, progress):
        for _ in share:
            progress.update(2)
        return {k: (k * k, os.getpid(), torch.get_num_threads()) for k in share}

    bar = Bar()
    results = draw_in_workers(draw, [[0, 2, 4], [1, 3]], bar)
    assert {k: value[0] for k, value in results.items()} == {k: k * k for k in range(5)}
    pids = {k: value[1] for k, value in results.items()}
    assert pids[0] == pids[2] == pids[4] != pids[1] == pids[3] and os.getpid() not in pids.values()
    assert {value[2] for value in results.values()} == {max(1, torch.get_num_threads() // 2)}  # the threads shared
    assert bar.total == 10


def test_an_error_in_a_worker_is_raised_with_its_type_message_and_traceback():
    def draw(share, progress):
        if share == [1]:
            raise KeyError("no such atom type 'Xx'")
        return {k: k for k in share}

    with pytest.raises(KeyError, match="no such atom type") as caught:
        draw_in_workers(draw, [[0], [1]])
    assert isinstance(caught.value.__cause__, WorkerTraceback)
    assert "in draw" in str(caught.value.__cause__)


def test_a_worker_that_dies_without_a_word_is_reported():
    def draw(share, progress):
        if share == [1]:
            os.kill(os.getpid(), signal.SIGKILL)
        return {k: k for k in share}

    with pytest.raises(WorkerDied, match="process 2 of 2 was killed by SIGKILL"):
        draw_in_workers(draw, [[0], [1]])


def test_samples_drawn_by_workers_equal_those_of_one_process():
    domain = ToyDomain()
    config = resolve_config(domain)
    torch.manual_seed(0)
    model = domain.build_model(config).eval()
    request = SampleRequest(n=8, steps=6, seed=3, sampler="ddpm", batch_size=2)
    config["sample"]["workers"] = 1
    alone = generate(domain, model, config, request)
    config["sample"]["workers"] = 2
    shared = generate(domain, model, config, request)
    assert torch.equal(shared["cond"], alone["cond"])
    # The same chunks either way: the same products, computed in worker processes instead.
    assert torch.equal(shared["x"], alone["x"])
