"""Few-step students (``diffkit distill``) against their teachers' samplers, at equal model calls.

Two measurements:

``gmm``: an exact teacher. The teacher is the closed-form denoiser of a Gaussian mixture
(``diffkit.gmm``); the student is that denoiser plus a small MLP correction that starts at zero
(so it starts as the teacher, as a network student starts from the teacher's weights), trained
with :func:`diffkit.distill.distillation_loss`. Distances are sliced 2-Wasserstein to the exact
mixture; exact samples of the same size set the noise floor. The "targets" column chains the
teacher's own solutions over the student's steps: what a perfect student would sample. The
progressive rows halve the steps stage by stage from the teacher's DDIM with 16 steps, each stage
trained as long as one one-stage student.

``score``: trained domains. The teacher (shipped weights or ``--teacher``) samples with several
samplers and spacings at each number of calls, each student (a ``diffkit distill`` run folder)
with its own settings; every sample set is written by the domain and scored by its
``evaluate``, as ``diffkit evaluate`` does. Wall time per sample is measured around sampling.

    python benchmarks/distill.py gmm [--iterations 1500]
    OMP_NUM_THREADS=1 python benchmarks/distill.py score --domain image --student RUN4 --student RUN1 -n 1000
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import diffkit
from diffkit.distill import distillation_loss, next_times, student_times, teacher_solution
from diffkit.generate import SampleRequest, generate
from diffkit.gmm import GaussianMixture, random_directions
from diffkit.loading import load_for_sampling

#: What each domain's rows are ranked by, and whether lower is better.
PRIMARY = {"image": ("frechet_distance", True), "molecule": ("validity", False), "audio": ("fd_classifier", True)}
#: Teacher samplers tried at each number of calls: (sampler, spacing); "auto" is the sampler's own.
TEACHER_SAMPLERS = (("ddim", "uniform"), ("dpmpp_2m", "auto"), ("dpmpp_2m", "uniform"), ("unipc", "auto"))


# -- an exact teacher --------------------------------------------------------------------------

class Residual(nn.Module):
    """The exact teacher plus an MLP correction whose last layer starts at zero."""

    def __init__(self, teacher: nn.Module, dim: int, hidden: int = 128):
        super().__init__()
        self.teacher = teacher
        self.net = nn.Sequential(nn.Linear(dim + 2, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x, t, cond=None):
        angle = t[:, None].float() * math.pi / 2
        return self.teacher(x, t) + self.net(torch.cat([x.float(), angle.cos(), angle.sin()], 1)).to(x.dtype)


def ring() -> GaussianMixture:
    """Eight modes of std 0.08 on the unit circle, weights 1 to 3."""
    angles = torch.arange(8) * 2 * math.pi / 8
    return GaussianMixture(torch.linspace(1, 3, 8), torch.stack([angles.cos(), angles.sin()], 1),
                           stds=torch.full((8,), 0.08))


def train_student(mixture, diffusion, teacher, calls: int, iterations: int, *, sampler="dpmpp_2m", substeps=4,
                  weighting="x0", lr=1e-3, batch=256, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    student = Residual(teacher, mixture.dim)
    ema = copy.deepcopy(student).requires_grad_(False)
    optimizer = torch.optim.Adam(student.net.parameters(), lr=lr)
    times = student_times(diffusion.schedule, calls, "uniform")
    generator = torch.Generator().manual_seed(seed + 1)
    for step in range(iterations):
        x0 = mixture.sample(batch, generator).float()
        t = times[torch.randint(calls, (batch,), generator=generator)]
        noise = torch.randn(batch, mixture.dim, generator=generator)
        loss = distillation_loss(student, teacher, diffusion, x0, t=t, noise=noise, times=times, sampler=sampler,
                                 substeps=substeps, weighting=weighting)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            decay = min(0.99, (1 + step) / (10 + step))
            for averaged, current in zip(ema.net.parameters(), student.net.parameters()):
                averaged.lerp_(current, 1 - decay)
    return ema


def gmm_benchmark(iterations: int, samples: int, log) -> str:
    mixture, diffusion = ring(), diffkit.Diffusion("cosine", "v")
    teacher = mixture.denoiser(diffusion.schedule, "v")
    directions = random_directions(32, 2, torch.Generator().manual_seed(5))
    distance = lambda x: float(mixture.sliced_wasserstein(x, directions))  # noqa: E731
    floor = torch.tensor([distance(mixture.sample(samples, torch.Generator().manual_seed(100 + k))) for k in range(5)])
    x_T = torch.randn(samples, 2, generator=torch.Generator().manual_seed(7))
    rows = [f"Exact samples ({samples:,}): SW2 {floor.mean():.4f} +- {floor.std():.4f} (5 draws).", "",
            "| calls | teacher's best sampler | SW2 | student | SW2 | student's targets, chained | SW2 |",
            "|---:|---|---:|---|---:|---|---:|"]
    variants = [("x0", "dpmpp_2m", 4), ("step", "dpmpp_2m", 4), ("x0", "dpmpp_2m", 8), ("x0", "ddim", 2)]
    progressive = progressive_students(mixture, diffusion, teacher, iterations, log)
    for calls in (1, 2, 4):
        tried = []
        for sampler, spacing in TEACHER_SAMPLERS:
            x = diffusion.sample(teacher, x_T.shape, sampler=sampler, steps=calls, spacing=spacing, x_T=x_T.clone())
            tried.append((distance(x), f"{sampler} {spacing}"))
        best, name = min(tried)
        for weighting, sampler, substeps in variants:
            started = time.perf_counter()
            student = train_student(mixture, diffusion, teacher, calls, iterations, sampler=sampler,
                                    substeps=substeps, weighting=weighting)
            with torch.no_grad():
                x = diffusion.sample(student, x_T.shape, sampler="ddim", steps=calls, spacing="uniform", x_T=x_T.clone())
            chained = chain(teacher, diffusion, x_T, calls, sampler, substeps)
            label = f"{sampler} x{substeps}, weighting {weighting}"
            rows.append(f"| {calls} | {name} | {best:.4f} | {label} | {distance(x):.4f} | {label} | {distance(chained):.4f} |")
            log(rows[-1] + f"  ({time.perf_counter() - started:.0f} s)")
        with torch.no_grad():
            x = diffusion.sample(progressive[calls], x_T.shape, sampler="ddim", steps=calls, spacing="uniform",
                                 x_T=x_T.clone())
        stages = int(math.log2(PROGRESSIVE_START // calls))
        rows.append(f"| {calls} | {name} | {best:.4f} | progressive: {stages} halvings from DDIM x{PROGRESSIVE_START} "
                    f"| {distance(x):.4f} | | |")
        log(rows[-1])
    return "\n".join(rows)


PROGRESSIVE_START = 16


def progressive_students(mixture, diffusion, teacher, iterations: int, log) -> dict[int, nn.Module]:
    """Progressive distillation (Salimans & Ho 2022): each student halves the DDIM steps of the
    one before, learning two of its steps in one; the first learns the teacher's DDIM."""
    students, current, calls = {}, teacher, PROGRESSIVE_START
    while calls > 1:
        calls //= 2
        started = time.perf_counter()
        current = train_student(mixture, diffusion, current, calls, iterations, sampler="ddim", substeps=2)
        students[calls] = current
        log(f"progressive stage to {calls} calls ({time.perf_counter() - started:.0f} s)")
    return students


def chain(teacher, diffusion, x_T, calls: int, sampler: str, substeps: int) -> torch.Tensor:
    """The teacher's solutions over the student's uniform steps, one after another."""
    times = student_times(diffusion.schedule, calls, "uniform")
    x = x_T.clone()
    for start in times[:-1]:
        t = torch.full((len(x),), float(start))
        x = teacher_solution(teacher, diffusion, x, t, next_times(times, t), sampler=sampler, substeps=substeps)
    return x


# -- trained domains ---------------------------------------------------------------------------

def score(domain, model, config: dict, n: int, seed: int) -> dict:
    """Sample ``n`` with ``config``'s sampling settings, write, evaluate; adds ms per sample."""
    started = time.perf_counter()
    batch = generate(domain, model, config, SampleRequest(n=n, seed=seed))
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        domain.write_samples(batch, Path(folder) / "samples", config)
        scores = domain.evaluate(Path(folder) / "samples", None, config)
    return {**scores, "ms_per_sample": 1000 * seconds / n}


def over_seeds(domain, model, config: dict, args) -> dict:
    """The mean scores of :func:`score` over ``args.seeds`` seeds from ``args.seed``, and, when
    there are several, each score's standard deviation (``<name>_sd``) and every seed's scores
    (``runs``)."""
    runs = [score(domain, model, config, args.n, args.seed + k) for k in range(args.seeds)]
    mean = {key: sum(run[key] for run in runs) / len(runs) for key in runs[0]}
    if len(runs) > 1:
        mean.update({f"{key}_sd": float(torch.tensor([run[key] for run in runs], dtype=torch.float64).std())
                     for key in runs[0]})
        mean["runs"] = runs
    return mean


def with_sampling(config: dict, sampler: str, steps: int, spacing: str) -> dict:
    changed = copy.deepcopy(config)
    changed["sample"].update(sampler=sampler, steps=steps, spacing=spacing)
    return changed


def domain_benchmark(args, log) -> str:
    registry = diffkit.make_plugin_manager()
    domain = registry.domain(args.domain)
    metric, lower = PRIMARY.get(args.domain, (args.metric, True))
    metric = args.metric or metric
    teacher, config = load_for_sampling(domain, args.teacher or domain.pretrained())
    rows = []
    for calls in args.teacher_calls:
        tried = list(args.samplers)
        own = (config["sample"]["sampler"], config["sample"].get("spacing", "uniform"))
        tried += [own] if own not in tried and calls == config["sample"]["steps"] else []
        for sampler, spacing in tried:
            steps = calls if sampler != "heun" else (calls + 1) // 2
            result = over_seeds(domain, teacher, with_sampling(config, sampler, steps, spacing), args)
            rows.append(("teacher", sampler, spacing, calls, config["sample"]["guidance"], result))
            log(_row(rows[-1], metric))
    for folder in args.student:
        model, student_config = load_for_sampling(domain, folder)
        sample = student_config["sample"]
        result = over_seeds(domain, model, student_config, args)
        rows.append((f"student {folder}", sample["sampler"], sample["spacing"], sample["steps"], sample["guidance"], result))
        log(_row(rows[-1], metric))
        for sampler, steps in args.student_sampling:
            # Outside what the student was trained for (its DDIM steps): measured, never its default.
            result = over_seeds(domain, model, with_sampling(student_config, sampler, steps, "uniform"), args)
            rows.append((f"student {folder}", sampler, "uniform", steps, sample["guidance"], result))
            log(_row(rows[-1], metric))
    if args.json:
        Path(args.json).write_text(json.dumps([list(row) for row in rows], indent=2))
    keys = [metric] + [k for k in rows[0][-1] if k not in (metric, "ms_per_sample", "samples") and not k.endswith("_sd") and k != "runs"]
    header = "| model | sampler | spacing | calls | guidance | " + " | ".join(keys) + " | ms / sample |"
    lines = [header, "|" + "---|" * 5 + "---:|" * (len(keys) + 1)]
    best_of = {}
    for row in rows:
        if row[0] == "teacher":
            key, value = row[3], row[-1][metric]
            if key not in best_of or (value < best_of[key] if lower else value > best_of[key]):
                best_of[key] = value
    for name, sampler, spacing, calls, guidance, result in rows:
        mark = "**" if name == "teacher" and result[metric] == best_of.get(calls) else ""
        spread = f" +- {_fmt(result[metric + '_sd'])}" if metric + "_sd" in result else ""
        cells = [f"{mark}{_fmt(result[k])}{mark}{spread}" if k == metric else _fmt(result[k]) for k in keys]
        lines.append(f"| {name} | {sampler} | {spacing} | {calls} | {guidance:g} | " + " | ".join(cells)
                     + f" | {result['ms_per_sample']:.2f} |")
    return "\n".join(lines)


def _row(row, metric: str) -> str:
    name, sampler, spacing, calls, guidance, result = row
    return f"{name}: {sampler} {spacing} {calls} calls: {metric} {_fmt(result[metric])}, {result['ms_per_sample']:.2f} ms/sample"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _sampler_list(text: str) -> list[tuple[str, str]]:
    return [tuple(item.split(":", 1)) if ":" in item else (item, "auto") for item in text.split(",")]


def _sampling_list(text: str) -> list[tuple[str, int]]:
    return [(sampler, int(steps)) for sampler, steps in (item.split(":", 1) for item in text.split(","))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gmm = commands.add_parser("gmm", help="students of an exact Gaussian-mixture teacher")
    gmm.add_argument("--iterations", type=int, default=1500, help="training steps per student")
    gmm.add_argument("--samples", type=int, default=8000, help="samples per distance")
    domain = commands.add_parser("score", help="a domain's teacher and students")
    domain.add_argument("--domain", required=True)
    domain.add_argument("--teacher", default=None, help="the teacher (default: the domain's shipped weights)")
    domain.add_argument("--student", action="append", default=[], help="a student run folder (repeatable)")
    domain.add_argument("--teacher-calls", type=lambda text: [int(v) for v in text.split(",")], default=[30, 4, 2, 1],
                        help="comma-separated numbers of teacher model calls (default 30,4,2,1)")
    domain.add_argument("--samplers", type=_sampler_list, default=list(TEACHER_SAMPLERS),
                        help="the teacher's samplers, as sampler:spacing,... (default: "
                             + ",".join(f"{a}:{b}" for a, b in TEACHER_SAMPLERS) + "; its own at its own steps too)")
    domain.add_argument("--student-sampling", type=_sampling_list, default=[],
                        help="also sample every student with these, as sampler:steps,... (uniform spacing)")
    domain.add_argument("-n", type=int, default=1000, help="samples per row")
    domain.add_argument("--seed", type=int, default=0, help="the first seed")
    domain.add_argument("--seeds", type=int, default=1, help="seeds per row (scores are their mean)")
    domain.add_argument("--metric", default=None, help="the score rows are ranked by (default: per domain)")
    domain.add_argument("--json", default=None, help="write every row's scores to this file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    log = lambda line: print(line, flush=True)  # noqa: E731
    table = gmm_benchmark(args.iterations, args.samples, log) if args.command == "gmm" else domain_benchmark(args, log)
    print()
    print(table)


if __name__ == "__main__":
    main()
