"""A checkpoint of a molecule model trained without the component features, widened to a network
with them (zero weights on the new inputs: the same function), to fine-tune from:

    python benchmarks/molecule_components.py RUN_OR_CHECKPOINT widened.pt
    diffkit train --domain molecule --init-from widened.pt --steps 3000 --set train.lr=3e-4 --out RUN

The shipped weights were made this way (their model card has the whole command).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from diffkit import checkpoint as ckpt
from diffkit_molecule.model import add_component_inputs

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a run folder (its latest checkpoint) or a checkpoint file")
    parser.add_argument("out", help="the widened checkpoint to write (must not exist)")
    args = parser.parse_args()

    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; choose another path")
    source = ckpt.load(ckpt.resolve(args.source))
    model = source["config"]["model"]
    if source.get("domain") != "molecule" or model.get("component_features", False):
        raise SystemExit(f"{args.source}: expected a molecule model without component features")
    widened = ckpt.sampling_part(source)
    widened["config"] = copy.deepcopy(widened["config"])
    widened["config"]["model"]["component_features"] = True
    widened["ema"] = add_component_inputs(widened["ema"])
    ckpt.save_atomic(widened, out)
    print(f"wrote {out}: step {source.get('step')} of {args.source}, with zero-weight component inputs")


if __name__ == "__main__":
    main()
