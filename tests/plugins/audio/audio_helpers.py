"""File, signal and training helpers of the audio-domain tests."""

from __future__ import annotations

import numpy as np
import soundfile
import torch

from diffkit.generate import build_diffusion

RATE = 8000


def sine(frequency: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    time = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * time)).astype(np.float32)


def write(path, data: np.ndarray, rate: int, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), data, rate, **kwargs)
    return path


def peak_frequency(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)])


def loss_before_and_after_training(domain, config: dict, *, every: int, steps: int):
    """The model, and its diffusion loss on every ``every``-th clip at fixed times and noises
    before and after ``steps`` AdamW steps on those clips."""
    torch.manual_seed(0)
    dataset = domain.build_dataset(config)
    model = domain.build_model(config)
    domain.fit_data(model, dataset, config)
    diffusion = build_diffusion(domain, config)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(0, len(dataset), every)])
    generator = torch.Generator().manual_seed(1)
    fixed = {"t": torch.rand(len(batch["x"]), generator=generator),
             "noise": torch.randn(batch["x"].shape, generator=generator)}

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(diffusion.loss(model, batch["x"], cond=batch["cond"], **fixed))

    before = fixed_loss()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = diffusion.loss(model, batch["x"], cond=batch["cond"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model, before, fixed_loss()
