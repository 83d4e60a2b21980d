"""Shared fixtures of the image-domain tests: tiny configurations."""

from __future__ import annotations

import pytest
import torch

from diffkit.config import resolve_config
from diffkit_image.domain import ImageDomain


@pytest.fixture
def domain() -> ImageDomain:
    return ImageDomain()


@pytest.fixture
def config(domain) -> dict:
    """8x8 gray pictures and a 2-level U-Net of width 16: fast on one core."""
    return resolve_config(domain, preset="cpu", overrides={
        "data": {"image_size": 8},
        "model": {"base_channels": 16, "channel_mults": [1, 2], "attention_resolutions": [4], "groups": 4},
        "evaluate": {"classifier_epochs": 6},
    })


def randomize_zero_layers(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised layers (which make a fresh U-Net output 0) small random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model
