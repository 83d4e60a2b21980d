"""Flow-matching samplers against the exact velocity of Gaussian mixtures: KL(samples || mixture) at
a budget of model calls, beside diffusers' FlowMatchEulerDiscreteScheduler and
FlowMatchHeunDiscreteScheduler and Meta's ``flow_matching`` ODE solver driven by the same velocity.

The velocity of the linear path ``x_t = (1 - t) x_0 + t eps`` towards a Gaussian mixture is known
in closed form (:meth:`diffkit.gmm.GaussianMixture.velocity`), so the error left in the samples is
the solver's alone. A deterministic sampler is a smooth map ``T`` from the noise ``z`` to a sample,
so the law ``q`` of its samples has the density ``log q(T(z)) = log N(z) - log |det dT/dz|`` and

    KL(q || p) = E_z[ log N(z) - log |det dT/dz| - log p(T(z)) ]

is estimated without bias from the same ``z`` for every solver, with the Jacobian by automatic
differentiation through the whole solver (``D`` backward passes). It is 0 for the exact flow (the
adaptive ``dopri5`` at tight tolerances shows the estimator's floor), and its Monte-Carlo spread
shrinks with the solver's error, since ``log q - log p`` does.

    python benchmarks/flow.py                      # the tables of docs/benchmarks/flow.md
    python benchmarks/flow.py --markdown out.md
    OMP_NUM_THREADS=1 python benchmarks/flow.py digits --seconds 600   # flow against Gaussian on digits

``digits`` trains the image domain's ``cpu`` preset network twice for the same CPU time, once with
the Gaussian default (``diffusion.kind = "gaussian"``, v prediction) and once with flow matching,
with the training loop of benchmarks/image.py, and scores samples at 4, 10 and 30 model calls by
the image domain's Fréchet distance (features of its cached digit classifier).

diffusers and flow_matching run when importable; install them apart from the system Python, e.g.
``pip install --target /tmp/flow-bench diffusers flow_matching torchdiffeq`` and ``--site /tmp/flow-bench``
(appended to the import path, so the system's own packages come first). Not run by CI.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from diffkit import FlowMatching
from diffkit.gmm import GaussianMixture

sys.path.insert(0, str(Path(__file__).parent))
from samplers import anisotropic, ring_2d  # noqa: E402  (the problems of benchmarks/samplers.py)

BUDGETS = (5, 10, 20)
DOUBLE = torch.float64


@dataclass
class Problem:
    name: str
    mixture: GaussianMixture
    samples: int


def problems(samples: int) -> list[Problem]:
    return [Problem("ring-2d", ring_2d(), samples), Problem("aniso-8d", anisotropic(8, 4, seed=1), samples // 2)]


class CountedVelocity:
    """The exact velocity ``v(x, t)`` (our convention, ``t = 1`` noise), counting batched calls."""

    def __init__(self, mixture: GaussianMixture):
        self.model = mixture.velocity(FlowMatching().path)
        self.calls = 0

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        self.calls += 1
        t = torch.as_tensor(t, dtype=DOUBLE).reshape(-1)
        return self.model(x, t.expand(x.shape[0]) if t.numel() == 1 else t)


def kl_to_mixture(sample: Callable[[torch.Tensor], torch.Tensor], mixture: GaussianMixture, z: torch.Tensor,
                  chunk: int = 2048) -> tuple[float, float, int]:
    """KL(q || p) by change of variables (module docstring): the mean and its standard error, and
    how many samples had a Jacobian determinant of the wrong sign (the map folded)."""
    values, folded = [], 0
    for part in z.split(chunk):
        part = part.clone().requires_grad_(True)
        with torch.enable_grad():
            x = sample(part)
            rows = [torch.autograd.grad(x[:, i].sum(), part, retain_graph=i < x.shape[1] - 1)[0]
                    for i in range(x.shape[1])]
        jacobian = torch.stack(rows, dim=1).double()                                    # (n, D, D)
        sign, log_det = torch.linalg.slogdet(jacobian)
        folded += int((sign <= 0).sum())
        log_noise = -0.5 * (part.detach().double() ** 2).sum(1) - 0.5 * part.shape[1] * math.log(2 * math.pi)
        values.append(log_noise - log_det - mixture.log_prob(x.detach().double()))
    values = torch.cat(values)
    return float(values.mean()), float(values.std() / math.sqrt(len(values))), folded


# -- the solvers ----------------------------------------------------------------------------

def diffkit_solvers(flow: FlowMatching) -> dict[str, tuple[Callable, Callable[[int], int]]]:
    """Name -> (run(velocity, z, steps), steps for a budget of calls): each at a spacing it is run at."""
    def run(sampler: str, spacing: str):
        def go(velocity, z, steps):
            denoiser = flow.denoiser(lambda x, t, cond=None: velocity(x, t))
            return flow.run_sampler(flow.get_sampler(sampler), denoiser, z, flow.sample_times(steps, spacing))
        return go

    one, two = (lambda calls: calls), (lambda calls: (calls + 1) // 2)   # heun: 2 N - 1 calls
    midpoint, multistep = (lambda calls: calls // 2), one
    solvers = {}
    for spacing in ("uniform", "log_snr", "trimmed"):
        solvers[f"flow_euler, {spacing}"] = (run("flow_euler", spacing), one)
        solvers[f"flow_heun, {spacing}"] = (run("flow_heun", spacing), two)
        solvers[f"flow_midpoint, {spacing}"] = (run("flow_midpoint", spacing), midpoint)
        for name in ("dpmpp_2m", "dpmpp_3m", "unipc"):
            solvers[f"{name}, {spacing}"] = (run(name, spacing), multistep)
    return solvers


def diffusers_solvers() -> dict[str, tuple[Callable, Callable[[int], int]]]:
    try:
        from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
    except ImportError:
        return {}

    def run(factory):
        def go(velocity, z, steps):
            scheduler = factory()
            scheduler.set_timesteps(steps)
            x = z
            for timestep in scheduler.timesteps:
                sigma = timestep / scheduler.config.num_train_timesteps
                x = scheduler.step(velocity(x, float(sigma)), timestep, x).prev_sample
            return x
        return go

    return {"diffusers FlowMatchEulerDiscreteScheduler": (run(FlowMatchEulerDiscreteScheduler), lambda calls: calls),
            "diffusers FlowMatchHeunDiscreteScheduler": (run(FlowMatchHeunDiscreteScheduler), lambda calls: (calls + 1) // 2)}


def flow_matching_solvers() -> dict[str, tuple[Callable, Callable[[int], int]]]:
    try:
        from flow_matching.solver import ODESolver
        from flow_matching.utils import ModelWrapper
    except ImportError:
        return {}

    class Wrapped(ModelWrapper):
        """flow_matching's convention runs from noise at 0 to data at 1: ``u(x, s) = -v(x, 1 - s)``."""

        def __init__(self, velocity):
            super().__init__(None)
            self.velocity = velocity

        def forward(self, x, t, **extras):
            return -self.velocity(x, 1.0 - t)

    def run(method: str, calls_per_step: int):
        def go(velocity, z, steps):
            solver = ODESolver(velocity_model=Wrapped(velocity))
            grid = torch.tensor([0.0, 1.0], dtype=DOUBLE)
            return solver.sample(z, step_size=1.0 / steps, method=method, time_grid=grid, enable_grad=True)
        return go

    return {"flow_matching ODESolver euler": (run("euler", 1), lambda calls: calls),
            "flow_matching ODESolver midpoint": (run("midpoint", 2), lambda calls: calls // 2)}


# -- the run --------------------------------------------------------------------------------

def measure(problem: Problem, solvers: dict, budgets: tuple[int, ...], seed: int) -> dict[str, dict[int, tuple]]:
    z = torch.randn(problem.samples, problem.mixture.dim, generator=torch.Generator().manual_seed(seed), dtype=DOUBLE)
    table = {}
    for name, (run, steps_for) in solvers.items():
        row = {}
        for budget in budgets:
            steps = steps_for(budget)
            velocity = CountedVelocity(problem.mixture)
            start = time.perf_counter()
            kl, error, folded = kl_to_mixture(lambda part: run(velocity, part, steps), problem.mixture, z)
            chunks = math.ceil(problem.samples / 2048)
            row[budget] = (kl, error, folded, velocity.calls // chunks, time.perf_counter() - start)
        table[name] = row
        print(problem.name, name, {b: f"{v[0]:.4f}±{v[1]:.4f} ({v[3]} calls)" for b, v in row.items()}, flush=True)
    return table


def reference(problem: Problem, seed: int, tolerance: float) -> tuple[float, float, int]:
    """dopri5 at a tight tolerance: the estimator's floor."""
    flow = FlowMatching()
    z = torch.randn(problem.samples, problem.mixture.dim, generator=torch.Generator().manual_seed(seed), dtype=DOUBLE)
    velocity = CountedVelocity(problem.mixture)

    def run(part):
        denoiser = flow.denoiser(lambda x, t, cond=None: velocity(x, t))
        return flow.run_sampler(flow.get_sampler("dopri5"), denoiser, part, torch.tensor([1.0, 0.0], dtype=DOUBLE),
                                rtol=tolerance, atol=tolerance)

    kl, error, _ = kl_to_mixture(run, problem.mixture, z)
    return kl, error, velocity.calls // math.ceil(problem.samples / 2048)


def markdown(results: dict, floors: dict, budgets: tuple[int, ...]) -> str:
    lines = []
    for problem, table in results.items():
        kl, error, calls = floors[problem]
        lines += [f"### {problem}", "", f"dopri5 (rtol = atol = 1e-7), {calls} calls a chunk: KL {kl:.5f} ± {error:.5f}", "",
                  "| solver | " + " | ".join(f"{b} calls" for b in budgets) + " |",
                  "|---|" + "---:|" * len(budgets)]
        for name, row in sorted(table.items(), key=lambda item: item[1][budgets[-1]][0]):
            cells = []
            for b in budgets:
                kl, error, folded, calls, _ = row[b]
                fold = f" ({folded} folded)" if folded else ""
                cells.append(f"{kl:.4f} ± {error:.4f}{fold}" + ("" if calls == b else f" [{calls}]"))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# -- digits: flow matching against the Gaussian default at equal training time ----------------

DIGIT_BUDGETS = (4, 10, 30)
#: (label, diffusion.kind, sampler, model calls a step) of the sampling runs of each kind
DIGIT_SAMPLERS = {
    "gaussian": [("dpmpp_2m (the default)", "dpmpp_2m", 1), ("ddim", "ddim", 1)],
    "flow": [("dpmpp_2m (the default)", "dpmpp_2m", 1), ("flow_euler", "flow_euler", 1),
             ("flow_midpoint", "flow_midpoint", 2)],
}


def digits(args) -> None:
    import json
    import tempfile

    import diffkit
    from diffkit.config import resolve_config
    from diffkit.generate import build_diffusion
    from image import build_ours, train_for_cpu_seconds

    torch.set_num_threads(1)
    domain = diffkit.make_plugin_manager(entry_points=False).domain("image")
    results = {"seconds": args.seconds, "samples": args.samples, "torch": torch.__version__, "runs": []}
    with tempfile.TemporaryDirectory() as scratch:
        for kind in ("gaussian", "flow"):
            config = resolve_config(domain, preset="cpu", sets=[f"diffusion.kind={kind}"])
            dataset = domain.build_dataset(config)
            process = build_diffusion(domain, config)
            ema, steps = train_for_cpu_seconds(build_ours(domain, config, dataset, seed=0), process, config, dataset,
                                               args.seconds)
            for label, sampler, calls_per_step in DIGIT_SAMPLERS[kind]:
                for budget in DIGIT_BUDGETS:
                    generator = torch.Generator().manual_seed(1)
                    batch = domain.prepare_sampling(ema, args.samples, config, generator=generator)
                    with torch.no_grad():
                        x = process.sample(ema, batch["x"], sampler=sampler, steps=max(1, budget // calls_per_step),
                                           cond=batch["cond"], generator=generator)
                    folder = Path(scratch) / f"{kind}-{sampler}-{budget}"
                    domain.write_samples({"x": domain.decode(x, batch)}, folder, config)
                    score = domain.evaluate(folder, None, config)["frechet_distance"]
                    run = {"kind": kind, "train_steps": steps, "sampler": label, "calls": budget, "fd": score}
                    results["runs"].append(run)
                    print(json.dumps(run), flush=True)
    lines = [f"Training: {args.seconds:g} CPU seconds each, one thread; {args.samples} samples a score.", "",
             "| process (training steps) | sampler | " + " | ".join(f"{b} calls" for b in DIGIT_BUDGETS) + " |",
             "|---|---|" + "---:|" * len(DIGIT_BUDGETS)]
    for kind in ("gaussian", "flow"):
        for label, _, _ in DIGIT_SAMPLERS[kind]:
            runs = {r["calls"]: r for r in results["runs"] if r["kind"] == kind and r["sampler"] == label}
            steps = next(iter(runs.values()))["train_steps"]
            lines.append(f"| {kind} ({steps}) | {label} | " + " | ".join(f"{runs[b]['fd']:.2f}" for b in DIGIT_BUDGETS) + " |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["digits"]:
        parser = argparse.ArgumentParser(description="flow matching against Gaussian diffusion on digits")
        parser.add_argument("--seconds", type=float, default=600.0, help="CPU seconds of training for each process")
        parser.add_argument("--samples", type=int, default=1000)
        parser.add_argument("--markdown", default=None)
        digits(parser.parse_args(argv[1:]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--site", default=None, help="a folder holding diffusers and flow_matching (appended to sys.path)")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    if args.site:
        sys.path.append(args.site)
    torch.set_num_threads(1)
    solvers = {**diffkit_solvers(FlowMatching()), **diffusers_solvers(), **flow_matching_solvers()}
    results, floors = {}, {}
    for problem in problems(args.samples):
        floors[problem.name] = reference(problem, args.seed, 1e-7)
        print(problem.name, "dopri5", floors[problem.name], flush=True)
        results[problem.name] = measure(problem, solvers, BUDGETS, args.seed)
    text = markdown(results, floors, BUDGETS)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
