"""Analyses of generated molecules beyond benchmarks/molecule.py's scores; the numbers in
docs/benchmarks/molecule.md come from them.

    python benchmarks/molecule_analysis.py failures OUT/samples.smi    # why invalid samples fail
    python benchmarks/molecule_analysis.py qm9 OUT/samples.smi         # novelty vs QM9, FCD vs a held-out split
    python benchmarks/molecule_analysis.py guidance -n 1000 --guidance 1 2 3
    python benchmarks/molecule_analysis.py scaffold -n 250 --scaffold c1ccccc1 c1ccncc1 C1CCOC1
    python benchmarks/molecule_analysis.py samplers -n 1000 --checkpoint RUN --settings discrete_flow:50 ancestral:20:quadratic

``qm9`` and ``guidance`` need the qm9pack package (all of QM9). The held-out molecules are QM9
molecules outside the bundled subset (the shipped model's training data), drawn with ``--seed``.
Sampling uses the shipped weights (or ``--checkpoint``) and the config's sampler and steps unless
``--steps`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

import torch

from diffkit.generate import SampleRequest, generate, sample_settings
from diffkit.loading import load_for_sampling
from diffkit_molecule import MoleculeDomain
from diffkit_molecule.chem import canonical_smiles, rdkit
from diffkit_molecule.metrics import basic_scores, evaluate_smiles, failure_kind, fcd, property_errors
from diffkit_molecule.outputs import as_it_stands, molecules_from_graphs, smiles_lines
from diffkit_molecule.properties import compute
from diffkit_molecule.sources import bundled_path, read_smiles_texts
from molecule import sampler_options  # benchmarks/molecule.py

HELD_OUT_SIZE = 10_000  # the FCD reference: as many molecules as the 10,000-sample benchmark draws


def failures(samples: list[str]) -> dict:
    """Counts over all samples: valid ones, invalid ones by reason, and among the valid ones those
    in several pieces and those with charged atoms."""
    Chem = rdkit()
    reasons = [failure_kind(s) for s in samples]
    kinds = Counter(reasons)
    valid = [Chem.MolFromSmiles(s) for s, reason in zip(samples, reasons) if reason == "valid"]
    charged = Counter()
    for mol in valid:
        tokens = sorted({f"{a.GetSymbol()}{'+' if a.GetFormalCharge() > 0 else '-'}" for a in mol.GetAtoms()
                         if a.GetFormalCharge()})
        charged[" ".join(tokens) or "none"] += 1
    pieces = Counter(len(Chem.GetMolFrags(mol)) for mol in valid)
    return {"samples": len(samples), "valid": kinds.pop("valid", 0),
            "invalid_by_kind": dict(kinds.most_common()),
            "valid_by_pieces": dict(sorted(pieces.items())),
            "valid_by_charged_atoms": dict(charged.most_common()),
            "valid_net_charge_nonzero": sum(Chem.GetFormalCharge(mol) != 0 for mol in valid)}


def qm9_canonical() -> list[str]:
    """All of QM9 as canonical SMILES without stereochemistry (as the bundled subset is written)."""
    from diffkit_molecule.qm9 import qm9_smiles

    Chem = rdkit()
    out = []
    for text in qm9_smiles():
        mol = Chem.MolFromSmiles(text)
        if mol is not None:
            out.append(canonical_smiles(mol))
    return out


def held_out(everything: list[str], count: int, seed: int) -> list[str]:
    """``count`` distinct QM9 molecules that are not in the bundled subset."""
    training = set(read_smiles_texts(bundled_path()))
    outside = sorted(set(everything) - training)
    return random.Random(seed).sample(outside, count)


def qm9_scores(samples: list[str], seed: int) -> dict:
    everything = qm9_canonical()
    scores = basic_scores(samples, everything)
    reference = held_out(everything, HELD_OUT_SIZE, seed)
    return {"qm9_molecules": len(set(everything)), "novelty_vs_qm9": scores["novelty"],
            "fcd_vs_held_out": fcd(samples, reference), "held_out_size": len(reference)}


def sample_molecules(domain, model, config, request: SampleRequest) -> tuple[list, float]:
    """The generated graphs as unsanitised RDKit molecules, and the seconds sampling took."""
    start = time.perf_counter()
    batch = generate(domain, model, config, request)
    seconds = time.perf_counter() - start
    return molecules_from_graphs(batch["x"]["nodes"], batch["x"]["edges"], config["data"]["atom_types"]), seconds


def sample_smiles(domain, model, config, request: SampleRequest) -> tuple[list[str], float]:
    mols, seconds = sample_molecules(domain, model, config, request)
    return smiles_lines(mols), seconds


def guidance(domain, model, config, args) -> dict:
    """MAE of each property of valid samples against values asked for them (the properties of
    held-out molecules, all three asked together), conditional at each guidance weight and
    unconditional (the same asked values: the baseline)."""
    Chem = rdkit()
    names = list(model.property_names)
    asked_mols = held_out(qm9_canonical(), args.n, args.seed)
    asked = [dict(zip(names, compute(Chem.MolFromSmiles(s), names))) for s in asked_mols]
    table = torch.tensor([[row[name] for name in names] for row in asked], dtype=torch.float64)
    results = {}
    for weight in [None, *args.guidance]:
        request = SampleRequest(n=args.n, seed=args.seed, steps=args.steps,
                                cond=None if weight is None else asked, guidance=weight)
        smiles, seconds = sample_smiles(domain, model, config, request)
        label = "unconditional" if weight is None else f"guidance {weight:g}"
        row = {**property_errors(smiles, table, names), **basic_scores(smiles, [])}
        row.pop("novelty")
        results[label] = {k: round(v, 4) for k, v in row.items()} | {"seconds": round(seconds, 1)}
        print(label, results[label], flush=True)
    return results


def _kekule(mol):
    """A copy with Kekulé bonds and no aromatic flags: matches compare the graph as generated."""
    Chem = rdkit()
    mol = Chem.Mol(mol)
    Chem.Kekulize(mol, clearAromaticFlags=True)
    return mol


def scaffolds(domain, model, config, args) -> dict:
    """Strict validity and, among valid samples, the fraction that hold the scaffold: as a
    substructure in RDKit's sense of the written SMILES (aromatic rings perceived as aromatic),
    as the Kekulé graph that was kept in that SMILES read back, and in the generated graph itself."""
    Chem = rdkit()
    results = {}
    for scaffold in args.scaffold:
        query = Chem.MolFromSmiles(scaffold)
        kekule_query = _kekule(query)
        request = SampleRequest(n=args.n, seed=args.seed, steps=args.steps, init=scaffold, resample=args.resample)
        generated, seconds = sample_molecules(domain, model, config, request)
        read_back = [Chem.MolFromSmiles(s) for s in smiles_lines(generated)]
        valid = [m for m in read_back if m is not None]
        kept = sum(m.HasSubstructMatch(query) for m in valid)
        as_graph = sum(_kekule(m).HasSubstructMatch(kekule_query) for m in valid)
        in_generated = sum(as_it_stands(g).HasSubstructMatch(kekule_query)
                           for g, m in zip(generated, read_back) if m is not None)
        results[scaffold] = {"samples": len(generated), "validity": round(len(valid) / len(generated), 4),
                             "kept_in_valid": round(kept / max(len(valid), 1), 4), "kept": kept,
                             "kept_as_kekule_graph": as_graph, "kept_in_generated_graph": in_generated,
                             "valid": len(valid),
                             "unique_valid": len({canonical_smiles(m) for m in valid}),
                             "resample": sample_settings(config, request)["resample"], "seconds": round(seconds, 1)}
        print(scaffold, results[scaffold], flush=True)
    return results


def sampler_setting(text: str) -> tuple[str, int, str | None, dict]:
    """``sampler[@option=value...]:steps[:spacing]`` -> (sampler name, steps, spacing or None for
    the config's, its ``sample.options``); ``discrete_flow@eta=0.5@target_guidance=0.1:20``."""
    sampler, steps, *spacing = text.split(":")
    sampler, *pairs = sampler.split("@")
    return sampler, int(steps), spacing[0] if spacing else None, sampler_options(pairs)


def samplers(domain, model, config, args) -> dict:
    """Scores of the same seeds sampled with each setting, with the wall time of sampling."""
    reference = read_smiles_texts(bundled_path())
    results = {}
    for text in args.settings:
        sampler, steps, spacing, options = sampler_setting(text)
        section = {**config["sample"], "sampler": sampler, "options": options,
                   **({"spacing": spacing} if spacing else {})}
        request = SampleRequest(n=args.n, seed=args.seed, steps=steps)
        smiles, seconds = sample_smiles(domain, model, {**config, "sample": section}, request)
        scores = evaluate_smiles(smiles, reference)
        results[text] = {k: round(v, 4) for k, v in scores.items()} | {"seconds": round(seconds, 1)}
        print(text, results[text], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("failures", "qm9"):
        command = commands.add_parser(name)
        command.add_argument("samples", help="a samples.smi written by diffkit sample or benchmarks/molecule.py")
        command.add_argument("--seed", type=int, default=0)
    for name, default_n in (("guidance", 1000), ("scaffold", 250), ("samplers", 1000)):
        command = commands.add_parser(name)
        command.add_argument("-n", type=int, default=default_n, help="samples per setting")
        command.add_argument("--checkpoint", default=None, help="checkpoint or run folder (default: shipped weights)")
        command.add_argument("--steps", type=int, default=None)
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--threads", type=int, default=1)
        command.add_argument("--precision", default=None, choices=["float32", "bfloat16", "auto"],
                             help="sample.precision (default: the checkpoint's)")
        command.add_argument("--out", default=None, help="a JSON file for the results")
    commands.choices["guidance"].add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    commands.choices["scaffold"].add_argument("--scaffold", nargs="+", default=["c1ccccc1", "c1ccncc1", "C1CCOC1"])
    commands.choices["scaffold"].add_argument("--resample", type=int, default=None,
                                                      help="RePaint resampling rounds (default: the config's sample.resample)")
    commands.choices["samplers"].add_argument("--settings", nargs="+", required=True,
                                              help="sampler:steps[:spacing] each, e.g. ancestral:20:quadratic; "
                                                   "discrete_flow@target_guidance=0.1:20 sets sample.options")
    args = parser.parse_args()

    if args.command in ("failures", "qm9"):
        samples = read_smiles_texts(Path(args.samples))
        results = failures(samples) if args.command == "failures" else qm9_scores(samples, args.seed)
    else:
        torch.set_num_threads(args.threads)
        domain = MoleculeDomain()
        model, config = load_for_sampling(domain, args.checkpoint or domain.pretrained(), "cpu")
        if args.precision is not None:
            config["sample"]["precision"] = args.precision
        analysis = {"guidance": guidance, "scaffold": scaffolds, "samplers": samplers}[args.command]
        results = analysis(domain, model, config, args)
    text = json.dumps(results, indent=2)
    print(text)
    if getattr(args, "out", None):
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
