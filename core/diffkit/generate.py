"""Sampling with a domain: new samples, edits of given ones, and interpolations between noises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .diffusion import Diffusion
from .domain import Batch, Domain
from .guidance import slerp
from .schedules import make_schedule
from .tree import State, concat, to_device, tree_map


def build_diffusion(domain: Domain, config: dict) -> Diffusion:
    """The :class:`Diffusion` a config's ``diffusion`` section describes, with the domain's noise."""
    section = config["diffusion"]
    schedule = make_schedule(section["schedule"], zero_terminal_snr=section.get("zero_terminal_snr", False))
    return Diffusion(schedule, section["prediction"], noise=domain.noise, weighting=section["weighting"],
                     min_snr_gamma=section["min_snr_gamma"])


@dataclass
class SampleRequest:
    """What to generate. ``init``/``mask``/``strength`` select editing, ``interpolate`` a strip."""

    n: int = 16
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    cond: str | None = None
    seed: int = 0
    batch_size: int | None = None
    init: str | None = None
    mask: str | None = None
    strength: float = 0.6
    resample: int = 1
    interpolate: int = 0
    progress: bool = False


def generate(domain: Domain, model: nn.Module, config: dict, request: SampleRequest,
             device: torch.device | str = "cpu") -> Batch:
    """Samples as a batch on the CPU (``x`` decoded by the domain), drawn in chunks of
    ``sample.batch_size`` with a generator seeded by ``request.seed`` (reproducible)."""
    diffusion = build_diffusion(domain, config)
    settings = _settings(config, request)
    generator = torch.Generator(device=device).manual_seed(request.seed)
    model = model.to(device).eval()
    total = request.interpolate or request.n
    chunks: list[Batch] = []
    done = 0
    while done < total:
        size = min(settings["batch_size"], total - done)
        chunks.append(_generate_chunk(domain, diffusion, model, config, request, settings, size,
                                      generator, device, offset=done, total=total))
        done += size
    return _concat_batches(chunks)


def _settings(config: dict, request: SampleRequest) -> dict[str, Any]:
    section = config["sample"]
    return {
        "sampler": request.sampler or section["sampler"],
        "steps": request.steps or section["steps"],
        "guidance": section["guidance"] if request.guidance is None else request.guidance,
        "spacing": section.get("spacing", "uniform"),
        "batch_size": request.batch_size or section["batch_size"],
    }


@torch.no_grad()
def _generate_chunk(domain: Domain, diffusion: Diffusion, model: nn.Module, config: dict,
                    request: SampleRequest, settings: dict, size: int, generator: torch.Generator,
                    device, *, offset: int, total: int) -> Batch:
    if request.init is not None:
        batch = to_device(domain.load_known(request.init, request.mask, size, config), device)
    else:
        batch = to_device(domain.prepare_sampling(model, size, config, cond=request.cond, generator=generator), device)
    cond = batch.get("cond")
    common = dict(
        cond=cond, guidance=settings["guidance"], uncond=domain.null_cond(cond) if cond is not None else None,
        model_kwargs=batch.get("extra"), generator=generator, progress=request.progress,
    )
    if request.init is not None and "keep" in batch:
        x = diffusion.inpaint(model, batch["x"], batch["keep"], sampler=_inpaint_sampler(settings),
                              steps=settings["steps"], resample=request.resample, **common)
    elif request.init is not None:
        x = diffusion.edit(model, batch["x"], request.strength, sampler=settings["sampler"],
                           steps=settings["steps"], **common)
    else:
        x_T = _interpolated_noise(diffusion, batch, offset, size, total, generator) if request.interpolate else None
        x = diffusion.sample(model, batch["x"], sampler=settings["sampler"], steps=settings["steps"],
                             spacing=settings["spacing"], x_T=x_T, **common)
    batch["x"] = domain.decode(x, batch)
    return to_device(batch, "cpu")


def _inpaint_sampler(settings: dict) -> str:
    # Multistep solvers lose their history across the re-noising of inpainting: use one-step ones.
    return settings["sampler"] if settings["sampler"] in ("ddpm", "ddim", "euler") else "ddpm"


def _interpolated_noise(diffusion: Diffusion, batch: Batch, offset: int, size: int, total: int,
                        generator: torch.Generator) -> State:
    """Noise of samples ``offset .. offset + size`` on the great circle between two fixed noises."""
    single = tree_map(lambda leaf: leaf[:1], batch["x"])
    extra = {k: v[:1] for k, v in (batch.get("extra") or {}).items()}
    seed = torch.Generator(device=generator.device).manual_seed(int(generator.initial_seed()))
    start = diffusion.noise(single, seed, **extra)
    end = diffusion.noise(single, seed, **extra)
    weights = torch.arange(offset, offset + size, dtype=torch.float64) / max(total - 1, 1)
    frames = [slerp(start, end, float(w)) for w in weights]
    return concat(frames)


def _concat_batches(chunks: list[Batch]) -> Batch:
    if len(chunks) == 1:
        return chunks[0]
    merged: Batch = {}
    for key, value in chunks[0].items():
        parts = [chunk[key] for chunk in chunks]
        if isinstance(value, torch.Tensor) or (isinstance(value, dict) and value):
            merged[key] = concat(parts)
        elif isinstance(value, list):
            merged[key] = [item for part in parts for item in part]
        else:
            merged[key] = value
    return merged
