"""diffkit's image U-Net against diffusers' UNet2DModel of the same layout, on one CPU thread.

Two measurements in one run, on the `cpu` preset (16x16 handwritten digits):

1. training throughput: the same batch, loss and optimizer for both networks, steps interleaved;
   each step is timed in process CPU time (one thread, so CPU seconds are compute seconds and a
   busy machine does not bias the result), and the median step counts: samples per CPU second;
2. sample quality after equal CPU time: each network trains for the same process CPU time with
   the same loop and batches, then draws the same number of samples with the same sampler, labels
   and noise, scored by diffkit's Fréchet distance (features of the cached digit classifier)
   against the digits. This is repeated for several initialisation seeds, because one short run
   varies by a few units from seed to seed; the mean and the spread are reported.

diffusers gets the layout of diffkit's network: the same channels per level, blocks per level,
attention levels, group count, head width, scale-shift time conditioning and a class embedding
with a null class. It runs in the memory format (contiguous or channels_last) that is faster for
it on this machine. Without diffusers installed the script says so and exits with status 0.

    OMP_NUM_THREADS=1 python benchmarks/image.py [--seconds 40] [--seeds 2] [--samples 1000] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import diffkit
from diffkit.config import resolve_config
from diffkit.generate import build_diffusion


class DiffusersDenoiser(nn.Module):
    """UNet2DModel behind diffkit's model signature ``model(x_t, t, cond=None)``."""

    def __init__(self, unet: nn.Module, num_classes: int, channels_last: bool):
        super().__init__()
        self.unet, self.num_classes, self.channels_last = unet, num_classes, channels_last

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        labels = torch.full((x.shape[0],), self.num_classes, device=x.device) if cond is None else cond
        labels = torch.where((labels < 0) | (labels >= self.num_classes), self.num_classes, labels)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.unet(x, t * 1000, class_labels=labels).sample


def matching_diffusers_unet(config: dict, channels_last: bool, seed: int = 0) -> nn.Module:
    from diffusers import UNet2DModel

    data, model = config["data"], config["model"]
    resolutions = [data["image_size"] // 2 ** level for level in range(len(model["channel_mults"]))]
    attention = [r in model["attention_resolutions"] for r in resolutions]
    width = [model["base_channels"] * m for m in model["channel_mults"]]
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=data["image_size"], in_channels=data["channels"], out_channels=data["channels"],
        block_out_channels=tuple(width), layers_per_block=model["blocks_per_level"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        norm_num_groups=model["groups"], attention_head_dim=width[-1] // model["attention_heads"],
        resnet_time_scale_shift="scale_shift", num_class_embeds=model["num_classes"] + 1,
    )
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    return DiffusersDenoiser(unet, model["num_classes"], channels_last)


def build_ours(domain, config: dict, dataset, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = domain.build_model(config)
    domain.fit_data(model, dataset, config)
    return model


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def step_function(model: nn.Module, diffusion, config: dict):
    """One optimizer step of the diffkit runner's recipe (AdamW, warm-up, clipping, EMA)."""
    train = config["train"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=train["lr"])
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    state = {"step": 0}

    def step(batch: dict) -> float:
        n = state["step"]
        for group in optimizer.param_groups:
            group["lr"] = train["lr"] * min(1.0, (n + 1) / train["warmup_steps"])
        cond = diffkit.drop_condition(batch["cond"], torch.full_like(batch["cond"], -1), train["cond_drop"])
        loss = diffusion.loss(model, batch["x"], cond=cond)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
        optimizer.step()
        decay = min(train["ema_decay"], (1 + n) / (10 + n))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1 - decay)
        state["step"] += 1
        return float(loss.detach())

    return step, ema, state


def batches(dataset, batch_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(dataset), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            items = [dataset[int(i)] for i in order[start:start + batch_size]]
            yield {"x": torch.stack([item["x"] for item in items]), "cond": torch.stack([item["cond"] for item in items])}


def measure_throughput(models: dict[str, nn.Module], diffusion, config: dict, batch: dict, rounds: int) -> dict:
    steps = {name: step_function(copy.deepcopy(model), diffusion, config)[0] for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(rounds + 2):
        for name, step in steps.items():  # interleaved: both see the same load
            start = time.process_time()
            step(batch)
            if round_index >= 2:  # the first two rounds warm up allocators and kernels
                times[name].append(time.process_time() - start)
    size = batch["x"].shape[0]
    return {name: size / statistics.median(values) for name, values in times.items()}


def train_for_cpu_seconds(model: nn.Module, diffusion, config: dict, dataset, seconds: float) -> tuple[nn.Module, int]:
    step, ema, state = step_function(model, diffusion, config)
    stream = batches(dataset, config["train"]["batch_size"], seed=0)
    start = time.process_time()
    while time.process_time() - start < seconds:
        step(next(stream))
    return ema, state["step"]


def sample_and_score(domain, model: nn.Module, diffusion, config: dict, n: int, folder: Path) -> dict:
    generator = torch.Generator().manual_seed(1)
    batch = domain.prepare_sampling(model, n, config, generator=generator)
    with torch.no_grad():
        x = diffusion.sample(model, batch["x"], sampler=config["sample"]["sampler"], steps=config["sample"]["steps"],
                             cond=batch["cond"], generator=generator)
    domain.write_samples({"x": domain.decode(x, batch)}, folder, config)
    return domain.evaluate(folder, None, config)


def real_digits_score(domain, config: dict, dataset, n: int, folder: Path) -> dict:
    """The scores of ``n`` pictures drawn from the data itself: the scale of the distance."""
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:n]
    domain.write_samples({"x": torch.stack([dataset[int(i)]["x"] for i in chosen])}, folder, config)
    return domain.evaluate(folder, None, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="CPU seconds of training per network and seed")
    parser.add_argument("--seeds", type=int, default=2, help="initialisation seeds per network for quality")
    parser.add_argument("--samples", type=int, default=1000, help="samples per network for the Fréchet distance")
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per network for throughput")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    try:
        import diffusers
    except ImportError:
        print("diffusers is not installed (pip install diffusers); nothing to compare against.")
        return
    torch.set_num_threads(1)
    domain = diffkit.make_plugin_manager(entry_points=False).domain("image")
    config = resolve_config(domain, preset="cpu")
    diffusion = build_diffusion(domain, config)
    dataset = domain.build_dataset(config)
    batch = next(batches(dataset, config["train"]["batch_size"], seed=123))

    ours = build_ours(domain, config, dataset, seed=0)
    candidates = {"diffkit": ours,
                  "diffusers": matching_diffusers_unet(config, channels_last=False),
                  "diffusers (channels_last)": matching_diffusers_unet(config, channels_last=True)}
    throughput = measure_throughput(candidates, diffusion, config, batch, args.rounds)
    rival = max(("diffusers", "diffusers (channels_last)"), key=throughput.get)

    results = {"torch": torch.__version__, "diffusers": diffusers.__version__, "threads": torch.get_num_threads(),
               "batch_size": config["train"]["batch_size"], "cpu_seconds": args.seconds, "samples": args.samples,
               "seeds": args.seeds,
               "throughput": {name: {"parameters": parameter_count(model), "samples_per_cpu_s": throughput[name]}
                              for name, model in candidates.items()},
               "quality": {}}
    builders = {"diffkit": lambda seed: build_ours(domain, config, dataset, seed),
                rival: lambda seed: matching_diffusers_unet(config, rival.endswith("(channels_last)"), seed)}
    with tempfile.TemporaryDirectory() as scratch:
        for name, build in builders.items():
            runs = []
            for seed in range(args.seeds):
                ema, steps = train_for_cpu_seconds(build(seed), diffusion, config, dataset, args.seconds)
                folder = Path(scratch) / f"{name.replace(' ', '_')}-{seed}"
                runs.append({"seed": seed, "train_steps": steps,
                             **sample_and_score(domain, _Sampling(ema, ours), diffusion, config, args.samples, folder)})
            results["quality"][name] = runs
        real = real_digits_score(domain, config, dataset, args.samples, Path(scratch) / "real")
        results["quality"]["real digits"] = [{"seed": 0, "train_steps": 0, **real}]
    report(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


class _Sampling(nn.Module):
    """A trained network with the class bookkeeping of diffkit's U-Net, for ``prepare_sampling``."""

    def __init__(self, network: nn.Module, unet: nn.Module):
        super().__init__()
        self.network = network
        self.channels, self.image_size = unet.channels, unet.image_size
        self.class_names, self.class_counts = unet.class_names, unet.class_counts

    def forward(self, x, t, cond=None):
        return self.network(x, t, cond=cond)


def report(results: dict) -> None:
    print(f"torch {results['torch']}, diffusers {results['diffusers']}, {results['threads']} thread, "
          f"batch {results['batch_size']}")
    print("\n| network | parameters | training samples per CPU second |\n|---|---:|---:|")
    for name, row in results["throughput"].items():
        print(f"| {name} | {row['parameters']:,} | {row['samples_per_cpu_s']:.1f} |")
    print(f"\nafter {results['cpu_seconds']:.0f} CPU seconds of training, {results['samples']} samples, "
          f"per initialisation seed (real digits: drawn from the training data, for scale):")
    print("\n| network | steps | Fréchet distance per seed | mean | NN distance ratio | memorised |"
          "\n|---|---:|---:|---:|---:|---:|")
    for name, runs in results["quality"].items():
        distances = [run["frechet_distance"] for run in runs]
        print(f"| {name} | {', '.join(str(run['train_steps']) for run in runs)} "
              f"| {', '.join(f'{d:.2f}' for d in distances)} | {statistics.mean(distances):.2f} "
              f"| {statistics.mean(run['nn_distance_ratio'] for run in runs):.2f} "
              f"| {statistics.mean(run['memorised_fraction'] for run in runs):.3f} |")


if __name__ == "__main__":
    main()
