"""Audio datasets: the embedded note set and folders of the user's recordings.

A folder is searched recursively for audio files (see :data:`audio_io.AUDIO_SUFFIXES`);
folders whose name starts with ``_`` or ``.`` are skipped (Speech Commands keeps long noise
recordings in ``_background_noise_``). Labels come from

* ``data.labels = "folder"``: the name of the folder holding the file (``digits/7/a.wav`` -> ``7``;
  files at the top level take the top folder's name). This reads torchaudio's SPEECHCOMMANDS
  layout (``<word>/<speaker>_nohash_<n>.wav``) and YESNO (one folder, one class) as they are.
* ``data.labels = "pattern"``: fields of the file name, ``data.label_pattern`` such as
  ``"{label}_{speaker}_{take}"`` (the free-spoken-digit layout ``7_jackson_12.wav``).
* ``data.labels = "none"``: every file has label 0.

Files that cannot be decoded, hold no samples or do not match the pattern are skipped with one
warning that names them; an error is raised when nothing is left. With ``data.preload`` (the
default) every file is decoded, trimmed, resampled and levelled once, up front, by worker
processes, into a store (:mod:`diffkit.kit.store`): with ``data.cache`` (the default) under the
diffkit cache, keyed by the files' names, sizes and modification times and by the settings that
shape the clips, and memory-mapped, so every training process of a machine reads one copy through
the page cache and a later start decodes nothing; without it, into this process's memory. The
rates a rate from the data is settled from are read from the headers once, by workers, into a
store of their own. Without ``data.preload`` only the headers are checked and files are decoded
when used.
"""

from __future__ import annotations

import functools
import hashlib
import contextlib
import math
import os
import re
import tempfile
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffkit.kit import ItemStore, Skip, cache_dir, in_shards, open_store

from .audio_io import AUDIO_SUFFIXES, UnreadableAudio, check_level, fit_length, load_clip

LABEL_MODES = ("folder", "pattern", "none")
CACHE_VERSION = 1
#: Recordings a decoding task takes (a shard of the store).
SHARD_RECORDINGS = 256


class ClipDataset(Dataset):
    """Fixed-length clips ``{"x": (C, length) float32, "cond": long label}``; ``x`` is the
    waveform times ``scale`` (the state the model sees, see ``data.scale``), or what
    ``transform`` makes of it when set (the mel representation's encoder).

    ``sources`` are waveforms ``(C, T_i)`` already at the target rate (a list, or
    :class:`StoredClips`), or paths decoded on access. Clips longer than ``length`` are cropped at
    a random offset when ``random_crop`` (training) and from the start otherwise; shorter ones
    are zero-padded at the end.
    """

    def __init__(self, sources: Sequence[Tensor | Path], labels: list[int], label_names: list[str], *,
                 sample_rate: int, length: int, channels: int, random_crop: bool, normalise: str = "peak",
                 trim_db: float = 0.0, scale: float = 1.0):
        if len(sources) != len(labels):
            raise ValueError(f"{len(sources)} clips but {len(labels)} labels")
        self.sources, self.labels, self.label_names = sources, labels, label_names
        self.sample_rate, self.length, self.channels = sample_rate, length, channels
        self.random_crop, self.normalise, self.trim_db, self.scale = random_crop, normalise, trim_db, scale
        self.choices: list[str] = []  # settings chosen from the data, and why (see folder_dataset)
        self.transform = None   # a callable applied to each clip after scaling (the mel encoder)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.sources)

    def waveform(self, index: int) -> Tensor:
        """The whole clip ``(C, T)`` at the dataset's rate, before cropping."""
        source = self.sources[index]
        if isinstance(source, Tensor):
            return source
        return load_clip(source, self.sample_rate, self.channels, self.normalise, self.trim_db)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        wave = self.waveform(index)
        spare = wave.shape[1] - self.length
        offset = int(torch.randint(0, spare + 1, ())) if self.random_crop and spare > 0 else 0
        x = fit_length(wave, self.length, offset).float() * self.scale
        if self.transform is not None:
            with torch.no_grad():
                x = self.transform(x)
        return {"x": x, "cond": torch.tensor(self.labels[index], dtype=torch.long)}

    def __repr__(self) -> str:
        return (f"ClipDataset({len(self)} clips, {self.num_classes} labels, {self.sample_rate} Hz, "
                f"{self.length} samples x {self.channels} channel(s))")


def clip_length(data_config: dict) -> int:
    """Samples per clip: ``data.duration`` seconds at ``data.sample_rate``."""
    length = round(float(data_config["duration"]) * int(data_config["sample_rate"]))
    if length < 1:
        raise ValueError(f"data.duration = {data_config['duration']} s gives no samples at "
                         f"data.sample_rate = {data_config['sample_rate']}")
    return length


def notes_dataset(data_config: dict, split: str = "train") -> ClipDataset:
    """The embedded default data (see :mod:`diffkit_audio.notes`) as a dataset."""
    from .notes import make_notes

    rate, length, channels = int(data_config["sample_rate"]), clip_length(data_config), int(data_config["channels"])
    waves, labels, names = make_notes(rate, length, int(data_config["notes_per_class"]), split)
    sources = [torch.from_numpy(wave)[None].expand(channels, -1).clone() for wave in waves]
    return ClipDataset(sources, labels.tolist(), names, sample_rate=rate, length=length,
                       channels=channels, random_crop=False)


def find_audio_files(root: Path) -> list[Path]:
    """Audio files under ``root`` (recursively, sorted as paths), skipping ``_*`` and ``.*``
    folders (a walk of the directories, which tells files from folders without a call per file)."""
    found = []
    for directory, folders, names in os.walk(root):
        folders[:] = [name for name in folders if not name.startswith(("_", "."))]
        relative = os.path.relpath(directory, root).split(os.sep) if directory != str(root) else []
        found.extend([*relative, name] for name in names if name.lower().endswith(AUDIO_SUFFIXES))
    return [root.joinpath(*parts) for parts in sorted(found)]


def pattern_regex(pattern: str) -> re.Pattern:
    """``"{label}_{speaker}_{take}"`` -> a regex matching a whole file stem with named groups."""
    fields = re.findall(r"{(\w+)}", pattern)
    if "label" not in fields:
        raise ValueError(f"data.label_pattern {pattern!r} has no {{label}} field")
    regex, position = "", 0
    for match in re.finditer(r"{(\w+)}", pattern):
        regex += re.escape(pattern[position:match.start()])
        # A field never swallows the separator that follows it, so "a_b_c" splits as written.
        following = pattern[match.end():match.end() + 1]
        regex += f"(?P<{match.group(1)}>[^{re.escape(following)}]+)" if following else f"(?P<{match.group(1)}>.+)"
        position = match.end()
    return re.compile("^" + regex + re.escape(pattern[position:]) + "$")


def label_of(path: Path, root: Path, mode: str, regex: re.Pattern | None) -> str | None:
    """The label name of a file, or None when its name does not match the pattern."""
    if mode == "folder":
        return path.parent.name if path.parent != root else root.name
    if mode == "pattern":
        match = regex.match(path.stem)
        return match.group("label") if match else None
    return "all"


def folder_dataset(root: str | Path, data_config: dict, *, random_crop: bool,
                   files: list[Path] | None = None, label_names: list[str] | None = None) -> ClipDataset:
    """The audio files under ``root`` (or the given subset ``files``) as a :class:`ClipDataset`.

    ``label_names`` fixes the label order (e.g. the training set's); by default it is the
    sorted set of labels found. Files with a label outside ``label_names`` are skipped.
    ``data.sample_rate`` and ``data.duration`` left at 0 are settled from the recordings
    (:func:`settle_rate`, :func:`settle_duration`) and written into ``data_config``; the
    dataset's ``choices`` say what was chosen and why.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"audio data folder {str(root)!r} does not exist or is not a folder")
    mode = str(data_config["labels"])
    if mode not in LABEL_MODES:
        raise ValueError(f"data.labels = {mode!r}; expected one of {', '.join(LABEL_MODES)}")
    level, trim_db = check_level(str(data_config["normalize"])), float(data_config["trim_db"])
    regex = pattern_regex(str(data_config["label_pattern"])) if mode == "pattern" else None
    files = find_audio_files(root) if files is None else files
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) found under {str(root)!r}")
    channels, preload = int(data_config["channels"]), bool(data_config["preload"])
    labelled, skipped = [], []
    for path in files:
        name = label_of(path, root, mode, regex)
        if name is None:
            skipped.append(f"{path} (name does not match data.label_pattern {data_config['label_pattern']!r})")
        else:
            labelled.append((path, name))
    choices, usable = [], list(range(len(labelled)))  # of labelled
    key = files_key(root, [path for path, _ in labelled], data_config)
    checked = not preload or int(data_config["sample_rate"]) <= 0  # the headers say each file's rate
    if checked:
        rates, problems = header_rates(labelled, key, data_config)
        skipped += problems
        usable = [number for number, native in enumerate(rates) if native]
        _check_any_left(usable, files, skipped, root)
        choices.append(settle_rate(data_config, [rates[number] for number in usable]))
    rate = int(data_config["sample_rate"])
    if preload:
        clips = decoded_clips([(number, labelled[number][0]) for number in usable], f"{key} {checked}", data_config)
        skipped += [skip.reason for skip in clips.skipped]
        _check_any_left(clips, files, skipped, root)
        sources, clip_labels = clips, [labelled[number][1] for number in clips.files]
        durations = (clips.lengths() / rate).tolist()
    else:
        sources, clip_labels = [labelled[k][0] for k in usable], [labelled[k][1] for k in usable]
        durations = [load_clip(path, rate, channels, level, trim_db).shape[-1] / rate
                     for path in evenly_spaced(sources, DURATION_PROBES)]
    warn_skipped(skipped, root)
    choices.append(settle_duration(data_config, durations, trim_db))
    names = label_names if label_names is not None else sorted(set(clip_labels))
    index = {name: i for i, name in enumerate(names)}
    kept = [k for k, name in enumerate(clip_labels) if name in index]
    if len(kept) < len(clip_labels):
        sources = sources.subset(kept) if isinstance(sources, StoredClips) else [sources[k] for k in kept]
    dataset = ClipDataset(sources, [index[clip_labels[k]] for k in kept], names,
                          sample_rate=rate, length=clip_length(data_config), channels=channels,
                          random_crop=random_crop, normalise=level, trim_db=trim_db)
    dataset.choices = [choice for choice in choices if choice]
    return dataset


def _check_any_left(usable: Sequence, files: list[Path], skipped: list[str], root: Path) -> None:
    """An error naming the first problem, after the warning that lists them all, when none of
    ``files`` is ``usable``."""
    if not len(usable):
        warn_skipped(skipped, root)
        raise ValueError(f"none of the {len(files)} audio files under {str(root)!r} could be used"
                         + (f"; first problem: {skipped[0]}" if skipped else ""))


# -- decoded clips in a store -------------------------------------------------------------------

@dataclass
class StoredClips:
    """Decoded clips, item ``i`` being row ``rows[i]`` of a store of recordings: ``(C, T)`` tensors
    at the data's rate, read from ``samples`` (every clip's ``(T, C)`` samples, concatenated) at
    ``offsets``. With ``store`` set they are its memory map, and the clips pickle (e.g. to a
    DataLoader worker) as the store, not as a copy; without, they are held in this process.
    ``files`` gives each item's number among the recordings given to :func:`decoded_clips`, and
    ``skipped`` names those that did not decode."""

    samples: np.ndarray
    offsets: np.ndarray
    rows: np.ndarray
    files: np.ndarray
    skipped: list[Skip]
    store: ItemStore | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Tensor:
        row = int(self.rows[index])
        return torch.from_numpy(self.samples[self.offsets[row]:self.offsets[row + 1]]).T

    def lengths(self) -> np.ndarray:
        """``(N,)``: each clip's samples per channel."""
        return np.diff(self.offsets)[self.rows]

    def subset(self, kept: Sequence[int]) -> StoredClips:
        """The items ``kept``, in that order."""
        kept = np.asarray(kept, dtype=np.int64)
        return StoredClips(self.samples, self.offsets, self.rows[kept], self.files[kept], self.skipped, self.store)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "samples": None, "offsets": None} if self.store is not None else dict(self.__dict__)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.store is not None:
            self.samples, self.offsets = self.store.array("wave"), self.store.offsets("wave")


def files_key(root: Path, files: Sequence[Path], data_config: dict) -> str:
    """A key of the recordings (names, sizes, modification times) and of ``data.channels``."""
    digest = hashlib.sha256(f"v{CACHE_VERSION} {root.resolve()} {data_config['channels']}".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"\n{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


@contextlib.contextmanager
def _store(kind: str, key: str, numbered: list[tuple[int, Path]], decode, data_config: dict,
           **options) -> Iterator[ItemStore]:
    """The store ``<cache>/audio/<kind>/<key>`` of what ``decode`` makes of the ``(number, file)``
    pairs, filled by worker processes when it is not there; without ``data.cache`` one in a
    temporary folder, removed on leaving."""
    tasks = in_shards(numbered, SHARD_RECORDINGS)
    if data_config["cache"]:
        yield open_store(cache_dir("audio", {"data": data_config}) / kind / key, tasks, decode, **options)
        return
    with tempfile.TemporaryDirectory(prefix="diffkit-audio-") as temporary:
        yield open_store(Path(temporary) / key, tasks, decode, **options)


def header_rates(labelled: list[tuple[Path, str]], key: str, data_config: dict) -> tuple[list[int], list[str]]:
    """Each file's sample rate, read from its header (0 for one whose header does not read or
    does not suit ``data.channels``), and the problems; kept in a store, so a later start reads
    no header."""
    decode = functools.partial(read_headers, channels=int(data_config["channels"]))
    rates = [0] * len(labelled)
    with _store("headers", key, [(number, path) for number, (path, _) in enumerate(labelled)], decode, data_config,
                description=f"reading {len(labelled):,} headers") as store:
        if len(store):
            for number, rate in zip(store.array("file").tolist(), store.array("rate").tolist()):
                rates[number] = rate
        return rates, [skip.reason for skip in store.skipped]


def read_headers(files: Sequence[tuple[int, Path]], *, channels: int) -> Iterator[dict | Skip]:
    """``{"file": int64, "rate": int64}`` of each ``(number, file)`` (:func:`probe`), or a
    :class:`~diffkit.kit.Skip` naming a file whose header does not read."""
    for number, path in files:
        try:
            yield {"file": np.int64(number), "rate": np.int64(probe(path, channels))}
        except UnreadableAudio as error:
            yield Skip(str(error))


def decoded_clips(numbered: list[tuple[int, Path]], key: str, data_config: dict) -> StoredClips:
    """The recordings ``(number, file)`` as training reads them (:func:`load_clip` at
    ``data.sample_rate``), decoded once by worker processes into a store named by ``key`` (of the
    files) and the settings that shape the clips; copied into this process's memory without
    ``data.cache``."""
    settings = [data_config[name] for name in ("sample_rate", "normalize", "trim_db")]
    decode = functools.partial(decode_recordings, rate=int(data_config["sample_rate"]),
                               channels=int(data_config["channels"]), level=check_level(str(data_config["normalize"])),
                               trim_db=float(data_config["trim_db"]))
    key = hashlib.sha256(f"{key} {settings}".encode()).hexdigest()[:24]
    with _store("decoded", key, numbered, decode, data_config, variable=("wave",),
                description=f"decoding {len(numbered):,} recordings") as store:
        clips = _mapped_clips(store)
        if not data_config["cache"]:
            clips.samples, clips.offsets, clips.store = np.array(clips.samples), np.array(clips.offsets), None
        return clips


def _mapped_clips(store: ItemStore) -> StoredClips:
    if not len(store):  # every file was skipped: the store holds no fields
        empty = np.zeros(0, dtype=np.int64)
        return StoredClips(np.zeros((0, 1), np.float32), np.zeros(1, np.int64), empty, empty, store.skipped)
    return StoredClips(store.array("wave"), store.offsets("wave"), np.arange(len(store)),
                       np.array(store.array("file")), store.skipped, store)


def decode_recordings(files: Sequence[tuple[int, Path]], *, rate: int, channels: int, level: str,
                      trim_db: float) -> Iterator[dict | Skip]:
    """``{"wave": (T, C) float32, "file": int64}`` of each ``(number, file)``, prepared as
    :func:`load_clip` prepares it, or a :class:`~diffkit.kit.Skip` naming a file that does not decode."""
    for number, path in files:
        try:
            wave = load_clip(path, rate, channels, level, trim_db)
        except UnreadableAudio as error:
            yield Skip(str(error))
            continue
        yield {"wave": np.ascontiguousarray(wave.T.numpy(), dtype=np.float32), "file": np.int64(number)}


#: The share of recordings a clip length from the data holds whole (after trimming silence).
DURATION_PERCENTILE = 98
#: Recordings decoded to measure durations when the data is not preloaded.
DURATION_PROBES = 500


def settle_rate(data_config: dict, rates: list[int]) -> str:
    """Set ``data.sample_rate`` from the recordings' own ``rates`` when it is 0: the most common
    one, at most ``data.max_sample_rate``. Returns what was chosen and why ("" when it was set)."""
    if int(data_config["sample_rate"]) > 0:
        return ""
    counts = Counter(rates)
    common, count = counts.most_common(1)[0]
    ceiling = int(data_config["max_sample_rate"])
    data_config["sample_rate"] = min(common, ceiling)
    share = f"{count:,} of the {len(rates):,} recordings" if count < len(rates) else f"all {len(rates):,} recordings"
    if common > ceiling:
        return (f"sample rate: {ceiling:,} Hz (the recordings' {common:,} Hz, {share}, resampled to "
                f"data.max_sample_rate; set data.sample_rate to keep more)")
    return f"sample rate: {common:,} Hz (that of {share})"


def settle_duration(data_config: dict, durations: list[float], trim_db: float) -> str:
    """Set ``data.duration`` from the recordings' ``durations`` (seconds, after trimming) when it
    is 0: the :data:`DURATION_PERCENTILE` th percentile rounded up to 10 ms, at most
    ``data.max_duration``. Returns what was chosen and why ("" when it was set)."""
    if float(data_config["duration"]) > 0:
        return ""
    import numpy as np

    longest = float(data_config["max_duration"])
    chosen = min(math.ceil(float(np.percentile(durations, DURATION_PERCENTILE)) * 100 - 1e-6) / 100, longest)
    data_config["duration"] = chosen
    longer = sum(duration > chosen + 1e-9 for duration in durations) / len(durations)
    trimmed = " once leading and trailing silence is trimmed" if trim_db > 0 else ""
    why = (f"{DURATION_PERCENTILE}th percentile of {len(durations):,} recordings{trimmed}" if chosen < longest
           else f"data.max_duration; {len(durations):,} recordings measured{trimmed}")
    return f"clip length: {chosen:g} s ({why}; {longer:.0%} longer, cut to it)"


def evenly_spaced(items: list, count: int) -> list:
    """At most ``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[round(k * (len(items) - 1) / (count - 1))] for k in range(count)]


def probe(path: Path, channels: int) -> int:
    """Check a file's header without decoding it: its sample rate."""
    import soundfile

    try:
        info = soundfile.info(str(path))
    except Exception as error:
        raise UnreadableAudio(f"{path}: {error}") from None
    if info.frames == 0:
        raise UnreadableAudio(f"{path}: the file holds no samples")
    if 1 < info.channels < channels:
        raise UnreadableAudio(f"{path}: has {info.channels} channels, fewer than data.channels = {channels}")
    return int(info.samplerate)


def warn_skipped(skipped: list[str], root: Path, shown: int = 10) -> None:
    if not skipped:
        return
    listed = "\n  ".join(skipped[:shown])
    more = f"\n  ... and {len(skipped) - shown} more" if len(skipped) > shown else ""
    warnings.warn(f"skipped {len(skipped)} audio file(s) under {str(root)!r}:\n  {listed}{more}", stacklevel=3)


def split_files(files: list[Path], root: Path, heldout_fraction: float) -> tuple[list[Path], list[Path]]:
    """A stable split into (reference, held-out) by a hash of each file's path under ``root``:
    adding files never moves the others between the parts."""
    reference, heldout = [], []
    for path in files:
        bucket = zlib.crc32(str(path.relative_to(root)).encode()) % 1000
        (heldout if bucket < heldout_fraction * 1000 else reference).append(path)
    return reference, heldout
