"""Training speed of every domain's ``gpu`` preset: samples/s, achieved TFLOP/s and peak memory,
and for images the same numbers for diffusers' UNet2DModel of similar size in the same run.

    python benchmarks/gpu.py                      # all domains, on cuda
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
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

from diffkit.config import resolve_config
from diffkit.generate import build_diffusion
from diffkit.plugins import make_plugin_manager
from diffkit.runner import train


def flops_per_step(domain, config, device) -> float:
    """Forward + backward FLOPs of one training step of the domain's denoiser."""
    dataset = domain.build_dataset(config, None)
    model = domain.build_model(config).to(device)
    batch = default_collate([dataset[i % len(dataset)] for i in range(config["train"]["batch_size"])])
    batch = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}
    diffusion = build_diffusion(domain, config)
    counter = FlopCounterMode(display=False)
    with counter:
        loss = diffusion.loss(model, batch["x"], cond=batch.get("cond"), mask=batch.get("mask"),
                              model_kwargs=batch.get("extra", {}))
        loss.backward()
    return float(counter.get_total_flops())


def measure_diffkit(domain, config, device: str, steps: int) -> dict:
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


def measure_diffusers_unet(config, device: str, steps: int, target_params: int) -> dict | None:
    try:
        from diffusers import UNet2DModel
    except ImportError:
        return None
    size = config["data"].get("image_size", 32)
    channels = config["data"].get("channels", 3)
    width = 32
    while True:  # the smallest channel width whose parameter count reaches diffkit's
        model = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                            block_out_channels=(width, 2 * width, 2 * width, 2 * width), layers_per_block=2)
        params = sum(p.numel() for p in model.parameters())
        if params >= target_params or width >= 512:
            break
        width += 32
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.startswith("cuda"))
    batch_size = config["train"]["batch_size"]
    x = torch.randn(batch_size, channels, size, size, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def step():
        t = torch.randint(0, 1000, (batch_size,), device=device)
        noise = torch.randn_like(x)
        with autocast:
            loss = torch.nn.functional.mse_loss(model(x + noise, t).sample.float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    result = {"samples_per_s": steps * batch_size / (time.perf_counter() - start), "params": params}
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
    args = parser.parse_args()
    registry = make_plugin_manager()
    rows = []
    for name in args.domains.split(","):
        domain = registry.domain(name)
        config = resolve_config(domain, preset=args.preset, overrides={"train": {
            "steps": args.steps, "log_every": max(1, args.steps // 5), "checkpoint_every": 0,
            "preview_every": 0}})
        flops = flops_per_step(domain, config, args.device)
        params = sum(p.numel() for p in domain.build_model(config).parameters())
        result = measure_diffkit(domain, config, args.device, args.steps)
        steps_per_s = result["samples_per_s"] / config["train"]["batch_size"]
        rows.append({"domain": name, "impl": "diffkit", "params_m": params / 1e6, **result,
                     "tflops": flops * steps_per_s / 1e12})
        if name == "image":
            other = measure_diffusers_unet(config, args.device, args.steps, params)
            if other is not None:
                rows.append({"domain": name, "impl": "diffusers UNet2DModel", "params_m": other.pop("params") / 1e6, **other})
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {device_name}; preset {args.preset}; {args.steps} steps")
    print(f"{'domain':10} {'implementation':24} {'params(M)':>9} {'samples/s':>10} {'TFLOP/s':>8} {'peak GiB':>9}")
    for row in rows:
        print(f"{row['domain']:10} {row['impl']:24} {row['params_m']:9.2f} {row['samples_per_s']:10.1f} "
              f"{row.get('tflops', float('nan')):8.2f} {row.get('peak_memory_gib', float('nan')):9.2f}")


if __name__ == "__main__":
    main()
