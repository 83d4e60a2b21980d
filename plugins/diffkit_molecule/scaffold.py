"""Scaffold-constrained generation: a batch whose first atoms are a given substructure, kept
through the core's inpainting, and the rest generated."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from . import chem
from .state import class_mask, encode, encode_classes


def scaffold_graph(init: str, vocabulary: list[str]) -> tuple[Tensor, Tensor]:
    """``(atoms (s,), bonds (s, s))`` of a scaffold SMILES, or of the first entry of a file."""
    from .sources import read_molecules

    path = Path(init)
    if path.is_file():
        entries = list(read_molecules(path))
        if not entries:
            raise ValueError(f"--init {init!r}: the file holds no molecule")
        _, text, mol = entries[0]
    else:
        text, mol = init, chem.rdkit().MolFromSmiles(init)
    prepared = chem.prepare(mol) if mol is not None else None
    if prepared is None:
        raise ValueError(f"--init {text!r}: RDKit cannot read this scaffold SMILES")
    try:
        return chem.mol_to_graph(prepared, vocabulary)
    except KeyError as error:
        raise ValueError(f"--init {text!r}: atom type {error.args[0]!r} is not among the model's "
                         f"atom types {vocabulary}") from None
    except ValueError as error:
        raise ValueError(f"--init {text!r}: {error}") from None


def known_batch(domain, init: str, n: int, config: dict, model=None, generator=None) -> dict:
    """``{"x", "keep", "extra"}`` for :meth:`MoleculeDomain.load_known`: the scaffold occupies
    atoms ``0..s-1`` of every sample; ``keep`` is 1 on its atoms and on the pairs among them. A
    categorical batch holds class indices and the ``mask`` of entries that may change."""
    vocabulary = list(config["data"]["atom_types"])
    atoms, bonds = scaffold_graph(init, vocabulary)
    s = len(atoms)
    requested = int(config["sample"]["num_atoms"]) or None
    if model is not None:
        sizes = domain._draw_sizes(model, n, requested, generator, at_least=s)
    else:
        size = requested or int(config["data"]["max_atoms"])
        if size < s:
            raise ValueError(f"the scaffold has {s} atoms, more than the {size} of the molecules to generate; "
                             "raise sample.num_atoms")
        sizes = torch.full((n,), size, dtype=torch.long)
    # As wide as the largest molecule the model may draw, so that chunks of a sampling run join.
    width = max(domain.largest_size(model), s) if model is not None and not requested else int(sizes.max())
    all_atoms = torch.full((n, width), -1, dtype=torch.long)
    all_bonds = torch.zeros(n, width, width, dtype=torch.long)
    for row, size in enumerate(sizes.tolist()):
        all_atoms[row, :size] = 0  # placeholder type for atoms to generate (never kept)
        all_atoms[row, :s] = atoms
        all_bonds[row, :s, :s] = bonds
    kept_atoms = torch.zeros(n, width)
    kept_atoms[:, :s] = 1
    kept_pairs = kept_atoms.unsqueeze(2) * kept_atoms.unsqueeze(1)
    if config["diffusion"].get("kind", "gaussian") == "categorical":
        state, node_mask = encode_classes(all_atoms, all_bonds)
        keep = {"nodes": kept_atoms, "edges": kept_pairs}
        return {"x": state, "keep": keep, "mask": class_mask(node_mask), "extra": {"node_mask": node_mask}}
    state, node_mask = encode(all_atoms, all_bonds, len(vocabulary))
    keep = {"nodes": kept_atoms.unsqueeze(-1), "edges": kept_pairs.unsqueeze(-1)}
    return {"x": state, "keep": keep, "extra": {"node_mask": node_mask}}
