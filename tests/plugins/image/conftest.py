"""Shared fixtures of the image-domain tests: tiny configurations."""

from __future__ import annotations

import pytest

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
