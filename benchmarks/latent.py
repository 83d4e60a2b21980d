"""The latent stage measured the way a user runs it: the audio domain's learned decoder against
Griffin-Lim on real recordings, and pixel-space against latent diffusion at equal time.

    python benchmarks/latent.py audio --data ../shared/data/fsdd/recordings --set data.labels=pattern \
        --work /tmp/latent-audio --steps 4000
    python benchmarks/latent.py pictures --count 5000 --out /tmp/colour5k
    python benchmarks/latent.py images --data /tmp/colour5k --work /tmp/latent-bench --minutes 15 --samples 500 \
        --parallel

``audio`` trains the waveform autoencoder (``diffkit train --domain audio --stage autoencoder
--set model.representation=waveform``: the fixed 128-band log-mel front end and the learned
decoder) for ``--steps`` on the part of the folder that ``diffkit evaluate`` keeps as its
reference, then sends ``--clips`` held-out clips through the front end and the learned decoder,
and through the same mel and the domain's Griffin-Lim, and scores each set as ``diffkit
evaluate`` scores samples, beside the original clips (benchmarks/audio_real.py's ceiling).

``pictures`` writes a folder of 64x64 colour pictures, one folder per digit: the 8x8 digits of
scikit-learn's set, enlarged to 24 to 40 pixels, drawn in a random colour (the opposite of the
background's mean where the two are close) at a random place on a background of two other random
colours mixed by a random linear gradient.

``images`` trains, on the same folder of 64x64 colour pictures and with the same U-Net settings
(``--set``), for the same time: ``--minutes`` of CPU time of the training process, each with
one thread (on a machine to itself that is the same wall time; on a shared one CPU time is what
its load does not change):

* ``pixel``: ``diffkit train --domain image`` on the pictures themselves;
* ``latent``: ``diffkit train --domain image --stage autoencoder`` for ``--autoencoder-share`` of
  the time, then ``diffkit train --domain image --autoencoder AE`` for the rest.

With ``--parallel`` the two arms run at once, a process each (on a machine with two free cores).
Each run trains 1.25 times the steps its budget should take at its CPU time per step, measured
first in a short run of the same command (from the fifth logged step to the last), with 25
checkpoints on the way, and keeps the last checkpoint the process reached within its budget (the
CPU time of a step moves with the machine's load). The latent arm's diffusion gets the budget
less what its kept autoencoder took. For every run it reports the kept step and the CPU time it
had taken, the CPU time per step, the peak resident memory of the process (``VmHWM``); then
each model draws ``--samples`` pictures (``diffkit sample``, the config's sampler and steps; CPU
time a picture), and ``diffkit evaluate`` scores them against the folder: the Fréchet distance in the
features of the image domain's classifier (trained once on the folder before either arm starts,
cached; its held-out accuracy is reported). ``--samples`` pictures of the folder itself, scored
the same way, give the floor of that distance.

Timings depend on the machine's load; the report says what each number is.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: The denoiser of both arms (the latent one on 16x16 latents, the pixel one on 64x64 pictures).
UNET = ["model.base_channels=16", "model.channel_mults=[1,2,2]", "model.blocks_per_level=1",
        "model.attention_resolutions=[]", "model.groups=8"]
#: The autoencoder: 4 latent channels at a quarter of the side (64x64x3 -> 4x16x16).
AUTOENCODER = ["autoencoder.base_channels=16", "autoencoder.channel_mults=[1,2,2]", "autoencoder.latent_channels=4"]
COMMON = ["data.image_size=64", "data.channels=3", "train.batch_size=32", "train.warmup_steps=50",
          "train.preview_every=0", "train.log_every=1"]
CALIBRATION_STEPS = 15
#: A run trains this many times the steps its calibration says fit the budget, checkpointing this
#: many times, and the last checkpoint within the budget is kept.
OVERSHOOT, CHECKPOINTS = 1.25, 25


@dataclass
class Run:
    """A finished ``diffkit`` process: its output, wall and CPU seconds, peak resident bytes, and
    the CPU seconds it had used when each logged step appeared in ``metrics.jsonl``."""

    out: str
    wall: float
    cpu: float
    peak: int
    steps: dict[int, float] = field(default_factory=dict)

    def cpu_per_step(self) -> float:
        """CPU seconds a step, from the fifth logged step to the last."""
        (first, began), (last, ended) = min(self.steps.items()), max(self.steps.items())
        return (ended - began) / max(1, last - first)


def diffkit(*arguments: str, metrics: Path | None = None) -> Run:
    """Run ``diffkit ARGUMENTS`` in a fresh process with one thread, watching its peak memory, its
    CPU time and (with ``metrics``) the steps it logs."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    began = time.time()
    process = subprocess.Popen([sys.executable, "-m", "diffkit", *arguments], env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run, logged = Run("", 0.0, 0.0, 0), 0
    while process.poll() is None:
        run.peak, cpu = max(run.peak, resident_peak(process.pid)), cpu_seconds(process.pid) or run.cpu
        run.cpu = max(run.cpu, cpu)
        logged = record_steps(run, metrics, logged)
        time.sleep(0.2)
    record_steps(run, metrics, logged)  # steps logged after the last look, at the final CPU time
    run.out, err = process.communicate()
    if process.returncode:
        raise SystemExit(f"diffkit {' '.join(arguments)} failed:\n{err[-3000:]}")
    run.wall = time.time() - began
    return run


def record_steps(run: Run, metrics: Path | None, logged: int) -> int:
    """Note the run's CPU time against each step logged in ``metrics`` after its first ``logged``
    lines (from the fifth step on); how many lines it holds now."""
    lines = metrics.read_text().splitlines() if metrics is not None and metrics.is_file() else []
    for line in lines[logged:]:
        step = json.loads(line)["step"]
        if step >= 5:
            run.steps[step] = run.cpu
    return len(lines)


def resident_peak(pid: int) -> int:
    """``VmHWM`` of a process (its peak resident memory so far) in bytes; 0 once it has ended."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process so far (0 once it has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sets(settings: list[str]) -> list[str]:
    return [part for setting in settings for part in ("--set", setting)]


def train(name: str, work: Path, data: Path, settings: list[str], seconds: float, extra: list[str]) -> dict:
    """Calibrate, train for :data:`OVERSHOOT` times the steps that ``seconds`` of CPU time should
    take, checkpointing :data:`CHECKPOINTS` times, and keep the last checkpoint the process reached
    within ``seconds`` (a step's CPU time moves with the machine's load, so a step count alone
    misses the budget); what that checkpoint took."""
    probe = work / f"{name}-probe"
    command = ["train", "--domain", "image", "--data", str(data), *extra, *sets(settings), "--no-progress"]
    calibration = diffkit(*command, "--steps", str(CALIBRATION_STEPS), "--set", "train.checkpoint_every=0",
                          "--out", str(probe), metrics=probe / "metrics.jsonl")
    shutil.rmtree(probe)
    steps = max(CALIBRATION_STEPS, round(OVERSHOOT * seconds / calibration.cpu_per_step()))
    every = max(1, steps // CHECKPOINTS)
    run = diffkit(*command, "--steps", str(steps), "--set", f"train.checkpoint_every={every}", "--set",
                  "train.keep_checkpoints=0", "--out", str(work / name), metrics=work / name / "metrics.jsonl")
    saved = [step for step in run.steps if step % every == 0 or step == steps]
    within = [step for step in saved if run.steps[step] <= seconds]
    kept = max(within) if within else min(saved)
    report = {"steps": kept, "checkpoint": str(work / name / "checkpoints" / f"step_{kept:08d}.pt"),
              "cpu_s": run.steps[kept], "cpu_s_per_step": run.cpu_per_step(),
              "calibration_cpu_s_per_step": calibration.cpu_per_step(), "trained_steps": steps,
              "trained_cpu_s": run.cpu, "wall_s": run.wall, "peak_bytes": run.peak}
    print(f"{name}: {json.dumps(report)}", file=sys.stderr, flush=True)
    return report


def sample_and_score(name: str, checkpoint: str, work: Path, data: Path, count: int) -> dict:
    samples = work / f"{name}-samples"
    run = diffkit("sample", "--checkpoint", checkpoint, "-n", str(count), "--seed", "1", "--out", str(samples),
                  "--no-progress")
    report = {"sampling_cpu_s_per_picture": run.cpu / count, "sampling_wall_s": run.wall,
              "sampling_peak_bytes": run.peak, **score(samples, data, work)}
    print(f"{name}: {json.dumps(report)}", file=sys.stderr, flush=True)
    return report


def score(samples: Path, data: Path, work: Path) -> dict:
    """``diffkit evaluate``'s scores of a folder of pictures against ``data`` (its classifier is
    cached under ``work/cache``)."""
    run = diffkit("evaluate", "--domain", "image", "--samples", str(samples), "--reference", str(data),
                  *sets([*COMMON, f"data.cache_dir={work / 'cache'}"]), "--json")
    return json.loads(run.out)


def real_floor(work: Path, data: Path, count: int) -> dict:
    """The scores of ``count`` pictures of the folder itself (every n-th file): the floor of the
    Fréchet distance, and the held-out accuracy of the classifier whose features it uses."""
    files = sorted(data.rglob("*.png"))
    folder = work / "real"
    folder.mkdir()
    for index, path in enumerate(files[::max(1, len(files) // count)][:count]):
        shutil.copy(path, folder / f"sample-{index:05d}.png")
    scores = score(folder, data, work)
    return {"frechet_distance": scores["frechet_distance"], "classifier_accuracy": scores["classifier_accuracy"]}


def images(args) -> None:
    work, data = args.work, args.data.resolve()
    if work.exists():
        raise SystemExit(f"{work} exists; choose a new --work folder")
    work.mkdir(parents=True)
    budget = args.minutes * 60
    unet, common = [*UNET, *args.sets], [*COMMON, f"data.cache_dir={work / 'cache'}"]
    report = {"minutes": args.minutes, "samples": args.samples, "settings": unet, "autoencoder": AUTOENCODER}
    share = args.autoencoder_share

    def pixel_arm() -> dict:
        return {"pixel": train("pixel", work, data, [*common, *unet], budget, [])}

    def latent_arm() -> dict:
        autoencoder = train("autoencoder", work, data, [*common, *AUTOENCODER], share * budget,
                            ["--stage", "autoencoder"])
        latent = train("latent", work, data, [*common, *unet], budget - autoencoder["cpu_s"],
                       ["--autoencoder", autoencoder["checkpoint"]])
        return {"autoencoder": autoencoder, "latent": latent}

    # The classifier of the Fréchet distance is trained once, before either arm can ask for it.
    report["real"] = real_floor(work, data, args.samples)
    arms = (pixel_arm, latent_arm)
    with concurrent.futures.ThreadPoolExecutor(len(arms) if args.parallel else 1) as pool:
        for result in pool.map(lambda arm: arm(), arms):
            report.update(result)
    with concurrent.futures.ThreadPoolExecutor(2 if args.parallel else 1) as pool:
        names = ("pixel", "latent")
        scores = pool.map(lambda name: sample_and_score(name, report[name]["checkpoint"], work, data, args.samples),
                          names)
        for name, result in zip(names, scores):
            report[name].update(result)
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    side_by_side([work / "pixel-samples", work / "latent-samples"], work / "pixel-vs-latent.png")
    print(json.dumps(report, indent=2))


def side_by_side(folders: list[Path], out: Path, count: int = 24, columns: int = 12) -> None:
    """The first ``count`` samples of each folder as one picture: each folder's in ``count /
    columns`` rows, one folder under the other, 2 pixels apart."""
    import numpy as np
    from PIL import Image

    rows = []
    for folder in folders:
        pictures = [np.asarray(Image.open(path).convert("RGB")) for path in sorted(folder.glob("sample-*.png"))[:count]]
        height, width, _ = pictures[0].shape
        padded = [np.pad(picture, ((1, 1), (1, 1), (0, 0)), constant_values=255) for picture in pictures]
        rows += [np.concatenate(padded[start:start + columns], axis=1) for start in range(0, count, columns)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)


def audio(args) -> None:
    from audio_real import heldout_clips, link_reference_part, mel_round_trip, score_round_trips
    from diffkit.config import resolve_config
    from diffkit.latent import read_autoencoder
    from diffkit.loading import load_weights
    from diffkit_audio.domain import AudioDomain

    work, data = args.work, args.data.resolve()
    if work.exists():
        raise SystemExit(f"{work} exists; choose a new --work folder")
    settings = [*args.sets, "model.representation=waveform", "train.preview_every=0", "train.log_every=10",
                f"data.cache_dir={work / 'cache'}"]
    config = resolve_config(AudioDomain(), preset="cpu", sets=settings)
    count = link_reference_part(data, work / "train", config["evaluate"]["heldout_fraction"])
    print(f"training the decoder on the reference part of {data}: {count} files", file=sys.stderr, flush=True)
    run = diffkit("train", "--domain", "audio", "--data", str(work / "train"), "--stage", "autoencoder",
                  "--steps", str(args.steps), *sets(settings), "--no-progress", "--out", str(work / "decoder"),
                  metrics=work / "decoder" / "metrics.jsonl")
    training = {"steps": args.steps, "cpu_s": run.cpu, "wall_s": run.wall, "peak_bytes": run.peak,
                "cpu_s_per_step": run.cpu_per_step()}
    print(f"decoder: {json.dumps(training)}", file=sys.stderr, flush=True)

    domain = AudioDomain()
    _, trained, weights = read_autoencoder(domain, work / "decoder", "--autoencoder")
    decoder = domain.build_autoencoder(trained, tuple(trained["autoencoder"]["state_shape"]))
    load_weights(decoder, weights, "the trained decoder")
    decoder.eval()
    waves, labels, rate = heldout_clips(data, trained, args.clips)
    variants = {
        "original clips": lambda w: w,
        "mel 128 bands, 16 ms hop, 64 Griffin-Lim iterations (the default)": mel_round_trip(trained),
        "mel 128 bands, 16 ms hop, 100 Griffin-Lim iterations": mel_round_trip(trained, griffin_lim_iters=100),
        f"mel 128 bands, 16 ms hop, learned decoder ({args.steps} steps)": decoder,
    }
    print(f"{len(waves)} held-out clips, {rate} Hz, {waves.shape[-1] / rate:g} s", file=sys.stderr, flush=True)
    scores = score_round_trips(variants, waves, labels, rate, data, trained, work / "clips")
    (work / "report.json").write_text(json.dumps({"decoder": training, "scores": scores}, indent=2) + "\n")


def pictures(args) -> None:
    """The colour set of the module docstring, as PNG files under ``args.out/<digit>/``."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image
    from sklearn.datasets import load_digits

    if args.out.exists():
        raise SystemExit(f"{args.out} exists; choose a new --out folder")
    digits = load_digits()
    ink_of = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16  # (N, 1, 8, 8) in [0, 1]
    generator = torch.Generator().manual_seed(args.seed)
    side = 64
    for index in range(args.count):
        k = int(torch.randint(len(ink_of), (1,), generator=generator))
        size = int(torch.randint(24, 41, (1,), generator=generator))
        top, left = (int(v) for v in torch.randint(0, side - size + 1, (2,), generator=generator))
        ink = torch.zeros(1, side, side)
        ink[:, top:top + size, left:left + size] = F.interpolate(ink_of[k:k + 1], size=(size, size), mode="bilinear",
                                                                  align_corners=False)[0].clamp(0, 1)
        colour, first, second = torch.rand(3, 3, 1, 1, generator=generator)
        angle = float(torch.rand((), generator=generator)) * 2 * math.pi
        grid = torch.linspace(-1, 1, side)
        ramp = (math.cos(angle) * grid[None, :] + math.sin(angle) * grid[:, None]).add(1).div(2)  # (64, 64) in [0, 1]
        paper = first * (1 - ramp) + second * ramp
        if float((colour - (first + second) / 2).norm()) < 0.6:  # too close to the paper: its opposite instead
            colour = 1 - (first + second) / 2
        picture = paper * (1 - ink) + colour * ink
        folder = args.out / str(int(digits.target[k]))
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (picture.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:05d}.png")
    print(f"wrote {args.count} pictures of {side}x{side} to {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("audio", help="the learned audio decoder against Griffin-Lim on real recordings")
    command.add_argument("--data", type=Path, required=True, help="a folder of labelled recordings")
    command.add_argument("--work", type=Path, required=True, help="a new folder for the decoder and the clips")
    command.add_argument("--steps", type=int, default=4000, help="training steps of the decoder")
    command.add_argument("--clips", type=int, default=200, help="held-out clips sent through each decoder")
    command.add_argument("--set", dest="sets", action="append", default=[], help="a setting, as diffkit train takes it")
    command = commands.add_parser("images", help="pixel-space against latent diffusion on a folder of pictures")
    command.add_argument("--data", type=Path, required=True, help="a folder of 64x64 pictures, one folder per class")
    command.add_argument("--work", type=Path, required=True, help="a new folder for the runs and samples")
    command.add_argument("--minutes", type=float, default=12.0, help="the CPU time of each arm's training")
    command.add_argument("--autoencoder-share", type=float, default=1 / 3,
                         help="the share of the latent arm's time that trains its autoencoder")
    command.add_argument("--samples", type=int, default=500, help="pictures drawn and scored per model")
    command.add_argument("--set", dest="sets", action="append", default=[], help="a U-Net setting for both arms")
    command.add_argument("--parallel", action="store_true",
                         help="run the two arms at once, one process each (a machine with two free cores)")
    command = commands.add_parser("pictures", help="write a folder of 64x64 colour digits")
    command.add_argument("--count", type=int, default=5000, help="pictures to write")
    command.add_argument("--out", type=Path, required=True, help="a new folder")
    command.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    {"audio": audio, "images": images, "pictures": pictures}[args.command](args)


if __name__ == "__main__":
    main()
