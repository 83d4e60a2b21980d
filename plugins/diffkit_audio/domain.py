"""The audio domain: class-conditional diffusion of audio clips. Waveforms ``(B, C, T)`` in
[-1, 1] are what goes in (data) and what comes out (samples); ``model.representation`` picks
the state the diffusion runs on:

* ``mel`` (default): normalised log-mel spectrograms ``(B, C, mel_bins, frames)``
  (:mod:`diffkit_audio.mel`), denoised by the core's 2-D U-Net and turned back into waveforms
  by Griffin-Lim;
* ``waveform``: the samples themselves, denoised by a DiffWave-style network
  (:mod:`diffkit_audio.network`).

Conditions are class labels ``(B,)`` long (:mod:`diffkit.kit.conditions`); the kit's null label
is the one of classifier-free guidance (the network maps it to its extra "no label" embedding row).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import diffkit
from diffkit import kit
from diffkit.config import Limit, above, at_least

WEIGHTS = Path(__file__).parent / "weights" / "audio"   # exported folder: safetensors, config, card
DIGITS_WEIGHTS = Path(__file__).parent / "weights" / "audio-digits"   # spoken digits (FSDD, CC BY-SA 4.0)
REPRESENTATIONS = ("mel", "waveform")

# The default is the CPU preset, so that `diffkit train --domain audio` runs in minutes anywhere.
CPU_PRESET: dict[str, dict[str, Any]] = {
    # Speech keeps its words in 4 kHz of bandwidth, where the model's capacity goes further (measured).
    "data": {"notes_per_class": 32, "max_sample_rate": 8000},
    "model": {"representation": "mel", "mel_bins": 128, "mel_fft": 0, "mel_hop": 0, "griffin_lim_iters": 64,
              "base_channels": 32, "channel_mults": [1, 2, 2, 2], "blocks_per_level": 1, "mel_patch": 2,
              "residual_channels": 64, "layers": 12, "dilation_cycle": 6, "embedding_dim": 128,
              "hidden_dim": 256, "patch": 8},
    "train": {"steps": 3000, "batch_size": 16, "lr": 1e-3, "warmup_steps": 50, "ema_decay": 0.995,
              "checkpoint_every": 500, "preview_every": 1000, "preview_count": 8},
    "sample": {"steps": 30, "batch_size": 64, "guidance": 3.0},
}
# The CPU preset's 128-band mel at image-model width and depth; the waveform settings are
# DiffWave-base (64 channels, 30 layers, dilation cycle 10).
GPU_PRESET: dict[str, dict[str, Any]] = {
    "data": {"notes_per_class": 64},
    "model": {"representation": "mel", "mel_bins": 128, "mel_fft": 0, "mel_hop": 0, "griffin_lim_iters": 100,
              "base_channels": 64, "channel_mults": [1, 2, 2, 2], "blocks_per_level": 2, "mel_patch": 1,
              "residual_channels": 64, "layers": 30, "dilation_cycle": 10, "embedding_dim": 128,
              "hidden_dim": 512, "patch": 1},
    "train": {"steps": 200_000, "batch_size": 32, "lr": 2e-4, "warmup_steps": 1000, "ema_decay": 0.9999,
              "checkpoint_every": 5000, "preview_every": 5000, "preview_count": 16},
    "sample": {"steps": 50, "batch_size": 64, "guidance": 2.0},
}

LIMITS = {
    # 0 = from the data (the sample rate, the clip length, the mel window and hop).
    "data.sample_rate": at_least(0), "data.duration": at_least(0), "data.channels": Limit(1, 2),
    "data.max_sample_rate": at_least(1), "data.max_duration": above(0), "data.trim_db": at_least(0),
    "data.notes_per_class": at_least(1), "data.scale": above(0),
    "model.num_classes": at_least(0), "model.mel_bins": at_least(1), "model.mel_fft": at_least(0),
    "model.mel_hop": at_least(0), "model.griffin_lim_iters": at_least(1), "model.base_channels": at_least(1),
    "model.channel_mults": at_least(1), "model.blocks_per_level": at_least(0),
    "model.attention_resolutions": at_least(1), "model.attention_heads": at_least(1), "model.groups": at_least(1),
    "model.dropout": Limit(0, 1, high_open=True), "model.mel_patch": at_least(1),
    "model.residual_channels": at_least(1), "model.layers": at_least(1), "model.dilation_cycle": at_least(1),
    "model.embedding_dim": at_least(1), "model.hidden_dim": at_least(1), "model.patch": at_least(1),
    "autoencoder.mel_bins": at_least(1), "autoencoder.mel_fft": at_least(0), "autoencoder.mel_hop": at_least(0),
    "autoencoder.vocoder_width": at_least(1), "autoencoder.vocoder_layers": at_least(0),
    "evaluate.mels": at_least(1), "evaluate.classifier_steps": at_least(1),
    "evaluate.heldout_fraction": Limit(0, 1, low_open=True, high_open=True),
}


class AudioDomain(diffkit.Domain):
    name = "audio"
    description = "audio clips: class-conditional diffusion of log-mel spectrograms or waveforms; WAV + spectrograms"

    # -- configuration ----------------------------------------------------------------------

    def default_config(self) -> dict:
        base = {
            "data": {
                "sample_rate": 0,           # Hz, 0 = the recordings' own (the bundled notes: 8000); others are resampled
                "max_sample_rate": 16000,   # the most a rate taken from the recordings may be
                "duration": 0.0,            # seconds per clip, 0 = from the recordings (the notes: 0.5); longer
                                            # ones are cropped, shorter ones padded with silence
                "max_duration": 2.0,        # the most a length taken from the recordings may be
                "trim_db": 40.0,            # trim leading/trailing silence this far under the loudest part (0 = keep)
                "channels": 1,              # 1 mixes to mono; 2 keeps stereo (mono files are doubled)
                "labels": "folder",         # folder | pattern | none
                "label_pattern": "{label}_{speaker}_{take}",  # file-name fields when labels = "pattern"
                "normalize": "loudness",    # loudness (RMS 0.1, peak at most 0.95) | peak (0.95) | none
                "random_crop": True,        # random window of long files while training
                "preload": True,            # decode all files once up front (false: on access)
                "cache": True,              # preloaded clips: kept decoded under the cache (data.cache_dir) and
                                            # memory-mapped (false: decoded into each process's memory)
                "notes_per_class": 32,      # size of the embedded note set (8 pitches)
                "scale": 1.0,               # the model's state is the waveform times this
            },
            "model": {
                "representation": "mel",    # mel | waveform: the state the diffusion runs on
                "num_classes": 64,          # label capacity; the data may use fewer
                # mel: a U-Net on normalised log-mel spectrograms, decoded by Griffin-Lim
                "mel_bins": 128,            # mel bands, 0 Hz to half the sample rate
                "mel_fft": 0,               # STFT window (samples); 0 = 64 ms at the sample rate
                "mel_hop": 0,               # samples between frames; 0 = 16 ms at the sample rate
                "griffin_lim_iters": 64,    # phase-estimation iterations when decoding
                "base_channels": 32,        # U-Net width at full resolution
                "channel_mults": [1, 2, 2, 2],  # width multipliers, one per resolution level
                "blocks_per_level": 1,
                "attention_resolutions": [],  # feature-map heights with self-attention (the middle always has it)
                "attention_heads": 4,
                "groups": 8,
                "dropout": 0.0,
                "mel_patch": 2,             # mel_patch x mel_patch squares folded into channels
                # waveform: a DiffWave-style stack on the samples
                "residual_channels": 64,
                "layers": 12,
                "dilation_cycle": 6,
                "embedding_dim": 128,
                "hidden_dim": 256,
                "patch": 8,                 # samples folded into channels (1 = classic DiffWave)
            },
            # min-SNR weighting: on real speech, asked digits heard 0.75 against 0.51 uniform (docs/benchmarks/audio.md)
            "diffusion": {"prediction": "v", "weighting": "min_snr"},
            "train": {},
            "sample": {},
            # The latent stage's autoencoder of waveform states (--set model.representation=waveform):
            # with front_end = mel, the fixed log-mel below and a learned decoder (diffkit_audio.vocoder).
            "autoencoder": {
                "front_end": "mel",         # mel (the latents are log-mel spectrograms) | learned (the core's 1-D autoencoder)
                "mel_bins": 128,            # mel bands of the front end
                "mel_fft": 0,               # its STFT window (samples); 0 = 64 ms at the sample rate
                "mel_hop": 0,               # samples between its frames; 0 = 16 ms at the sample rate
                "vocoder_width": 256,       # channels of the decoder's ConvNeXt stack
                "vocoder_layers": 8,        # its blocks
            },
            "evaluate": {
                "mels": 64,                 # mel bands of the log-mel features
                "classifier_steps": 2000,   # updates (batches of 32) training the reference classifier
                "heldout_fraction": 0.2,    # share of a reference folder kept as held-out real data
            },
        }
        return _deep_merge(base, CPU_PRESET)

    def upgrade_config(self, config: dict) -> dict:
        # Runs saved before the mel representation existed were waveform models.
        model = config.get("model")
        if isinstance(model, dict) and "residual_channels" in model and "representation" not in model:
            model["representation"] = "waveform"
        # Runs saved before silence trimming kept their recordings whole.
        data = config.get("data")
        if isinstance(data, dict) and "sample_rate" in data and "trim_db" not in data:
            data["trim_db"] = 0.0
        return config

    def presets(self) -> dict[str, dict]:
        return {"cpu": copy.deepcopy(CPU_PRESET), "gpu": copy.deepcopy(GPU_PRESET)}

    def limits(self) -> dict[str, Limit]:
        return dict(LIMITS)

    # -- training ---------------------------------------------------------------------------

    def build_dataset(self, config: dict, data: str | None = None):
        from .data import folder_dataset, notes_dataset

        if data is None:
            given = bool(int(config["data"]["sample_rate"]) and float(config["data"]["duration"]))
            dataset = notes_dataset(settle_for_notes(config["data"]), "train")
            if not given:
                dataset.choices = [f"sample rate and clip length: {config['data']['sample_rate']:,} Hz, "
                                   f"{config['data']['duration']:g} s (those of the bundled notes)"]
        else:
            dataset = folder_dataset(data, config["data"], random_crop=bool(config["data"]["random_crop"]))
        dataset.scale = float(config["data"].get("scale", 1.0))
        if representation(config) == "mel":
            dataset.scale, dataset.transform = 1.0, build_codec(config)
        capacity = int(config["model"]["num_classes"])
        if dataset.num_classes > capacity:
            raise ValueError(f"the data at {data!r} has {dataset.num_classes} labels but model.num_classes is "
                             f"{capacity}; use --set model.num_classes={dataset.num_classes}")
        return dataset

    def build_model(self, config: dict) -> nn.Module:
        from .network import build_diffwave, build_mel_denoiser

        channels = int(settle_for_notes(config["data"])["channels"])  # no data seen: built for the notes
        if representation(config) == "mel":
            return build_mel_denoiser(config["model"], channels, build_codec(config).frames)
        return build_diffwave(config["model"], channels=channels)

    def describe_data(self, dataset, config: dict) -> list[str]:
        return [*getattr(dataset, "choices", []), representation_line(config)]

    def build_autoencoder(self, config: dict, state_shape: tuple[int, ...]) -> nn.Module:
        """For waveform states with ``autoencoder.front_end = "mel"``: the fixed log-mel front end
        and a learned decoder to waveforms (:class:`~diffkit_audio.vocoder.MelVocoder`); otherwise
        the core's convolutional autoencoder (of mel spectrograms, or of the samples themselves)."""
        settings = config["autoencoder"]
        front_ends = ("mel", "learned")
        if settings["front_end"] not in front_ends:
            raise ValueError(f"autoencoder.front_end must be one of {', '.join(front_ends)}, got {settings['front_end']!r}")
        if representation(config) != "waveform" or settings["front_end"] != "mel":
            return super().build_autoencoder(config, state_shape)
        from .vocoder import MelVocoder

        return MelVocoder(vocoder_codec(config), int(state_shape[0]), width=int(settings["vocoder_width"]),
                          layers=int(settings["vocoder_layers"]))

    def reconstruction_loss(self, reconstruction: Tensor, x: Tensor, config: dict) -> Tensor:
        """Waveforms: the multi-resolution STFT loss (:func:`diffkit.kit.reconstruction.multi_resolution_stft`,
        at the front end's window) plus the mean absolute difference of the normalised log-mel
        spectrograms; spectrograms: the mean absolute difference."""
        from diffkit.kit.reconstruction import mean_absolute_error, multi_resolution_stft

        if representation(config) != "waveform":
            return mean_absolute_error(reconstruction, x)
        codec = vocoder_codec(config).to(x.device)
        return (multi_resolution_stft(reconstruction, x, codec.n_fft)
                + mean_absolute_error(codec.encode(reconstruction.float()), codec.encode(x.float())))

    def build_latent_model(self, config: dict, latent_shape: tuple[int, ...]) -> nn.Module:
        """Spectrogram-like latents ``(C, H, W)``: the mel U-Net of the ``model`` section; latents
        ``(C, L)``: the DiffWave-style network on ``C`` channels."""
        from .network import build_diffwave, build_mel_denoiser

        if len(latent_shape) == 3:
            channels, bins, frames = latent_shape
            return build_mel_denoiser({**config["model"], "mel_bins": bins}, channels, frames)
        return build_diffwave(config["model"], channels=int(latent_shape[0]))

    def fit_data(self, model: nn.Module, dataset, config: dict) -> None:
        # The label names travel with the weights, so `--cond C4` works with any checkpoint.
        _unwrap(model).label_names.names = list(dataset.label_names)

    def null_cond(self, cond: Any) -> Any:
        if cond is None:
            return None
        return torch.full_like(cond, kit.NULL_LABEL)

    # -- sampling ---------------------------------------------------------------------------

    def prepare_sampling(self, model: nn.Module, n: int, config: dict, *, cond: Any = None,
                         generator: torch.Generator | None = None) -> dict:
        """``cond``: labels as :mod:`diffkit.kit.conditions` reads them (``C4``, ``3``, ``C4,E4``,
        ``none``); ``None`` draws them uniformly from the model's labels."""
        from .data import clip_length

        network = _unwrap(model)
        device = next(network.parameters()).device
        names = network.label_names.names
        labels = kit.draw_labels(n, len(names), generator=generator) if cond is None else kit.parse_labels(cond, names, n)
        x = torch.zeros(n, int(config["data"]["channels"]), clip_length(config["data"]), device=device)
        return {"x": encode_state(x, config), "cond": labels.to(device), "names": kit.label_texts(labels, names)}

    def load_known(self, init: str, mask: str | None, n: int, config: dict, *, model: nn.Module | None = None,
                   cond: str | None = None, generator=None) -> dict:
        """The clip ``init`` to edit (see :mod:`diffkit_audio.editing` for ``mask``). It is
        regenerated without a label unless ``cond`` names one, as for :meth:`prepare_sampling`.
        With the ``mel`` representation a span is kept or generated frame by frame (a frame
        belongs to the span its centre falls in), and the kept part is re-synthesised by
        Griffin-Lim with the rest, so it sounds the same but is not the same samples."""
        from .data import clip_length
        from .editing import known_clip, frame_keep

        known, keep = known_clip(init, mask, config["data"], clip_length(config["data"]))
        names = _unwrap(model).label_names.names if model is not None else []
        labels = kit.parse_labels("none" if cond is None else cond, names, n)
        batch = {"x": encode_state(known[None].expand(n, -1, -1), config), "cond": labels,
                 "names": kit.label_texts(labels, names)}
        if keep is not None:
            if representation(config) == "mel":
                codec = build_codec(config)
                keep = frame_keep(keep, codec.hop, codec.frames)[:, None]
            batch["keep"] = keep[None].expand(n, *keep.shape).clone()
        return batch

    def decode(self, x: Tensor, batch: dict, *, config: dict) -> Tensor:
        """The model's state back to a waveform in [-1, 1]."""
        if representation(config) == "mel":
            return build_codec(config).to(x.device).decode(x).clamp(-1.0, 1.0)
        return (x / float(config["data"].get("scale", 1.0))).clamp(-1.0, 1.0)

    def write_samples(self, samples: dict, out: Path, config: dict) -> list[kit.Output]:
        """WAV files at the data's rate plus a spectrogram PNG each and a grid PNG of all.

        ``out`` is a folder (``sample-00000-<label>.wav`` ...) or a file name ending in .wav, .flac
        or .ogg (one sample: that file; several: numbered beside it). Existing files are never
        replaced: writing stops with an error naming them."""
        from .writer import write_clips

        waves = samples["x"].detach().float().cpu()
        names = samples.get("names") or kit.label_texts(samples.get("cond"), [], n=waves.shape[0])
        return write_clips(waves, list(names), Path(out), int(config["data"]["sample_rate"]))

    def to_objects(self, samples: dict, config: dict) -> list:
        """:class:`~diffkit_audio.clip.AudioClip` objects (``.waveform (C, T)``, ``.sample_rate``,
        ``.label``); Jupyter shows each as an audio player."""
        from .clip import AudioClip

        waves = samples["x"].detach().float().cpu()
        names = samples.get("names") or kit.label_texts(samples.get("cond"), [], n=waves.shape[0])
        rate = int(config["data"]["sample_rate"])
        return [AudioClip(wave, rate, None if name == "uncond" else name) for wave, name in zip(waves, names)]

    # -- evaluation and weights -------------------------------------------------------------

    def evaluate(self, samples: Path, reference: Path | None, config: dict) -> dict[str, float]:
        from .evaluation import evaluate_audio

        return evaluate_audio(Path(samples), None if reference is None else Path(reference), config)

    def pretrained(self) -> Path | None:
        return WEIGHTS if WEIGHTS.is_dir() else None

    def pretrained_models(self) -> dict[str, Path]:
        named = super().pretrained_models()
        if DIGITS_WEIGHTS.is_dir():
            named["audio-digits"] = DIGITS_WEIGHTS
        return named


def settle_for_notes(data_config: dict) -> dict:
    """``data_config`` with a sample rate and duration left at 0 ("from the data") set to those
    of the bundled notes, the data a domain without a folder trains on; returned for chaining."""
    from .notes import NOTES_DURATION, NOTES_RATE

    if not int(data_config["sample_rate"]):
        data_config["sample_rate"] = NOTES_RATE
    if not float(data_config["duration"]):
        data_config["duration"] = NOTES_DURATION
    return data_config


def representation(config: dict) -> str:
    """``model.representation``, checked."""
    value = config["model"].get("representation", "waveform")
    if value not in REPRESENTATIONS:
        raise ValueError(f"model.representation = {value!r}; expected one of {', '.join(REPRESENTATIONS)}")
    return value


def build_codec(config: dict):
    """The :class:`~diffkit_audio.mel.MelCodec` of a ``mel`` config."""
    from .data import clip_length
    from .mel import MelCodec
    from .network import mel_frame_multiple

    model = config["model"]
    n_fft, hop = mel_sizes(model, int(config["data"]["sample_rate"]))
    return MelCodec(int(config["data"]["sample_rate"]), clip_length(config["data"]), n_fft=n_fft, hop=hop,
                    n_mels=int(model["mel_bins"]),
                    frame_multiple=mel_frame_multiple(model), griffin_lim_iters=int(model["griffin_lim_iters"]))


#: The STFT window and hop where ``mel_fft`` and ``mel_hop`` are 0, in seconds: a window that
#: resolves the harmonics of a voice, frames that follow its syllables.
MEL_WINDOW_SECONDS, MEL_HOP_SECONDS = 0.064, 0.016


def mel_sizes(settings: dict, rate: int) -> tuple[int, int]:
    """``(n_fft, hop)`` in samples: ``settings["mel_fft"]`` and ``settings["mel_hop"]`` (the
    ``model`` section's, or the waveform autoencoder's), or, where 0, 64 ms and 16 ms at ``rate``."""
    n_fft = int(settings["mel_fft"]) or round(MEL_WINDOW_SECONDS * rate)
    hop = int(settings["mel_hop"]) or round(MEL_HOP_SECONDS * rate)
    return n_fft, hop


def representation_line(config: dict) -> str:
    """What the model's state is, for the plan of a run."""
    if representation(config) == "waveform":
        from .data import clip_length

        return f"representation: waveform, {clip_length(config['data']):,} samples per clip"
    codec, model = build_codec(config), config["model"]
    rate = codec.sample_rate
    return (f"representation: mel, {codec.n_mels} bands x {codec.frames} frames ({1000 * codec.n_fft / rate:.0f} ms "
            f"window, {1000 * codec.hop / rate:.0f} ms hop), decoded by {model['griffin_lim_iters']} Griffin-Lim "
            f"iterations (model.representation=waveform models the samples themselves)")


#: The vocoder's frames are padded with silence to a multiple of this, which a denoiser of up to
#: four levels with ``model.mel_patch = 2`` needs.
VOCODER_FRAME_MULTIPLE = 16


def vocoder_codec(config: dict):
    """The mel front end of the waveform autoencoder (``autoencoder.mel_*``)."""
    from .data import clip_length
    from .mel import MelCodec

    settings, rate = config["autoencoder"], int(config["data"]["sample_rate"])
    n_fft, hop = mel_sizes(settings, rate)
    return MelCodec(rate, clip_length(config["data"]), n_fft=n_fft, hop=hop, n_mels=int(settings["mel_bins"]),
                    frame_multiple=VOCODER_FRAME_MULTIPLE)


def encode_state(wave: Tensor, config: dict) -> Tensor:
    """Waveforms ``(B, C, T)`` as the model's state, the inverse of :meth:`AudioDomain.decode`."""
    if representation(config) == "mel":
        return build_codec(config).to(wave.device).encode(wave)
    return wave * float(config["data"].get("scale", 1.0))


def _unwrap(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel / torch.compile wrappers."""
    for attribute in ("module", "_orig_mod"):
        while hasattr(model, attribute):
            model = getattr(model, attribute)
    return model


def _deep_merge(base: dict, update: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
