"""The image denoiser: the core's class-conditional U-Net (:mod:`diffkit.nets.unet`), built from
the image domain's config."""

from __future__ import annotations

from diffkit.nets.unet import UNet, timestep_embedding

__all__ = ["UNet", "build_unet", "timestep_embedding"]


def build_unet(data: dict, model: dict) -> UNet:
    """The U-Net the ``data`` and ``model`` config sections describe."""
    levels = len(model["channel_mults"])
    if int(data["image_size"]) % 2 ** (levels - 1):
        raise ValueError(f"data.image_size={data['image_size']} must be divisible by 2**{levels - 1} "
                         f"for model.channel_mults={list(model['channel_mults'])}")
    unet = UNet(
        image_size=int(data["image_size"]), channels=int(data["channels"]),
        base_channels=int(model["base_channels"]), channel_mults=tuple(model["channel_mults"]),
        blocks_per_level=int(model["blocks_per_level"]),
        attention_resolutions=tuple(model["attention_resolutions"]),
        attention_heads=int(model["attention_heads"]), groups=int(model["groups"]),
        dropout=float(model["dropout"]), num_classes=int(model["num_classes"]),
    )
    return unet.use_channels_last() if model["channels_last"] else unet
