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

import re
import warnings
import zlib
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .audio_io import AUDIO_SUFFIXES, UnreadableAudio, fit_length, load_clip

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
                 sample_rate: int, length: int, channels: int, random_crop: bool, normalise: bool = True,
                 scale: float = 1.0):
        if len(sources) != len(labels):
            raise ValueError(f"{len(sources)} clips but {len(labels)} labels")
        self.sources, self.labels, self.label_names = sources, labels, label_names
        self.sample_rate, self.length, self.channels = sample_rate, length, channels
        self.random_crop, self.normalise, self.scale = random_crop, normalise, scale
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
        return load_clip(source, self.sample_rate, self.channels, self.normalise)

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
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"audio data folder {str(root)!r} does not exist or is not a folder")
    mode = str(data_config["labels"])
    if mode not in LABEL_MODES:
        raise ValueError(f"data.labels = {mode!r}; expected one of {', '.join(LABEL_MODES)}")
    regex = pattern_regex(str(data_config["label_pattern"])) if mode == "pattern" else None
    files = find_audio_files(root) if files is None else files
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) found under {str(root)!r}")
    rate, channels = int(data_config["sample_rate"]), int(data_config["channels"])
    normalise = str(data_config["normalize"]) == "peak"
    preload = bool(data_config["preload"])
    labelled, skipped = [], []
    for path in files:
        name = label_of(path, root, mode, regex)
        if name is None:
            skipped.append(f"{path} (name does not match data.label_pattern {data_config['label_pattern']!r})")
            continue
        try:
            source = load_clip(path, rate, channels, normalise) if preload else probe(path, channels)
        except UnreadableAudio as error:
            skipped.append(str(error))
            continue
        labelled.append((source, name))
    names = label_names if label_names is not None else sorted({name for _, name in labelled})
    index = {name: i for i, name in enumerate(names)}
    kept = [(wave, index[name]) for wave, name in labelled if name in index]
    warn_skipped(skipped, root)
    if not kept:
        raise ValueError(f"none of the {len(files)} audio files under {str(root)!r} could be used"
                         + (f"; first problem: {skipped[0]}" if skipped else ""))
    return ClipDataset([wave for wave, _ in kept], [label for _, label in kept], names,
                       sample_rate=rate, length=clip_length(data_config), channels=channels,
                       random_crop=random_crop, normalise=normalise)


def probe(path: Path, channels: int) -> Path:
    """Check a file's header without decoding it (for ``data.preload = false``)."""
    import soundfile

    try:
        info = soundfile.info(str(path))
    except Exception as error:
        raise UnreadableAudio(f"{path}: {error}") from None
    if info.frames == 0:
        raise UnreadableAudio(f"{path}: the file holds no samples")
    if 1 < info.channels < channels:
        raise UnreadableAudio(f"{path}: has {info.channels} channels, fewer than data.channels = {channels}")
    return path


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
