"""The audio domain on real recordings, run the way a user runs it, and what its representation
allows at best.

    python benchmarks/audio_real.py run --data DIR [--set data.labels=pattern] --work WORK
    python benchmarks/audio_real.py ceiling --data DIR [--set data.labels=pattern] --work WORK

``run`` splits the folder as ``diffkit evaluate`` does (by a hash of each path: a reference part
and a held-out part), trains with the default settings on the reference part only (a folder of
links under WORK), draws 10 samples of each label and scores them against the whole folder:

    diffkit train --domain audio --data WORK/train [--set ...] --out WORK/run
    diffkit sample --domain audio --checkpoint WORK/run -n 100 --cond LABELS --seed 1 --out WORK/samples
    diffkit evaluate --domain audio --samples WORK/samples --reference DIR --checkpoint WORK/run --json

so every held-out clip is new to the model and to the evaluation's classifier. It prints the wall
and CPU time of training and the scores beside those of held-out real clips.

``ceiling`` sends held-out real clips through a representation's encoder and decoder, without a
model, and scores them the same way: what a perfect model of that representation would reach.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from diffkit.config import resolve_config
from diffkit_audio.audio_io import encode_audio, fit_length
from diffkit_audio.data import find_audio_files, folder_dataset, label_of, pattern_regex, split_files
from diffkit_audio.domain import AudioDomain, build_codec
from diffkit_audio.evaluation import evaluate_audio

SCORES = ("label_accuracy", "is", "fd_classifier", "fd_logmel")


def link_reference_part(data: Path, train: Path, heldout_fraction: float) -> int:
    """Links, under ``train``, to the files of ``data`` that ``diffkit evaluate`` keeps as its reference."""
    reference, _ = split_files(find_audio_files(data), data, heldout_fraction)
    for path in reference:
        link = train / path.relative_to(data)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())
    return len(reference)


def label_names(data: Path, data_config: dict) -> list[str]:
    """The labels of the files under ``data``, in the order training gives them (sorted)."""
    mode = data_config["labels"]
    regex = pattern_regex(data_config["label_pattern"]) if mode == "pattern" else None
    return sorted({label_of(path, data, mode, regex) for path in find_audio_files(data)} - {None})


def diffkit(*arguments: str) -> str:
    """Run the ``diffkit`` command; its standard output."""
    done = subprocess.run([sys.executable, "-m", "diffkit", *arguments], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"diffkit {' '.join(arguments)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(args) -> None:
    work, sets = args.work, [item for assignment in args.sets for item in ("--set", assignment)]
    if work.exists():
        raise SystemExit(f"{work} exists; choose a new --work folder")
    config = resolve_config(AudioDomain(), sets=args.sets)
    count = link_reference_part(args.data, work / "train", config["evaluate"]["heldout_fraction"])
    print(f"training on the reference part of {args.data}: {count} files", file=sys.stderr)
    began, cpu = time.time(), children_cpu_seconds()
    plan = diffkit("train", "--domain", "audio", "--data", str(work / "train"), *sets, "--out", str(work / "run"),
                   "--no-progress")
    wall, cpu = time.time() - began, children_cpu_seconds() - cpu
    print(plan, file=sys.stderr)
    labels = label_names(args.data, config["data"])
    diffkit("sample", "--domain", "audio", "--checkpoint", str(work / "run"), "-n", str(10 * len(labels)),
            "--cond", ",".join(labels), "--seed", "1", "--out", str(work / "samples"), "--no-progress")
    scores = json.loads(diffkit("evaluate", "--domain", "audio", "--samples", str(work / "samples"),
                                "--reference", str(args.data), "--checkpoint", str(work / "run"), "--json"))
    print(f"| {args.data.name} | {wall / 60:.1f} min | {cpu / 60:.1f} min | " + " | ".join(
        f"{scores[key]:.2f} ({scores[key + '_heldout']:.2f})" for key in SCORES) + " |")
    (work / "scores.json").write_text(json.dumps({"wall_s": wall, "cpu_s": cpu, **scores}, indent=2) + "\n")


def linear_round_trip(n_fft: int, hop: int, iterations: int):
    """Magnitude STFT and Griffin-Lim: the linear-frequency representation's round trip."""
    import torchaudio.functional as AF

    window = torch.hann_window(n_fft)

    def round_trip(waves: torch.Tensor) -> torch.Tensor:
        flat = waves.reshape(-1, waves.shape[-1])
        magnitude = torch.stft(flat, n_fft, hop, window=window, return_complex=True).abs()
        rebuilt = AF.griffinlim(magnitude, window, n_fft, hop, n_fft, 1.0, iterations, 0.99, flat.shape[-1], False)
        return rebuilt.reshape(waves.shape)

    return round_trip


def mel_round_trip(config: dict, **model):
    """The mel representation's encoder and decoder with ``model`` settings over ``config``'s."""
    codec = build_codec({**config, "model": {**config["model"], **model}})
    return lambda waves: codec.decode(codec.encode(waves))


def ceiling(args) -> None:
    work = args.work
    if work.exists():
        raise SystemExit(f"{work} exists; choose a new --work folder")
    config = resolve_config(AudioDomain(), sets=args.sets)
    waves, labels, rate = heldout_clips(args.data, config, args.clips)
    window, hop = round(0.064 * rate), round(0.016 * rate)
    variants = {
        "original clips": lambda w: w,
        "mel 64 bands, 8 ms hop, 32 Griffin-Lim iterations": mel_round_trip(
            config, mel_bins=64, mel_fft=window, mel_hop=hop // 2, griffin_lim_iters=32),
        "mel 64 bands, 8 ms hop, 64 iterations (the previous default)": mel_round_trip(
            config, mel_bins=64, mel_fft=window, mel_hop=hop // 2, griffin_lim_iters=64),
        "mel 128 bands, 16 ms hop, 64 iterations (the default)": mel_round_trip(config),
        "linear, 64 ms window, 8 ms hop, 100 iterations": linear_round_trip(window, hop // 2, 100),
    }
    print(f"{len(waves)} held-out clips of {args.data}, {rate} Hz, {waves.shape[-1] / rate:g} s", file=sys.stderr)
    score_round_trips(variants, waves, labels, rate, args.data, config, work)
    shutil.rmtree(work)


def heldout_clips(data: Path, config: dict, count: int) -> tuple[torch.Tensor, list[str], int]:
    """``count`` clips of the part of ``data`` that ``diffkit evaluate`` holds out (a fixed random
    choice), at the rate and length the data settles: waves ``(count, C, T)``, labels, rate."""
    _, heldout = split_files(find_audio_files(data), data, config["evaluate"]["heldout_fraction"])
    dataset = folder_dataset(data, config["data"], random_crop=False)  # settles the rate and length
    clips = folder_dataset(data, config["data"], random_crop=False, files=heldout, label_names=dataset.label_names)
    order = torch.randperm(len(clips), generator=torch.Generator().manual_seed(0))[:count].tolist()
    waves = torch.stack([fit_length(clips.waveform(i), clips.length) for i in order])
    return waves, [clips.label_names[clips.labels[i]] for i in order], clips.sample_rate


def score_round_trips(variants: dict, waves: torch.Tensor, labels: list[str], rate: int, data: Path, config: dict,
                      work: Path) -> dict[str, dict]:
    """Each variant's round trip of ``waves``, written under ``work`` and scored against ``data``
    as ``diffkit evaluate`` scores samples; a table row is printed per variant as it is done."""
    print("| representation | label acc. (originals) | IS (originals) | fd_classifier (originals) |")
    print("|---|---|---|---|")
    results = {}
    for k, (name, round_trip) in enumerate(variants.items()):
        folder = work / f"variant-{k}"
        folder.mkdir(parents=True)
        with torch.no_grad():
            rebuilt = round_trip(waves).clamp(-1, 1)
        for index, (wave, label) in enumerate(zip(rebuilt, labels)):
            (folder / f"sample-{index:05d}-{label}.wav").write_bytes(encode_audio(wave, rate))
        results[name] = scores = evaluate_audio(folder, data, config)
        print(f"| {name} | " + " | ".join(f"{scores[key]:.2f} ({scores[key + '_heldout']:.2f})"
                                           for key in ("label_accuracy", "is", "fd_classifier")) + " |", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("run", "ceiling"))
    parser.add_argument("--data", type=Path, required=True, help="a folder of labelled recordings")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a setting, as diffkit train takes it")
    parser.add_argument("--work", type=Path, required=True, help="a new folder for the run and the samples")
    parser.add_argument("--clips", type=int, default=200, help="held-out clips sent through each representation")
    args = parser.parse_args()
    args.data = args.data.resolve()
    torch.set_num_threads(1)
    (run if args.what == "run" else ceiling)(args)


if __name__ == "__main__":
    main()
