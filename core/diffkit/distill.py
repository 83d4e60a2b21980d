"""Few-step students: distillation of a trained model's sampler into fewer model calls.

The student samples with DDIM at ``N`` fixed times ``t_0 = 1 > t_1 > ... > t_N = 0`` (the
config's ``sample.steps`` and ``sample.spacing``). A DDIM step from ``t`` to ``s`` is

    x_s = (std_s / std_t) x_t + (alpha_s - std_s alpha_t / std_t) x0_hat(x_t, t)

so one model output decides where the step lands. Training draws a data point ``x_0``, one of
the student's times ``t = t_i`` and a noise, forms ``x_t = alpha_t x_0 + std_t eps``, lets the
frozen teacher integrate the probability-flow ODE from ``x_t`` to ``s = t_{i+1}`` with several
smaller steps of a solver (``distill.teacher_sampler``, ``distill.teacher_substeps``), and solves
the DDIM step for the clean-data estimate that lands on the teacher's ``x_s``:

    x0_target = (x_s_teacher - (std_s / std_t) x_t) / (alpha_s - std_s alpha_t / std_t)

The student regresses its estimate on that target. With two DDIM substeps, and a teacher that
itself samples with twice the student's steps, this is one halving of progressive distillation
(Salimans & Ho 2022); with a multistep solver and more substeps one stage reaches few steps
directly from a teacher sampled with many (:func:`distillation_loss`). On the last step,
``s = 0``, the student's estimate is its sample and the target is the teacher's sample.

:class:`Distillation` is this objective as a training mode of :mod:`diffkit.runner`: the student
starts from the teacher's weights, and checkpoints, exact resume, EMA, DDP and previews are the
runner's. :func:`distill` is what ``diffkit distill`` calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .config import fill_defaults
from .contract import Process, reduce_loss, squared_errors
from .domain import Domain
from .generate import PROCESSES, diffusion_kind
from .plugins import Registry
from .runner import DenoisingObjective, RunResult, train
from .schedules import Schedule
from .tree import State, combine, tree_map

#: Samplers whose steps are the DDIM step a student is trained to take.
STUDENT_SAMPLERS = ("ddim", "euler")
#: Ways to place the teacher's substeps inside one student step.
SUBSTEP_SPACINGS = ("uniform", "log_snr")
WEIGHTINGS = ("x0", "step")

#: Training settings of a distillation run, over the teacher's own (before the user's options).
# init_from: a student starts from its teacher's weights, not from those a fine-tuned teacher started from.
TRAIN_DEFAULTS: dict[str, Any] = {"steps": 300, "lr": 2e-4, "warmup_steps": 20, "lr_schedule": "constant",
                                  "init_from": ""}


# -- the objective, as pure functions -----------------------------------------------------------

def student_times(diffusion: Process, steps: int, spacing: str) -> Tensor:
    """The student's ``steps + 1`` sampling times, exactly those the process samples with."""
    return diffusion.sample_times(steps, spacing)


def next_times(times: Tensor, t: Tensor) -> Tensor:
    """For each ``t`` (one of ``times[:-1]``), the time the student steps to."""
    index = (times[:-1, None] == t[None, :].to(times.dtype)).float().argmax(0)
    if not torch.equal(times[index], t.to(times.dtype)):
        raise ValueError("distillation times must be the student's sampling times")
    return times[index + 1]


def substep_times(schedule: Schedule, t: float, s: float, substeps: int, spacing: str = "uniform") -> Tensor:
    """``substeps + 1`` decreasing times from ``t`` to ``s`` for the teacher: ``uniform`` in ``t``,
    or uniform in log-SNR (``log_snr``; to a last noisy time and then 0 when ``s = 0``)."""
    check_substeps(substeps, spacing)
    if spacing == "uniform" or substeps == 1:
        return torch.linspace(t, s, substeps + 1, dtype=torch.float64)
    end = s if s > 0 else min(1.0 / schedule.num_steps if schedule.num_steps else 1e-3, t / 2)
    points = substeps + 1 if s > 0 else substeps
    lam = schedule.log_snr(torch.tensor([t, end], dtype=torch.float64))
    inner = schedule.t_from_log_snr(torch.linspace(float(lam[0]), float(lam[1]), points, dtype=torch.float64))
    inner[0], inner[-1] = t, end
    return inner if s > 0 else torch.cat([inner, torch.zeros(1, dtype=torch.float64)])


def check_substeps(substeps: int, spacing: str) -> None:
    if substeps < 1:
        raise ValueError(f"distill.teacher_substeps must be at least 1, got {substeps}")
    if spacing not in SUBSTEP_SPACINGS:
        raise ValueError(f"unknown distill.teacher_spacing {spacing!r}; valid: {', '.join(SUBSTEP_SPACINGS)}")


@torch.no_grad()
def teacher_solution(teacher: Callable, diffusion: Process, x_t: State, t: Tensor, s: Tensor, *,
                     cond: Any = None, model_kwargs: dict | None = None, sampler: str = "dpmpp_2m",
                     substeps: int = 4, spacing: str = "uniform", guidance: float = 1.0,
                     uncond: Any = None) -> State:
    """Where the teacher's ``sampler`` takes each sample of ``x_t`` from its time ``t`` to ``s``
    in ``substeps`` steps (samples sharing ``(t, s)`` are solved together), with
    classifier-free ``guidance`` towards ``cond`` (``uncond``: the null condition)."""
    model_kwargs = model_kwargs or {}
    sample_fn = diffusion.get_sampler(sampler)
    out = tree_map(torch.empty_like, x_t)
    for start, end in torch.stack([t, s], 1).double().unique(dim=0).tolist():
        index = ((t.double() == start) & (s.double() == end)).nonzero().squeeze(1)
        pick = lambda value: select(value, index)  # noqa: E731
        denoiser = diffusion.denoiser(teacher, pick(x_t), cond=pick(cond), guidance=guidance, uncond=pick(uncond),
                                      model_kwargs={k: pick(v) for k, v in model_kwargs.items()})
        times = substep_times(diffusion.schedule, start, end, substeps, spacing).to(torch.float32)
        solved = diffusion.run_sampler(sample_fn, denoiser, pick(x_t), times)
        tree_map(lambda o, v: o.index_copy_(0, index, v.to(o.dtype)), out, solved)
    return out


def ddim_target(diffusion: Process, x_t: State, x_s: State, t: Tensor, s: Tensor) -> tuple[State, Tensor]:
    """The clean-data estimate whose DDIM step from ``(x_t, t)`` lands on ``x_s`` at ``s``, and
    the step's gain ``(alpha_s - std_s alpha_t / std_t) / alpha_s`` (1 for ``s = 0``, where a
    sampler returns the estimate itself), with ``(alpha, std)`` the process's
    :meth:`~diffkit.contract.Process.coefficients` (a DDIM step is the same in any scaling of the
    path, so one formula serves diffusion and flow matching)."""
    t, s = t.double(), s.double()
    last = s == 0
    alpha_t, std_t = diffusion.coefficients(t)
    alpha_s, std_s = diffusion.coefficients(s)
    alpha_s = torch.where(last, torch.ones_like(s), alpha_s)
    ratio = torch.where(last, torch.zeros_like(s), std_s / std_t)
    gain = alpha_s - ratio * alpha_t
    return combine((1 / gain, x_s), (-ratio / gain, x_t)), gain / alpha_s


def distillation_loss(student: Callable, teacher: Callable, diffusion: Process, x0: State, *, t: Tensor,
                      noise: State, times: Tensor, cond: Any = None, mask: State | None = None,
                      model_kwargs: dict | None = None, sampler: str = "dpmpp_2m", substeps: int = 4,
                      spacing: str = "uniform", weighting: str = "x0", guidance: float = 1.0, uncond: Any = None,
                      leaf_weights: dict[str, float] | None = None, reduction: str = "mean") -> Tensor:
    """The student's error against the teacher over one of its sampling steps (module docstring).

    ``t`` holds each sample's start time, one of ``times[:-1]`` (the student's sampling times);
    the teacher solves to the next one with ``sampler`` in ``substeps`` steps spaced by
    ``spacing`` (:func:`substep_times`). ``weighting="x0"`` counts the squared error of the
    clean-data estimate; ``"step"`` the error of where the step lands, in ``x / alpha`` (the
    estimate's error times the squared gain of :func:`ddim_target`). With ``guidance`` ``w != 1``
    the teacher is guided (``uncond``: the null condition) and the student learns the guided
    steps in one call each. ``mask``, ``leaf_weights`` and ``reduction`` are as in
    :meth:`Process.loss <diffkit.contract.Process.loss>`.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown distill.weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
    model_kwargs = model_kwargs or {}
    s = next_times(times.to(t.device), t)
    x_t = diffusion.q_sample(x0, t, noise)
    x_s = teacher_solution(teacher, diffusion, x_t, t, s, cond=cond, model_kwargs=model_kwargs, sampler=sampler,
                           substeps=substeps, spacing=spacing, guidance=guidance, uncond=uncond)
    wanted, gain = ddim_target(diffusion, x_t, x_s, t, s)
    output = student(x_t, t, cond=cond, **model_kwargs)
    errors = squared_errors(diffusion.clean_estimate(output, x_t, t), wanted, mask)
    return reduce_loss(errors, leaf_weights, reduction, gain.float() ** 2 if weighting == "step" else 1.0)


def select(value: Any, index: Tensor) -> Any:
    """The samples ``index`` of a per-sample value: a tensor, a dict of them, or ``None``."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value[index.to(value.device)]
    if isinstance(value, dict):
        return {key: select(item, index) for key, item in value.items()}
    raise TypeError(f"cannot select samples from a {type(value).__name__}")


# -- the training mode ------------------------------------------------------------------------

class Distillation(DenoisingObjective):
    """:func:`distillation_loss` as the runner's objective: the student (the run's model) starts
    from the frozen ``teacher``'s weights and learns to sample in the config's ``sample.steps``
    DDIM steps at ``sample.spacing``; ``teacher_info`` (its source, domain and step) goes to
    ``run.json``."""

    command = "distill"

    def __init__(self, teacher: nn.Module, config: dict, teacher_info: dict | None = None,
                 null_cond: Callable[[Any], Any] | None = None):
        check_student_settings(config)
        self.teacher = teacher.eval().requires_grad_(False)
        self.null_cond = null_cond  # the domain's, for a guided teacher
        self.settings, self.sample = dict(config["distill"]), dict(config["sample"])
        self.teacher_info = dict(teacher_info or {})

    def initialise(self, model: nn.Module, device: torch.device) -> None:
        self.teacher.to(device)
        try:
            model.load_state_dict(self.teacher.state_dict())
        except RuntimeError as error:
            raise ValueError(f"the student's model does not fit the teacher's weights: {error}") from None

    def times(self, diffusion: Process) -> Tensor:
        return student_times(diffusion, self.sample["steps"], self.sample["spacing"])

    def training_times(self, diffusion: Process, size: int, generator: torch.Generator) -> Tensor:
        times = self.times(diffusion)
        return times[torch.randint(len(times) - 1, (size,), generator=generator)]

    def loss(self, diffusion: Process, model: nn.Module, x0: State, *, t: Tensor, noise: State, cond: Any = None,
             **options) -> Tensor:
        settings = self.settings
        guided = settings["guidance"] != 1.0 and cond is not None and self.null_cond is not None
        return distillation_loss(model, self.teacher, diffusion, x0, t=t, noise=noise, times=self.times(diffusion),
                                 cond=cond, sampler=settings["teacher_sampler"], substeps=settings["teacher_substeps"],
                                 spacing=settings["teacher_spacing"], weighting=settings["weighting"],
                                 guidance=settings["guidance"] if guided else 1.0,
                                 uncond=self.null_cond(cond) if guided else None, **options)

    def run_info(self) -> dict:
        return {"teacher": self.teacher_info}


def check_student_settings(config: dict) -> None:
    """Refuse a student config whose sampling is not the DDIM steps the objective trains."""
    sample, settings = config["sample"], config["distill"]
    kind = diffusion_kind(config)
    if not PROCESSES[kind].distillable:
        raise ValueError(f"a {kind} process cannot be distilled: a student learns where the teacher's probability-flow "
                         f"ODE takes a noisy state, and {kind} sampling (diffusion.kind = {kind!r}) follows no such "
                         "deterministic path")
    if not settings["teacher"]:
        raise ValueError("distill.teacher is empty: a student config names its teacher")
    if sample["sampler"] not in STUDENT_SAMPLERS:
        raise ValueError(f"a student samples with DDIM steps: sample.sampler must be one of "
                         f"{', '.join(STUDENT_SAMPLERS)}, got {sample['sampler']!r}")
    if sample["spacing"] == "auto":
        raise ValueError("a student's sample.spacing must be a spacing name, not 'auto': its steps are fixed")
    if settings["teacher_sampler"] == "ddpm":
        raise ValueError("distill.teacher_sampler must be a deterministic solver (ddim, euler, heun, dpmpp_2m, ...), "
                         "got 'ddpm'")
    if settings["weighting"] not in WEIGHTINGS:
        raise ValueError(f"unknown distill.weighting {settings['weighting']!r}; valid: {', '.join(WEIGHTINGS)}")
    check_substeps(settings["teacher_substeps"], settings["teacher_spacing"])


def load_teacher(domain: Domain, teacher: str | Path | None) -> tuple[nn.Module, dict, dict]:
    """The teacher's model (EMA weights, on the CPU), its completed config, and what ``run.json``
    records of it (``source``, ``path``, ``domain``, ``step``)."""
    from .loading import load_checkpoint, model_from_state, weights_source

    source, path = weights_source(domain, teacher, "--checkpoint")
    state = load_checkpoint(domain, path)
    info = {"source": source, "path": str(path), "domain": state["domain"], "step": state.get("step")}
    return model_from_state(domain, state, path), state["config"], info


def student_config(domain: Domain, teacher_config: dict, source: str, student_steps: int, *,
                   spacing: str = "uniform", file: str | Path | None = None, sets: list[str] = (),
                   overrides: dict | None = None) -> dict:
    """The config of a student of ``teacher_config``: the teacher's, with :data:`TRAIN_DEFAULTS`,
    DDIM sampling in ``student_steps`` steps at ``spacing`` and ``distill.teacher = source``, then
    the user's TOML ``file``, ``--set`` assignments and ``overrides``. The student keeps the
    teacher's model and diffusion: it starts from the teacher's weights. It learns the teacher
    guided as the teacher samples (``distill.guidance``, from the teacher's ``sample.guidance``)
    and samples unguided, one model call a step."""
    from .config import apply_user_layers, check_config, default_config, limits_of
    from .domain import merge_config

    defaults, limits = default_config(domain), limits_of(domain)
    config = merge_config(fill_defaults(domain, teacher_config), {
        "train": TRAIN_DEFAULTS,
        "sample": {"sampler": "ddim", "steps": student_steps, "spacing": spacing, "guidance": 1.0},
        "distill": {**_teacher_step_settings(defaults, teacher_config, student_steps, spacing), "teacher": source,
                    "guidance": teacher_config["sample"]["guidance"]},
    })
    config = apply_user_layers(config, defaults, file=file, sets=sets, overrides=overrides, limits=limits)
    check_config(config, defaults, limits=limits)
    for section in ("model", "diffusion"):
        if config[section] != fill_defaults(domain, teacher_config)[section]:
            raise ValueError(f"the student keeps the teacher's {section!r} settings (it starts from the teacher's "
                             f"weights); remove the {section}.* overrides")
    check_student_settings(config)
    return config


def _teacher_step_settings(defaults: dict, teacher_config: dict, student_steps: int, spacing: str) -> dict:
    """How the teacher solves a student step: with the defaults, or, when the teacher is itself
    a student whose uniform steps nest in the new student's, with exactly its own steps (the
    next stage of progressive distillation)."""
    settings = {key: value for key, value in defaults["distill"].items() if key != "teacher"}
    sample = teacher_config["sample"]
    if (teacher_config.get("distill", {}).get("teacher") and sample["spacing"] == spacing == "uniform"
            and sample["steps"] % student_steps == 0 and sample["steps"] > student_steps):
        settings.update(teacher_sampler=sample["sampler"], teacher_substeps=sample["steps"] // student_steps,
                        teacher_spacing="uniform")
    return settings


def distill(domain: Domain, config: dict, *, out: str | Path, data: str | None = None, resume: bool = False,
            device: str | None = None, progress: bool = True, plugin: tuple[str, str] = ("", ""),
            registry: Registry | None = None) -> RunResult:
    """Train the student that ``config`` describes (see :func:`student_config`) into the run
    folder ``out``, with the teacher ``config["distill"]["teacher"]``; the other arguments are
    those of :func:`diffkit.runner.train`, which runs it."""
    check_student_settings(config)
    teacher, teacher_config, info = load_teacher(domain, config["distill"]["teacher"])
    for section in ("model", "diffusion"):
        if config[section] != teacher_config[section]:
            raise ValueError(f"the teacher {info['path']!r} has other {section!r} settings than the student's config")
    objective = Distillation(teacher, config, info, null_cond=domain.null_cond)
    return train(domain, config, out=out, data=data, resume=resume, device=device, progress=progress, plugin=plugin,
                 registry=registry, objective=objective)
