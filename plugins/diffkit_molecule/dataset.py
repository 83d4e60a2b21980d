"""Molecule datasets: a torch-geometric dataset of graphs, processed once and cached, and the dense
view the diffusion trains on.

The cache file's name is a hash of the source file (path, size, modification time) and of the
featurisation (:class:`Featurisation`, including :data:`FEATURISATION_VERSION`), so changing
either processes the data again instead of reusing stale graphs.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffkit.kit import write_atomic

from . import chem, properties
from .sources import entry_unit, read_molecules
from .state import class_mask, encode, encode_classes, loss_mask, pair_mask

#: Bump when the way molecules become graphs changes: old caches are then ignored.
#: 2: each graph and each skipped entry keeps where it is in the file.
FEATURISATION_VERSION = 2
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
                  "(radicals or unusual hydrogen counts)", "empty": "no atoms"}
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


def featurise(source: Path, spec: Featurisation) -> tuple[list, list[str], Skipped]:
    """Graphs (torch-geometric ``Data``), the atom vocabulary and what was skipped. Molecules of
    every size are kept: the size limit is applied when the cached graphs are loaded.

    Each graph has ``x (n,)`` atom type indices, ``edge_index (2, 2m)`` and ``edge_attr (2m,)``
    bond type indices (both directions), ``y (1, P)`` properties and ``smiles`` (canonical)."""
    skipped = Skipped()
    kept = []  # (where in the file, prepared mol, canonical smiles)
    for where, _, mol in read_molecules(source, spec.smiles_column):
        skipped.total += 1
        reason, prepared = _screen(mol, spec)
        if reason:
            skipped.add(reason, [where])
        else:
            kept.append((where, prepared, chem.canonical_smiles(chem.sanitized(prepared))))
    vocabulary = chem.sort_tokens(t for _, mol, _ in kept for t in chem.mol_tokens(mol))
    graphs = []
    for where, mol, smiles in kept:
        graph, reason = _to_data(mol, smiles, vocabulary, spec, where)
        if reason:
            skipped.add(reason, [where])
        else:
            graphs.append(graph)
    return graphs, vocabulary, skipped


def _screen(mol, spec: Featurisation) -> tuple[str | None, object]:
    if mol is None or chem.sanitized(mol) is None:
        return "unparsable", None
    prepared = chem.prepare(mol)
    if prepared is None:
        return "unparsable", None
    if prepared.GetNumAtoms() == 0:
        return "empty", None
    return None, prepared


def import_torch_geometric() -> None:
    """Import torch-geometric, silencing the FutureWarning that recent torch releases raise about
    its own use of ``torch.jit.script``: a user of diffkit cannot act on it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        import torch_geometric  # noqa: F401


def _to_data(mol, smiles: str, vocabulary: list[str], spec: Featurisation, where: int):
    import_torch_geometric()
    from torch_geometric.data import Data

    try:
        atoms, bonds = chem.mol_to_graph(mol, vocabulary)
    except KeyError:
        return None, "atom_type"
    except ValueError:
        return None, "bond_type"
    rebuilt = chem.sanitized(chem.graph_to_mol(atoms, bonds, vocabulary))
    if rebuilt is None or chem.canonical_smiles(rebuilt) != smiles:
        return None, "round_trip"
    edge_index = bonds.nonzero().t().contiguous()
    y = torch.tensor([properties.compute(rebuilt, spec.properties)], dtype=torch.float32)
    graph = Data(x=atoms, edge_index=edge_index, edge_attr=bonds[edge_index[0], edge_index[1]], y=y,
                 num_nodes=len(atoms), smiles=smiles, where=torch.tensor([where]))
    return graph, None


def cache_key(source: Path, spec: Featurisation) -> str:
    stat = source.stat()
    identity = {"source": str(source.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns,
                "featurisation": asdict(spec)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _graph_dataset_class():
    """Defined lazily so that importing the plugin does not import torch-geometric."""
    import_torch_geometric()
    from torch_geometric.data import InMemoryDataset

    class MoleculeGraphs(InMemoryDataset):
        """The graphs of a molecule file, processed once into ``cache_dir/processed``."""

        def __init__(self, source: Path, spec: Featurisation, cache_dir: Path):
            self.source, self.spec = Path(source), spec
            self.key = cache_key(self.source, spec)
            super().__init__(root=str(cache_dir), log=False)
            self.load(self.processed_paths[0])
            info = json.loads(Path(self.processed_paths[1]).read_text())
            self.vocabulary: list[str] = info["vocabulary"]
            self.skipped = Skipped(info["total"], Counter(info["skipped"]), info["skipped_where"])

        @property
        def raw_file_names(self) -> list[str]:
            return []  # the source lives outside the cache

        @property
        def processed_file_names(self) -> list[str]:
            return [f"graphs_{self.key}.pt", f"graphs_{self.key}.json"]

        def download(self) -> None:
            pass

        def num_nodes_per_graph(self) -> Tensor:
            """``(M,)`` atom counts, read from the collated storage without building graphs."""
            if self.slices is None:  # a single graph is stored without slices
                return torch.tensor([self._data.num_nodes])
            return (self.slices["x"][1:] - self.slices["x"][:-1]).long()

        def process(self) -> None:
            graphs, vocabulary, skipped = featurise(self.source, self.spec)
            if not graphs:
                raise ValueError("no usable molecules: " + skipped.message(self.source))
            self.save(graphs, self.processed_paths[0])
            info = {"vocabulary": vocabulary, "total": skipped.total, "skipped": dict(skipped.reasons),
                    "skipped_where": skipped.where, "source": str(self.source), "featurisation": asdict(self.spec)}
            write_atomic(self.processed_paths[1], (json.dumps(info, indent=1) + "\n").encode())

    return MoleculeGraphs


def molecule_graphs(source: Path, spec: Featurisation, cache_dir: Path):
    """The torch-geometric dataset of ``source`` (see :func:`featurise`), all sizes, processed
    once into ``cache_dir``."""
    return _graph_dataset_class()(source, spec, cache_dir)


def load_graphs(source: Path, spec: Featurisation, max_atoms: int, cache_dir: Path,
                atom_types: list[str] | None = None):
    """The graphs of ``source`` with at most ``max_atoms`` atoms and, when ``atom_types`` is given,
    only those types (renumbered to that order). Returns ``(graphs, vocabulary)``. Everything left
    out (unparsable, oversized, ...) is reported in one warning that says where; nothing left is
    an error. Without ``atom_types`` the vocabulary is the data's, and a warning names the elements
    too rare in it to be learnt well (:data:`RARE_ELEMENT_SHARE`)."""
    graphs = molecule_graphs(source, spec, cache_dir)
    vocabulary = list(atom_types) if atom_types else list(graphs.vocabulary)
    sizes = graphs.num_nodes_per_graph()
    present = _types_present(graphs, sizes)
    outside = torch.tensor([token not in vocabulary for token in graphs.vocabulary])
    oversized = sizes > max_atoms
    unknown = (present & outside).any(1) & ~oversized
    fits = (~oversized & ~unknown).nonzero().flatten()
    cached = graphs.skipped
    skipped = Skipped(cached.total, Counter(cached.reasons), {reason: list(at) for reason, at in cached.where.items()})
    where = graphs._data.where
    for reason, flags in (("oversized", oversized), ("atom_type", unknown)):
        if flags.any():
            skipped.add(reason, where[flags].tolist())
    skipped.outside = [token for token, used in zip(graphs.vocabulary, present[unknown].any(0).tolist())
                       if used and token not in vocabulary]
    if not len(fits):
        raise ValueError(f"no usable molecules: {skipped.message(source, max_atoms)}; "
                         "raise data.max_atoms to keep larger ones")
    if skipped.reasons:
        warnings.warn(skipped.message(source, max_atoms), stacklevel=3)
    if not atom_types:
        _warn_rare_elements(present[fits], graphs.vocabulary, source)
    _renumber_atoms(graphs, vocabulary)
    selected = graphs.index_select(fits) if len(fits) < len(sizes) else graphs
    return selected, vocabulary


def _types_present(graphs, sizes: Tensor) -> Tensor:
    """``(M, K)``: whether each cached graph holds each atom type of the cached vocabulary."""
    owner = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    present = torch.zeros(len(sizes), len(graphs.vocabulary), dtype=torch.bool)
    present[owner, graphs._data.x] = True
    return present


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


def _renumber_atoms(graphs, vocabulary: list[str]) -> None:
    """Map the cached atom indices onto ``vocabulary`` in place (in memory only); a type outside
    it becomes index 0 (its graphs are left out by the caller)."""
    lookup = torch.tensor([vocabulary.index(t) if t in vocabulary else -1 for t in graphs.vocabulary])
    storage = graphs._data
    storage.x = lookup[storage.x].clamp(min=0)
    graphs.vocabulary = list(vocabulary)


class DenseMolecules(Dataset):
    """Training items from a graph dataset, padded to ``num_nodes`` atoms:
    ``{"x": {"nodes": (N, K), "edges": (N, N, E)}, "mask": {...}, "extra": {"node_mask": (N,)},
    "cond": (P,)}`` (``cond`` only when properties were computed); with ``categorical`` the state
    and its mask hold class indices, ``{"nodes": (N,), "edges": (N, N)}`` (see :mod:`.state`)."""

    def __init__(self, graphs, vocabulary: list[str], num_nodes: int | None = None, *, categorical: bool = False):
        import_torch_geometric()
        from torch_geometric.data import Batch
        from torch_geometric.utils import to_dense_adj, to_dense_batch

        self.graphs, self.vocabulary, self.categorical = graphs, vocabulary, categorical
        batch = Batch.from_data_list(list(graphs))
        self.sizes = torch.bincount(batch.batch, minlength=len(graphs))
        self.num_nodes = num_nodes or int(self.sizes.max())
        atoms, _ = to_dense_batch(batch.x + 1, batch.batch, max_num_nodes=self.num_nodes)
        self.atoms = (atoms - 1).to(torch.int8)  # -1 marks padding
        self.bonds = to_dense_adj(batch.edge_index, batch.batch, batch.edge_attr,
                                  max_num_nodes=self.num_nodes).to(torch.int8)
        self.properties: Tensor = batch.y.float()
        self.smiles: list[str] = list(batch.smiles)

    def __len__(self) -> int:
        return len(self.atoms)

    def class_counts(self) -> tuple[Tensor, Tensor]:
        """How often each atom type occurs among the atoms ``(K,)``, and each bond type (``none``
        included) among the pairs of distinct atoms of a molecule ``(E,)``."""
        atoms = self.atoms.long()
        real = atoms >= 0
        atom_counts = torch.bincount(atoms[real], minlength=len(self.vocabulary)).double()
        pairs = pair_mask(real.float()).bool()
        bond_counts = torch.bincount(self.bonds.long()[pairs], minlength=len(chem.BOND_TYPES)).double()
        return atom_counts, bond_counts

    def __getitem__(self, index: int) -> dict:
        atoms, bonds = self.atoms[index].long(), self.bonds[index].long()
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
