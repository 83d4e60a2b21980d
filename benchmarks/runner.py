"""The runner's overhead per step against a bare PyTorch loop on the same model and batch.

    python benchmarks/runner.py [--steps 150] [--threads 1]

Both loops train the same small convolutional denoiser on 16x16 single-channel images with AdamW
and the same diffusion loss. The bare loop does only forward, backward and the optimizer step;
the runner adds what it always does (timestep/noise draws for the global batch, LR schedule,
gradient clipping, EMA, NaN bookkeeping, metrics log, the final checkpoint). Both run on one
thread and are timed in CPU time (``time.process_time``), which a busy machine does not inflate;
the cost per step is the difference between a long and a short run divided by the extra steps,
so set-up cancels out. The median of the repeats is reported.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

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


def runner_cpu_seconds(steps: int) -> float:
    """CPU time of a whole ``diffkit.runner.train`` call of ``steps`` steps."""
    domain = BenchDomain()
    config = resolve_config(domain, overrides={"train": {"steps": steps}})
    with tempfile.TemporaryDirectory() as folder:
        start = time.process_time()
        train(domain, config, out=folder, progress=False, device="cpu")
        return time.process_time() - start


def bare_cpu_seconds(steps: int) -> float:
    """CPU time of a bare loop of ``steps`` steps (set-up included, like the runner's)."""
    start = time.process_time()
    torch.manual_seed(0)
    model = ConvDenoiser()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    diffusion = Diffusion("cosine", "v")
    loader = torch.utils.data.DataLoader(Pictures(), batch_size=64, shuffle=True, drop_last=True)
    batches = iter(loader)
    for _ in range(steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        loss = diffusion.loss(model, batch["x"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.process_time() - start


def per_step(measure, short: int, long: int) -> float:
    """CPU seconds per step: the difference of a long and a short run cancels the set-up."""
    return (measure(long) - measure(short)) / (long - short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    short = 20
    bare_times, runner_times = [], []
    for _ in range(args.repeats):
        bare_times.append(per_step(bare_cpu_seconds, short, args.steps))
        runner_times.append(per_step(runner_cpu_seconds, short, args.steps))
    bare, runner = statistics.median(bare_times), statistics.median(runner_times)
    overhead = runner / bare - 1
    print(f"bare loop   {1000 * bare:.2f} CPU ms/step")
    print(f"runner      {1000 * runner:.2f} CPU ms/step")
    print(f"overhead    {100 * overhead:+.1f}%  (target: under 5%)")


if __name__ == "__main__":
    main()
