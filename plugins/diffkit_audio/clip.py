"""A generated clip as a Python object: its waveform, its rate, its label; Jupyter plays it."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from torch import Tensor

from diffkit import kit


class AudioClip:
    """``waveform (C, T)`` float in [-1, 1] at ``sample_rate`` Hz, with the ``label`` it was
    generated for (``None`` when unconditional). In Jupyter it shows an audio player."""

    def __init__(self, waveform: Tensor, sample_rate: int, label: str | None = None):
        if waveform.dim() != 2:
            raise ValueError(f"an AudioClip waveform is (channels, time), got shape {tuple(waveform.shape)}")
        self.waveform, self.sample_rate, self.label = waveform, int(sample_rate), label

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.waveform.shape[-1] / self.sample_rate

    def wav_bytes(self) -> bytes:
        """The clip as a 16-bit PCM WAV file, in memory."""
        from .audio_io import encode_audio

        return encode_audio(self.waveform, self.sample_rate, ".wav")

    def save(self, path: str | Path) -> Path:
        """Write the clip to ``path`` (.wav, .flac or .ogg); an existing file is never replaced."""
        from .audio_io import encode_audio

        path = Path(path)
        if path.suffix.lower() not in (".wav", ".flac", ".ogg"):
            raise ValueError(f"{str(path)!r}: an audio clip is saved as .wav, .flac or .ogg")
        return kit.write_new(path, encode_audio(self.waveform, self.sample_rate, path.suffix))

    def _repr_html_(self) -> str:
        data = base64.b64encode(self.wav_bytes()).decode("ascii")
        caption = html.escape(self.label) if self.label else "unconditional"
        return (f'<figure style="margin:0"><audio controls src="data:audio/wav;base64,{data}"></audio>'
                f"<figcaption>{caption}</figcaption></figure>")

    def __repr__(self) -> str:
        channels = self.waveform.shape[0]
        return (f"<AudioClip {self.label or 'unconditional'!r}: {channels} channel{'s' if channels > 1 else ''}, "
                f"{self.duration:.2f} s at {self.sample_rate} Hz>")
