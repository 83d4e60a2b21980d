"""Training speed of every domain's ``gpu`` preset: samples/s, achieved TFLOP/s and peak memory,
and for images the same numbers for diffusers' UNet2DModel in the same layout, in the same run.

    python benchmarks/gpu.py --steps 200          # all domains, on cuda (docs/benchmarks.md)
    python benchmarks/gpu.py --domains image --compile --steps 200   # adds diffkit + torch.compile
    python benchmarks/gpu.py --domains image --steps 30 --device cpu --preset cpu   # a smoke test

diffkit's numbers come from its own runner (``diffkit.runner.train``: bf16 autocast, fused AdamW,
EMA, everything a real run does); samples/s is read from the runner's metrics log after warm-up.
FLOPs per step are counted once with ``torch.utils.flop_counter`` (forward + backward of the
denoiser) and multiplied by steps/s. The diffusers loop is a bare bf16 loop (forward, backward,
fused AdamW) on the same batch shape, which flatters it slightly.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffkit.config import resolve_config
from diffkit.generate import build_diffusion
from diffkit.plugins import make_plugin_manager
from diffkit.runner import MicroBatches, train
from diffkit.tree import to_device


def flops_per_step(domain, config, device) -> tuple[float, int]:
    """Forward + backward FLOPs of one training step of the domain's denoiser, and its parameter
    count (the model is built after the dataset, which completes data-dependent settings)."""
    dataset = domain.build_dataset(config, None)
    model = domain.build_model(config)
    domain.fit_data(model, dataset, config)
    model.to(device)
    items = [dataset[i % len(dataset)] for i in range(config["train"]["batch_size"])]
    batch = to_device(MicroBatches(1)(items)[0], device)
    diffusion = build_diffusion(domain, config)
    counter = FlopCounterMode(display=False)
    with counter:
        loss = diffusion.loss(model, batch["x"], cond=batch.get("cond"), mask=batch.get("mask"),
                              model_kwargs=batch.get("extra", {}))
        loss.backward()
    return float(counter.get_total_flops()), sum(p.numel() for p in model.parameters())


def measure_diffkit(domain, config, device: str, steps: int) -> dict:
    """The runner's own samples/s (mean of its log windows after the first) and peak memory."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as folder:
        train(domain, config, out=folder, device=device, progress=False)
        records = [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]
    rate = sum(r["samples_per_s"] for r in records[1:]) / max(1, len(records) - 1)  # skip warm-up window
    result = {"samples_per_s": rate}
    if device.startswith("cuda"):
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def diffusers_unet(config):
    """diffusers' UNet2DModel in the layout of Ho et al.'s CIFAR-10 U-Net (that of
    google/ddpm-cifar10-32), which the image ``gpu`` preset also follows: widths 128-256-256-256,
    two residual blocks per level, self-attention at 16x16 only."""
    from diffusers import UNet2DModel

    size = config["data"]["image_size"]
    channels = config["data"]["channels"]
    base = config["model"]["base_channels"]
    widths = tuple(base * m for m in config["model"]["channel_mults"])
    attention = set(config["model"]["attention_resolutions"])
    down, up, resolution = [], [], size
    for _ in widths:
        down.append("AttnDownBlock2D" if resolution in attention else "DownBlock2D")
        resolution //= 2
    for block in reversed(down):
        up.append("AttnUpBlock2D" if block == "AttnDownBlock2D" else "UpBlock2D")
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=widths,
                       down_block_types=tuple(down), up_block_types=tuple(up),
                       layers_per_block=config["model"]["blocks_per_level"],
                       norm_num_groups=config["model"]["groups"], dropout=config["model"]["dropout"])


def measure_diffusers_unet(config, device: str, steps: int) -> dict | None:
    """A bare bf16 training loop (forward, backward, fused AdamW) of diffusers' U-Net."""
    try:
        model = diffusers_unet(config).to(device)
    except ImportError:
        return None
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.startswith("cuda"))
    batch_size = config["train"]["batch_size"]
    size, channels = config["data"]["image_size"], config["data"]["channels"]
    x = torch.randn(batch_size, channels, size, size, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)

    def loss_of_step():
        t = torch.randint(0, 1000, (batch_size,), device=device)
        noise = torch.randn_like(x)
        with autocast:
            return torch.nn.functional.mse_loss(model(x + noise, t).sample.float(), noise)

    counter = FlopCounterMode(display=False)
    with counter:
        loss_of_step().backward()
    optimizer.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def step():
        loss_of_step().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(10):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    steps_per_s = steps / (time.perf_counter() - start)
    result = {"samples_per_s": steps_per_s * batch_size, "params": params,
              "tflops": counter.get_total_flops() * steps_per_s / 1e12}
    if device.startswith("cuda"):
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", default="image,audio,molecule")
    parser.add_argument("--preset", default="gpu")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--compile", action="store_true", help="also time the image model under torch.compile")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    registry = make_plugin_manager()
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {device_name}; torch {torch.__version__}; preset {args.preset}; {args.steps} steps", flush=True)
    print(HEADER, flush=True)
    rows = []

    def report(row: dict) -> None:
        rows.append(row)
        print(f"{row['domain']:10} {row['impl']:28} {row['params_m']:9.2f} {row['batch']:6d} {row['samples_per_s']:10.1f} "
              f"{row.get('tflops', float('nan')):8.2f} {row.get('peak_memory_gib', float('nan')):9.2f}", flush=True)

    for name in args.domains.split(","):
        domain = registry.domain(name)
        config = resolve_config(domain, preset=args.preset, overrides={"train": {
            "steps": args.steps, "log_every": max(1, args.steps // 5), "checkpoint_every": 0,
            "preview_every": 0}})
        batch = config["train"]["batch_size"]
        flops, params = flops_per_step(domain, config, args.device)
        variants = [("diffkit", False)] + ([("diffkit + torch.compile", True)] if args.compile and name == "image" else [])
        for label, compiled in variants:
            config["train"]["compile"] = compiled
            result = measure_diffkit(domain, config, args.device, args.steps)
            steps_per_s = result["samples_per_s"] / batch
            report({"domain": name, "impl": label, "params_m": params / 1e6, "batch": batch, **result,
                    "tflops": flops * steps_per_s / 1e12})
            if name == "image" and not compiled:
                other = measure_diffusers_unet(config, args.device, args.steps)
                if other is not None:
                    report({"domain": name, "impl": "diffusers UNet2DModel", "batch": batch,
                            "params_m": other.pop("params") / 1e6, **other})
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "torch": torch.__version__,
                                               "preset": args.preset, "steps": args.steps, "rows": rows}, indent=2))


HEADER = f"{'domain':10} {'implementation':28} {'params(M)':>9} {'batch':>6} {'samples/s':>10} {'TFLOP/s':>8} {'peak GiB':>9}"


if __name__ == "__main__":
    main()
