"""The runner's overhead per step against a bare PyTorch loop on the same model and batch.

    python benchmarks/runner.py [--steps 150] [--threads 1]

Both loops train the same small convolutional denoiser on 16x16 single-channel images with AdamW
and the same diffusion loss. The bare loop does only forward, backward and the optimizer step;
the runner adds what it always does (timestep/noise draws for the global batch, LR schedule,
gradient clipping, EMA, NaN bookkeeping, metrics log). Time per step is measured over the same
window of steps in both, after warm-up; the median of interleaved repeats is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from diffkit import Diffusion, Domain
from diffkit.config import resolve_config
from diffkit.runner import train


class Pictures(Dataset):
    def __init__(self, n: int = 2048):
        self.x = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i]}


class ConvDenoiser(nn.Module):
    def __init__(self, width: int = 64):
        super().__init__()
        self.time = nn.Linear(1, width)
        self.inp = nn.Conv2d(1, width, 3, padding=1)
        self.body = nn.Sequential(*[layer for _ in range(4) for layer in (nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1))])
        self.out = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x, t, cond=None):
        h = self.inp(x) + self.time(t[:, None])[:, :, None, None]
        return self.out(self.body(h))


class BenchDomain(Domain):
    name = "bench"
    description = "synthetic pictures for the runner benchmark"

    def default_config(self):
        return {"train": {"batch_size": 64, "lr": 1e-3, "warmup_steps": 10, "checkpoint_every": 0,
                          "preview_every": 0, "log_every": 10}}

    def build_dataset(self, config, data=None):
        return Pictures()

    def build_model(self, config):
        return ConvDenoiser()


def runner_seconds_per_step(steps: int, warmup: int) -> float:
    domain = BenchDomain()
    config = resolve_config(domain, overrides={"train": {"steps": steps}})
    with tempfile.TemporaryDirectory() as folder:
        train(domain, config, out=folder, progress=False, device="cpu")
        records = {r["step"]: r["time"] for r in map(json.loads, (Path(folder) / "metrics.jsonl").read_text().splitlines())}
    return (records[steps] - records[warmup]) / (steps - warmup)


def bare_seconds_per_step(steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = ConvDenoiser()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    diffusion = Diffusion("cosine", "v")
    data = Pictures()
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, drop_last=True)
    batches = iter(loader)
    start = None
    for step in range(1, steps + 1):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        loss = diffusion.loss(model, batch["x"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == warmup:
            start = time.perf_counter()
    return (time.perf_counter() - start) / (steps - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warmup = 20
    bare_times, runner_times = [], []
    for _ in range(args.repeats):  # interleaved, so that a change in machine load hits both alike
        bare_times.append(bare_seconds_per_step(args.steps, warmup))
        runner_times.append(runner_seconds_per_step(args.steps, warmup))
    bare, runner = statistics.median(bare_times), statistics.median(runner_times)
    overhead = runner / bare - 1
    print(f"bare loop   {1000 * bare:.2f} ms/step")
    print(f"runner      {1000 * runner:.2f} ms/step")
    print(f"overhead    {100 * overhead:+.1f}%  (target: under 5%)")


if __name__ == "__main__":
    main()
