"""Training on data sets larger than memory: memory, start time and speed of the stored data path
against the in-memory one.

    python benchmarks/data.py pictures --count 60000 --out /tmp/colour60k
    python benchmarks/data.py images /tmp/colour1k /tmp/colour60k --markdown table.md

``pictures`` draws the 1,797 handwritten digits of scikit-learn at 64x64 in colour (ink and paper
colours drawn per picture, the digit moved by a few pixels), one class folder per digit, as PNG.
``clips`` makes spoken digits from the free-spoken-digit recordings: each a recording between
silences of random length, at a random gain, under white noise 20 to 40 dB down, one class folder
per digit, as 16-bit WAV at 8 kHz; ``audio`` trains the audio domain on two such folders as
``images`` does on pictures.

``images`` trains the image domain on each folder (64x64 RGB, a small U-Net, ``train.log_every
= 1``) in a fresh process and reports, per data path (``data.cache=true``: the memory-mapped
store; ``data.cache=false``: decoded into the process's memory):

* the peak anonymous memory (``RssAnon``) of the training process(es), polled every 50 ms; with
  ``--torchrun`` also for two processes on the larger set, added up;
* the time from the command's start to its first step: the first start (the store is filled) and
  the second (it is read);
* steady steps per second: the median over the log records after the tenth step.

Timings on a shared machine vary with its load: the two paths are run alternately, and the report
gives every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 64
TRAIN_SETTINGS = [
    f"data.image_size={SIZE}", "data.channels=3", "model.base_channels=16", "model.channel_mults=[1,2,2]",
    "model.attention_resolutions=[]", "train.batch_size=32", "train.log_every=1", "train.checkpoint_every=0",
    "train.preview_every=0", "train.warmup_steps=10",
]
#: The audio domain's CPU preset (the mel U-Net) at its settings from the data, batch 32.
AUDIO_SETTINGS = ["train.batch_size=32", "train.log_every=1", "train.checkpoint_every=0", "train.preview_every=0",
                  "train.warmup_steps=10"]


# -- the pictures -------------------------------------------------------------------------------

def make_pictures(count: int, out: Path, seed: int = 0) -> None:
    """``count`` 64x64 RGB pictures of the digits in colour under ``out/<digit>/``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    if out.exists():
        raise SystemExit(f"{out} exists; choose another --out")
    for label in range(10):
        (out / str(label)).mkdir(parents=True)
    ink_share = digits.images / 16.0
    for index in range(count):
        source = index % len(digits.images)
        ink, paper = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        small = ink_share[source][..., None] * ink + (1 - ink_share[source][..., None]) * paper
        picture = Image.fromarray(small.round().astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC)
        shift = rng.integers(-4, 5, 2)
        picture = Image.fromarray(np.roll(np.asarray(picture), tuple(shift), axis=(0, 1)))
        picture.save(out / str(digits.target[source]) / f"{index:07d}.png")


def make_clips(source: Path, count: int, out: Path, seed: int = 0) -> None:
    """``count`` WAV files under ``out/<digit>/`` made from the recordings ``<digit>_*.wav`` in
    ``source`` (8 kHz): silence before and after (0 to 0.3 s each), a gain of -20 to +6 dB
    (clipped at full scale) and white noise 20 to 40 dB under the recording's RMS."""
    import soundfile

    if out.exists():
        raise SystemExit(f"{out} exists; choose another --out")
    recordings = sorted(source.glob("*.wav"))
    if not recordings:
        raise SystemExit(f"no .wav recordings in {source}")
    for label in sorted({path.name.split("_")[0] for path in recordings}):
        (out / label).mkdir(parents=True)
    waves = [soundfile.read(str(path), dtype="float32")[0] for path in recordings]
    rng = np.random.default_rng(seed)
    for index in range(count):
        which = index % len(recordings)
        wave = waves[which]
        before, after = rng.integers(0, 2400, 2)
        noise = float(np.sqrt(np.mean(wave ** 2))) * 10 ** (-rng.uniform(20, 40) / 20)
        clip = np.concatenate([np.zeros(before), wave, np.zeros(after)]) + rng.normal(0, noise, before + len(wave) + after)
        clip = np.clip(clip * 10 ** (rng.uniform(-20, 6) / 20), -1, 1)
        soundfile.write(str(out / recordings[which].name.split("_")[0] / f"{index:07d}.wav"), clip, 8000,
                        subtype="PCM_16")


# -- one training run ---------------------------------------------------------------------------

def resident_anonymous(pid: int) -> int:
    """``RssAnon`` of a process in bytes (0 once it has ended)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its children that have ended (0 once it has ended)."""
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system + times.children_user + times.children_system


def training_processes(root: int, processes: int) -> list[int]:
    """The processes that train: ``root`` itself, or under torchrun its direct children (the
    decoding workers a training process forks for a while are not counted)."""
    import psutil

    if processes == 1:
        return [root]
    try:
        return [child.pid for child in psutil.Process(root).children()]
    except psutil.Error:
        return []


def train_once(data: Path, cache: Path, *, stored: bool = True, steps: int, processes: int = 1, domain: str = "image",
               settings: list[str] | None = None, source: Path | None = None, arguments: tuple[str, ...] = ()) -> dict:
    """One ``diffkit train`` run; its peak anonymous memory, time to the first step, steps/s.
    ``source`` is a checkout whose code runs instead of this one (e.g. before the store);
    ``arguments`` are more of ``diffkit train``'s (e.g. ``--autoencoder AE``)."""
    with tempfile.TemporaryDirectory() as run:
        settings = [*(TRAIN_SETTINGS if settings is None else settings), f"data.cache_dir={cache}"]
        if domain in ("image", "audio"):
            settings.append(f"data.cache={str(stored).lower()}")
        command = ["diffkit", "train", "--domain", domain, "--data", str(data), "--out", run,
                   "--steps", str(steps), "--no-progress", *arguments, *[part for s in settings for part in ("--set", s)]]
        if processes > 1:
            command = ["torchrun", "--nproc_per_node", str(processes), "-m", "diffkit", *command[1:]]
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        if source is not None:
            environment["PYTHONPATH"] = f"{source}/core:{source}/plugins"
        start = time.time()
        process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peaks: dict[int, int] = {}
        cpu: dict[int, float] = {}
        logged = {}  # log lines -> the processes' CPU seconds when they were there
        metrics = Path(run) / "metrics.jsonl"
        while process.poll() is None:
            for pid in training_processes(process.pid, processes):
                peaks[pid] = max(peaks.get(pid, 0), resident_anonymous(pid))
                cpu[pid] = max(cpu.get(pid, 0.0), cpu_seconds(pid))
            lines = metrics.read_text().count("\n") if metrics.exists() else 0
            logged.setdefault(lines, sum(cpu.values()))
            time.sleep(0.05)
        if process.returncode:
            raise RuntimeError(process.stderr.read().decode()[-3000:])
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        batch = json.loads((Path(run) / "config.json").read_text())["train"]["batch_size"]
    rates = [record["samples_per_s"] / batch for record in records[10:]]
    steady = [lines for lines in logged if 10 <= lines < len(records)]
    return {"anon_mb": sum(peaks.values()) / 2**20, "first_step_s": records[0]["time"] - start,
            "first_step_cpu_s": logged[min(lines for lines in logged if lines >= 1)],
            "steps_per_s": statistics.median(rates) if rates else float("nan"),
            "steps_per_cpu_s": (max(steady) - min(steady)) / (logged[max(steady)] - logged[min(steady)])
            if len(steady) > 1 else float("nan")}


def compare_folders(small: Path, large: Path, steps: int, torchrun: bool, repeats: int,
                    domain: str = "image") -> list[dict]:
    """Both data paths of the image or audio domain on a small and a large folder."""
    settings = TRAIN_SETTINGS if domain == "image" else AUDIO_SETTINGS
    rows = []
    with tempfile.TemporaryDirectory() as cache_root:
        cache = Path(cache_root)
        for data in (small, large):
            count = sum(1 for path in data.rglob("*") if path.is_file())
            first = train_once(data, cache, stored=True, steps=steps, domain=domain, settings=settings)
            rows.append({"data": f"{count:,}", "path": "store, first start", **first})
            for _ in range(repeats):  # alternately, so that both see the same load
                result = train_once(data, cache, stored=True, steps=steps, domain=domain, settings=settings)
                rows.append({"data": f"{count:,}", "path": "store", **result})
                rows.append({"data": f"{count:,}", "path": "in memory",
                             **train_once(data, cache, stored=False, steps=steps, domain=domain, settings=settings)})
        if torchrun:
            count = sum(1 for path in large.rglob("*") if path.is_file())
            for stored, name in ((True, "store"), (False, "in memory")):
                result = train_once(large, cache, stored=stored, steps=steps, processes=2, domain=domain,
                                    settings=settings)
                rows.append({"data": f"{count:,}", "path": f"{name}, torchrun x2", **result})
        shutil.rmtree(cache)
    return rows


#: The latent benchmark's autoencoder: 64x64x3 pictures -> 4x16x16 latents (benchmarks/latent.py's).
LATENT_AUTOENCODER = ["autoencoder.base_channels=16", "autoencoder.channel_mults=[1,2,2]",
                      "autoencoder.latent_channels=4"]


def compare_latents(small: Path, large: Path, steps: int, before: Path | None) -> list[dict]:
    """A diffusion on an autoencoder's latents (``--autoencoder``) on a small and a large folder:
    a first start (the latents are encoded and cached) and a second (they are read), with this
    code and, with ``before``, another checkout's. The autoencoder is trained 20 steps on the
    small folder: what it encodes does not change what a run holds in memory."""
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        autoencoder_settings = [*TRAIN_SETTINGS, *LATENT_AUTOENCODER, f"data.cache_dir={work / 'cache'}"]
        subprocess.run(["diffkit", "train", "--domain", "image", "--stage", "autoencoder", "--data", str(small),
                        "--out", str(work / "autoencoder"), "--steps", "20", "--no-progress",
                        *[part for setting in autoencoder_settings for part in ("--set", setting)]],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True)
        for data in (small, large):
            count = sum(1 for path in data.rglob("*") if path.is_file())
            for name, source in (("now", None), ("before", before)):
                if name == "before" and source is None:
                    continue
                cache = work / f"cache-{name}"
                for start in ("first start", "second start"):
                    result = train_once(data, cache, steps=steps, source=source,
                                        arguments=("--autoencoder", str(work / "autoencoder")))
                    rows.append({"data": f"{count:,}", "path": f"latents, {name}, {start}", **result})
                shutil.rmtree(cache)
    return rows


# -- storage formats ----------------------------------------------------------------------------

def compare_formats(count: int, reads: int) -> list[dict]:
    """Write ``count`` random 64x64x3 uint8 items as NumPy ``.npy`` (read memory-mapped),
    safetensors (``safe_open`` slices) and Arrow IPC (memory-mapped, when pyarrow is installed);
    time random reads of single items in a fresh process and the anonymous memory they add."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        pixels = np.random.default_rng(0).integers(0, 256, (count, 3, SIZE, SIZE), dtype=np.uint8)
        for number, (name, write) in enumerate(_FORMAT_WRITERS.items()):
            path = Path(folder) / f"items{number}"
            start = time.perf_counter()
            try:
                write(path, pixels)
            except ImportError as error:
                print(f"{name}: skipped ({error})")
                continue
            written = time.perf_counter() - start
            result = subprocess.run([sys.executable, __file__, "read-format", name, str(path), str(reads)],
                                    capture_output=True, text=True)
            if result.returncode:
                raise RuntimeError(result.stderr[-2000:])
            rows.append({"format": name, "write_s": written, "file_mb": path.stat().st_size / 2**20,
                         **json.loads(result.stdout)})
    return rows


def _write_npy(path: Path, pixels: np.ndarray) -> None:
    with open(path, "wb") as file:
        np.save(file, pixels)


def _write_safetensors(path: Path, pixels: np.ndarray) -> None:
    from safetensors.numpy import save_file

    save_file({"pixels": pixels}, str(path))


def _write_arrow(path: Path, pixels: np.ndarray) -> None:
    import pyarrow as pa

    flat = pa.FixedSizeBinaryArray.from_buffers(pa.binary(pixels[0].nbytes), len(pixels),
                                                [None, pa.py_buffer(pixels.tobytes())])
    table = pa.table({"pixels": flat})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


_FORMAT_WRITERS = {"numpy memmap (.npy)": _write_npy, "safetensors": _write_safetensors, "Arrow IPC": _write_arrow}


def read_format(name: str, path: Path, reads: int) -> dict:
    """Random single-item reads of a file written by ``compare_formats`` (run in a fresh process)."""
    shape = (3, SIZE, SIZE)
    if name.startswith("numpy"):
        array = np.load(path, mmap_mode="c")
        count, read = len(array), lambda i: np.array(array[i])
    elif name == "safetensors":
        from safetensors import safe_open

        handle = safe_open(str(path), "np")
        sliced = handle.get_slice("pixels")
        count, read = sliced.get_shape()[0], lambda i: sliced[i:i + 1][0]
    else:
        import pyarrow as pa

        column = pa.ipc.open_file(pa.memory_map(str(path))).read_all().column("pixels")
        count, read = len(column), lambda i: np.frombuffer(column[i].as_py(), np.uint8).reshape(shape)
    order = np.random.default_rng(1).integers(0, count, reads)
    before = resident_anonymous(os.getpid())
    start = time.perf_counter()
    total = sum(int(read(int(i))[0, 0, 0]) for i in order)
    seconds = time.perf_counter() - start
    return {"us_per_read": 1e6 * seconds / reads, "anon_growth_mb": (resident_anonymous(os.getpid()) - before) / 2**20,
            "checksum": total}


# -- streaming formats --------------------------------------------------------------------------

def compare_streaming(pictures: Path, per_shard: int) -> list[dict]:
    """Rank 0 of 2 reading its half of a picture folder written as Parquet shards (read with
    ``datasets``, examples/parquet_shards.py) and as WebDataset tar shards (read with
    ``webdataset``): the set-up before the first item, and items per second over its part."""
    import importlib.util

    import torch
    import webdataset as wds

    example = Path(__file__).parents[1] / "examples" / "parquet_shards.py"
    spec = importlib.util.spec_from_file_location("parquet_shards", example)
    shards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shards)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        files = shards.write_shards(pictures, folder / "parquet", per_shard, SIZE, 3)
        images = shards.load_folder(pictures, SIZE, 3)
        (folder / "tar").mkdir()
        with wds.ShardWriter(str(folder / "tar" / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
            for index, (pixels, label) in enumerate(zip(images.pixels, images.labels.tolist())):
                sink.write({"__key__": f"{index:08d}", "pixels": pixels.numpy().tobytes(), "cls": label})
        del images
        start = time.perf_counter()
        part = shards.ParquetPart(folder / "parquet", 0, 2, cache_dir=folder / "arrow")
        ready = time.perf_counter() - start
        order = torch.randperm(part.end - part.first, generator=torch.Generator().manual_seed(0)) + part.first
        start = time.perf_counter()
        for index in order.tolist():
            part[index]
        rows.append({"format": f"Parquet via datasets ({len(part.files)} of {len(files)} files)",
                     "setup_s": ready, "items": len(order), "items_per_s": len(order) / (time.perf_counter() - start)})
        tars = sorted(str(path) for path in (folder / "tar").glob("*.tar"))
        mine = tars[:len(tars) // 2]  # rank 0's shards
        start = time.perf_counter()
        stream = wds.WebDataset(mine, shardshuffle=False).shuffle(1000)
        count = 0
        for sample in stream:
            torch.frombuffer(bytearray(sample["pixels"]), dtype=torch.uint8).reshape(3, SIZE, SIZE)
            int(sample["cls"])
            count += 1
        rows.append({"format": f"WebDataset tar ({len(mine)} of {len(tars)} shards)", "setup_s": 0.0, "items": count,
                     "items_per_s": count / (time.perf_counter() - start)})
    return rows


# -- molecules ----------------------------------------------------------------------------------

MOLECULE_SETTINGS = ["model.hidden=32", "model.edge_hidden=16", "model.layers=2", "model.heads=4",
                     "train.batch_size=32", "train.log_every=1", "train.checkpoint_every=0", "train.preview_every=0",
                     "train.warmup_steps=10"]


def write_moses(out: Path) -> None:
    """MOSES's splits (from the installed ``molsets`` package's data files) as SMILES files."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("moses")
    if spec is None:
        raise SystemExit("molsets is not installed: pip install --no-deps --target /tmp/molsets molsets, "
                         "then PYTHONPATH=/tmp/molsets")
    folder = Path(spec.submodule_search_locations[0]) / "dataset" / "data"
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test", "test_scaffolds"):
        with gzip.open(folder / f"{split}.csv.gz", "rt") as file:
            lines = file.read().splitlines()[1:]  # the header: SMILES
        (out / f"{split}.smi").write_text("\n".join(lines) + "\n")
        print(f"{out / f'{split}.smi'}: {len(lines):,} molecules")


def time_featurisation(source: Path) -> dict:
    """Featurise ``source`` into a fresh cache: wall and CPU seconds (this process and its workers)."""
    from diffkit_molecule.dataset import Featurisation, molecule_store

    with tempfile.TemporaryDirectory() as cache:
        start, cpu_start = time.time(), _cpu_seconds()
        store = molecule_store(source, Featurisation(("qed", "logp", "mol_weight")), Path(cache))
        wall, cpu = time.time() - start, _cpu_seconds() - cpu_start
        entries = len(store) + len(store.skipped)
    return {"entries": entries, "kept": len(store), "wall_s": wall, "cpu_s": cpu,
            "cpu_ms_per_molecule": 1000 * cpu / entries}


def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def check_moses_metrics(train: Path, test: Path, count: int = 1500) -> dict:
    """Our MOSES metrics beside molsets' own code on the same molecules: ``count`` of MOSES's
    training molecules, as many of the bundled QM9 subset and a few that fail the filters, against
    2 x ``count`` test molecules. molsets 0.3.1 needs two shims on today's libraries: its
    ``rdkit.six`` import and pandas' removed ``DataFrame.append``."""
    import gzip
    import itertools
    import random
    import types

    import pandas

    sys.modules.setdefault("rdkit.six", types.SimpleNamespace(iteritems=lambda d: iter(d.items())))
    pandas.DataFrame.append = lambda self, other, sort=True: pandas.concat([self, other], sort=sort)
    from moses.metrics import metrics as theirs_metrics, utils as theirs
    from rdkit import Chem

    from diffkit_molecule import moses as ours
    from diffkit_molecule.sources import bundled_path

    rng = random.Random(0)
    with gzip.open(bundled_path(), "rt") as file:
        qm9 = [line.split()[0] for line in itertools.islice(file, count)]
    generated = rng.sample(train.read_text().split(), count) + qm9 + ["C[N+](C)(C)C", "CC(=O)Cl", "C1CCCCCCCC1"]
    reference = rng.sample(test.read_text().split(), 2 * count)
    mine, refs = [Chem.MolFromSmiles(s) for s in generated], [Chem.MolFromSmiles(s) for s in reference]
    prints = ours.fingerprints(mine)
    return {
        "molecules": len(generated),
        "filters_agree": sum(theirs.mol_passes_filters(m) == ours.passes_filters(m) for m in mine),
        "filters_pass": sum(ours.passes_filters(m) for m in mine),
        "snn": (theirs_metrics.SNNMetric()(gen=generated, ref=reference),
                float(ours.nearest_similarity(prints, ours.fingerprints(refs)).mean())),
        "fragment_similarity": (theirs_metrics.FragMetric()(gen=generated, ref=reference),
                                ours.cosine_similarity(ours.fragments(mine), ours.fragments(refs))),
        "scaffold_similarity": (theirs_metrics.ScafMetric()(gen=generated, ref=reference),
                                ours.cosine_similarity(ours.scaffolds(mine), ours.scaffolds(refs))),
        "internal_diversity_1": (theirs_metrics.internal_diversity(generated, p=1), ours.internal_diversity(prints, 1)),
        "internal_diversity_2": (theirs_metrics.internal_diversity(generated, p=2), ours.internal_diversity(prints, 2)),
    }


def compare_molecules(files: list[Path], steps: int, source: Path | None, cache: Path, repeats: int) -> list[dict]:
    """For each file: a first start (featurising into ``cache``) and a second start; with
    ``source``, ``repeats`` starts of this code and of that checkout's (its own cache beside) in
    turn, so that both see the same load."""
    rows = []
    for data in files:
        count = sum(1 for _ in open(data))
        for start in ("first start", "second start"):
            result = train_once(data, cache, steps=steps, domain="molecule", settings=MOLECULE_SETTINGS)
            rows.append({"data": f"{count:,}", "path": f"store, {start}", **result})
        for _ in range(repeats if source is not None else 0):
            result = train_once(data, cache, steps=steps, domain="molecule", settings=MOLECULE_SETTINGS)
            rows.append({"data": f"{count:,}", "path": "store", **result})
            result = train_once(data, cache / "before", steps=steps, domain="molecule", settings=MOLECULE_SETTINGS,
                                source=source)
            rows.append({"data": f"{count:,}", "path": f"in memory ({source})", **result})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| items | data path | peak anonymous memory (MB) | to the first step: wall s (CPU s) | "
             "steps/s: wall (per CPU s) |", "|---:|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['data']} | {row['path']} | {row['anon_mb']:.0f} | {row['first_step_s']:.1f} "
                     f"({row['first_step_cpu_s']:.1f}) | {row['steps_per_s']:.2f} ({row['steps_per_cpu_s']:.2f}) |")
    return "\n".join(lines) + "\n"


def folder_comparison(command: argparse.ArgumentParser) -> None:
    """The arguments of the ``images`` and ``audio`` commands, which run :func:`compare_folders`."""
    command.add_argument("small", type=Path)
    command.add_argument("large", type=Path)
    command.add_argument("--steps", type=int, default=60)
    command.add_argument("--repeats", type=int, default=2)
    command.add_argument("--torchrun", action="store_true", help="also two processes on the large set")
    command.add_argument("--markdown", type=Path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pictures = commands.add_parser("pictures", help="make a folder of coloured digits")
    pictures.add_argument("--count", type=int, required=True)
    pictures.add_argument("--out", type=Path, required=True)
    pictures.add_argument("--seed", type=int, default=0)
    folder_comparison(commands.add_parser("images", help="train on a small and a large folder, both data paths"))
    clips = commands.add_parser("clips", help="make a folder of spoken digits with noise and gain")
    clips.add_argument("--source", type=Path, required=True, help="the free-spoken-digit recordings")
    clips.add_argument("--count", type=int, required=True)
    clips.add_argument("--out", type=Path, required=True)
    clips.add_argument("--seed", type=int, default=0)
    folder_comparison(commands.add_parser("audio", help="train on a small and a large folder of clips, both data paths"))
    formats = commands.add_parser("formats", help="random reads of items in three storage formats")
    formats.add_argument("--count", type=int, default=20_000)
    formats.add_argument("--reads", type=int, default=20_000)
    read = commands.add_parser("read-format")  # the fresh process of `formats`
    read.add_argument("name")
    read.add_argument("path", type=Path)
    read.add_argument("reads", type=int)
    streaming = commands.add_parser("streaming", help="a rank's part read from Parquet and WebDataset shards")
    streaming.add_argument("pictures", type=Path)
    streaming.add_argument("--per-shard", type=int, default=1000)
    moses = commands.add_parser("moses", help="write MOSES's splits from the molsets package as .smi files")
    moses.add_argument("--out", type=Path, required=True)
    featurise = commands.add_parser("featurise", help="time featurising a molecule file into a fresh store")
    featurise.add_argument("source", type=Path)
    check = commands.add_parser("moses-check", help="our MOSES metrics beside molsets' code")
    check.add_argument("train", type=Path)
    check.add_argument("test", type=Path)
    molecules = commands.add_parser("molecules", help="train on molecule files of growing size")
    latents = commands.add_parser("latents", help="a diffusion on latents on a small and a large folder of pictures")
    latents.add_argument("small", type=Path)
    latents.add_argument("large", type=Path)
    latents.add_argument("--steps", type=int, default=30)
    latents.add_argument("--before", type=Path, help="a checkout of the code before, for comparison")
    latents.add_argument("--markdown", type=Path)
    molecules.add_argument("files", type=Path, nargs="+")
    molecules.add_argument("--steps", type=int, default=30)
    molecules.add_argument("--before", type=Path, help="a checkout of the code before the store, for comparison")
    molecules.add_argument("--repeats", type=int, default=1, help="runs of each code, in turn, with --before")
    molecules.add_argument("--cache", type=Path, required=True, help="the cache folder (kept: a store is reused)")
    molecules.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if args.command == "pictures":
        make_pictures(args.count, args.out, args.seed)
        return
    if args.command == "clips":
        make_clips(args.source, args.count, args.out, args.seed)
        return
    if args.command == "read-format":
        print(json.dumps(read_format(args.name, args.path, args.reads)))
        return
    if args.command == "formats":
        for row in compare_formats(args.count, args.reads):
            print(json.dumps(row))
        return
    if args.command == "streaming":
        for row in compare_streaming(args.pictures, args.per_shard):
            print(json.dumps(row))
        return
    if args.command == "moses":
        write_moses(args.out)
        return
    if args.command == "moses-check":
        print(json.dumps(check_moses_metrics(args.train, args.test), indent=1))
        return
    if args.command == "featurise":
        print(json.dumps(time_featurisation(args.source), indent=1))
        return
    if args.command == "molecules":
        rows = compare_molecules(args.files, args.steps, args.before, args.cache, args.repeats)
    elif args.command == "latents":
        rows = compare_latents(args.small, args.large, args.steps, args.before)
    else:
        rows = compare_folders(args.small, args.large, args.steps, args.torchrun, args.repeats,
                               "image" if args.command == "images" else "audio")
    table = markdown(rows)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    sys.exit(main())
