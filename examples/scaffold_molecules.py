"""Scaffold-constrained molecule generation: complete a given substructure into whole molecules.

The molecule domain reads ``--init`` as a scaffold SMILES (or a file whose first molecule is the
scaffold): its atoms and the bonds among them are kept, the other atoms and their bonds are
generated with the core's inpainting (the same mechanism that fills in image regions). The domain
takes no ``--mask``: the scaffold is what is kept. The command line equivalent is

    diffkit sample --domain molecule --init "C1CC1" -n 16 --resample 4 --out completed/

This script goes through the same functions (``diffkit.generate.generate`` with a
``SampleRequest(init=...)``) and then checks every result with RDKit: is it a valid molecule, and
does it contain the scaffold? It uses the molecule plugin's shipped weights, or ``--checkpoint``
(a file or a run folder from ``diffkit train --domain molecule``), and says so plainly when
neither is available. A few RePaint rounds (``--resample``) let the new atoms fit the scaffold:
with the shipped QM9 weights, 32 completions of cyclopropane were 72% valid with one round and 91%
with four; of benzene, 31% (16 completions) with one round and 75% with four.

    python examples/scaffold_molecules.py --scaffold "C1CC1" -n 16 [--checkpoint runs/molecule]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffkit.domain import Domain
from diffkit.generate import SampleRequest, generate
from diffkit.plugins import make_plugin_manager
from diffkit.loading import load_for_sampling


class NotReady(SystemExit):
    """The molecule plugin cannot do scaffold generation here (missing, no editing, no weights)."""


def molecule_domain() -> Domain:
    """The installed molecule domain, refusing one that cannot edit (no ``load_known``)."""
    registry = make_plugin_manager()
    try:
        domain = registry.domain("molecule")
    except ValueError as error:
        raise NotReady(f"scaffold generation needs the molecule plugin: {error}") from None
    if type(domain).load_known is Domain.load_known:
        raise NotReady("this version of the molecule plugin does not support --init (load_known)")
    return domain


def weights_source(domain: Domain, checkpoint: str | None) -> Path:
    source = checkpoint or domain.pretrained()
    if source is None:
        raise NotReady("the molecule plugin ships no trained weights here; train a model with "
                       "`diffkit train --domain molecule --out runs/molecule` and pass --checkpoint runs/molecule")
    if not Path(source).exists():
        raise NotReady(f"checkpoint {str(source)!r} does not exist")
    return Path(source)


def check_molecules(smiles: list[str], scaffold: str) -> dict:
    """Validity, scaffold retention and uniqueness of generated SMILES, judged by RDKit."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    pattern = Chem.MolFromSmiles(scaffold)
    mols = [Chem.MolFromSmiles(text) for text in smiles]
    valid = [mol for mol in mols if mol is not None]
    with_scaffold = [mol for mol in valid if mol.HasSubstructMatch(pattern)]
    unique = {Chem.MolToSmiles(mol) for mol in valid}
    return {"count": len(smiles), "valid": len(valid) / max(len(smiles), 1),
            "with_scaffold": len(with_scaffold) / max(len(valid), 1), "unique": len(unique)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scaffold", default="C1CC1", help="the substructure to keep, as SMILES")
    parser.add_argument("-n", type=int, default=16, help="how many molecules")
    parser.add_argument("--checkpoint", help="a checkpoint file or run folder (default: the shipped weights)")
    parser.add_argument("--steps", type=int, help="sampling steps (default from the checkpoint's config)")
    parser.add_argument("--resample", type=int, default=4, help="RePaint rounds per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="scaffold_samples", help="a folder for samples.smi, samples.sdf, grid.png")
    args = parser.parse_args(argv)
    domain = molecule_domain()
    model, config = load_for_sampling(domain, weights_source(domain, args.checkpoint))
    request = SampleRequest(n=args.n, init=args.scaffold, steps=args.steps, resample=args.resample, seed=args.seed)
    batch = generate(domain, model, config, request)
    written = domain.write_samples(batch, Path(args.out), config)
    smiles_file = next(output.path for output in written if output.path.suffix == ".smi")
    smiles = [line.split()[0] if line.strip() else "" for line in smiles_file.read_text().splitlines()]
    scores = check_molecules(smiles, args.scaffold)
    print(f"{scores['count']} molecules in {smiles_file}: {scores['valid']:.0%} valid, "
          f"{scores['with_scaffold']:.0%} of those contain {args.scaffold}, {scores['unique']} unique")
    return scores


if __name__ == "__main__":
    main()
