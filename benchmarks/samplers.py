"""Sampler quality against model evaluations, on Gaussian mixtures whose denoiser is exact.

Every sampler is driven by the same closed-form denoiser (:mod:`diffkit.gmm`), so the error left
in its samples is the sampler's alone. The error is the sliced 1-Wasserstein distance to the true
mixture (see :class:`SlicedW1`); exact samples of the same size give the noise floor. diffusers'
schedulers run in the same process on the same problems when diffusers is installed.

    python benchmarks/samplers.py                 # the full tables (10 to 15 minutes on one thread)
    python benchmarks/samplers.py --quick         # 4096 samples, NFE 10 and 20 (under a minute)
    python benchmarks/samplers.py --markdown out.md

Not run by CI; results are recorded in docs/benchmarks/samplers.md.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

import diffkit
from diffkit.denoiser import Denoiser
from diffkit.gmm import GaussianMixture, random_directions
from diffkit.samplers import get_sampler, preferred_spacing, sampler_names
from diffkit.schedules import discretize

NFE_BUDGETS = (5, 10, 20, 50)
TRAIN_STEPS = 1000  # diffusers' schedulers need a discrete training schedule


# -- problems -------------------------------------------------------------------------------

@dataclass
class Problem:
    name: str
    mixture: GaussianMixture
    samples: int


def ring_2d() -> GaussianMixture:
    """Eight narrow components (stds 0.01 to 0.05) on a circle of radius 1, unequal weights."""
    angles = torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8
    means = torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(torch.linspace(1, 3, 8), means, stds=torch.linspace(0.01, 0.05, 8))


def anisotropic(dim: int, components: int, seed: int) -> GaussianMixture:
    """Components with random orientations and axis stds from 0.01 to 0.2 (full covariances)."""
    g = torch.Generator().manual_seed(seed)
    means = 0.5 * torch.randn(components, dim, generator=g, dtype=torch.float64)
    rotations, _ = torch.linalg.qr(torch.randn(components, dim, dim, generator=g, dtype=torch.float64))
    axis_stds = torch.exp(torch.empty(components, dim, dtype=torch.float64).uniform_(
        math.log(0.01), math.log(0.2), generator=g))
    covariances = rotations @ torch.diag_embed(axis_stds**2) @ rotations.transpose(1, 2)
    weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
    return GaussianMixture(weights, means, covariances)


def isotropic(dim: int, components: int, seed: int) -> GaussianMixture:
    """Well separated isotropic components with stds from 0.02 to 0.06."""
    g = torch.Generator().manual_seed(seed)
    means = 0.5 * torch.randn(components, dim, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
    return GaussianMixture(weights, means, stds=torch.linspace(0.02, 0.06, components))


def problems(samples: int) -> list[Problem]:
    return [
        Problem("ring-2d", ring_2d(), samples),
        Problem("aniso-16d", anisotropic(16, 6, seed=1), samples),
        Problem("iso-64d", isotropic(64, 16, seed=2), samples),
    ]


# -- the metric -----------------------------------------------------------------------------

class SlicedW1:
    """Sliced 1-Wasserstein distance to the true mixture.

    ``mean over P random unit directions u of W1(u . samples, u . mixture)``, where the 1-D W1 is
    ``mean_i |sorted(u . x)_i - F_u^{-1}((i + 1/2) / n)|`` with ``F_u`` the exact CDF of the
    projected mixture. W1 rather than W2: with well separated narrow modes, W2 is dominated by the
    binomial noise in how many samples land in each mode (it grows like the square root of the
    misplaced mass), W1 only linearly.
    """

    def __init__(self, mixture: GaussianMixture, samples: int, directions: int = 32, seed: int = 0):
        self.directions = random_directions(directions, mixture.dim, torch.Generator().manual_seed(seed))
        probs = (torch.arange(samples, dtype=torch.float64) + 0.5) / samples
        self.quantiles = torch.stack([mixture.project(u).quantile(probs) for u in self.directions])

    def __call__(self, x: torch.Tensor) -> float:
        projected = torch.sort(x.double() @ self.directions.T, dim=0).values.T   # (P, n)
        return float((projected - self.quantiles).abs().mean())


# -- diffkit --------------------------------------------------------------------------------

def diffkit_configs() -> list[tuple[str, str, dict]]:
    """``(label, sampler, options)``: every registered sampler as the API's default call samples
    with it (its own spacing, "auto"), and the multistep solvers at the classic log-SNR spacing and
    at ``uniform`` (the default before "auto") for comparison."""
    configs = [(name, name, {}) for name in sampler_names("gaussian")]
    configs.append(("unipc order=2", "unipc", {"order": 2}))
    for name in ("dpmpp_2m", "dpmpp_3m", "unipc"):
        configs.append((f"{name} log_snr", name, {"spacing": "log_snr"}))
    for name in ("dpmpp_2m", "unipc"):
        configs.append((f"{name} uniform", name, {"spacing": "uniform"}))
    return configs


def steps_for(sampler: str, nfe: int) -> int:
    """Steps that spend ``nfe`` model calls: Heun-type samplers call the model twice a step but
    once on the last step."""
    if getattr(get_sampler(sampler), "calls_per_step", 1) == 2:
        return (nfe + 1) // 2
    return nfe


def run_diffkit(mixture: GaussianMixture, schedule, sampler: str, nfe: int, x_T: torch.Tensor,
                seed: int, options: dict) -> tuple[torch.Tensor, int]:
    diffusion = diffkit.Diffusion(schedule, "eps")
    model = mixture.denoiser(schedule, "eps")
    calls = [0]

    def counted(x, t, cond=None):
        calls[0] += 1
        return model(x, t)

    # No spacing unless a configuration names one: the row measures the default call.
    x = diffusion.sample(counted, x_T, x_T=x_T.clone(), sampler=sampler, steps=steps_for(sampler, nfe),
                         generator=torch.Generator().manual_seed(seed), **options)
    return x, calls[0]


# -- diffusers ------------------------------------------------------------------------------

def diffusers_configs() -> list[tuple[str, Callable, dict]]:
    """``(label, scheduler class, config)``: each scheduler with its spacing and sigma options."""
    import diffusers as d

    # DDIM clips x0 estimates to [-1, 1] by default, which these mixtures exceed
    configs = [(f"DDIM {spacing}", d.DDIMScheduler, {"timestep_spacing": spacing, "clip_sample": False})
               for spacing in ("leading", "trailing")]
    configs.append(("DPM++2M", d.DPMSolverMultistepScheduler, {}))
    configs.append(("DPM++2M karras", d.DPMSolverMultistepScheduler, {"use_karras_sigmas": True}))
    for order in (2, 3):
        configs.append((f"DPM++{order}M lu", d.DPMSolverMultistepScheduler, {"solver_order": order, "use_lu_lambdas": True}))
    configs.append(("DPM++3M", d.DPMSolverMultistepScheduler, {"solver_order": 3}))
    configs.append(("DPM++2M SDE", d.DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}))
    for order in (2, 3):
        configs.append((f"UniPC{order} bh2", d.UniPCMultistepScheduler, {"solver_order": order}))
        configs.append((f"UniPC{order} bh2 karras80", d.UniPCMultistepScheduler,
                        {"solver_order": order, "use_karras_sigmas": True, "sigma_max": 80.0}))
    configs.append(("UniPC3 bh2 trailing", d.UniPCMultistepScheduler, {"solver_order": 3, "timestep_spacing": "trailing"}))
    # bh1 returns NaN on its last step to sigma = 0 (diffusers 0.42), so it stops at sigma_min
    configs.append(("UniPC2 bh1 sigma_min", d.UniPCMultistepScheduler,
                    {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}))
    configs.append(("Euler", d.EulerDiscreteScheduler, {}))
    configs.append(("Euler karras80", d.EulerDiscreteScheduler, {"use_karras_sigmas": True, "sigma_max": 80.0}))
    configs.append(("Heun", d.HeunDiscreteScheduler, {}))
    configs.append(("Heun karras", d.HeunDiscreteScheduler, {"use_karras_sigmas": True}))
    return configs


def run_diffusers(mixture: GaussianMixture, betas: torch.Tensor, scheduler_class, config: dict, nfe: int,
                  x_T: torch.Tensor, seed: int) -> tuple[torch.Tensor, int]:
    """The usual diffusers loop, with the exact eps at the noise level the scheduler works at."""
    scheduler = scheduler_class(num_train_timesteps=TRAIN_STEPS, trained_betas=betas.numpy(),
                                prediction_type="epsilon", **config)
    heun = "Heun" in scheduler_class.__name__
    scheduler.set_timesteps((nfe + 1) // 2 if heun else nfe)
    if hasattr(scheduler, "set_begin_index"):
        # Counts steps from the first one even where rounding repeats a timestep (karras, lu).
        scheduler.set_begin_index(0)
    generator = torch.Generator().manual_seed(seed)
    x = x_T.float() * scheduler.init_noise_sigma
    calls = 0
    for i, timestep in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(x, timestep)
        sigma = _scheduler_sigma(scheduler, i, timestep)
        alpha = torch.full((len(x),), 1.0 / math.sqrt(1.0 + sigma**2), dtype=torch.float64)
        std = alpha * sigma
        x0 = mixture.posterior_mean(model_input, alpha, std).double()
        eps = ((model_input.double() - alpha[:, None] * x0) / std[:, None]).float()
        calls += 1
        kwargs = {"generator": generator} if "generator" in _step_parameters(scheduler) else {}
        x = scheduler.step(eps, timestep, x, **kwargs).prev_sample
    return x, calls


def _scheduler_sigma(scheduler, index: int, timestep) -> float:
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) > len(scheduler.timesteps):
        return float(sigmas[index])  # the noise level the solver itself assumes
    alpha_bar = float(scheduler.alphas_cumprod[int(timestep)])
    return math.sqrt((1 - alpha_bar) / alpha_bar)


def _step_parameters(scheduler) -> tuple[str, ...]:
    import inspect

    return tuple(inspect.signature(scheduler.step).parameters)


# -- overhead -------------------------------------------------------------------------------

def sampler_overhead(shape=(16, 3, 64, 64), steps: int = 20, repeats: int = 3) -> dict[str, float]:
    """Seconds per step spent in each sampler itself (a model returning zeros), and the time of
    one forward pass of a small convolutional denoiser on the same batch, for scale."""
    schedule = diffkit.make_schedule("cosine")
    zero_model = lambda x, t, cond=None: torch.zeros_like(x)  # noqa: E731
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    result = {}
    for name in sampler_names("gaussian"):
        denoiser = Denoiser(zero_model, schedule, "eps")
        times = schedule.sample_times(steps, preferred_spacing(name))
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            get_sampler(name)(denoiser, x_T, times, generator=torch.Generator().manual_seed(0))
            best = min(best, time.perf_counter() - start)
        result[name] = best / steps
    net = torch.nn.Sequential(
        torch.nn.Conv2d(shape[1], 64, 3, padding=1), torch.nn.SiLU(),
        torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.SiLU(),
        torch.nn.Conv2d(64, shape[1], 3, padding=1),
    )
    with torch.no_grad():
        net(x_T)
        start = time.perf_counter()
        for _ in range(repeats):
            net(x_T)
    result["(3-layer conv net, one call)"] = (time.perf_counter() - start) / repeats
    return result


def diffusers_overhead(shape=(16, 3, 64, 64), steps: int = 20, repeats: int = 3) -> dict[str, float]:
    import diffusers as d

    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    result = {}
    for label, cls in (("DPM++2M", d.DPMSolverMultistepScheduler), ("UniPC", d.UniPCMultistepScheduler),
                       ("Euler", d.EulerDiscreteScheduler), ("DDIM", d.DDIMScheduler)):
        best = math.inf
        for _ in range(repeats):
            scheduler = cls(num_train_timesteps=TRAIN_STEPS)
            scheduler.set_timesteps(steps)
            x = x_T.clone()
            start = time.perf_counter()
            for timestep in scheduler.timesteps:
                x = scheduler.step(torch.zeros_like(x), timestep, scheduler.scale_model_input(x, timestep)).prev_sample
            best = min(best, time.perf_counter() - start)
        result[f"diffusers {label}"] = best / steps
    return result


# -- the run --------------------------------------------------------------------------------

def evaluate(problem: Problem, nfe_budgets, with_diffusers: bool, log) -> dict:
    """SW1 of every configuration at every budget, and of exact samples (the noise floor)."""
    mixture, n = problem.mixture, problem.samples
    schedule = diffkit.make_schedule("cosine")
    betas = discretize(schedule, TRAIN_STEPS).betas
    metric = SlicedW1(mixture, n)
    x_T = torch.randn(n, mixture.dim, generator=torch.Generator().manual_seed(123))
    floors = [metric(mixture.sample(n, torch.Generator().manual_seed(1000 + s))) for s in range(10)]
    rows: dict[str, dict[int, float]] = {}
    for label, sampler, options in diffkit_configs():
        row = rows.setdefault(f"diffkit {label}", {})
        for nfe in nfe_budgets:
            x, calls = run_diffkit(mixture, schedule, sampler, nfe, x_T, 7, options)
            row[nfe] = metric(x) if torch.isfinite(x).all() else math.inf
            log(f"  {problem.name} diffkit {label:22s} nfe={calls:3d} sw1={row[nfe]:.4f}")
    if with_diffusers:
        for label, cls, config in diffusers_configs():
            row = rows.setdefault(label, {})
            for nfe in nfe_budgets:
                try:
                    x, calls = run_diffusers(mixture, betas, cls, config, nfe, x_T, 7)
                except Exception as error:  # a configuration diffusers refuses at this step count
                    log(f"  {problem.name} {label} nfe={nfe}: {type(error).__name__}: {error}")
                    row[nfe] = math.nan
                    continue
                row[nfe] = metric(x) if torch.isfinite(x).all() else math.inf
                log(f"  {problem.name} {label:22s} nfe={calls:3d} sw1={row[nfe]:.4f}")
    return {"rows": rows, "floor": (_mean(floors), _sd(floors)), "samples": n, "dim": mixture.dim}


def _mean(values):
    return sum(values) / len(values)


def _sd(values):
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _best(rows: dict[str, dict[int, float]], nfe: int, ours: bool) -> tuple[str, float]:
    candidates = {label: row.get(nfe, math.nan) for label, row in rows.items()
                  if label.startswith("diffkit") == ours}
    candidates = {label: value for label, value in candidates.items() if math.isfinite(value)}
    if not candidates:
        return "-", math.nan
    label = min(candidates, key=candidates.get)
    return label, candidates[label]


def markdown(results: dict[str, dict], nfe_budgets) -> str:
    lines = ["## Summary: best diffkit configuration against best diffusers configuration\n",
             "| problem | NFE | best diffkit | SW1 | best diffusers | SW1 | ratio | exact samples |",
             "|---|---:|---|---:|---|---:|---:|---:|"]
    for name, result in results.items():
        floor_mean, floor_sd = result["floor"]
        for nfe in nfe_budgets:
            ours, our_value = _best(result["rows"], nfe, True)
            theirs, their_value = _best(result["rows"], nfe, False)
            ratio = our_value / their_value if their_value == their_value else math.nan
            lines.append(f"| {name} | {nfe} | {ours.removeprefix('diffkit ')} | {our_value:.4f} | {theirs} | "
                         f"{their_value:.4f} | {ratio:.2f} | {floor_mean:.4f} +- {floor_sd:.4f} |")
    lines.append("")
    for name, result in results.items():
        floor_mean, floor_sd = result["floor"]
        lines.append(f"### {name}: D = {result['dim']}, {result['samples']} samples; "
                     f"exact samples score {floor_mean:.4f} +- {floor_sd:.4f}\n")
        lines.append("| sampler | " + " | ".join(f"NFE {k}" for k in nfe_budgets) + " |")
        lines.append("|---|" + "---:|" * len(nfe_budgets))
        rows = result["rows"]
        best = {k: min((r.get(k, math.inf) for r in rows.values() if math.isfinite(r.get(k, math.nan))),
                       default=math.nan) for k in nfe_budgets}
        for label, row in rows.items():
            cells = []
            for k in nfe_budgets:
                value = row.get(k, math.nan)
                text = "n/a" if math.isnan(value) else ("diverged" if math.isinf(value) else f"{value:.4f}")
                cells.append(f"**{text}**" if value == best[k] else text)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def overhead_table(with_diffusers: bool) -> str:
    overhead = sampler_overhead()
    if with_diffusers:
        overhead.update(diffusers_overhead())
    text = ("### Time per step, batch (16, 3, 64, 64), model returning zeros\n\n"
            "| sampler | ms per step |\n|---|---:|\n")
    return text + "\n".join(f"| {k} | {v * 1e3:.2f} |" for k, v in overhead.items()) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32768, help="samples per problem and run")
    parser.add_argument("--quick", action="store_true", help="4096 samples, NFE 10 and 20 only")
    parser.add_argument("--nfe", type=int, nargs="+", default=list(NFE_BUDGETS))
    parser.add_argument("--problems", nargs="+", default=None, help="subset of: ring-2d aniso-16d iso-64d")
    parser.add_argument("--no-diffusers", action="store_true")
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    samples, budgets = (4096, [10, 20]) if args.quick else (args.samples, args.nfe)
    with_diffusers = not args.no_diffusers
    if with_diffusers:
        try:
            import diffusers
        except ImportError:
            print("diffusers is not installed: running diffkit alone (pip install diffusers)")
            with_diffusers = False
    started = time.perf_counter()
    results = {}
    for problem in problems(samples):
        if args.problems and problem.name not in args.problems:
            continue
        results[problem.name] = evaluate(problem, budgets, with_diffusers, print)
    text = markdown(results, budgets) + "\n" + overhead_table(with_diffusers)
    versions = f"torch {torch.__version__}" + (f", diffusers {diffusers.__version__}" if with_diffusers else "")
    text += (f"\nTotal time {time.perf_counter() - started:.0f} s on {args.threads} thread(s), "
             f"{samples} samples per run; {versions}.\n")
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
