"""Editing a recording: ``diffkit sample --domain audio --init clip.wav [--mask SPAN]``.

``--mask`` says which part of the clip to generate, the rest being kept:

* ``START:END`` (seconds; either side may be empty): regenerate that span and keep the audio
  around it (infilling), e.g. ``0.2:0.35`` or ``0.4:`` (everything from 0.4 s on).
* ``continue`` or ``continue:SECONDS``: continue the recording. The last ``SECONDS`` of the file
  (half a clip by default, or the whole file if it is shorter) are placed at the start of the
  clip and the rest of the clip is generated after them.
* no mask: the whole clip is regenerated from a noised copy (SDEdit; ``--strength`` sets how much).

The clip is read like training data (channels, rate, peak level) and cut or zero-padded to the
configured length from its start.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .audio_io import UnreadableAudio, fit_length, load_clip


def parse_seconds(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number of seconds") from None
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value}")
    return value


def span_keep(mask: str, length: int, sample_rate: int) -> Tensor:
    """``"START:END"`` seconds -> keep ``(1, length)``: 0 inside the span (generated), 1 outside."""
    start_text, end_text = mask.split(":", 1)
    duration = length / sample_rate
    start = parse_seconds(start_text, "mask start") if start_text.strip() else 0.0
    end = parse_seconds(end_text, "mask end") if end_text.strip() else duration
    if not start < end:
        raise ValueError(f"--mask {mask!r}: the start ({start} s) must come before the end ({end} s)")
    if start >= duration:
        raise ValueError(f"--mask {mask!r} starts at {start} s, after the end of the {duration:g} s clip")
    keep = torch.ones(1, length)
    keep[:, round(start * sample_rate):round(min(end, duration) * sample_rate)] = 0.0
    return keep


def continuation(wave: Tensor, mask: str, length: int, sample_rate: int) -> tuple[Tensor, Tensor]:
    """``"continue[:SECONDS]"`` -> (known clip ``(C, length)``, keep ``(1, length)``)."""
    _, _, seconds = mask.partition(":")
    context = round(parse_seconds(seconds, "continue length") * sample_rate) if seconds.strip() else length // 2
    context = min(context, wave.shape[1], length - 1)
    if context < 1:
        raise ValueError(f"--mask {mask!r} keeps no audio: give a positive number of seconds")
    known = fit_length(wave[:, wave.shape[1] - context:], length)
    keep = torch.zeros(1, length)
    keep[:, :context] = 1.0
    return known, keep


def known_clip(init: str, mask: str | None, data_config: dict, length: int) -> tuple[Tensor, Tensor | None]:
    """The clip ``(C, length)`` to edit and the keep mask ``(1, length)`` (None: SDEdit)."""
    path = Path(init)
    if not path.is_file():
        raise FileNotFoundError(f"--init {init!r} is not an audio file")
    rate = int(data_config["sample_rate"])
    try:
        # Levelled as the training clips were, but not trimmed: the spans are times in this file.
        wave = load_clip(path, rate, int(data_config["channels"]), str(data_config["normalize"]))
    except UnreadableAudio as error:
        raise ValueError(f"--init: cannot read {error}") from None
    if mask is None or not mask.strip():
        return fit_length(wave, length), None
    mask = mask.strip()
    if mask == "continue" or mask.startswith("continue:"):
        return continuation(wave, mask, length, rate)
    if ":" not in mask:
        raise ValueError(f"--mask {mask!r}: expected START:END in seconds (e.g. 0.2:0.4), or continue[:SECONDS]")
    return fit_length(wave, length), span_keep(mask, length, rate)


def frame_keep(keep: Tensor, hop: int, frames: int) -> Tensor:
    """A keep mask over samples ``(1, length)`` -> over STFT frames ``(1, frames)``: each frame
    takes the value at its centre sample (frame ``f`` is centred on sample ``f * hop``); frames
    past the end of the clip (padding) are kept."""
    length = keep.shape[-1]
    centres = torch.arange(frames) * hop
    inside = centres < length
    framed = torch.ones(keep.shape[0], frames)
    framed[:, inside] = keep[:, centres[inside]]
    return framed
