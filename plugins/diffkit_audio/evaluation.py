"""``diffkit evaluate --domain audio``: scores of generated clips against real ones, each given
beside the same score for held-out real clips, which is what a perfect model would reach with
the same number of clips.

* ``fd_logmel``: Fréchet distance between Gaussian fits of all log-mel frames.
* ``fd_classifier``: Fréchet distance of the pooled features of a classifier trained on the
  reference data (see :mod:`diffkit_audio.classifier`).
* ``is``: Inception score of that classifier's class probabilities.
* ``label_accuracy``: for samples whose file names carry the label they were generated for
  (``sample-00003-C4.wav``), how often the classifier agrees.

The reference is the embedded note set (held out: a second note set from another seed) or a
folder, split by a hash of the file paths into reference and held-out parts
(``evaluate.heldout_fraction``). The held-out part is cut to as many clips as there are samples,
so both sides of each comparison have the same sample-size bias.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffkit.kit import cache_dir, frechet_distance

from .audio_io import UnreadableAudio, fit_length, load_clip
from .classifier import classify, reference_classifier
from .data import ClipDataset, find_audio_files, folder_dataset, notes_dataset, split_files, warn_skipped
from .metrics import frame_features, inception_score
from .writer import safe_label


def stack_clips(dataset: ClipDataset) -> tuple[Tensor, Tensor]:
    """Every clip of a dataset, cropped from the start: ``(N, C, T)`` and labels ``(N,)``."""
    waves = torch.stack([fit_length(dataset.waveform(i), dataset.length) for i in range(len(dataset))])
    return waves.float(), torch.tensor(dataset.labels, dtype=torch.long)


def load_samples(samples: Path, data_config: dict, length: int) -> tuple[Tensor, list[str]]:
    """Generated clips as ``(N, C, T)`` (not re-normalised: loudness is part of quality) and
    their file stems. ``samples`` is a folder (searched recursively) or one file."""
    samples = Path(samples)
    if not samples.exists():
        raise FileNotFoundError(f"samples {str(samples)!r} do not exist")
    files = [samples] if samples.is_file() else find_audio_files(samples)
    rate, channels = int(data_config["sample_rate"]), int(data_config["channels"])
    waves, stems, skipped = [], [], []
    for path in files:
        try:
            waves.append(fit_length(load_clip(path, rate, channels, normalise="none"), length))
            stems.append(path.stem)
        except UnreadableAudio as error:
            skipped.append(str(error))
    warn_skipped(skipped, samples)
    if len(waves) < 2:
        raise ValueError(f"found {len(waves)} readable audio file(s) in {str(samples)!r}; need at least 2 to compare")
    return torch.stack(waves), stems


def reference_sets(reference: Path | None, data_config: dict, heldout_fraction: float
                   ) -> tuple[ClipDataset, ClipDataset]:
    """(reference, held-out) datasets, cropped from the start."""
    if reference is None:
        return notes_dataset(data_config, "train"), notes_dataset(data_config, "heldout")
    root = Path(reference)
    if root.is_file():
        raise ValueError(f"--reference {str(root)!r} is a file; expected a folder of audio clips")
    files = find_audio_files(root) if root.is_dir() else []
    reference_files, heldout_files = split_files(files, root, heldout_fraction)
    if not reference_files or not heldout_files:
        raise ValueError(f"the reference folder {str(root)!r} has {len(files)} audio files, too few to split "
                         f"into reference and held-out parts (evaluate.heldout_fraction = {heldout_fraction})")
    kept = folder_dataset(root, data_config, random_crop=False, files=reference_files)
    heldout = folder_dataset(root, data_config, random_crop=False, files=heldout_files, label_names=kept.label_names)
    return kept, heldout


# What `diffkit sample` names a clip: its stem, its number and its label (``sample-00003-C4``;
# ``sample_003_C4`` before the domains were numbered alike).
LABELLED_STEM = re.compile(r"^.*?[-_]\d+[-_](?P<label>.+)$")


def labels_from_stems(stems: list[str], names: list[str]) -> np.ndarray | None:
    """The intended label index of each sample from names like ``sample-00003-C4``; None unless all have one."""
    index = {safe_label(name): i for i, name in enumerate(names)}
    matches = [LABELLED_STEM.match(stem) for stem in stems]
    found = [index.get(match["label"]) if match else None for match in matches]
    return None if any(label is None for label in found) else np.asarray(found)


def sample_format(samples: Path) -> tuple[int, int] | None:
    """(rate, frames) shared by the audio files of ``samples`` (what `diffkit sample` writes), or
    None when the files differ or cannot be read."""
    import soundfile

    files = [samples] if samples.is_file() else find_audio_files(samples)
    formats = set()
    for path in files:
        try:
            info = soundfile.info(str(path))
        except Exception:
            return None
        formats.add((int(info.samplerate), int(info.frames)))
    return formats.pop() if len(formats) == 1 else None


def evaluate_audio(samples: Path, reference: Path | None, config: dict) -> dict[str, float]:
    """The scores of the module docstring. When all sample files share one rate and length (as
    written by `diffkit sample`), the comparison runs at that rate and length, whatever the config."""
    data_config, settings = dict(config["data"]), config["evaluate"]
    found = sample_format(Path(samples)) if Path(samples).exists() else None
    if found is not None:
        data_config["sample_rate"], data_config["duration"] = found[0], found[1] / found[0]
    rate, n_mels = int(data_config["sample_rate"]), int(settings["mels"])
    reference_set, heldout_set = reference_sets(reference, data_config, float(settings["heldout_fraction"]))
    sample_waves, stems = load_samples(samples, data_config, reference_set.length)
    reference_waves, reference_labels = stack_clips(reference_set)
    heldout_waves, heldout_labels = stack_clips(heldout_set)
    order = torch.randperm(len(heldout_waves), generator=torch.Generator().manual_seed(0))[:len(sample_waves)]
    heldout_waves, heldout_labels = heldout_waves[order], heldout_labels[order]

    reference_frames = frame_features(reference_waves, rate, n_mels)
    scores = {
        "fd_logmel": frechet_distance(frame_features(sample_waves, rate, n_mels), reference_frames),
        "fd_logmel_heldout": frechet_distance(frame_features(heldout_waves, rate, n_mels), reference_frames),
        "n_samples": float(len(sample_waves)),
        "n_reference": float(len(reference_waves)),
        "n_heldout": float(len(heldout_waves)),
    }
    if reference_set.num_classes < 2:
        warnings.warn("the reference data has a single label, so the classifier scores are left out", stacklevel=2)
        return scores
    classifier = reference_classifier(reference_waves, reference_labels, reference_set.num_classes, rate,
                                      n_mels, int(settings["classifier_steps"]), cache=cache_dir("audio", config))
    scores.update(classifier_scores(classifier, sample_waves, heldout_waves, reference_waves, rate, n_mels))
    _, heldout_probabilities = classify(classifier, heldout_waves, rate, n_mels)
    scores["label_accuracy_heldout"] = float(np.mean(heldout_probabilities.argmax(axis=1) == heldout_labels.numpy()))
    intended = labels_from_stems(stems, reference_set.label_names)
    if intended is not None:
        _, probabilities = classify(classifier, sample_waves, rate, n_mels)
        scores["label_accuracy"] = float(np.mean(probabilities.argmax(axis=1) == intended))
    return scores


def classifier_scores(classifier, sample_waves: Tensor, heldout_waves: Tensor, reference_waves: Tensor,
                      rate: int, n_mels: int) -> dict[str, float]:
    sample_features, sample_probabilities = classify(classifier, sample_waves, rate, n_mels)
    heldout_features, heldout_probabilities = classify(classifier, heldout_waves, rate, n_mels)
    reference_features, _ = classify(classifier, reference_waves, rate, n_mels)
    return {
        "fd_classifier": frechet_distance(sample_features, reference_features),
        "fd_classifier_heldout": frechet_distance(heldout_features, reference_features),
        "is": inception_score(sample_probabilities),
        "is_heldout": inception_score(heldout_probabilities),
    }
