"""Spectrogram pictures of real against generated clips, one column per label: the top row real
clips, the rows below generated ones (e.g. one row per model), as on docs/benchmarks/audio.md.

    python benchmarks/audio_pictures.py --real DIR --generated "mel=SAMPLES1" --generated "waveform=SAMPLES2" \
        --out docs/images/audio-digits.png [--labels 0,1,...,9] [--set data.labels=pattern]

``--real`` is a folder of clips (labels as ``data.labels`` reads them) or ``notes`` for the
embedded note set (its held-out split); ``SAMPLES`` are folders written by ``diffkit sample``
(``sample-00003-<label>.wav``). The first clip found for each label is shown (of the real ones,
the one after ``--skip-real`` others).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from diffkit.config import resolve_config
from diffkit_audio.audio_io import fit_length, load_clip
from diffkit_audio.data import clip_length, find_audio_files, folder_dataset, notes_dataset
from diffkit_audio.domain import AudioDomain
from diffkit_audio.evaluation import LABELLED_STEM
from diffkit_audio.render import grid_image, spectrogram_image


def first_per_label(waves, labels: list[str], wanted: list[str], skip: int = 0) -> list:
    """The clip after the first ``skip`` clips of each wanted label."""
    chosen, seen = {}, {}
    for wave, label in zip(waves, labels):
        seen[label] = seen.get(label, -1) + 1
        if seen[label] == skip:
            chosen[label] = wave
    missing = [label for label in wanted if label not in chosen]
    if missing:
        raise ValueError(f"no clip found for label(s) {', '.join(missing)}")
    return [chosen[label] for label in wanted]


def real_clips(real: str, config: dict) -> tuple[list, list[str]]:
    dataset = notes_dataset(config["data"], "heldout") if real == "notes" else \
        folder_dataset(real, config["data"], random_crop=False)
    waves = [fit_length(dataset.waveform(i), dataset.length) for i in range(len(dataset))]
    return waves, [dataset.label_names[label] for label in dataset.labels]


def generated_clips(folder: Path, config: dict) -> tuple[list, list[str]]:
    files = find_audio_files(folder)
    length, rate = clip_length(config["data"]), int(config["data"]["sample_rate"])
    waves = [fit_length(load_clip(path, rate, 1, normalise="none"), length) for path in files]
    return waves, [LABELLED_STEM.match(path.stem)["label"] for path in files]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", required=True)
    parser.add_argument("--generated", action="append", default=[], help="NAME=FOLDER (repeatable)")
    parser.add_argument("--labels", default=None, help="comma-separated labels to show (default: all real ones)")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--skip-real", type=int, default=0, help="show the real clip after this many of each label")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = resolve_config(AudioDomain(), preset="cpu", sets=args.sets)
    waves, labels = real_clips(args.real, config)
    rate = int(config["data"]["sample_rate"])   # settled from the recordings by reading them
    wanted = args.labels.split(",") if args.labels else sorted(set(labels), key=labels.index)
    rows = [("real", first_per_label(waves, labels, wanted, args.skip_real))]
    for entry in args.generated:
        name, _, folder = entry.partition("=")
        rows.append((name, first_per_label(*generated_clips(Path(folder), config), wanted)))
    images, captions = [], []
    for name, clips in rows:
        for label, wave in zip(wanted, clips):
            images.append(spectrogram_image(wave, rate, min_width=96))
            captions.append(f"{name} {label}")
    if args.out.exists():
        raise FileExistsError(f"{args.out} exists; not replacing it")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # A 64-colour palette keeps the PNG small; the spectrogram palette has five anchors.
    grid = grid_image(images, captions, columns=len(wanted)).convert("P", palette=Image.ADAPTIVE, colors=64)
    grid.save(args.out, optimize=True)
    print(args.out)


if __name__ == "__main__":
    main()
