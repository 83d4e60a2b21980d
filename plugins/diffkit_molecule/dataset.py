"""Molecule datasets: molecule files featurised once, in parallel, into a store of graphs
(:mod:`diffkit.kit.store`), and the dense view the diffusion trains on.

The store's name is a hash of the source file (path, size, modification time) and of the
featurisation (:class:`Featurisation`, including :data:`FEATURISATION_VERSION`), so changing
either featurises the data again instead of reusing stale graphs. Each molecule is stored
sparsely: its atoms as element-and-charge codes, its bonds as ``(i, j, type)`` rows, its
properties and its place in the file; training processes memory-map it and build one dense item
at a time, so their memory does not grow with the file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffkit.kit import ItemStore, Skip, open_store

from . import chem, properties
from .sources import entry_tasks, entry_unit, parse_payload
from .state import class_mask, encode, encode_classes, loss_mask

#: Bump when the way molecules become graphs changes: old caches are then ignored.
#: 2: each graph and each skipped entry keeps where it is in the file; 3: a memory-mapped store.
FEATURISATION_VERSION = 3
#: Entries (SMILES lines) a featurising task takes: a shard of the store.
SHARD_ENTRIES = 5000
#: An atom's code in the store: ``atomic number * CHARGE_CODES + formal charge + CHARGE_OFFSET``.
CHARGE_CODES, CHARGE_OFFSET = 32, 16
#: Molecules counted at a time when counting over the whole store (bounds the memory it takes).
COUNT_CHUNK = 1 << 13
#: Where the skipped entries of each reason are named, this many at most.
SHOWN_PER_REASON = 5
#: An element in fewer than this share of a new model's training molecules is named in a warning:
#: the model learns it from too few examples (a judgement; the bundled QM9 subset's rarest element,
#: fluorine, is in 292 of its 20,000 molecules, 1.5%).
RARE_ELEMENT_SHARE = 0.01


@dataclass(frozen=True)
class Featurisation:
    """How molecules become graphs. The atom types are always those found in the data; a chosen
    vocabulary and the size limit are applied when the cached graphs are loaded."""

    properties: tuple[str, ...] = ()
    smiles_column: str = "smiles"
    version: int = FEATURISATION_VERSION


@dataclass
class Skipped:
    """Entries left out of a dataset, by reason, with where the first of each are in the file
    (:data:`SHOWN_PER_REASON`) and the atom types outside ``data.atom_types`` that left some out."""

    total: int = 0
    reasons: Counter = field(default_factory=Counter)
    where: dict[str, list[int]] = field(default_factory=dict)
    outside: list[str] = field(default_factory=list)

    def add(self, reason: str, places: list[int]) -> None:
        """Count one entry left out for ``reason`` at each of ``places``."""
        self.reasons[reason] += len(places)
        shown = self.where.setdefault(reason, [])
        shown.extend(places[:SHOWN_PER_REASON - len(shown)])

    def message(self, source: Path, max_atoms: int | None = None) -> str:
        outside = f" ({', '.join(self.outside)})" if self.outside else ""
        labels = {"unparsable": "unparsable", "oversized": f"over {max_atoms} heavy atoms",
                  "atom_type": f"an atom type outside data.atom_types{outside}", "bond_type": "a bond that is not "
                  "single, double or triple", "round_trip": "not representable as a heavy-atom graph "
                  "(radicals, unusual hydrogen counts or charges)", "empty": "no atoms"}
        unit = entry_unit(source)
        parts = ", ".join(f"{count} {labels[reason]}{self._places(reason, count, unit)}"
                          for reason, count in self.reasons.most_common())
        return f"skipped {sum(self.reasons.values())} of {self.total} molecules of {str(source)!r}: {parts}"

    def _places(self, reason: str, count: int, unit: str) -> str:
        """`` (lines 4, 17 and 3 more)``: where the first entries of a reason are."""
        places = sorted(self.where.get(reason, []))
        if not places:
            return ""
        more = f" and {count - len(places)} more" if count > len(places) else ""
        return f" ({unit}{'s' if count > 1 else ''} {', '.join(map(str, places))}{more})"


def featurise(task, *, spec: Featurisation) -> Iterator[dict | Skip]:
    """The graphs of a task's entries (see :func:`diffkit_molecule.sources.entry_tasks`), or a
    :class:`~diffkit.kit.Skip` with the reason and the entry's place in the file. Molecules of
    every size are kept: the size limit and the atom types are applied when the store is read.

    A graph is ``{"atoms": (n,) int16 codes, "bonds": (m, 3) int16 rows (i < j, bond type index),
    "properties": (P,) float32, "where": int64}``."""
    for where, payload in task.entries():
        graph = molecule_graph(parse_payload(payload), spec)
        yield Skip(graph, where) if isinstance(graph, str) else {**graph, "where": np.int64(where)}


def molecule_graph(mol, spec: Featurisation) -> dict | str:
    """The stored graph of a parsed molecule (see :func:`featurise`), or why it is left out:
    ``unparsable``, ``empty``, ``bond_type`` or ``round_trip`` (the heavy-atom graph does not
    give the molecule back: radicals, or hydrogens that RDKit would not restore)."""
    Chem = chem.rdkit()
    if mol is None:
        return "unparsable"  # the readers sanitise: a molecule RDKit rejects is None
    try:
        heavy = Chem.RemoveHs(mol) if mol.GetNumAtoms() != mol.GetNumHeavyAtoms() else mol
        kekule = Chem.Mol(heavy)
        Chem.Kekulize(kekule, clearAromaticFlags=True)
    except Exception:  # RDKit raises several exception types for bad molecules
        return "unparsable"
    if kekule.GetNumAtoms() == 0:
        return "empty"
    # Per atom: element, charge, and whether its hydrogens or electrons were stated rather than
    # implied (bracket atoms, SDF) or it has an isotope: such an atom may not come back from the
    # graph. Every other atom gets its hydrogens from its bonds and charge alone, as the graph's does.
    atoms, stated = [], False
    for atom in map(kekule.GetAtomWithIdx, range(kekule.GetNumAtoms())):
        atoms.append((atom.GetAtomicNum(), atom.GetFormalCharge()))
        stated = stated or bool(atom.GetNoImplicit() or atom.GetNumExplicitHs() or atom.GetNumRadicalElectrons()
                                or atom.GetIsotope())
    if any(not -CHARGE_OFFSET <= charge < CHARGE_OFFSET for _, charge in atoms):
        return "round_trip"  # a charge the atom codes cannot hold (none that chemistry knows)
    bond_index = _bond_index()
    bonds = [(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), bond_index.get(bond.GetBondType()))
             for bond in map(kekule.GetBondWithIdx, range(kekule.GetNumBonds()))]
    if any(kind is None for _, _, kind in bonds):
        return "bond_type"
    graph_mol = heavy
    if stated:  # rebuild the graph's molecule and compare
        graph_mol = chem.sanitized(chem.mol_from_parts(atoms, bonds))
        if graph_mol is None or chem.canonical_smiles(graph_mol) != chem.canonical_smiles(heavy):
            return "round_trip"
    codes = [number * CHARGE_CODES + charge + CHARGE_OFFSET for number, charge in atoms]
    rows = np.array([(min(i, j), max(i, j), kind) for i, j, kind in bonds], dtype=np.int16).reshape(-1, 3)
    return {"atoms": np.array(codes, dtype=np.int16), "bonds": rows,
            "properties": np.array(properties.compute(graph_mol, spec.properties), dtype=np.float32)}


@functools.lru_cache(maxsize=1)
def _bond_index() -> dict:
    """RDKit's bond type -> index into :data:`chem.BOND_TYPES` (single, double and triple only)."""
    Chem = chem.rdkit()
    return {getattr(Chem.BondType, name.upper()): index for index, name in enumerate(chem.BOND_TYPES) if index}


def atom_token(code: int) -> str:
    """The atom token (element and charge, see :func:`chem.atom_token`) of a stored atom code."""
    number, charge = divmod(int(code), CHARGE_CODES)
    symbol = chem.rdkit().GetPeriodicTable().GetElementSymbol(number)
    return chem.atom_token(symbol, charge - CHARGE_OFFSET)


def cache_key(source: Path, spec: Featurisation) -> str:
    stat = source.stat()
    identity = {"source": str(source.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns,
                "featurisation": asdict(spec)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def molecule_store(source: Path, spec: Featurisation, cache_dir: Path) -> ItemStore:
    """The store of ``source``'s graphs (see :func:`featurise`), featurised once into
    ``cache_dir/graphs`` by one worker process per CPU this process may use."""
    decode = functools.partial(featurise, spec=spec)
    tasks = entry_tasks(source, SHARD_ENTRIES, spec.smiles_column)
    return open_store(cache_dir / "graphs" / cache_key(source, spec), tasks, decode, variable=("atoms", "bonds"),
                      meta={"source": str(source), "featurisation": asdict(spec)},
                      description=f"featurising {source.name}")


@dataclass
class StoredGraphs:
    """The molecules of a store that a run uses: ``rows`` of the store, their atoms' codes mapped
    to indices of ``vocabulary`` by ``types`` (``types[code]``; -1 for codes outside it)."""

    store: ItemStore
    rows: np.ndarray
    types: np.ndarray
    vocabulary: list[str]

    def __len__(self) -> int:
        return len(self.rows)


def load_graphs(source: Path, spec: Featurisation, max_atoms: int, cache_dir: Path,
                atom_types: list[str] | None = None) -> tuple[StoredGraphs, list[str]]:
    """The graphs of ``source`` with at most ``max_atoms`` atoms and, when ``atom_types`` is given,
    only those types (numbered in that order). Returns ``(graphs, vocabulary)``. Everything left
    out (unparsable, oversized, ...) is reported in one warning that says where; nothing left is
    an error. Without ``atom_types`` the vocabulary is the data's, and a warning names the elements
    too rare in it to be learnt well (:data:`RARE_ELEMENT_SHARE`)."""
    store = molecule_store(source, spec, cache_dir)
    skipped = Skipped(len(store) + len(store.skipped))
    for skip in store.skipped:
        skipped.add(skip.reason, [skip.where])
    if not len(store):
        raise ValueError("no usable molecules: " + skipped.message(source, max_atoms))
    codes, found = _codes_present(store)
    tokens = [atom_token(code) for code in codes]
    data_vocabulary = chem.sort_tokens(tokens)
    order = [tokens.index(token) for token in data_vocabulary]
    codes, found = codes[order], found[:, order]  # columns in the data's vocabulary order
    vocabulary = list(atom_types) if atom_types else data_vocabulary
    sizes = store.lengths("atoms")
    outside = np.array([token not in vocabulary for token in data_vocabulary])
    oversized = sizes > max_atoms
    unknown = found[:, outside].any(1) & ~oversized
    fits = np.flatnonzero(~oversized & ~unknown)
    for reason, flags in (("oversized", oversized), ("atom_type", unknown)):
        if flags.any():
            skipped.add(reason, store.array("where")[flags].tolist())
    skipped.outside = [token for token, used in zip(data_vocabulary, found[unknown].any(0))
                       if used and token not in vocabulary]
    if not len(fits):
        raise ValueError(f"no usable molecules: {skipped.message(source, max_atoms)}; "
                         "raise data.max_atoms to keep larger ones")
    if skipped.reasons:
        warnings.warn(skipped.message(source, max_atoms), stacklevel=3)
    if not atom_types:
        _warn_rare_elements(torch.from_numpy(found[fits]), data_vocabulary, source)
    types = np.full(int(codes.max()) + 1, -1, dtype=np.int64)
    types[codes] = [vocabulary.index(token) if token in vocabulary else -1 for token in data_vocabulary]
    return StoredGraphs(store, fits, types, vocabulary), vocabulary


def _codes_present(store: ItemStore) -> tuple[np.ndarray, np.ndarray]:
    """The atom codes found in the store ``(K,)``, and ``(M, K)``: whether each molecule holds each."""
    atoms, offsets = store.array("atoms"), store.offsets("atoms")
    possible = CHARGE_CODES * 128
    codes = np.flatnonzero(_counts(atoms, offsets, np.ones(len(store), dtype=bool), possible))
    column = np.zeros(possible, dtype=np.int64)
    column[codes] = np.arange(len(codes))
    found = np.zeros((len(store), len(codes)), dtype=bool)
    for molecules, atom_range in _chunks(offsets):
        sizes = np.diff(offsets[molecules.start:molecules.stop + 1])
        owner = np.repeat(np.arange(molecules.start, molecules.stop), sizes)
        found[owner, column[atoms[atom_range]]] = True
    return codes, found


def _chunks(offsets: np.ndarray) -> Iterator[tuple[slice, slice]]:
    """``(molecules, their entries)`` of a variable field with these offsets, :data:`COUNT_CHUNK`
    molecules at a time."""
    count = len(offsets) - 1
    for start in range(0, count, COUNT_CHUNK):
        stop = min(start + COUNT_CHUNK, count)
        yield slice(start, stop), slice(int(offsets[start]), int(offsets[stop]))


def _warn_rare_elements(present: Tensor, vocabulary: list[str], source: Path) -> None:
    """Name the elements held by fewer than :data:`RARE_ELEMENT_SHARE` of the training molecules
    (``present (M, K)``: which atom types each holds), and the atom types that leave them out."""
    holding: dict[str, Tensor] = {}
    for column, token in enumerate(vocabulary):
        element = chem.parse_token(token)[0]
        holding[element] = holding.get(element, torch.zeros(len(present), dtype=torch.bool)) | present[:, column]
    counts = {element: int(flags.sum()) for element, flags in holding.items()}
    rare = [element for element, count in counts.items() if count < RARE_ELEMENT_SHARE * len(present)]
    if rare:
        others = [token for token in vocabulary if chem.parse_token(token)[0] not in rare]
        named = ", ".join(f"{element} (in {counts[element]:,})" for element in rare)
        warnings.warn(f"the atom types found in {str(source)!r} include elements in fewer than "
                      f"{RARE_ELEMENT_SHARE:.0%} of its {len(present):,} molecules, too few to learn them well: "
                      f"{named}; to leave those molecules out, set data.atom_types = {others!r}", stacklevel=4)


class DenseMolecules(Dataset):
    """Training items from stored graphs, padded to ``num_nodes`` atoms:
    ``{"x": {"nodes": (N, K), "edges": (N, N, E)}, "mask": {...}, "extra": {"node_mask": (N,)},
    "cond": (P,)}`` (``cond`` only when properties were computed); with ``categorical`` the state
    and its mask hold class indices, ``{"nodes": (N,), "edges": (N, N)}`` (see :mod:`.state`).
    ``sizes`` and ``properties`` are the molecules' atom counts and properties."""

    def __init__(self, graphs: StoredGraphs, vocabulary: list[str], num_nodes: int | None = None, *,
                 categorical: bool = False):
        self.graphs, self.vocabulary, self.categorical = graphs, vocabulary, categorical
        store = graphs.store
        self.sizes = torch.from_numpy(store.lengths("atoms")[graphs.rows])
        self.num_nodes = num_nodes or int(self.sizes.max())
        self.properties: Tensor = torch.from_numpy(np.asarray(store.array("properties")[graphs.rows], np.float32))

    def __len__(self) -> int:
        return len(self.graphs)

    def graph(self, index: int, width: int | None = None) -> tuple[Tensor, Tensor]:
        """Molecule ``index`` as ``(atoms (n,), bonds (n, n))`` (see :mod:`.chem`), or padded to
        ``width`` atoms (atom -1, no bond)."""
        store, row = self.graphs.store, int(self.graphs.rows[index])
        codes, rows = store.item("atoms", row), store.item("bonds", row)
        width = len(codes) if width is None else width
        atoms = np.full(width, -1, dtype=np.int64)
        atoms[:len(codes)] = self.graphs.types[codes]
        bonds = np.zeros((width, width), dtype=np.int64)
        bonds[rows[:, 0], rows[:, 1]] = rows[:, 2]
        bonds[rows[:, 1], rows[:, 0]] = rows[:, 2]
        return torch.from_numpy(atoms), torch.from_numpy(bonds)

    def graph_data(self, index: int):
        """Molecule ``index`` as a torch-geometric ``Data``, for its models, transforms and loaders
        (:class:`GraphData`): ``x (n,)`` atom type indices into ``vocabulary``, ``edge_index (2, 2m)``
        and ``edge_attr (2m,)`` bond type indices (each bond in both directions, sorted), ``y (1, P)``
        the properties and ``where`` the molecule's place in the file (see :mod:`.sources`)."""
        import_torch_geometric()
        from torch_geometric.data import Data
        from torch_geometric.utils import to_undirected

        store, row = self.graphs.store, int(self.graphs.rows[index])
        rows = torch.from_numpy(store.item("bonds", row).astype(np.int64))
        atoms = torch.from_numpy(self.graphs.types[store.item("atoms", row)])
        edge_index, edge_attr = to_undirected(rows[:, :2].t(), rows[:, 2], num_nodes=len(atoms))
        return Data(x=atoms, edge_index=edge_index, edge_attr=edge_attr, y=self.properties[index][None],
                    where=torch.tensor([int(store.item("where", row))]), num_nodes=len(atoms))

    def class_counts(self) -> tuple[Tensor, Tensor]:
        """How often each atom type occurs among the atoms ``(K,)``, and each bond type (``none``
        included) among the ordered pairs of distinct atoms of a molecule ``(E,)``."""
        store, rows = self.graphs.store, self.graphs.rows
        used = np.zeros(len(store), dtype=bool)
        used[rows] = True
        by_code = _counts(store.array("atoms"), store.offsets("atoms"), used, len(self.graphs.types))
        by_type = np.zeros(len(self.vocabulary))
        known = self.graphs.types >= 0
        np.add.at(by_type, self.graphs.types[known], by_code[known])
        bond_counts = _counts(store.array("bonds")[:, 2], store.offsets("bonds"), used, len(chem.BOND_TYPES))
        bond_counts = 2 * bond_counts.astype(np.float64)
        sizes = self.sizes.double()
        bond_counts[0] = float((sizes * (sizes - 1)).sum()) - bond_counts[1:].sum()
        return torch.from_numpy(by_type), torch.from_numpy(bond_counts)

    def __getitem__(self, index: int) -> dict:
        atoms, bonds = self.graph(index, self.num_nodes)
        if self.categorical:
            state, node_mask = encode_classes(atoms, bonds)
            mask = class_mask(node_mask)
        else:
            state, node_mask = encode(atoms, bonds, len(self.vocabulary))
            mask = loss_mask(node_mask)
        item = {"x": state, "mask": mask, "extra": {"node_mask": node_mask}}
        if self.properties.shape[1]:
            item["cond"] = self.properties[index]
        return item


class GraphData(Dataset):
    """The molecules of a :class:`DenseMolecules` as torch-geometric ``Data``
    (:meth:`DenseMolecules.graph_data`), read from the store one at a time, e.g. for
    ``torch_geometric.loader.DataLoader(GraphData(dataset), batch_size=32)``."""

    def __init__(self, molecules: DenseMolecules):
        self.molecules = molecules

    def __len__(self) -> int:
        return len(self.molecules)

    def __getitem__(self, index: int):
        return self.molecules.graph_data(index)


def import_torch_geometric() -> None:
    """Import torch-geometric, silencing the FutureWarning that recent torch releases raise about
    its own use of ``torch.jit.script``: a user of diffkit cannot act on it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        import torch_geometric  # noqa: F401


def _counts(values: np.ndarray, offsets: np.ndarray, used: np.ndarray, length: int) -> np.ndarray:
    """``bincount`` of the entries of the ``used`` molecules of a variable field, a chunk of
    molecules at a time."""
    counts = np.zeros(length, dtype=np.int64)
    for molecules, entries in _chunks(offsets):
        chosen = np.repeat(used[molecules], np.diff(offsets[molecules.start:molecules.stop + 1]))
        counts += np.bincount(values[entries][chosen].astype(np.int64), minlength=length)[:length]
    return counts
