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
default) every file is decoded and resampled once, up front; without it only the headers are
checked and files are decoded when used (for collections larger than memory).
"""

from __future__ import annotations

import math
import re
import warnings
import zlib
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .audio_io import (AUDIO_SUFFIXES, UnreadableAudio, check_level, fit_length, load_clip, prepare_clip,
                       read_audio)

LABEL_MODES = ("folder", "pattern", "none")


class ClipDataset(Dataset):
    """Fixed-length clips ``{"x": (C, length) float32, "cond": long label}``; ``x`` is the
    waveform times ``scale`` (the state the model sees, see ``data.scale``), or what
    ``transform`` makes of it when set (the mel representation's encoder).

    ``sources`` are waveforms ``(C, T_i)`` already at the target rate, or paths decoded on
    access (for folders too large to hold in memory). Clips longer than ``length`` are cropped at
    a random offset when ``random_crop`` (training) and from the start otherwise; shorter ones
    are zero-padded at the end.
    """

    def __init__(self, sources: list[Tensor | Path], labels: list[int], label_names: list[str], *,
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
    """Audio files under ``root`` (recursively, sorted), skipping ``_*`` and ``.*`` folders."""
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(("_", ".")) for part in relative.parts[:-1]):
            continue
        if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES:
            found.append(path)
    return found


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
            continue
        try:
            source = read_audio(path) if preload else probe(path, channels)
        except UnreadableAudio as error:
            skipped.append(str(error))
            continue
        labelled.append((path, source, name))
    warn_skipped(skipped, root)
    if not labelled:
        raise ValueError(f"none of the {len(files)} audio files under {str(root)!r} could be used"
                         + (f"; first problem: {skipped[0]}" if skipped else ""))
    choices = [settle_rate(data_config, [native for _, (_, native), _ in labelled])]
    rate = int(data_config["sample_rate"])
    if preload:  # sources are (waveform, its rate) pairs: prepared once, here
        labelled = [(path, (prepare_clip(wave, native, rate, channels, level, trim_db, path=path), rate), name)
                    for path, (wave, native), name in labelled]
        measured = [wave for _, (wave, _), _ in labelled]
    else:
        measured = [load_clip(path, rate, channels, level, trim_db)
                    for path in evenly_spaced([path for path, _, _ in labelled], DURATION_PROBES)]
    choices.append(settle_duration(data_config, [wave.shape[-1] / rate for wave in measured], trim_db))
    names = label_names if label_names is not None else sorted({name for _, _, name in labelled})
    index = {name: i for i, name in enumerate(names)}
    kept = [(source, index[name]) for _, (source, _), name in labelled if name in index]
    dataset = ClipDataset([source for source, _ in kept], [label for _, label in kept], names,
                          sample_rate=rate, length=clip_length(data_config), channels=channels,
                          random_crop=random_crop, normalise=level, trim_db=trim_db)
    dataset.choices = [choice for choice in choices if choice]
    return dataset


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


def probe(path: Path, channels: int) -> tuple[Path, int]:
    """Check a file's header without decoding it (for ``data.preload = false``): ``(path, its sample rate)``."""
    import soundfile

    try:
        info = soundfile.info(str(path))
    except Exception as error:
        raise UnreadableAudio(f"{path}: {error}") from None
    if info.frames == 0:
        raise UnreadableAudio(f"{path}: the file holds no samples")
    if 1 < info.channels < channels:
        raise UnreadableAudio(f"{path}: has {info.channels} channels, fewer than data.channels = {channels}")
    return path, int(info.samplerate)


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
