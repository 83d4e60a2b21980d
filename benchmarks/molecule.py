"""Molecule generation quality: strict validity, uniqueness, novelty, FCD and property distances of
N samples from a checkpoint (the shipped QM9 weights by default), with the sampling time.

    python benchmarks/molecule.py -n 10000 --out /tmp/molecule_bench

Writes ``samples.smi`` and ``results.json`` to ``--out`` and prints the results; the numbers in
docs/benchmarks/molecule.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffkit.config import parse_assignment
from diffkit.domain import merge_config
from diffkit.generate import SampleRequest, generate, resolve_precision
from diffkit.loading import load_for_sampling
from diffkit_molecule import MoleculeDomain
from diffkit_molecule.domain import reference_smiles
from diffkit_molecule.metrics import evaluate_smiles
from diffkit_molecule.sources import bundled_path, read_smiles_texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=10_000, help="number of molecules to generate")
    parser.add_argument("--checkpoint", default=None, help="checkpoint or run folder (default: shipped weights)")
    parser.add_argument("--sampler", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--spacing", default=None, help="sample.spacing (default: the checkpoint's)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a sampler option (sample.options; replaces the checkpoint's), e.g. target_guidance=0.05")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--device", default="cpu", help="where to sample: cpu, cuda or cuda:N")
    parser.add_argument("--precision", default=None, choices=["float32", "bfloat16", "auto"],
                        help="sample.precision (default: the checkpoint's)")
    parser.add_argument("--reference", default=None, help="reference molecules (default: the bundled QM9 subset)")
    parser.add_argument("--out", required=True, help="folder for samples.smi and results.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    domain = MoleculeDomain()
    source = args.checkpoint or domain.pretrained()
    if source is None:
        raise SystemExit("no checkpoint given and no shipped weights found")
    model, config = load_for_sampling(domain, source, args.device)
    if args.precision is not None:
        config["sample"]["precision"] = args.precision
    if args.spacing is not None:
        config["sample"]["spacing"] = args.spacing
    if args.option:
        config["sample"]["options"] = sampler_options(args.option)
    request = SampleRequest(n=args.n, sampler=args.sampler, steps=args.steps, seed=args.seed)
    start, start_cpu = time.perf_counter(), time.process_time()
    batch = generate(domain, model, config, request, device=args.device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    domain.write_samples(batch, out / "samples.smi", config)
    reference = reference_smiles(Path(args.reference) if args.reference else bundled_path())
    scores = evaluate_smiles(read_smiles_texts(out / "samples.smi"), reference)
    results = {
        "samples": args.n, "checkpoint": str(source), "trained_steps": _trained_steps(source),
        "sampler": request.sampler or config["sample"]["sampler"], "steps": request.steps or config["sample"]["steps"],
        "spacing": config["sample"]["spacing"], "options": config["sample"]["options"],
        "precision": resolve_precision(config["sample"]["precision"], args.device),
        "device": _device_name(args.device), "threads": args.threads, "sampling_seconds": round(seconds, 1),
        "seconds_per_1000": round(seconds / args.n * 1000, 1),
        # CPU time: what the wall time would be on an otherwise idle machine with these threads.
        "cpu_seconds_per_1000": round(cpu_seconds / args.threads / args.n * 1000, 1), **{k: round(v, 4) for k, v in scores.items()},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def sampler_options(pairs: list[str]) -> dict:
    """``["target_guidance=0.05", ...]`` -> ``sample.options``, each value read as ``--set`` reads it."""
    options: dict = {"sample": {"options": {}}}
    for pair in pairs:
        options = merge_config(options, parse_assignment(f"sample.options.{pair}", options))
    return options["sample"]["options"]


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


def _trained_steps(source) -> int | None:
    from diffkit.loading import load_checkpoint

    return load_checkpoint(MoleculeDomain(), source).get("step")


if __name__ == "__main__":
    main()
