"""Audio-domain benchmark: training throughput, and the scores reached after the same CPU time by
each ``model.representation`` on the embedded notes and on spoken digits (synthesised with
espeak-ng, several voices, 8 kHz), each beside the score of held-out real clips. One thread.

    OMP_NUM_THREADS=1 python benchmarks/audio.py                # prints a Markdown table
    OMP_NUM_THREADS=1 python benchmarks/audio.py --seconds 60 --takes 24 --samples 32   # quick

The spoken digits need the `espeak-ng` program (Debian: `apt-get install espeak-ng`); without it
that part is skipped. Models train on the reference part of the digits (the split
``diffkit evaluate`` uses), so the held-out clips are unseen by the model and by the classifier.
Every run uses the `cpu` preset (8 kHz, 0.5 s clips); training follows the runner (AdamW,
warm-up, gradient clipping, EMA, condition dropout; no learning-rate decay, as the step count is
not known in advance) in a loop that stops after a fixed amount of process CPU time.
"""

from __future__ import annotations

import argparse
import copy
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffkit.config import resolve_config
from diffkit.generate import SampleRequest, build_diffusion, generate
from diffkit_audio.data import find_audio_files, folder_dataset, split_files
from diffkit_audio.domain import AudioDomain

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-rp")
VARIANTS = ("", "+m3", "+f2", "+f4")


def make_spoken_digits(root: Path, takes: int, sample_rate: int | None = None) -> Path:
    """``root/<digit>_<voice>_<take>.wav``: ten digits, each said ``takes`` times by espeak-ng with
    a different voice, variant, speed (170-250 words/min) and pitch. With ``sample_rate`` the files
    are resampled to it (espeak-ng speaks at 22,050 Hz) and stored as 16-bit PCM."""
    import soundfile
    import torchaudio.functional as AF

    root.mkdir(parents=True, exist_ok=True)
    for label, word in enumerate(DIGITS):
        for take in range(takes):
            voice = VOICES[take % len(VOICES)] + VARIANTS[(take // len(VOICES)) % len(VARIANTS)]
            speed, pitch = 170 + (take * 37) % 81, 25 + (take * 29) % 51
            path = root / f"{label}_{voice.replace('+', '-').replace('_', '-')}_{take}.wav"
            if path.exists():
                continue
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), word],
                           check=True, capture_output=True)
            if sample_rate is not None:
                wave, rate = soundfile.read(str(path), dtype="float32")
                wave = AF.resample(torch.from_numpy(wave), rate, sample_rate).numpy()
                soundfile.write(str(path), wave, sample_rate, subtype="PCM_16")
    return root


def train_for(domain: AudioDomain, config: dict, dataset, cpu_seconds: float, seed: int = 0):
    """Train until ``cpu_seconds`` of process CPU time are spent; returns (EMA model, steps, clips/s)."""
    torch.manual_seed(seed)
    settings = config["train"]
    model = domain.build_model(config)
    domain.fit_data(model, dataset, config)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    diffusion = build_diffusion(domain, config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings["lr"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=settings["batch_size"], shuffle=True, drop_last=True)
    steps, start = 0, time.process_time()
    while time.process_time() - start < cpu_seconds:
        for batch in loader:
            for group in optimiser.param_groups:
                group["lr"] = settings["lr"] * min(1.0, (steps + 1) / settings["warmup_steps"])
            cond = batch["cond"]
            drop = torch.rand(cond.shape) < settings["cond_drop"]
            cond = torch.where(drop, domain.null_cond(cond), cond)
            loss = diffusion.loss(model, batch["x"], cond=cond)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings["grad_clip"])
            optimiser.step()
            steps += 1
            decay = min(settings["ema_decay"], (1 + steps) / (10 + steps))
            with torch.no_grad():
                for average, current in zip(ema.parameters(), model.parameters()):
                    average.lerp_(current, 1 - decay)
            if time.process_time() - start >= cpu_seconds:
                break
    elapsed = time.process_time() - start
    return ema, steps, steps * settings["batch_size"] / elapsed


def score(domain: AudioDomain, model, config: dict, reference: Path | None, folder: Path, n: int) -> dict:
    batch = generate(domain, model, config, SampleRequest(n=n, seed=1))
    domain.write_samples(batch, folder, config)
    return domain.evaluate(folder, reference, config)


def run_set(name: str, domain: AudioDomain, config: dict, dataset, reference: Path | None, work: Path,
            cpu_seconds: float, n: int) -> dict:
    print(f"[{name}] training for {cpu_seconds:g} CPU seconds on {dataset}", file=sys.stderr)
    ema, steps, clips_per_s = train_for(domain, config, dataset, cpu_seconds)
    print(f"[{name}] {steps} steps; sampling and scoring {n} clips", file=sys.stderr)
    scores = score(domain, ema, config, reference, work / f"{name}-samples".replace(" ", "-"), n)
    print(f"[{name}] {scores}", file=sys.stderr)
    parameters = sum(p.numel() for p in ema.parameters())
    return {"set": name, "steps": steps, "clips_per_s": clips_per_s, "parameters": parameters, **scores}


def report(rows: list[dict], args, seconds_used: float) -> str:
    lines = [
        "## Equal CPU time: mel against waveform",
        "",
        "Training throughput and sample quality after the same CPU time, `cpu` preset (8 kHz, 0.5 s "
        "clips, batch 16) with `model.representation` set as shown, one thread. Each score is given beside the same "
        "score for held-out real clips (as many as samples): that is what a perfect model would reach.",
        "",
        f"Reproduce: `OMP_NUM_THREADS=1 python benchmarks/audio.py --seconds {args.seconds:g} --samples {args.samples} "
        f"--takes {args.takes}`" + (f" `--digits {args.digits}`" if args.digits else ""),
        "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread; total wall time {seconds_used / 60:.1f} min.",
        "",
        "| data | representation | params | CPU s | steps | clips/s | fd_logmel (held-out) | fd_classifier (held-out) "
        "| IS (held-out) | label acc. (held-out) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        trained = "steps" in row
        cells = [row["set"], row.get("representation", "-"),
                 f"{row['parameters'] / 1e6:.1f} M" if trained else "-", f"{args.seconds:g}" if trained else "-",
                 str(row.get("steps", "-")), f"{row['clips_per_s']:.1f}" if trained else "-"]
        for key in ("fd_logmel", "fd_classifier", "is", "label_accuracy"):
            cells.append(f"{row.get(key, float('nan')):.2f} ({row.get(key + '_heldout', float('nan')):.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "`shipped weights` are the plugin's own, sampled with their settings and scored the same way; they "
        "are not part of the equal-time comparison. `fd_logmel` weighs every log-mel band of every frame alike, "
        "so on the synthetic notes, whose background is digital silence, a faint hiss counts as much as a wrong "
        "note; the classifier scores (trained with noise augmentation) follow what is played or said. Label "
        "accuracy is the classifier finding the label each sample was generated for.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="CPU seconds of training per run")
    parser.add_argument("--samples", type=int, default=100, help="clips generated and scored per run")
    parser.add_argument("--takes", type=int, default=270, help="spoken takes per digit")
    parser.add_argument("--digits", type=Path, default=None,
                        help="use (or make, if missing) the spoken digits in this folder instead of a temporary one")
    parser.add_argument("--representations", default="mel,waveform", help="comma-separated model.representation values")
    parser.add_argument("--sets", default="notes,digits", help="comma-separated: notes, digits")
    parser.add_argument("--write", type=Path, default=None, help="also write the table (Markdown) to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    began = time.time()
    domain = AudioDomain()
    representations = [name.strip() for name in args.representations.split(",")]
    sets = [name.strip() for name in args.sets.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="diffkit-audio-bench-") as temporary:
        work = Path(temporary)
        for representation in representations:
            chosen = [f"model.representation={representation}"]
            if "notes" in sets:
                config = resolve_config(domain, preset="cpu", sets=chosen)
                row = run_set(f"notes {representation}", domain, config, domain.build_dataset(config), None, work,
                              args.seconds, args.samples)
                rows.append({**row, "set": "notes (embedded)", "representation": representation})
            if "digits" in sets and (args.digits is not None or shutil.which("espeak-ng")):
                digits = args.digits or work / "digits"
                if not digits.is_dir():
                    make_spoken_digits(digits, args.takes, sample_rate=8000)
                config = resolve_config(domain, preset="cpu", sets=["data.labels=pattern", *chosen])
                train_files, _ = split_files(find_audio_files(digits), digits, config["evaluate"]["heldout_fraction"])
                dataset = domain.build_dataset(config, str(digits))
                dataset = subset_of(dataset, train_files, digits, config)
                row = run_set(f"digits {representation}", domain, config, dataset, digits, work, args.seconds,
                              args.samples)
                rows.append({**row, "set": "spoken digits (espeak-ng)", "representation": representation})
            elif "digits" in sets:
                print("espeak-ng not found: skipping the spoken digits", file=sys.stderr)
        weights = domain.pretrained()
        if weights is not None and "notes" in sets:
            from diffkit.loading import load_for_sampling

            model, shipped_config = load_for_sampling(domain, weights)
            scores = score(domain, model, shipped_config, None, work / "shipped-samples", args.samples)
            rows.append({"set": "shipped weights", "representation": shipped_config["model"]["representation"],
                         **scores})
    text = report(rows, args, time.time() - began)
    print(text)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)


def subset_of(dataset, files: list[Path], root: Path, config: dict):
    """The training part of a folder (the split the evaluation keeps as reference), read like
    ``build_dataset`` reads the whole folder (same label order, same representation)."""
    part = folder_dataset(root, config["data"], random_crop=True, files=files, label_names=dataset.label_names)
    part.scale, part.transform = dataset.scale, dataset.transform
    return part


if __name__ == "__main__":
    main()
