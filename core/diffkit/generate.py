"""Sampling with a domain: new samples, edits of given ones, and interpolations between noises."""

from __future__ import annotations

import contextlib
import copy
import inspect
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .categorical import CategoricalDiffusion
from .config import LIMITS, Limit, at_least, check_value, range_problem, type_problem
from .contract import Process
from .diffusion import Diffusion
from .domain import Batch, Domain, accepted_keywords
from .flow import FlowMatching
from .plugins import Registry
from .guidance import slerp
from .mixed import LeafNoise, MixedProcess
from .samplers import SAMPLERS, SAMPLER_KINDS, get_sampler, is_stepwise, sampler_kind, sampler_names
from .distributed import World
from .tree import SampleGenerators, State, concat, first_leaf, to_device, tree_map
from .workers import draw_in_workers, worker_count


PRECISIONS = ("float32", "bfloat16", "auto")
#: ``diffusion.kind`` -> the process it builds (a config section in, :meth:`from_config`).
PROCESSES: dict[str, type[Process]] = {"gaussian": Diffusion, "flow": FlowMatching, "categorical": CategoricalDiffusion}


def build_diffusion(domain: Domain, config: dict, registry: Registry | None = None,
                    model: nn.Module | None = None) -> Process:
    """The process a config's ``diffusion`` section describes, with the domain's noise: the one
    ``diffusion.kind`` names (categorical diffusion takes its classes from
    :meth:`Domain.categories` for ``model``), or a :class:`~diffkit.mixed.MixedProcess` when the
    domain gives each leaf its own (:meth:`Domain.processes`). Schedule and sampler names are
    looked up in ``registry`` (the built-ins when None)."""
    schedules, samplers = (registry.schedules, registry.samplers) if registry is not None else (None, None)
    section = config["diffusion"]

    def categories(key: str | None = None):
        if model is None:
            raise ValueError("a categorical diffusion needs the model, whose domain says its classes")
        num_classes, marginal = domain.categories(model, config)
        if key is None:
            return num_classes, marginal
        pick = lambda value: value[key] if isinstance(value, dict) else value  # noqa: E731
        return pick(num_classes), pick(marginal)

    leaves = process_kinds(domain, config)
    if leaves is None:
        return PROCESSES[diffusion_kind(config)].from_config(section, noise_fn=domain.noise, samplers=samplers,
                                                             schedules=schedules, categories=categories)
    processes = {key: PROCESSES[kind].from_config(section, noise_fn=LeafNoise(domain.noise, key), samplers=samplers,
                                                  schedules=schedules, categories=lambda key=key: categories(key))
                 for key, kind in leaves.items()}
    return MixedProcess(processes, noise_fn=domain.noise, samplers=samplers)


def diffusion_kind(config: dict) -> str:
    """The config's ``diffusion.kind``, checked: one of :data:`PROCESSES`."""
    kind = config["diffusion"].get("kind", "gaussian")
    if kind not in PROCESSES:
        raise ValueError(f"diffusion.kind must be one of {', '.join(repr(k) for k in PROCESSES)}, got {kind!r}")
    return kind


def process_kinds(domain: Domain | None, config: dict) -> dict[str, str] | None:
    """The kind of process of each leaf when the domain gives the leaves different ones
    (:meth:`Domain.processes`), checked; None when one process serves the whole state."""
    leaves = domain.processes(config) if domain is not None else None
    if leaves is None:
        return None
    for key, kind in leaves.items():
        if kind not in PROCESSES:
            raise ValueError(f"the {domain.name} domain gives the leaf {key!r} the process {kind!r}; valid: "
                             f"{', '.join(PROCESSES)}")
    return dict(leaves)


def sampler_kinds(config: dict, domain: Domain | None = None) -> tuple[str, ...]:
    """The kinds of samplers the config's process runs (with ``domain``, all those its leaves run)."""
    leaves = process_kinds(domain, config)
    if leaves is None:
        return PROCESSES[diffusion_kind(config)].sampler_kinds
    return tuple(dict.fromkeys(kind for leaf in leaves.values() for kind in PROCESSES[leaf].sampler_kinds))


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
    resample: int | None = None
    interpolate: int = 0
    progress: bool = False


#: The type (shown by an example value) and the range of each numeric option of a request; those
#: that override a setting take its limit.
REQUEST_OPTIONS: dict[str, tuple[Any, Limit]] = {
    "n": (16, at_least(1)), "steps": (30, LIMITS["sample.steps"]), "guidance": (1.0, LIMITS["sample.guidance"]),
    "seed": (0, LIMITS["train.seed"]), "batch_size": (1, LIMITS["sample.batch_size"]),
    "strength": (0.6, Limit(0, 1, low_open=True)), "resample": (1, LIMITS["sample.resample"]),
    "interpolate": (0, at_least(0)),
}
#: How ``diffkit sample`` names the options of a request (Python callers name the fields).
OPTION_NAMES = {"n": "-n/--num-samples", "steps": "--steps", "guidance": "--guidance", "seed": "--seed",
                "batch_size": "--batch-size", "strength": "--strength", "resample": "--resample",
                "interpolate": "--interpolate", "sampler": "--sampler"}


def check_request(request: SampleRequest, registry: Registry | None = None,
                  kinds: tuple[str, ...] | None = None, *, names: dict[str, str] = OPTION_NAMES) -> None:
    """Refuse a request that would fail deep inside sampling or quietly do something else, before
    any model is loaded: an option of the wrong type (TypeError) or outside its range in
    :data:`REQUEST_OPTIONS` (ValueError: counts below 1, a guidance that is not a finite number), an
    unknown sampler name (looked up in ``registry``, the built-ins when None), or with ``kinds``
    (the samplers the process runs, once the config is known) a sampler of another kind. Errors name each
    option as ``names`` does (the command line's by default), else by its field."""
    for field, (example, limit) in REQUEST_OPTIONS.items():
        value, name = getattr(request, field), names.get(field, field)
        if isinstance(value, numbers.Number) and hasattr(value, "item"):
            value = value.item()  # a NumPy scalar passes for the Python number it holds
        if (value is None and field != "n") or (field == "n" and request.interpolate):
            continue  # None: the config's value; n: an interpolation has --interpolate samples instead
        if field == "strength" and (request.init is None or request.mask is not None):
            continue  # only an edit of the whole input uses it
        problem = type_problem(value, example)
        if problem is not None:
            raise TypeError(f"{name} {problem}")
        problem = range_problem(value, limit)
        if problem is not None:
            raise ValueError(f"{name} {problem}")
    if request.interpolate == 1:
        raise ValueError(f"{names.get('interpolate', 'interpolate')} draws samples between two ends, so it needs "
                         f"at least 2, got {request.interpolate}")
    if request.sampler is not None:
        check_sampler(request.sampler, registry.samplers if registry is not None else None, kinds,
                      names.get("sampler", "sampler"))


def check_sampler(name: str, samplers: dict | None, kinds: tuple[str, ...] | None, where: str) -> None:
    """Refuse a sampler name that is unknown or, when ``kinds`` is given, of another kind; the
    error starts with ``where`` (the option or setting that named it)."""
    known = SAMPLERS if samplers is None else samplers
    if kinds is None:
        if name not in known:
            listing = "; ".join(f"{k}: {', '.join(sampler_names(k, known))}" for k in SAMPLER_KINDS
                                if sampler_names(k, known))
            raise ValueError(f"{where}: unknown sampler {name!r}; valid: {listing}")
        return
    try:
        get_sampler(name, known, kind=kinds)
    except ValueError as error:
        hint = ""
        if name in known and sampler_kind(known[name]) not in kinds and where.startswith("sample."):
            hint = f" (choose one with --set {where}=NAME)"
        raise ValueError(f"{where}: {error}{hint}") from None


def generate(domain: Domain, model: nn.Module, config: dict, request: SampleRequest,
             device: torch.device | str = "cpu", world: World = World(), registry: Registry | None = None) -> Batch | None:
    """Samples as a batch on the CPU (``x`` decoded by the domain).

    They are drawn in chunks of ``sample.batch_size``. Sample ``i`` draws everything random
    (its structure, its starting noise, every step's noise) from its own generator, seeded by
    ``(request.seed, i)``, so it is the same whatever the batch size and however many processes
    share the work. Under torchrun each rank draws every ``world.size``-th chunk and rank 0
    returns them all, in order (other ranks return ``None``). On the CPU a rank's chunks are
    shared by ``sample.workers`` forked processes (:mod:`diffkit.workers`). A model on an
    autoencoder's latents (``latent.autoencoder``) samples latents, which ``x`` holds decoded.
    """
    from .latent import latent_stage

    domain = latent_stage(domain, config)
    check_request(request, registry, sampler_kinds(config, domain))
    diffusion = build_diffusion(domain, config, registry, model)
    settings = sample_settings(config, request, registry.samplers if registry is not None else None, domain)
    settings["precision"] = resolve_precision(settings["precision"], device)
    model = model.to(device).eval()
    network = network_at_precision(model, settings["precision"])
    total = request.interpolate or request.n
    # The chunks depend on n and the batch size alone, never on how many processes draw them:
    # the same products, rounded the same way, give the same samples.
    most = settings["batch_size"]
    check_memory(total, sample_bytes(domain, model, config, request, device), available_memory(), settings)
    plan = [(start, min(most, total - start)) for start in range(0, total, most)]
    mine = [k for k in range(len(plan)) if k % world.size == world.rank]
    workers = worker_count(settings["workers"], device, world, len(mine))
    bar = _progress_bar(request.progress and world.is_main, len(mine) * settings["steps"])

    def draw(indices: list[int], progress) -> dict[int, Batch]:
        drawn = {}
        for k in indices:
            start, size = plan[k]
            generator = SampleGenerators.seeded(request.seed, range(start, start + size), device)
            drawn[k] = _generate_chunk(domain, diffusion, model, network, config, request, settings, size,
                                       generator, device, offset=start, total=total, bar=progress)
        return drawn

    try:
        if workers > 1:
            chunks = draw_in_workers(draw, [mine[w::workers] for w in range(workers)], bar)
        else:
            chunks = draw(mine, bar)
    finally:
        if bar is not None:
            bar.close()
    if world.distributed:
        chunks = _gather_chunks(chunks, world)
        if chunks is None:
            return None
    return _concat_batches([chunks[k] for k in sorted(chunks)])


def _progress_bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sampling", unit="step", dynamic_ncols=True)


def _gather_chunks(chunks: dict[int, Batch], world: World) -> dict[int, Batch] | None:
    import torch.distributed as dist

    gathered: list | None = [None] * world.size if world.is_main else None
    dist.gather_object(chunks, gathered, dst=0)
    if not world.is_main:
        return None
    return {k: batch for part in gathered for k, batch in part.items()}


def sample_settings(config: dict, request: SampleRequest, samplers: dict | None = None,
                    domain: Domain | None = None) -> dict[str, Any]:
    """What sampling runs with: the request's choices over the config's ``sample`` section, with
    ``spacing = "auto"`` resolved to the sampler's own where it names one (the process resolves it
    otherwise) and ``"uniform"`` for editing. ``samplers`` is where names are looked up (a
    registry's; the built-ins by default); ``domain`` says which processes its leaves use."""
    section = config["sample"]
    kinds = sampler_kinds(config, domain)
    if request.sampler is None:
        check_sampler(section["sampler"], samplers, kinds, "sample.sampler")
    else:
        check_sampler(request.sampler, samplers, kinds, "--sampler")
    settings = {
        "sampler": request.sampler or section["sampler"],
        "steps": request.steps or section["steps"],
        "guidance": section["guidance"] if request.guidance is None else request.guidance,
        "spacing": section.get("spacing", "auto"),
        "batch_size": request.batch_size or section["batch_size"],
        "precision": section.get("precision", "float32"),
        "workers": section.get("workers", 0),
        "resample": section.get("resample", 1) if request.resample is None else request.resample,
        # The options are the config's sampler's: one named by the request runs with its defaults.
        "options": dict(section.get("options", {})) if request.sampler in (None, section["sampler"]) else {},
    }
    sampler = get_sampler(settings["sampler"], samplers, kind=kinds)
    check_sampler_options(settings["sampler"], sampler, settings["options"])
    if settings["precision"] not in PRECISIONS:
        raise ValueError(f"sample.precision must be one of {', '.join(PRECISIONS)}, got {settings['precision']!r}")
    if request.init is not None:
        settings["spacing"] = "uniform"
    elif settings["spacing"] == "auto" and getattr(sampler, "spacing", None):
        settings["spacing"] = sampler.spacing
    return settings


def check_sampler_options(name: str, sampler: Callable, options: dict) -> None:
    """Refuse ``sample.options`` that the sampler function does not take (its keyword-only
    parameters besides ``generator`` and ``callback``) or whose type differs from its default's."""
    parameters = inspect.signature(sampler).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return  # a wrapper that passes everything on
    accepted = {key: p.default for key, p in parameters.items()
                if p.kind is p.KEYWORD_ONLY and key not in ("generator", "callback")}
    for key, value in options.items():
        if key not in accepted:
            listing = ", ".join(sorted(accepted)) or "none"
            raise ValueError(f"sample.options.{key}: the {name} sampler has no option {key!r} (its options: {listing})")
        check_value(f"sample.options.{key}", value, accepted[key])


def sample_bytes(domain: Domain, model: nn.Module, config: dict, request: SampleRequest,
                 device: torch.device | str = "cpu") -> int:
    """The bytes of one sample of ``request``: those of the tensors of a batch of one as the
    domain prepares it (its state, condition and extras), which the drawn samples keep."""
    generator = SampleGenerators.seeded(request.seed, range(1), device)
    batch = _prepared_chunk(domain, model, config, request, 1, generator, device)
    return sum(leaf.nbytes for leaf in _tensors(batch))


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of a batch, at any depth (unlike a state's leaves, a batch may also hold a
    domain's non-tensor entries, which are left aside)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _tensors(item)]
    return []


def available_memory() -> int | None:
    """Bytes of memory this process could still take: what Linux reports as available, else the
    machine's physical memory; None where neither is known."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(total: int, per_sample: int, available: int | None, settings: dict) -> None:
    """Refuse, before drawing, ``total`` samples of ``per_sample`` bytes that memory cannot hold:
    every sample is kept until all are written, and the chunks are joined into one batch (a
    second copy). The error says what the request would take and how many samples fit."""
    need = 2 * total * per_sample
    if available is None or need <= available:
        return
    chunks = -(-total // settings["batch_size"])
    fits = available // (2 * max(per_sample, 1))
    raise ValueError(f"{total:,} samples ({chunks:,} batches of {min(total, settings['batch_size']):,}, "
                     f"{settings['steps']} sampling steps each) would take about {_bytes(need)} of memory until they "
                     f"are written ({_bytes(per_sample)} a sample, held twice while the batches are joined), more "
                     f"than the {_bytes(available)} available: draw at most {fits:,} at a time (runs with different "
                     "seeds draw different samples)")


def _bytes(count: float) -> str:
    if count < 1000:
        return f"{count:,.0f} B"
    for unit in ("kB", "MB", "GB"):
        count /= 1000
        if count < 1000:
            return f"{count:,.1f} {unit}"
    return f"{count / 1000:,.1f} TB"


def _prepared_chunk(domain: Domain, model: nn.Module, config: dict, request: SampleRequest, size: int,
                    generator: SampleGenerators, device) -> Batch:
    """The batch a chunk of ``size`` samples starts from, on ``device``: the known part of an
    edit, one sample's structure repeated for an interpolation, or new samples' structure."""
    if request.init is not None:
        batch = domain.load_known(request.init, request.mask, size, config, model=model, cond=request.cond,
                                  generator=generator)
    elif request.interpolate:
        # Every frame shares the first sample's condition and structure (e.g. its atom count);
        # only the noise moves along the interpolation.
        first = domain.prepare_sampling(model, 1, config, cond=request.cond,
                                        generator=torch.Generator(device=device).manual_seed(request.seed))
        batch = {key: _repeat(value, size) for key, value in first.items()}
    else:
        batch = domain.prepare_sampling(model, size, config, cond=request.cond, generator=generator)
    return to_device(batch, device)


@torch.no_grad()
def _generate_chunk(domain: Domain, diffusion: Process, model: nn.Module, network: nn.Module, config: dict,
                    request: SampleRequest, settings: dict, size: int, generator: SampleGenerators,
                    device, *, offset: int, total: int, bar=None) -> Batch:
    batch = _prepared_chunk(domain, model, config, request, size, generator, device)
    with _autocast(device, settings["precision"]):
        x = _denoise_chunk(domain, diffusion, network, batch, request, settings, generator, offset=offset,
                           size=size, total=total, bar=bar)
    batch["x"] = domain.decode(x, batch, **accepted_keywords(domain.decode, model=model, config=config))
    return to_device(batch, "cpu")


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``sample.precision`` on ``device``: ``"auto"`` is bfloat16 where the hardware computes it
    natively (CUDA devices that support it, CPUs with AMX or AVX-512 BF16), float32 elsewhere."""
    if precision != "auto":
        return precision
    return "bfloat16" if native_bfloat16(torch.device(device)) else "float32"


def native_bfloat16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    # torch reports the CPU's instruction sets only through these private probes; without them, no.
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(probe() for probe in probes if probe is not None)


def network_at_precision(model: nn.Module, precision: str) -> nn.Module:
    """The network that denoises: ``model`` itself in float32; for bfloat16 a copy whose floating
    parameters are bfloat16, so that activations stay bfloat16 between layers instead of being
    cast back and forth around every product. Buffers keep their dtype (statistics such as
    property means need float32's precision)."""
    if precision == "float32":
        return model
    network = copy.deepcopy(model)
    for parameter in network.parameters():
        if parameter.is_floating_point():
            parameter.data = parameter.data.to(torch.bfloat16)
    return network


def _autocast(device, precision: str):
    """Under bfloat16, autocast casts the float32 inputs of the network's products (its outputs
    go back to the state's dtype)."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def _denoise_chunk(domain: Domain, diffusion: Process, model: nn.Module, batch: Batch, request: SampleRequest,
                   settings: dict, generator: SampleGenerators, *, offset: int, size: int, total: int,
                   bar=None) -> State:
    """Samples, an inpainting (``keep`` in the batch) or SDEdit (``--init`` alone) of one chunk;
    ``batch["mask"]`` (1 = a real entry) marks padding."""
    cond = batch.get("cond")
    common = dict(
        cond=cond, guidance=settings["guidance"], uncond=domain.null_cond(cond) if cond is not None else None,
        model_kwargs=batch.get("extra"), generator=generator, mask=batch.get("mask"), steps=settings["steps"],
        spacing=settings["spacing"], callback=(lambda info: bar.update(1)) if bar is not None else None,
    )
    if request.init is not None and "keep" in batch:
        sampler = _inpaint_sampler(diffusion, settings)
        options = settings["options"] if sampler == settings["sampler"] else {}  # they are the named sampler's
        return diffusion.inpaint(model, batch["x"], batch["keep"], sampler=sampler, resample=settings["resample"],
                                 **common, **options)
    if request.init is not None:
        return diffusion.edit(model, batch["x"], request.strength, sampler=settings["sampler"], **common,
                              **settings["options"])
    x_T = _interpolated_noise(diffusion, batch, offset, size, total, request.seed) if request.interpolate else None
    return diffusion.sample(model, batch["x"], sampler=settings["sampler"], x_T=x_T, **common, **settings["options"])


def _inpaint_sampler(diffusion: Process, settings: dict) -> str:
    """The configured sampler when it may run one step at a time (inpainting re-noises between
    steps, which a multistep solver's history would not survive), else the process's default."""
    name = settings["sampler"]
    return name if is_stepwise(diffusion.get_sampler(name)) else diffusion.defaults["inpaint"]["sampler"]


def _interpolated_noise(diffusion: Process, batch: Batch, offset: int, size: int, total: int,
                        seed: int) -> State:
    """Noise of samples ``offset .. offset + size`` on the great circle between the noises of
    ``seed`` and ``seed + 1``."""
    if not diffusion.noise_is_prior:
        raise ValueError(f"--interpolate moves along a path between two Gaussian noises; this domain's diffusion is "
                         f"{diffusion.kind}, whose prior is not its noise")
    single = tree_map(lambda leaf: leaf[:1], batch["x"])
    extra = {k: v[:1] for k, v in (batch.get("extra") or {}).items()}
    start = diffusion.noise_fn(single, torch.Generator(device=_device_of(single)).manual_seed(seed), **extra)
    end = diffusion.noise_fn(single, torch.Generator(device=_device_of(single)).manual_seed(seed + 1), **extra)
    weights = torch.arange(offset, offset + size, dtype=torch.float64) / max(total - 1, 1)
    frames = [slerp(start, end, float(w)) for w in weights]
    return concat(frames)


def _repeat(value: Any, size: int) -> Any:
    """A batch entry of one sample repeated ``size`` times (non-tensor entries pass through)."""
    if isinstance(value, torch.Tensor) or (isinstance(value, dict) and value):
        return tree_map(lambda leaf: leaf.expand(size, *leaf.shape[1:]).clone(), value)
    return value


def _device_of(state: State) -> torch.device:
    return first_leaf(state).device


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
