"""Messy sets of real-world-like spoken digits, made deterministically from a seed, and a report of
how messy a set of clips is.

    python benchmarks/audio_sets.py messy-digits /work/data/messy-digits [--count 3000] [--seed 0]
    python benchmarks/audio_sets.py stats /work/data/messy-digits      # any folder of WAV files

``messy-digits`` writes a set in the layout of Google Speech Commands: folders ``zero`` ...
``nine`` (the labels), files ``<speaker>_nohash_<n>.wav`` (the n-th take of that word by that
speaker, so a speaker-disjoint split is possible), 16 kHz mono 16-bit, 1.0 s long (a few shorter)
with the word at a random offset. Half of the words are real recordings from the Free Spoken Digit
Dataset (``--fsdd``; resampled, most of them pitch- and tempo-shifted with sox; the speaker id stays
the real speaker, ``fsdd-<name>``), half are spoken by espeak-ng in ``--voices`` voices (English
accents x voice variants, each with its own pitch and speed). Every clip is then degraded as real
recordings are: sometimes room reverberation, white/pink/brown/blue noise and sometimes mains hum at
5-40 dB SNR, a random microphone response (high-pass, low-pass, peaking EQ), a peak level of -35 to
-3 dBFS, sometimes a DC offset, sometimes clipping; an FSDD recording's own background noise goes on
over the whole clip. Needs the ``espeak-ng`` and ``sox`` programs
(Debian: ``apt-get install espeak-ng sox``). The output folder must be new or empty; the set is
built beside it and moved into place when complete. ``stats`` prints durations, rates, levels,
estimated SNRs and speakers of any folder of WAV files (FSDD's ``{digit}_{speaker}_{take}.wav``
names included).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RATE = 16000
FSDD = Path("/work/shared/data/fsdd/recordings")
# espeak-ng's English voices that need no MBROLA and take voice variants ("en-gb" ignores them,
# "en" is the same British voice and does not).
ACCENTS = ("en", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us", "en-us-nyc",
           "en-029")
MACHINE_VARIANTS = re.compile(r"robo|demonic|announcer|^fast$", re.IGNORECASE)
NOISE_EXPONENTS = {"white": 0.0, "pink": -1.0, "brown": -2.0, "blue": 1.0}  # power spectrum ~ f^exponent


def require_programs(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not found: install with `apt-get install -y {' '.join(missing)}`")


def espeak_variants() -> list[str]:
    """The voice variants espeak-ng has (``m3``, ``f2``, ``croak`` ...), without the machine-like
    ones and without those that sound the same as the plain voice or an earlier variant (in
    espeak-ng 1.51 ``klatt`` and ``klatt6`` sound as ``caleb``)."""
    listing = subprocess.run(["espeak-ng", "--voices=variant"], check=True, capture_output=True, text=True).stdout
    # The columns are padded with several spaces; a file name can hold one ("Mr serious").
    names = {match.group(1) for match in re.finditer(r"!v/(.+?)(?: {2,}|$)", listing, re.MULTILINE)}
    # An unknown variant falls back silently to the plain voice, so compare what is spoken.
    def spoken(voice: str) -> bytes:
        return subprocess.run(["espeak-ng", "--stdout", "-v", voice, "seven"], check=True, capture_output=True).stdout

    variants, heard = [], {spoken("en-us")}
    for name in sorted(name for name in names if not MACHINE_VARIANTS.search(name)):
        sound = spoken(f"en-us+{name}")
        if sound not in heard:
            heard.add(sound)
            variants.append(name)
    return variants


def espeak_speakers(count: int, rng: np.random.Generator) -> list[dict]:
    """``count`` distinct (accent, variant) voices, each with its own pitch (0-99) and speed (words/min)."""
    variants = espeak_variants()
    voices = [(accent, variant) for accent in ACCENTS for variant in variants]
    if count > len(voices):
        raise ValueError(f"--voices {count}: espeak-ng has only {len(voices)} voices without MBROLA")
    chosen = [voices[i] for i in rng.choice(len(voices), count, replace=False)]
    return [{"id": f"espeak-{accent}-{variant.lower().replace(' ', '-')}", "voice": f"{accent}+{variant}",
             "pitch": rng.uniform(10, 90), "speed": rng.uniform(100, 200)} for accent, variant in chosen]


def sox_16k(source: str, effects: list[str], stdin: bytes | None = None) -> np.ndarray:
    """A file (or ``-`` with WAV bytes on stdin) through sox ``effects``, as 16 kHz mono float32."""
    command = ["sox", "-D", *(["-t", "wav"] if stdin is not None else []), source,
               "-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1", "-", *effects, "rate", str(RATE)]
    return np.frombuffer(subprocess.run(command, input=stdin, check=True, capture_output=True).stdout, np.float32)


def fsdd_word(path: Path, rng: np.random.Generator) -> np.ndarray:
    """A real recording; three in four are shifted by up to 3 semitones and sped up or slowed down."""
    shift = rng.random() < 0.75
    cents, tempo = rng.uniform(-300, 300), rng.uniform(0.85, 1.2)
    return sox_16k(str(path), ["pitch", f"{cents:.0f}", "tempo", f"{tempo:.3f}"] if shift else [])


def espeak_word(word: str, speaker: dict, rng: np.random.Generator) -> np.ndarray:
    """The word in the speaker's voice, its pitch and speed varied a little from take to take."""
    pitch = int(np.clip(speaker["pitch"] + rng.uniform(-8, 8), 0, 99))
    speed = int(speaker["speed"] + rng.uniform(-15, 15))
    wav = subprocess.run(["espeak-ng", "--stdout", "-v", speaker["voice"], "-p", str(pitch), "-s", str(speed), word],
                         check=True, capture_output=True).stdout
    return sox_16k("-", [], stdin=wav)


def frame_powers(wave: np.ndarray, size: int) -> np.ndarray:
    """Mean square of each whole frame of ``size`` samples."""
    return (wave[: len(wave) // size * size].astype(np.float64).reshape(-1, size) ** 2).mean(axis=1)


def trim_silence(wave: np.ndarray, floor_db: float = -45.0) -> np.ndarray:
    """The part between the first and last 10 ms frame within ``floor_db`` of the loudest frame."""
    level = 10 * np.log10(frame_powers(wave, RATE // 100) + 1e-12)
    loud = np.flatnonzero(level > level.max() + floor_db)
    return wave[loud[0] * RATE // 100:(loud[-1] + 1) * RATE // 100]


def faded(wave: np.ndarray, samples: int = RATE // 200) -> np.ndarray:
    """A copy with raised-cosine fades of ``samples`` at both ends, so that no edge clicks."""
    ramp = np.sin(np.linspace(0, np.pi / 2, min(samples, len(wave) // 2))) ** 2
    wave = wave.copy()
    wave[:len(ramp)] *= ramp
    wave[len(wave) - len(ramp):] *= ramp[::-1]
    return wave


def fsdd_noise_shapes(fsdd: Path) -> dict[str, np.ndarray]:
    """Per FSDD speaker id (``fsdd-<name>``), the power spectrum of their background noise (mean 1, on the frequencies
    of a 20 ms frame at 16 kHz): the mean over their recordings of each one's quietest 20 ms.
    The recordings are cut close to the word; the speakers recorded with different equipment."""
    size, totals = RATE // 50, {}
    for path in sorted(fsdd.glob("*_*_*.wav")):
        wave, rate = soundfile.read(str(path), dtype="float64")
        frames = np.lib.stride_tricks.sliding_window_view(scipy.signal.resample_poly(wave, RATE, rate), size)
        quietest = frames[:: size // 2][(frames[:: size // 2] ** 2).mean(axis=1).argmin()]
        periodogram = np.abs(np.fft.rfft(quietest * np.hanning(size))) ** 2
        speaker = f"fsdd-{path.stem.split('_')[1]}"
        totals[speaker] = totals.get(speaker, 0) + periodogram / max(periodogram.mean(), 1e-30)
    return {speaker: total / total.mean() for speaker, total in totals.items()}


def shaped_noise(length: int, power_spectrum, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of unit RMS whose power spectrum follows ``power_spectrum(frequency in Hz)``."""
    frequency = np.fft.rfftfreq(length, 1 / RATE)
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(length)) * np.sqrt(power_spectrum(frequency)), length)
    return noise / np.sqrt(np.mean(noise ** 2))


def coloured_noise(length: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise whose power spectrum goes as f^exponent (from 1 Hz, so brown noise stays finite)."""
    return shaped_noise(length, lambda frequency: np.maximum(frequency, 1.0) ** exponent, rng)


def hum(length: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum: 50 or 60 Hz and its first harmonics with random strengths, unit RMS."""
    time = np.arange(length) / RATE
    mains = rng.choice([50.0, 60.0])
    wave = sum(rng.uniform(0, 1) / k * np.sin(2 * np.pi * k * mains * time + rng.uniform(0, 2 * np.pi))
               for k in range(1, 6))
    return wave / np.sqrt(np.mean(wave ** 2))


def peaking_eq(centre: float, gain_db: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    """A peaking-EQ biquad (Bristow-Johnson, "Cookbook formulae for audio EQ biquad filter coefficients")."""
    amplitude, omega = 10 ** (gain_db / 40), 2 * np.pi * centre / RATE
    alpha = np.sin(omega) / (2 * q)
    b = [1 + alpha * amplitude, -2 * np.cos(omega), 1 - alpha * amplitude]
    a = [1 + alpha / amplitude, -2 * np.cos(omega), 1 - alpha / amplitude]
    return np.array(b) / a[0], np.array(a) / a[0]


def microphone(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One or two of: a high-pass (60-400 Hz), a low-pass (2.5-7 kHz), a peaking EQ (+-12 dB)."""
    for kind in rng.choice(["highpass", "lowpass", "peak"], size=rng.integers(1, 3), replace=False):
        if kind == "peak":
            b, a = peaking_eq(rng.uniform(200, 5000), rng.uniform(-12, 12), rng.uniform(0.5, 4))
        else:
            cutoff = rng.uniform(60, 400) if kind == "highpass" else rng.uniform(2500, 7000)
            b, a = scipy.signal.butter(int(rng.integers(1, 5)), cutoff, btype=kind, fs=RATE)
        wave = scipy.signal.lfilter(b, a, wave)
    return wave


def reverberate(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A room: the direct sound plus exponentially decaying noise (RT60 0.1-0.6 s)."""
    rt60 = rng.uniform(0.1, 0.6)
    time = np.arange(int(rt60 * RATE)) / RATE
    response = rng.standard_normal(len(time)) * 10 ** (-3 * time / rt60) * rng.uniform(0.05, 0.3)
    response[0] = 1.0
    return scipy.signal.fftconvolve(wave, response)[: len(wave) + len(response) // 4]


def degrade(word: np.ndarray, rng: np.random.Generator, noise_shape: np.ndarray | None = None,
            length: int = RATE) -> np.ndarray:
    """The word at a random offset in a clip of ``length`` samples (some clips shorter), recorded badly.

    A recording with background noise of spectrum ``noise_shape`` (see :func:`fsdd_noise_shapes`)
    has it continued over the whole clip, at the level of its quietest 20 ms, so that the noise
    does not start and stop with the word."""
    word = word.astype(np.float64)
    if rng.random() < 0.05:  # real corpora hold a few clips cut short
        length = int(rng.uniform(min(len(word) + 800, length), length))
    background = np.zeros(length)
    if noise_shape is not None:
        frequencies = np.fft.rfftfreq(RATE // 50, 1 / RATE)
        background = shaped_noise(length, lambda f: np.interp(f, frequencies, noise_shape), rng) \
            * np.sqrt(frame_powers(word, RATE // 50).min())
    if rng.random() < 0.3:
        word = reverberate(word, rng)
    word = faded(word[:length])  # the rare word longer than a clip is cut, as in real corpora
    clip = np.zeros(length)
    offset = int(rng.integers(0, length - len(word) + 1))
    clip[offset:offset + len(word)] = word
    clip += background
    noise = coloured_noise(length, NOISE_EXPONENTS[rng.choice(list(NOISE_EXPONENTS))], rng)
    if rng.random() < 0.3:
        noise = noise + rng.uniform(0.3, 3) * hum(length, rng)
    snr_db = rng.uniform(5, 40)
    noise *= np.sqrt(np.mean(word ** 2) / 10 ** (snr_db / 10) / np.mean(noise ** 2))
    clip = microphone(clip + noise, rng)
    clip *= 10 ** (rng.uniform(-35, -3) / 20) / np.abs(clip).max()
    if rng.random() < 0.2:
        clip += rng.choice([-1, 1]) * 10 ** (rng.uniform(-60, -35) / 20)
    if rng.random() < 0.04:  # driven into the converter's limits
        clip *= 10 ** (rng.uniform(1, 10) / 20) / np.abs(clip).max()
    return np.clip(clip, -1, 1)


def plan_messy_digits(count: int, seed: int, fsdd: Path, fsdd_share: float, voices: int) -> list[dict]:
    """What each clip is: its label, speaker, take number and source, balanced over the labels."""
    rng = np.random.default_rng(seed)
    speakers = espeak_speakers(voices, rng)
    plan, takes = [], Counter()
    for label, word in enumerate(DIGITS):
        per_label = count // len(DIGITS) + (label < count % len(DIGITS))
        real = round(per_label * fsdd_share)
        recordings = sorted(fsdd.glob(f"{label}_*_*.wav"))
        if real and not recordings:
            raise FileNotFoundError(f"no FSDD recordings {label}_<speaker>_<take>.wav in {str(fsdd)!r}")
        picked = rng.choice(len(recordings), real, replace=real > len(recordings)) if real else []
        sources = [("fsdd", recordings[i]) for i in picked]
        first = int(rng.integers(len(speakers)))  # each voice says each word about equally often
        sources += [("espeak", speakers[(first + i) % len(speakers)]) for i in range(per_label - real)]
        for kind, source in sources:
            speaker = f"fsdd-{source.stem.split('_')[1]}" if kind == "fsdd" else source["id"]
            plan.append({"word": word, "speaker": speaker, "take": takes[speaker, word], "kind": kind,
                         "source": source})
            takes[speaker, word] += 1
    return plan


def make_messy_digits(out: Path, count: int = 3000, seed: int = 0, fsdd: Path = FSDD, fsdd_share: float = 0.5,
                      voices: int = 150) -> Path:
    """Write the set to ``out`` (new or empty); see the module docstring."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SystemExit(f"{out} exists and is not an empty folder; a set is never written over files")
    if not 0 <= fsdd_share <= 1:
        raise SystemExit(f"--fsdd-share {fsdd_share}: expected a fraction between 0 and 1")
    if count < len(DIGITS) or voices < 1:
        raise SystemExit(f"--count {count}, --voices {voices}: expected at least {len(DIGITS)} clips and one voice")
    require_programs("espeak-ng", "sox")
    plan = plan_messy_digits(count, seed, fsdd, fsdd_share, voices)
    noise_shapes = fsdd_noise_shapes(fsdd) if fsdd_share > 0 else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for index, item in enumerate(plan):
            rng = np.random.default_rng([seed, index])  # a clip does not depend on the clips before it
            word = fsdd_word(item["source"], rng) if item["kind"] == "fsdd" else \
                espeak_word(item["word"], item["source"], rng)
            path = building / item["word"] / f"{item['speaker']}_nohash_{item['take']}.wav"
            path.parent.mkdir(exist_ok=True)
            clip = degrade(trim_silence(word), rng, noise_shapes.get(item["speaker"]))
            soundfile.write(str(path), clip, RATE, subtype="PCM_16")
            if (index + 1) % 500 == 0:
                print(f"{index + 1}/{len(plan)} clips", file=sys.stderr)
        (building / "README.md").write_text(readme(count, seed, fsdd_share, voices))
        if out.exists():
            out.rmdir()  # empty, checked above; rmdir refuses if something appeared since
        os.rename(building, out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return out


def program_version(name: str) -> str:
    output = subprocess.run([name, "--version"], check=True, capture_output=True, text=True).stdout
    return f"{name} {re.search(r'[0-9]+(?:[.][0-9]+)+', output).group()}"


def readme(count: int, seed: int, fsdd_share: float, voices: int) -> str:
    versions = [program_version(name) for name in ("espeak-ng", "sox")]
    return (f"# messy-digits\n\nMade by `python benchmarks/audio_sets.py messy-digits OUT --count {count} "
            f"--seed {seed} --fsdd-share {fsdd_share} --voices {voices}` ({', '.join(versions)}).\n\n"
            "Part of it is derived from the Free Spoken Digit Dataset by Zohar Jackson, César Souza, "
            "Jason Flaks, Yuxin Pan, Hereman Nicolas and Adhish Thite, licensed under CC BY-SA 4.0; this set "
            "is distributed under the same licence (Creative Commons Attribution-ShareAlike 4.0).\n")


def speaker_of(path: Path) -> str | None:
    """``<speaker>_nohash_<n>`` (Speech Commands) or ``<label>_<speaker>_<take>`` (FSDD, AudioMNIST)."""
    if "_nohash_" in path.stem:
        return path.stem.split("_nohash_")[0]
    parts = path.stem.split("_")
    return parts[1] if len(parts) == 3 else None


def estimated_snr_db(wave: np.ndarray, rate: int) -> float:
    """Loudest 20 % of 20 ms frames against the quietest 20 % (taken as noise only), in dB: a rough
    estimate, too low where the word fills the clip, higher than an SNR against the word's mean power."""
    power = np.sort(frame_powers(wave - wave.mean(), max(1, rate // 50)))
    fifth = max(1, len(power) // 5)
    noise = max(power[:fifth].mean(), 1e-10)
    return float(10 * np.log10(max(power[-fifth:].mean() - noise, 1e-10) / noise))


def set_statistics(folder: Path) -> dict:
    """Per-file measurements of every WAV file under ``folder``: label, speaker, rate, duration,
    peak and RMS level (dBFS), estimated SNR (dB), DC offset, clipped samples."""
    files = sorted(folder.rglob("*.wav"))
    if not files:
        raise SystemExit(f"no .wav files under {folder}")
    rows = []
    for path in files:
        wave, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
        info, mono = soundfile.info(str(path)), wave.mean(axis=1)
        rows.append({"label": path.parent.name if path.parent != folder else path.stem.split("_")[0],
                     "speaker": speaker_of(path), "rate": rate, "channels": wave.shape[1],
                     "subtype": info.subtype, "seconds": len(mono) / rate,
                     "peak_db": 20 * np.log10(np.abs(mono).max() + 1e-10),
                     "rms_db": 10 * np.log10(np.mean(mono ** 2) + 1e-20),
                     "snr_db": estimated_snr_db(mono, rate), "dc_db": 20 * np.log10(abs(mono.mean()) + 1e-10),
                     "clipped": int(np.sum(np.abs(mono) >= 32766 / 32768))})  # at 16-bit full scale
    return {"folder": folder, "rows": rows}


def format_statistics(stats: dict) -> str:
    rows = stats["rows"]

    def spread(key: str, unit: str) -> str:
        values = np.array([row[key] for row in rows])
        p5, p50, p95 = np.percentile(values, [5, 50, 95])
        return (f"min {values.min():.2f}, 5 % {p5:.2f}, median {p50:.2f}, 95 % {p95:.2f}, max {values.max():.2f} {unit}"
                f" (5-95 % spread {p95 - p5:.1f})")

    def counts(key: str) -> str:
        return ", ".join(f"{value}: {n}" for value, n in sorted(Counter(row[key] for row in rows).items()))

    labels = Counter(row["label"] for row in rows)
    speakers = Counter(row["speaker"] for row in rows if row["speaker"] is not None)
    seconds = Counter(round(row["seconds"], 3) for row in rows)
    common = seconds.most_common(1)[0][0]
    lines = [f"{stats['folder']}: {len(rows)} files",
             f"labels: {len(labels)} ({min(labels.values())}-{max(labels.values())} files each)",
             f"speakers: {len(speakers)}" + (f" ({min(speakers.values())}-{max(speakers.values())} files each, "
                                            f"median {int(np.median(list(speakers.values())))})" if speakers else ""),
             f"sample rates: {counts('rate')}; channels: {counts('channels')}; encodings: {counts('subtype')}",
             f"duration: {spread('seconds', 's')}; {sum(n for s, n in seconds.items() if s != common)} files "
             f"differ from the commonest length {common} s",
             f"peak level: {spread('peak_db', 'dBFS')}",
             f"RMS level: {spread('rms_db', 'dBFS')}",
             f"estimated SNR: {spread('snr_db', 'dB')}",
             f"files with a DC offset above -60 dBFS: {sum(row['dc_db'] > -60 for row in rows)}; "
             f"with clipped samples (at full scale): {sum(row['clipped'] > 0 for row in rows)}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("messy-digits", help="write a messy spoken-digit set to a new folder")
    make.add_argument("out", type=Path)
    make.add_argument("--count", type=int, default=3000, help="number of clips (balanced over the ten digits)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--fsdd", type=Path, default=FSDD, help="folder of FSDD recordings")
    make.add_argument("--fsdd-share", type=float, default=0.5, help="fraction of clips made from FSDD recordings")
    make.add_argument("--voices", type=int, default=150, help="number of espeak-ng voices")
    stats = commands.add_parser("stats", help="print the statistics of a folder of WAV files")
    stats.add_argument("folder", type=Path)
    args = parser.parse_args()
    folder = make_messy_digits(args.out, args.count, args.seed, args.fsdd, args.fsdd_share, args.voices) \
        if args.command == "messy-digits" else args.folder
    print(format_statistics(set_statistics(folder)))


if __name__ == "__main__":
    main()
