"""Denoiser networks that more than one domain uses."""

from .unet import UNet

__all__ = ["UNet"]
