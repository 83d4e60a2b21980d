"""Mixed states against an exact joint law: a class ``k`` (weights 0.5, 0.3, 0.2) and a number
``x | k ~ N(mu_k, sd_k^2)`` (means -1, 0.5, 2; stds 0.3, 0.5, 0.2), sampled jointly by a
:class:`diffkit.MixedProcess` (flow matching or Gaussian diffusion for the number, categorical
diffusion for the class) with the exact model of the law (:class:`diffkit.gmm.ExactLabelledModel`).

The scores compare conditional statistics with the law's: the total variation of the class shares,
and, weighted by the class weights, the distance of the mean of ``x`` given each class from
``mu_k`` (in ``sd_k``) and of its standard deviation from ``sd_k`` (relative). Exact draws of the
same size give the floor. Beside them, samples whose number and class are drawn independently,
each from its exact marginal: right marginals, wrong conditionals.

    python benchmarks/mixed.py [--samples 20000] [--markdown out.md]

Not run by CI; results are in docs/benchmarks/flow.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diffkit import CategoricalDiffusion, Diffusion, FlowMatching, MixedProcess
from diffkit.gmm import ExactLabelledModel, GaussianMixture

WEIGHTS, MEANS, STDS = (0.5, 0.3, 0.2), (-1.0, 0.5, 2.0), (0.3, 0.5, 0.2)
MIXTURE = GaussianMixture(torch.tensor(WEIGHTS), torch.tensor(MEANS)[:, None], stds=torch.tensor(STDS))
STEPS = (5, 10, 20, 50)


def scores(labels: torch.Tensor, x: torch.Tensor) -> tuple[float, float, float]:
    """Class-share total variation, conditional mean error and conditional std error."""
    shares = torch.bincount(labels, minlength=3).double() / len(labels)
    tv = 0.5 * float((shares - torch.tensor(WEIGHTS, dtype=torch.float64)).abs().sum())
    mean_error = std_error = 0.0
    for k, (w, mu, sd) in enumerate(zip(WEIGHTS, MEANS, STDS)):
        chosen = x[labels == k].double()
        mean_error += w * abs(float(chosen.mean()) - mu) / sd
        std_error += w * abs(float(chosen.std()) / sd - 1)
    return tv, mean_error, std_error


def exact(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(torch.tensor(WEIGHTS, dtype=torch.float64), n, replacement=True, generator=generator)
    x = torch.tensor(MEANS, dtype=torch.float64)[labels] + torch.tensor(STDS, dtype=torch.float64)[labels] * torch.randn(
        n, generator=generator, dtype=torch.float64)
    return labels, x


def configurations() -> list[tuple[str, MixedProcess, str | dict | None]]:
    return [
        ("flow + uniform, flow_euler / discrete_flow", MixedProcess({"x": FlowMatching(), "label": CategoricalDiffusion(3, "uniform")}), None),
        ("flow + absorbing, flow_euler / discrete_flow", MixedProcess({"x": FlowMatching(), "label": CategoricalDiffusion(3, "absorbing")}), None),
        ("flow + uniform, ddpm (VP view) / discrete_flow", MixedProcess({"x": FlowMatching(), "label": CategoricalDiffusion(3, "uniform")}), "ddpm"),
        ("gaussian v + uniform, ddim / discrete_flow", MixedProcess({"x": Diffusion("cosine", "v"), "label": CategoricalDiffusion(3, "uniform")}), None),
        ("gaussian v + uniform, ddpm / ancestral (TabDDPM's)", MixedProcess({"x": Diffusion("cosine", "v"), "label": CategoricalDiffusion(3, "uniform")}), {"x": "ddpm", "label": "ancestral"}),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n = args.samples
    lines = ["| process, samplers (number / class) | steps | class TV | conditional mean error | conditional std error |",
             "|---|---:|---:|---:|---:|"]
    floor = [scores(*exact(n, args.seed + s)) for s in range(5)]
    worst = tuple(max(row[i] for row in floor) for i in range(3))
    lines.append(f"| exact draws (the largest of 5 seeds) | | {worst[0]:.4f} | {worst[1]:.4f} | {worst[2]:.4f} |")
    labels, _ = exact(n, args.seed)
    _, shuffled = exact(n, args.seed + 100)
    independent = shuffled[torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))]
    tv, mean_error, std_error = scores(labels, independent)
    lines.append(f"| number and class drawn apart, from their exact marginals | | {tv:.4f} | {mean_error:.4f} | {std_error:.4f} |")
    for name, process, sampler in configurations():
        model = ExactLabelledModel(MIXTURE, process)
        for steps in STEPS:
            like = {"x": torch.zeros(n, 1, dtype=torch.float64), "label": torch.zeros(n, dtype=torch.long)}
            out = process.sample(model, like, steps=steps, sampler=sampler, generator=torch.Generator().manual_seed(args.seed))
            tv, mean_error, std_error = scores(out["label"], out["x"][:, 0])
            lines.append(f"| {name} | {steps} | {tv:.4f} | {mean_error:.4f} | {std_error:.4f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
