"""Train on pictures kept as Parquet shards on shared storage, each process reading only its part.

    pip install 'diffkit[streaming]'        # the `datasets` library (Arrow and Parquet)
    python examples/parquet_shards.py write PICTURES_FOLDER /shared/shards --per-shard 5000
    torchrun --nproc_per_node 8 examples/parquet_shards.py train /shared/shards --out run --steps 1000

``write`` decodes a folder of pictures as ``diffkit train --domain image`` fits them and writes them
as Parquet files of ``--per-shard`` rows (pixels and label). ``train`` trains the image domain with
``train.shard_data``: process ``r`` of ``R`` draws its share of every global batch from rows
``r N / R .. (r + 1) N / R``, so it loads only the files holding those rows (read once from the
shared storage into the local Arrow cache of ``datasets``, memory-mapped), learning their row
counts from the Parquet footers alone. Resuming stays exact; the steps depend on ``R``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from diffkit import distributed
from diffkit.config import resolve_config
from diffkit.runner import train
from diffkit_image.data import load_folder, to_unit_range
from diffkit_image.domain import ImageDomain

INFO = "pictures.json"  # class names and picture shape, beside the shards


def write_shards(pictures: Path, out: Path, per_shard: int, image_size: int, channels: int) -> list[Path]:
    """The pictures of a folder as Parquet files ``out/00000.parquet``, ... of ``per_shard`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = load_folder(pictures, image_size, channels)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for number, start in enumerate(range(0, len(images.labels), per_shard)):
        rows = slice(start, start + per_shard)
        table = pa.table({"pixels": [p.numpy().tobytes() for p in images.pixels[rows]],
                          "label": images.labels[rows].tolist()})
        files.append(out / f"{number:05d}.parquet")
        pq.write_table(table, files[-1])
    counts = torch.bincount(images.labels, minlength=len(images.class_names)).tolist()
    info = {"class_names": images.class_names, "class_counts": counts, "shape": list(images.pixels.shape[1:])}
    (out / INFO).write_text(json.dumps(info))
    return files


class ParquetPart(Dataset):
    """Items ``{"x", "cond"}`` of the image domain, indexed over all the shards' rows, of which
    only rows ``first .. end - 1`` can be read: the files holding them are loaded (into the local
    cache of ``datasets``, or ``cache_dir``, memory-mapped), no other file is opened beyond its
    footer."""

    def __init__(self, folder: Path, rank: int, processes: int, cache_dir: Path | None = None):
        import pyarrow.parquet as pq
        from datasets import load_dataset

        files = sorted(folder.glob("*.parquet"))
        counts = [pq.read_metadata(path).num_rows for path in files]
        starts = np.concatenate([[0], np.cumsum(counts)])
        self.total = int(starts[-1])
        self.first, self.end = rank * self.total // processes, (rank + 1) * self.total // processes
        needed = [k for k in range(len(files)) if starts[k] < self.end and starts[k + 1] > self.first]
        self.offset = int(starts[needed[0]])
        self.files = [files[k] for k in needed]
        self.rows = load_dataset("parquet", data_files=[str(path) for path in self.files], split="train",
                                 cache_dir=str(cache_dir) if cache_dir else None)
        info = json.loads((folder / INFO).read_text())
        self.class_names, self.shape = info["class_names"], tuple(info["shape"])
        self.class_counts = torch.tensor(info["class_counts"])  # of all the rows, for sampling labels

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int) -> dict:
        if not self.first <= index < self.end:
            raise IndexError(f"row {index} is outside this process's part {self.first}..{self.end - 1}")
        row = self.rows[index - self.offset]
        pixels = torch.frombuffer(bytearray(row["pixels"]), dtype=torch.uint8).reshape(self.shape)
        return {"x": to_unit_range(pixels), "cond": torch.tensor(row["label"])}


class ShardedImages(ImageDomain):
    """The image domain reading :class:`ParquetPart` instead of a folder."""

    def build_dataset(self, config: dict, data: str | None = None):
        world = distributed.world_from_env()
        return ParquetPart(Path(data), world.rank, world.size)

    def fit_data(self, model, dataset, config: dict) -> None:
        model.set_classes(dataset.class_names, dataset.class_counts)


def main(argv: list[str] | None = None) -> object:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write")
    write.add_argument("pictures", type=Path)
    write.add_argument("out", type=Path)
    write.add_argument("--per-shard", type=int, default=5000)
    write.add_argument("--image-size", type=int, default=16)
    write.add_argument("--channels", type=int, default=1)
    run = commands.add_parser("train")
    run.add_argument("shards", type=Path)
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--steps", type=int, default=1000)
    run.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    if args.command == "write":
        return write_shards(args.pictures, args.out, args.per_shard, args.image_size, args.channels)
    domain = ShardedImages()
    info = json.loads((args.shards / INFO).read_text())
    channels, size = info["shape"][0], info["shape"][1]
    config = resolve_config(domain, preset="cpu", overrides={
        "data": {"image_size": size, "channels": channels},
        "model": {"num_classes": max(len(info["class_names"]), 1)},
        "train": {"steps": args.steps, "batch_size": args.batch_size, "shard_data": True}})
    return train(domain, config, out=args.out, data=str(args.shards), progress=False)


if __name__ == "__main__":
    main()
