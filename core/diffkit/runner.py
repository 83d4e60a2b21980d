"""One training loop for every domain.

Data order, timesteps, noise and condition dropout are pure functions of the seed and the step,
drawn for the whole global batch on every process and sliced per rank; each item's own randomness
(data augmentation drawn from torch's, numpy's or Python's global generator) is seeded by the
seed, the step and the item's place in the global batch (:class:`SeededItems`). So a run resumed
from a checkpoint continues exactly as if it had never stopped, and a run on N processes takes the
same steps as one process with the same global batch (unless ``train.shard_data`` gives each
process its own part of the data, see :class:`GlobalBatchSampler`).

What the model draws itself from the global generators (dropout, a random condition drop inside
the network) is seeded the same way, per micro-batch: by the seed, the step and the micro-batch's
place among the ``processes x train.grad_accum`` pieces of the global batch
(:func:`seeded_global_generators`). Resuming stays exact; N processes with ``grad_accum`` A take
the same steps as one process with ``grad_accum`` N x A (a model without such draws: any split).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from . import checkpoint as ckpt
from . import distributed, kit, sharding
from .config import differing_keys, fill_defaults, lookup
from .domain import Domain
from .contract import Process
from .generate import SampleRequest, build_diffusion, generate, sample_settings
from .guidance import replace_condition
from .loading import load_weights, start_from
from .plugins import Registry
from .tree import State, batch_size as _batch_size, concat, to_device, tree_map

# Keys that may change when a run is resumed: they do not alter the steps already taken.
RESUMABLE_KEYS = {
    "train.steps", "train.checkpoint_every", "train.keep_checkpoints", "train.preview_every",
    "train.preview_count", "train.log_every", "train.num_workers", "train.compile", "train.parallel",
    "train.fsdp_unit_params",
}


class TrainingError(RuntimeError):
    pass


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C; the message says where it stopped and how to resume."""

    def __init__(self, domain: str, run_dir: Path, step: int, command: str = "train"):
        found = ckpt.list_checkpoints(run_dir)
        self.domain, self.run_dir, self.step = domain, run_dir, step
        self.checkpoint = found[-1] if found else None
        if self.checkpoint is None:
            message = (f"interrupted at step {step}, before the first checkpoint; start again with: "
                       f"diffkit {command} --domain {domain} --out {run_dir}")
        else:
            message = (f"interrupted at step {step}; the last checkpoint is {str(self.checkpoint)!r}; "
                       f"resume with: diffkit {command} --domain {domain} --out {run_dir} --resume")
        super().__init__(message)


@dataclass
class RunPlan:
    """What a run is about to do, known once its data and model are built."""

    dataset_size: int
    parameters: int
    steps: int
    start_step: int
    batch_size: int
    device: str
    processes: int
    run_dir: Path
    data_notes: list[str] = field(default_factory=list)  # what the domain chose from the data, and why


@dataclass
class RunResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    loss: float | None


def train(domain: Domain, config: dict, *, out: str | Path, data: str | None = None, resume: bool = False,
          device: str | None = None, progress: bool = True, plugin: tuple[str, str] = ("", ""),
          registry: Registry | None = None, on_start: Callable[[RunPlan], None] | None = None,
          objective: DenoisingObjective | None = None) -> RunResult:
    """Train ``domain`` with ``config`` into the run folder ``out``; see the module docstring.

    ``resume=True`` continues from the latest checkpoint in ``out``. ``plugin`` is the
    ``(name, version)`` of the plugin providing the domain, recorded in checkpoints; ``registry``
    resolves schedule and sampler names registered by plugins. ``on_start`` receives the
    :class:`RunPlan` on the main process before the first step. ``objective`` is what the steps
    minimise: by default the one of the config's ``train.stage`` (:func:`stage_objective`: the
    denoising loss, or an autoencoder's), a distillation (:class:`diffkit.distill.Distillation`)
    for a few-step student. A config naming an autoencoder (``latent.autoencoder``) trains on its
    latents (:mod:`diffkit.latent`).
    """
    objective = objective or stage_objective(config)
    world = distributed.world_from_env()
    device = distributed.pick_device(device, world)
    distributed.init(world, device)
    trainer, interrupted = None, None
    try:
        trainer = Trainer(domain, config, Path(out), data, device, world, plugin, progress, registry, objective)
        trainer.start(resume)
        if on_start is not None and world.is_main:
            on_start(trainer.plan())
        result = trainer.run()
    except KeyboardInterrupt:
        # Raised outside this block, so that the traceback no longer holds the trainer.
        interrupted = TrainingInterrupted(domain.name, Path(out), trainer.step if trainer else 0, objective.command)
    except BaseException:
        distributed.shutdown(world, wait=False)
        raise
    # The trainer is in a reference cycle (its LR schedule calls its method) and its DDP wrapper
    # holds the process group: drop it so that shutdown's collection frees the group's threads.
    trainer = None
    distributed.shutdown(world, wait=interrupted is None)
    if interrupted is not None:
        raise interrupted
    return result


STAGES = ("diffusion", "autoencoder")


def stage_objective(config: dict) -> DenoisingObjective:
    """The objective of the config's ``train.stage``: the denoising loss (``"diffusion"``) or the
    latent stage's autoencoder (``"autoencoder"``, :class:`diffkit.autoencoder.AutoencoderObjective`)."""
    stage = config["train"].get("stage", "diffusion")
    if stage == "diffusion":
        return DenoisingObjective()
    if stage == "autoencoder":
        from .autoencoder import AutoencoderObjective

        return AutoencoderObjective(config)
    raise ValueError(f"train.stage must be one of {', '.join(STAGES)}, got {stage!r}")


class DenoisingObjective:
    """What ``diffkit train`` minimises: the process's loss (:meth:`Process.loss`) at the times it draws.

    A training mode replaces it (:class:`diffkit.distill.Distillation`, the autoencoder of
    :mod:`diffkit.autoencoder`); the runner asks it for the model, its starting weights, the
    process it checks the data against, the times and noise of each step's samples, the loss
    (and the terms it is made of, logged beside it), the previews and what to record in
    ``run.json``, and names its ``command`` in messages about resuming."""

    command = "train"

    def build_model(self, domain: Domain, config: dict, dataset: Dataset) -> nn.Module:
        """The model the run trains (the domain's denoiser)."""
        return domain.build_model(config)

    def fit_data(self, domain: Domain, model: nn.Module, dataset: Dataset, config: dict) -> None:
        """Record what sampling needs to know about the data in the model (:meth:`Domain.fit_data`)."""
        domain.fit_data(model, dataset, config)

    def initialise(self, model: nn.Module, device: torch.device) -> None:
        """Set the starting weights of a new run (a resumed run then loads its checkpoint)."""

    def process(self, domain: Domain, config: dict, registry: Registry | None, model: nn.Module,
                example: State) -> Process | None:
        """The process of the run, checked against an ``example`` batch of data states, and with
        sampling settings that suit it (a sampler of another kind would fail at the first preview)."""
        diffusion = build_diffusion(domain, config, registry, model)
        problems = diffusion.check_state(example)
        if problems:  # e.g. integer classes under a continuous process: the first step would fail obscurely
            raise TrainingError(f"the data does not suit diffusion.kind = {config['diffusion']['kind']!r}: "
                                f"{problems[0]}")
        sample_settings(config, SampleRequest(), registry.samplers if registry is not None else None, domain)
        return diffusion

    def training_times(self, diffusion: Process, size: int, generator: torch.Generator) -> torch.Tensor:
        return diffusion.training_times(size, generator=generator)

    def training_noise(self, domain: Domain, like: State, generator: torch.Generator, **extra) -> State:
        """The noise of a global batch shaped like ``like``: the domain's."""
        return domain.noise(like, generator, **extra)

    def start_step(self, step: int) -> None:
        """Called before each step with its number (0 for the first)."""

    def loss(self, diffusion: Process, model: nn.Module, x0: State, **options) -> torch.Tensor:
        return diffusion.loss(model, x0, **options)

    def terms(self) -> dict[str, torch.Tensor]:
        """The parts of the last :meth:`loss`, by name (detached means), logged beside the loss."""
        return {}

    def preview(self, domain: Domain, model: nn.Module, config: dict, device: torch.device,
                registry: Registry | None, dataset: Dataset) -> dict:
        """The batch a preview writes: samples of the EMA ``model``."""
        request = SampleRequest(n=config["train"]["preview_count"], seed=config["train"]["seed"],
                                cond=config["train"]["preview_cond"] or None)
        return generate(domain, model, config, request, device=device, registry=registry)

    def run_info(self) -> dict:
        return {}


class Trainer:
    def __init__(self, domain: Domain, config: dict, run_dir: Path, data: str | None, device: torch.device,
                 world: distributed.World, plugin: tuple[str, str], progress: bool, registry: Registry | None = None,
                 objective: DenoisingObjective | None = None):
        from .latent import latent_stage

        self.domain = latent_stage(domain, config)  # the domain itself, or its latents under an autoencoder
        self.config, self.run_dir, self.data, self.registry = config, run_dir, data, registry
        self.objective = objective or DenoisingObjective()
        self.device, self.world, self.plugin, self.show_progress = device, world, plugin, progress
        self.train_cfg = config["train"]
        self.sharded = _parallel_mode(self.train_cfg) == "fsdp" and world.distributed
        self.step = 0
        self.last_checkpoint: Path | None = None
        self.last_loss: float | None = None

    # -- set-up ------------------------------------------------------------------------------

    def start(self, resume: bool) -> None:
        existing = ckpt.list_checkpoints(self.run_dir)
        if existing and not resume:
            raise TrainingError(f"run folder {str(self.run_dir)!r} already holds checkpoints; pass --resume "
                                "to continue it, or choose another --out")
        if resume and not existing:
            raise TrainingError(f"nothing to resume: {str(self.run_dir)!r} holds no checkpoints (a run that stopped "
                                "before its first checkpoint simply starts again, without resume)")
        if resume and self.train_cfg["shard_data"]:
            self._check_same_processes()
        if self.world.is_main:
            ckpt.remove_partial_writes(self.run_dir)  # left by a run killed while writing
        torch.manual_seed(self.train_cfg["seed"])
        self.dataset = self.domain.build_dataset(self.config, self.data)
        self._check_dataset_size()
        self.model = self.objective.build_model(self.domain, self.config, self.dataset).to(self.device)
        # Trained parameters, before sharding (a latent diffusion's frozen autoencoder is not counted).
        self.parameter_count = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.objective.fit_data(self.domain, self.model, self.dataset, self.config)
        self.model.to(self.device)
        self.objective.initialise(self.model, self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        # One item of this process's, read as the loop reads items (its global generators seeded, then restored).
        first = data_part(len(self.dataset), self.world)[0] if self.train_cfg["shard_data"] else 0
        example = default_collate([SeededItems(self.dataset)[first, 0]])["x"]
        self.diffusion = self.objective.process(self.domain, self.config, self.registry, self.model, example)
        saved = self._load_checkpoint(existing[-1]) if resume else None
        if saved is not None:  # weights before sharding, optimizer state after
            load_weights(self.model, saved["model"], f"the weights of {str(existing[-1])!r}")
            load_weights(self.ema, saved["ema"], f"the EMA weights of {str(existing[-1])!r}")
        elif self.train_cfg["init_from"]:  # a resumed run has them in its checkpoint
            start_from(self.domain, self.model, self.config)
            self.ema.load_state_dict(self.model.state_dict())
        self.forward_model = self._wrap()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.train_cfg["lr"], weight_decay=self.train_cfg["weight_decay"],
            # Sharded parameters take the default (foreach) kernel: FSDP has been run on CPU processes only.
            fused=self.device.type == "cuda" and not self.sharded,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.noise_generator = torch.Generator().manual_seed(self.train_cfg["seed"] + 1)
        if saved is not None:
            self._restore_progress(saved, existing[-1])
        if self.world.is_main:
            self._write_run_files()

    def _check_same_processes(self) -> None:
        """Under ``train.shard_data`` the steps depend on the number of processes: resuming with
        another number would not continue the same run."""
        before = ckpt.read_run_info(self.run_dir).get("processes")
        if before is not None and before != self.world.size:
            raise TrainingError(f"{str(self.run_dir)!r} was trained by {before} process(es) with train.shard_data, "
                                f"which gives each process its own part of the data; resume it with {before} "
                                f"(this is {self.world.size})")

    def plan(self) -> RunPlan:
        return RunPlan(dataset_size=len(self.dataset), parameters=self.parameter_count,
                       steps=self.train_cfg["steps"], start_step=self.step, batch_size=self.train_cfg["batch_size"],
                       device=str(self.device), processes=self.world.size, run_dir=self.run_dir,
                       data_notes=self.domain.describe_data(self.dataset, self.config))

    def _check_dataset_size(self) -> None:
        size, batch = len(self.dataset), self.train_cfg["batch_size"]
        pieces = self.world.size * self.train_cfg["grad_accum"]
        if batch % pieces:
            raise ValueError(f"train.batch_size {batch} must be divisible by processes x train.grad_accum = {pieces}")
        if size < batch:
            raise ValueError(f"the dataset has {size} items, fewer than train.batch_size {batch}; "
                             "lower the batch size (--batch-size) or add data")
        if self.train_cfg["shard_data"] and size // self.world.size < batch // self.world.size:
            raise ValueError(f"with train.shard_data each of the {self.world.size} processes draws "
                             f"{batch // self.world.size} items a step from its part of the {size}, which holds "
                             f"{size // self.world.size}; lower the batch size or add data")

    def _lr_factor(self, step: int) -> float:
        warmup, total = self.train_cfg["warmup_steps"], self.train_cfg["steps"]
        if warmup and step < warmup:
            return (step + 1) / warmup
        if self.train_cfg["lr_schedule"] == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _wrap(self) -> nn.Module:
        """The module the loss calls: ``self.model`` sharded in place (FSDP) or wrapped (DDP),
        optionally compiled."""
        model = self.model
        if self.sharded:
            sharding.shard(self.model, self.train_cfg["fsdp_unit_params"])
            sharding.shard(self.ema, self.train_cfg["fsdp_unit_params"])  # same units: updates stay local
        if self.train_cfg.get("compile"):
            model = torch.compile(model)
        if self.world.distributed and not self.sharded:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return model

    def _load_checkpoint(self, path: Path) -> dict:
        state = ckpt.load(path, map_location="cpu")
        ckpt.check_domain(state, self.domain.name, path)
        made_by = "distill" if lookup(state["config"], "distill.teacher") else "train"
        if made_by != self.objective.command:
            raise TrainingError(f"{str(path)!r} was written by `diffkit {made_by}`; resume it with: diffkit {made_by} "
                                f"--domain {self.domain.name} --out {self.run_dir} --resume")
        # Settings added since the checkpoint was saved count at their defaults.
        check_resumable(fill_defaults(self.domain, state["config"]), self.config, path)
        return state

    def _restore_progress(self, state: dict, path: Path) -> None:
        sharding.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.noise_generator.set_state(state["rng"]["noise"])
        self.step = state["step"]
        self.last_checkpoint = path

    def _write_run_files(self) -> None:
        run = {"domain": self.domain.name, "plugin": self.plugin[0], "plugin_version": self.plugin[1],
               "data": self.data, "processes": self.world.size, **self.objective.run_info()}
        # Whole or not at all: a run killed while writing them must not leave half a file.
        kit.write_atomic(self.run_dir / "config.json", (json.dumps(self.config, indent=2) + "\n").encode())
        kit.write_atomic(self.run_dir / ckpt.RUN_FILE, (json.dumps(run, indent=2) + "\n").encode())
        _truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        _drop_later_previews(self.run_dir / "previews", self.step)

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> RunResult:
        total = self.train_cfg["steps"]
        loader = self._loader(self.step, total)
        bar = self._progress_bar(total)
        first_bad = torch.tensor(-1, device=self.device)
        window_loss = torch.zeros((), device=self.device)
        self.window_terms: dict[str, torch.Tensor] = {}
        window_start, window_steps = time.perf_counter(), 0
        for global_batch in loader:
            loss = self._train_step(global_batch)
            first_bad = torch.where(~torch.isfinite(loss) & (first_bad < 0), self.step, first_bad)
            window_loss += loss.detach()
            window_steps += 1
            self.step += 1
            if bar is not None:
                bar.update(1)
            if self._due("log_every") or self.step == total:
                self._check_finite(first_bad)
                seconds = time.perf_counter() - window_start
                mean_loss = float(distributed.all_mean(window_loss / window_steps, self.world))
                terms = {name: float(distributed.all_mean(total / window_steps, self.world))
                         for name, total in sorted(self.window_terms.items())}
                self._log(mean_loss, window_steps, seconds, bar, terms)
                window_loss.zero_()
                self.window_terms = {}
                window_start, window_steps = time.perf_counter(), 0
            if self._due("checkpoint_every") or self.step == total:
                self._check_finite(first_bad)
                self._save_checkpoint()
            if self._due("preview_every") or (self.step == total and self.train_cfg["preview_every"]):
                self._preview()
        if bar is not None:
            bar.close()
        return RunResult(self.run_dir, self.step, self.last_checkpoint, self.last_loss)

    def _due(self, key: str) -> bool:
        every = self.train_cfg[key]
        return bool(every) and self.step % every == 0

    def _loader(self, start: int, total: int) -> DataLoader:
        sampler = GlobalBatchSampler(len(self.dataset), self.train_cfg["batch_size"], self.train_cfg["seed"],
                                     start, total, self.world, shard_data=self.train_cfg["shard_data"])
        workers = self.train_cfg["num_workers"]
        return DataLoader(SeededItems(self.dataset), batch_sampler=sampler, collate_fn=MicroBatches(self.train_cfg["grad_accum"]),
                          num_workers=workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=workers > 0)

    def _train_step(self, micro_batches: list[dict]) -> torch.Tensor:
        """One optimizer step on this rank's share of the global batch; returns the mean loss."""
        accum = len(micro_batches)
        pieces = self.world.size * accum
        self.objective.start_step(self.step)
        draws = self._draw_randomness(micro_batches[0], pieces)
        self.model.train()
        total_loss = torch.zeros((), device=self.device)
        non_blocking = self.device.type == "cuda"  # copies that do not wait keep the host ahead of the GPU
        for k, batch in enumerate(micro_batches):
            piece = self.world.rank * accum + k
            batch = to_device(batch, self.device, non_blocking=non_blocking)
            t, noise, drop = (to_device(part, self.device, non_blocking=non_blocking) for part in draws[piece])
            # What the model draws from the global generators depends on the step and the piece only.
            model_seed = step_seed(self.train_cfg["seed"], self.step, self.train_cfg["batch_size"] + piece)
            with seeded_global_generators(model_seed, self.device):
                with self._gradient_sync(k == accum - 1), self._autocast():
                    loss = self._loss(batch, t, noise, drop)
                (loss / accum).backward()
            total_loss += loss.detach() / accum
            for name, value in self.objective.terms().items():
                self.window_terms[name] = self.window_terms.get(name, 0.0) + value.detach().float() / accum
        if self.train_cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train_cfg["grad_clip"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self._update_ema()
        return total_loss

    def _gradient_sync(self, sync: bool):
        """Gradients are exchanged across processes only on the last micro-batch of a step."""
        if self.sharded:
            sharding.set_gradient_sync(self.model, sync)
        elif self.world.distributed and not sync:
            return self.forward_model.no_sync()
        return contextlib.nullcontext()

    def _draw_randomness(self, example: dict, pieces: int) -> list:
        """Times, noise and dropout flags for the whole global batch, cut into ``pieces`` parts.

        Every rank draws all of them from the same generator in one go, so that the stream depends
        neither on the number of processes nor on gradient accumulation; the parts of other ranks
        are shaped like this rank's (only shapes matter for the draw)."""
        size = pieces * _batch_size(example["x"])
        x_like = concat([example["x"]] * pieces)
        extra = {key: concat([value] * pieces) for key, value in example.get("extra", {}).items()}
        t = self.objective.training_times(self.diffusion, size, self.noise_generator)
        noise = self.objective.training_noise(self.domain, x_like, self.noise_generator, **extra)
        drop = torch.rand(size, generator=self.noise_generator) < self.train_cfg["cond_drop"]
        parts = [torch.arange(k * size // pieces, (k + 1) * size // pieces) for k in range(pieces)]
        return [(t[index], tree_map(lambda leaf: leaf[index], noise), drop[index]) for index in parts]

    def _loss(self, batch: dict, t: torch.Tensor, noise: State, drop: torch.Tensor) -> torch.Tensor:
        cond = batch.get("cond")
        if cond is not None:
            uncond = self.domain.null_cond(cond)
            if uncond is not None:
                cond = replace_condition(cond, uncond, drop)
        return self.objective.loss(self.diffusion, self.forward_model, batch["x"], cond=cond, mask=batch.get("mask"),
                                   model_kwargs=batch.get("extra", {}), t=t, noise=noise,
                                   leaf_weights=self.domain.leaf_weights(self.config))

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up of the decay so that early EMA weights are not dominated by the initialisation.
        decay = min(self.train_cfg["ema_decay"], (1 + self.step) / (10 + self.step))
        ema_params = list(self.ema.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in self.model.parameters()], 1 - decay)
        for ema_buffer, buffer in zip(self.ema.buffers(), self.model.buffers()):
            ema_buffer.copy_(buffer)

    def _check_finite(self, first_bad: torch.Tensor) -> None:
        bad = int(first_bad)
        if bad >= 0:
            kept = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written"
            raise TrainingError(f"the loss became NaN or infinite at step {bad + 1}; stopping ({kept}). "
                                "Try a lower train.lr or train.grad_clip.")

    # -- outputs -----------------------------------------------------------------------------

    def _progress_bar(self, total: int):
        if not (self.show_progress and self.world.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=self.step, desc=f"{self.objective.command} {self.domain.name}", unit="step", dynamic_ncols=True)

    def _log(self, loss: float, steps: int, seconds: float, bar, terms: dict[str, float] | None = None) -> None:
        self.last_loss = loss
        if not self.world.is_main:
            return
        record = {"step": self.step, "loss": loss, **(terms or {}), "lr": self.scheduler.get_last_lr()[0],
                  "samples_per_s": steps * self.train_cfg["batch_size"] / max(seconds, 1e-9),
                  "time": time.time()}
        with open(self.run_dir / "metrics.jsonl", "a") as file:
            file.write(json.dumps(record) + "\n")
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}")
        _tensorboard_scalars(self.run_dir, record)

    def _save_checkpoint(self) -> None:
        if self.world.is_main or self.sharded:  # gathering sharded tensors takes every process
            weights = {"model": sharding.full_model_state(self.model), "ema": sharding.full_model_state(self.ema),
                       "optimizer": sharding.full_optimizer_state(self.model, self.optimizer)}
        if self.world.is_main:
            state = {
                "format": ckpt.FORMAT, "domain": self.domain.name, "plugin": self.plugin[0],
                "plugin_version": self.plugin[1], "diffkit_version": _diffkit_version(),
                "config": self.config, "step": self.step, **weights,
                "scheduler": self.scheduler.state_dict(), "rng": self._rng_states(),
            }
            self.last_checkpoint = ckpt.save_atomic(state, ckpt.checkpoint_path(self.run_dir, self.step))
            _prune(self.run_dir, self.train_cfg["keep_checkpoints"])
            plot_losses(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        distributed.barrier(self.world)

    def _rng_states(self) -> dict:
        # The global generators need no saving: every step seeds them (see the module docstring).
        return {"noise": self.noise_generator.get_state()}

    def _preview(self) -> None:
        ema = self._whole_ema()
        if self.world.is_main:
            batch = self.objective.preview(self.domain, ema, self.config, self.device, self.registry, self.dataset)
            folder = self.run_dir / "previews" / f"step_{self.step:08d}"
            written = self.domain.write_samples(batch, folder, self.config)
            _tensorboard_previews(self.run_dir, written, self.step)
        distributed.barrier(self.world)

    def _whole_ema(self) -> nn.Module | None:
        """The EMA model, unsharded on rank 0 under FSDP (every rank takes part in gathering it)."""
        if not self.sharded:
            return self.ema
        state = sharding.full_model_state(self.ema)
        if not self.world.is_main:
            return None
        whole = self.objective.build_model(self.domain, self.config, self.dataset)
        whole.load_state_dict(state)
        return whole.to(self.device).eval()


def _parallel_mode(train_cfg: dict) -> str:
    mode = train_cfg["parallel"]
    if mode not in sharding.PARALLEL_MODES:
        raise ValueError(f"train.parallel must be one of {', '.join(sharding.PARALLEL_MODES)}, got {mode!r}")
    return mode


def check_resumable(saved: dict, current: dict, path: Path | str) -> None:
    """Refuse to resume when settings that shape the steps already taken have changed."""
    changed = [key for key in differing_keys(saved, current) if key not in RESUMABLE_KEYS]
    if changed:
        details = "; ".join(f"{key}: {lookup(saved, key)!r} -> {lookup(current, key)!r}" for key in changed)
        raise ckpt.CheckpointError(f"cannot resume from {str(path)!r}: the config differs in {details}")


class GlobalBatchSampler:
    """Yields this rank's share of the global batches ``start .. total - 1`` as ``(index, seed)``
    pairs: each epoch is a permutation seeded by ``(seed, epoch)``, cut into full batches, so batch
    ``k`` depends only on ``k``; rank ``r`` of ``R`` takes the ``r``-th contiguous ``1 / R`` of
    each. An item's seed depends on the run's seed, the step and its place in the global batch.

    With ``shard_data`` rank ``r`` draws its share from its own part of the data set instead (the
    ``r``-th contiguous ``1 / R`` of the indices), permuted each epoch by ``(seed, epoch, r)``: it
    reads only that part, and a step depends on the number of processes as well."""

    def __init__(self, size: int, batch_size: int, seed: int, start: int, total: int,
                 world: distributed.World = distributed.World(), *, shard_data: bool = False):
        self.batch_size, self.seed, self.start, self.total = batch_size, seed, start, total
        self.share = batch_size // world.size
        self.rank_offset = world.rank * self.share
        self.rank, self.shard_data = world.rank, shard_data
        if shard_data:
            self.first, self.size = data_part(size, world)
            self.per_epoch = self.size // self.share
        else:
            self.first, self.size, self.per_epoch = 0, size, size // batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, order = -1, None
        places = range(self.rank_offset, self.rank_offset + self.share)
        for step in range(self.start, self.total):
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                generator = torch.Generator().manual_seed(self._order_seed(epoch))
                order = self.first + torch.randperm(self.size, generator=generator)
            if self.shard_data:
                offset = (step % self.per_epoch) * self.share
            else:
                offset = (step % self.per_epoch) * self.batch_size + self.rank_offset
            yield [(index, step_seed(self.seed, step, place))
                   for index, place in zip(order[offset:offset + self.share].tolist(), places)]

    def _order_seed(self, epoch: int) -> int:
        if self.shard_data:
            return step_seed(self.seed, epoch, -1 - self.rank)  # by (seed, epoch, rank); places are never negative
        return self.seed * 1_000_003 + epoch

    def __len__(self) -> int:
        return max(0, self.total - self.start)


def data_part(size: int, world: distributed.World) -> tuple[int, int]:
    """``(first index, count)``: the part of ``size`` items that this rank reads under
    ``train.shard_data``, the ``r``-th contiguous ``1 / R`` of them."""
    first = world.rank * size // world.size
    return first, (world.rank + 1) * size // world.size - first


def step_seed(seed: int, step: int, place: int) -> int:
    """The seed of one place of a step: places ``0 .. batch_size - 1`` are the global batch's items,
    ``batch_size + j`` the model's own draws on the global batch's ``j``-th piece."""
    return ((seed * 1_000_003 + step) * 1_000_033 + place) % 2**63


@contextlib.contextmanager
def seeded_global_generators(seed: int, device: torch.device = torch.device("cpu")) -> Iterator[None]:
    """Inside the block, Python's, numpy's and torch's global generators (the CPU's, and
    ``device``'s when it is an accelerator) start from ``seed``; after it they are as before."""
    import random

    accelerator = None if device.type == "cpu" else torch.get_device_module(device)
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
             accelerator.get_rng_state() if accelerator else None)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    if accelerator:
        accelerator.manual_seed(seed)  # the current device: the run's (pick_device sets it)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        if accelerator:
            accelerator.set_rng_state(saved[3])


class SeededItems(Dataset):
    """``dataset`` read with ``(index, seed)`` keys: the item is made with torch's, numpy's and
    Python's global generators seeded by ``seed`` (and restored afterwards), so augmentation a
    dataset draws from them is the same in every process and on every resume."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with seeded_global_generators(seed):
            return self.dataset[index]


class MicroBatches:
    """Collates a rank's items into ``count`` equal micro-batches (for gradient accumulation)."""

    def __init__(self, count: int):
        self.count = count

    def __call__(self, items: list[dict]) -> list[dict]:
        size = len(items) // self.count
        return [default_collate(items[k * size:(k + 1) * size]) for k in range(self.count)]


def _prune(run_dir: Path, keep: int) -> None:
    if keep and keep > 0:
        for old in ckpt.list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (left by a run that died after its last checkpoint)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


def _drop_later_previews(folder: Path, step: int) -> None:
    """Remove previews past ``step``, written by a run that died after its last checkpoint: the
    resumed run draws them again, the same."""
    import shutil

    if folder.is_dir():
        for preview in folder.glob("step_*"):
            if preview.name[5:].isdigit() and int(preview.name[5:]) > step:
                shutil.rmtree(preview)


def plot_losses(metrics: Path, out: Path) -> None:
    """A PNG of the training loss against the step, from a metrics log."""
    if not metrics.exists():
        return
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    if not records:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([r["step"] for r in records], [r["loss"] for r in records])
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


_TENSORBOARD: dict[Path, Any] = {}


def _tensorboard_writer(run_dir: Path):
    """The run's TensorBoard writer, or ``None`` when TensorBoard is not installed."""
    if run_dir not in _TENSORBOARD:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            _TENSORBOARD[run_dir] = None
        else:
            _TENSORBOARD[run_dir] = SummaryWriter(str(run_dir / "tensorboard"))
    return _TENSORBOARD[run_dir]


def _tensorboard_scalars(run_dir: Path, record: dict) -> None:
    """Mirror a metrics record to TensorBoard when it is installed."""
    writer = _tensorboard_writer(run_dir)
    if writer is not None:
        for key, value in record.items():
            if key not in ("step", "time"):
                writer.add_scalar(f"train/{key}", value, record["step"])
        writer.flush()


def _tensorboard_previews(run_dir: Path, written: list, step: int) -> None:
    """Show a preview's first picture (an overview when there is one) and first sound in TensorBoard,
    from the pixels and samples the domain's writer kept in its output records."""
    writer = _tensorboard_writer(run_dir)
    if writer is None:
        return
    outputs = [output for output in kit.outputs_of(written) if output.content is not None]
    pictures = sorted((o for o in outputs if o.kind == "image"), key=lambda o: o.role != "overview")
    sounds = [o for o in outputs if o.kind == "audio" and o.sample_rate]
    if pictures:
        image = np.asarray(pictures[0].content)
        writer.add_image("preview", image if image.ndim == 3 else image[..., None], step, dataformats="HWC")
    if sounds:
        writer.add_audio("preview", torch.as_tensor(np.asarray(sounds[0].content), dtype=torch.float32).reshape(-1),
                         step, sample_rate=sounds[0].sample_rate)
    writer.flush()


def _diffkit_version() -> str:
    from . import __version__

    return __version__
