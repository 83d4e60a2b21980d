"""Categorical samplers: KL to an exactly enumerated law against the number of steps.

The law is over all 4^3 sequences of 3 tokens with 4 classes, with strongly correlated neighbours
(the one of tests/core/test_categorical.py). Its denoiser is exact (:mod:`diffkit.enumerated`),
so what is left in the samples is the sampler's error: the entries of one step are drawn
independently, each from its own marginal. The score is ``KL(empirical || law)`` in nats; exact
samples of the same size give the noise floor ``(M - 1) / (2 n)`` (M = 64 sequences).

    python benchmarks/categorical.py                 # 50,000 samples per run (a few minutes)
    python benchmarks/categorical.py --quick         # 10,000 samples
    python benchmarks/categorical.py --markdown out.md

Not run by CI; results are recorded in docs/benchmarks/categorical.md.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from diffkit import CategoricalDiffusion
from diffkit.enumerated import EnumeratedLaw

STEPS = (1, 2, 4, 8, 16, 32, 64, 128)
KINDS = ("absorbing", "uniform", "marginal")
SPACINGS = ("uniform", "quadratic", "signal")
SAMPLERS = (("ancestral", {}), ("discrete_flow", {"eta": 0.0}), ("discrete_flow", {"eta": 0.5}))


def correlated_law(seed: int = 0) -> EnumeratedLaw:
    """Neighbours tend to agree, the ends tend to differ, plus a random tilt."""
    g = torch.Generator().manual_seed(seed)
    s = torch.tensor(list(itertools.product(range(4), repeat=3)))
    score = 1.5 * (s[:, 0] == s[:, 1]) + 1.5 * (s[:, 1] == s[:, 2]) - 1.0 * (s[:, 0] == s[:, 2])
    return EnumeratedLaw((score + 0.7 * torch.randn(64, generator=g, dtype=torch.float64)).exp(), 4, 3)


def diffusion_for(kind: str, law: EnumeratedLaw) -> CategoricalDiffusion:
    marginal = law.marginal(0).tolist() if kind == "marginal" else None
    return CategoricalDiffusion(4, kind, marginal=marginal, schedule="cosine")


def run(samples: int, steps: tuple[int, ...], seed: int = 1) -> list[dict]:
    law, rows = correlated_law(), []
    for kind in KINDS:
        diffusion = diffusion_for(kind, law)
        model = law.denoiser(diffusion)
        for (sampler, options), spacing in itertools.product(SAMPLERS, SPACINGS):
            if kind == "absorbing" and sampler == "discrete_flow" and options["eta"] > 0:
                continue  # under absorbing noise every eta gives the same kernel
            started, kl = time.perf_counter(), {}
            for n_steps in steps:
                x = diffusion.sample(model, (samples, 3), sampler=sampler, steps=n_steps, spacing=spacing,
                                     generator=torch.Generator().manual_seed(seed), **options)
                kl[n_steps] = law.kl_from(x)
            label = sampler + "".join(f" {k}={v}" for k, v in options.items())
            rows.append({"kind": kind, "sampler": label, "spacing": spacing, "kl": kl,
                         "seconds": time.perf_counter() - started})
            print(f"{kind:9s} {label:22s} {spacing:9s} " + " ".join(f"{kl[s]:.4f}" for s in steps), flush=True)
    return rows


def floor_line(law: EnumeratedLaw, samples: int) -> str:
    mean, sd = law.kl_floor(samples)
    return f"exact samples: {mean:.4f} +- {sd:.4f}"


def markdown(rows: list[dict], steps: tuple[int, ...], samples: int) -> str:
    law = correlated_law()
    lines = [f"{samples} samples per run; {floor_line(law, samples)} (the noise floor).", ""]
    for kind in KINDS:
        header = " | ".join(f"{s} step{'s' if s > 1 else ''}" for s in steps)
        lines += [f"### {kind} noise", "", f"| sampler | spacing | {header} |", "|---|---|" + "---:|" * len(steps)]
        for row in (r for r in rows if r["kind"] == kind):
            values = " | ".join(f"{row['kl'][s]:.4f}" for s in steps)
            lines.append(f"| {row['sampler']} | {row['spacing']} | {values} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 samples instead of 50,000")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--markdown", type=str, default=None, help="write the tables to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    samples = args.samples or (10_000 if args.quick else 50_000)
    print(floor_line(correlated_law(), samples))
    rows = run(samples, STEPS)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(markdown(rows, STEPS, samples))


if __name__ == "__main__":
    main()
