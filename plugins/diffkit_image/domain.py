"""The image domain: states are pictures ``(B, C, H, W)`` in [-1, 1], conditioned on a class label."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import diffkit
from diffkit import kit
from diffkit.config import Limit, at_least

WEIGHTS = Path(__file__).parent / "weights" / "image-cpu"   # exported folder: safetensors, config, card

DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "image_size": 16,          # pictures are scaled and center-cropped to this side
        "channels": 1,             # 1 gray, 3 RGB
        "hflip": False,            # random horizontal flips (photos yes, digits and text no)
        "cache": True,             # keep decoded folders under the cache (data.cache_dir)
    },
    "model": {
        "base_channels": 32,
        "channel_mults": [1, 2, 2],
        "blocks_per_level": 1,
        "attention_resolutions": [4],
        "attention_heads": 4,
        "groups": 8,
        "dropout": 0.0,
        "num_classes": 10,         # at least the number of class subfolders of the data
        "channels_last": True,     # channels_last weights and activations (faster convolutions)
    },
    # v prediction keeps the clean-data estimate finite near t = 1, where the cosine schedule's
    # signal is ~1e-3 and an eps model's x0 = (x - std * eps) / alpha blows up in few-step solvers.
    "diffusion": {"prediction": "v"},
    "train": {
        "steps": 1200,
        "batch_size": 64,
        "lr": 1e-3,
        "warmup_steps": 100,
        "ema_decay": 0.995,
        "checkpoint_every": 300,
        "preview_every": 300,
        "preview_count": 64,
    },
    "evaluate": {
        "classifier_epochs": 15,   # training of the feature classifier of the Fréchet distance
    },
}

PRESETS: dict[str, dict] = {
    # The defaults: 16x16 digits, a 1.2M-parameter U-Net, about 10 minutes on 2 CPU cores.
    "cpu": {},
    # 32x32 RGB at CIFAR-10 scale: the layout of the CIFAR-10 U-Net of Ho et al. (2020), 38M parameters.
    "gpu": {
        "data": {"image_size": 32, "channels": 3},
        "model": {"base_channels": 128, "channel_mults": [1, 2, 2, 2], "blocks_per_level": 2,
                  "attention_resolutions": [16], "attention_heads": 4, "groups": 32, "dropout": 0.1},
        "train": {"steps": 200_000, "batch_size": 128, "lr": 2e-4, "warmup_steps": 5000,
                  "ema_decay": 0.9999, "checkpoint_every": 5000, "preview_every": 5000, "num_workers": 4},
        "sample": {"steps": 50},
    },
}

LIMITS = {
    "data.image_size": at_least(1), "data.channels": at_least(1),
    "model.base_channels": at_least(1), "model.channel_mults": at_least(1), "model.blocks_per_level": at_least(0),
    "model.attention_resolutions": at_least(1), "model.attention_heads": at_least(1), "model.groups": at_least(1),
    "model.dropout": Limit(0, 1, high_open=True), "model.num_classes": at_least(0),
    "evaluate.classifier_epochs": at_least(1),
}

# Below this many pictures a run without --preset takes the cpu preset even on a GPU (a judgement:
# a fifth of the data the gpu preset was laid out for).
GPU_PRESET_MIN_PICTURES = 10_000

class ImageDomain(diffkit.Domain):
    name = "image"
    description = "pictures (B, C, H, W): class-conditional U-Net; handwritten digits built in"

    def default_config(self) -> dict:
        return copy.deepcopy(DEFAULTS)

    def presets(self) -> dict[str, dict]:
        return copy.deepcopy(PRESETS)

    def limits(self) -> dict[str, Limit]:
        return dict(LIMITS)

    def default_preset(self, data: str | None, device: torch.device) -> tuple[str, str]:
        """``cpu`` for the bundled digits and for small folders even on a GPU: the ``gpu`` preset
        is sized for CIFAR-10 (50,000 pictures of 32x32)."""
        from .data import list_images

        if data in (None, "", "digits"):
            return "cpu", "the bundled digits are 1,797 pictures of 16x16, too few for the gpu preset"
        if device.type != "cuda" or not Path(data).is_dir():
            return super().default_preset(data, device)
        count = len(list_images(Path(data))[0])
        if count < GPU_PRESET_MIN_PICTURES:
            return "cpu", f"{count:,} pictures are too few for the gpu preset (sized for 50,000)"
        return "gpu", f"{count:,} pictures and a CUDA device"

    # -- training -----------------------------------------------------------------------------

    def build_dataset(self, config: dict, data: str | None = None):
        """The 1,797 handwritten digits for ``data`` None or ``"digits"``, else a folder of pictures."""
        from .data import ImageDataset

        return ImageDataset(_images(data, config), hflip=bool(config["data"]["hflip"]))

    def build_model(self, config: dict) -> nn.Module:
        from .unet import build_unet

        return build_unet(config["data"], config["model"])

    def build_latent_model(self, config: dict, latent_shape: tuple[int, ...]) -> nn.Module:
        """The image U-Net of the ``model`` section on an autoencoder's square latents ``(C, S, S)``."""
        from .unet import build_unet

        channels, *sides = latent_shape
        if len(sides) != 2 or sides[0] != sides[1]:
            raise ValueError(f"the image domain's denoiser takes square latents (C, S, S), not {tuple(latent_shape)}")
        return build_unet({"image_size": sides[0], "channels": channels}, config["model"])

    def reconstruction_loss(self, reconstruction: Tensor, x: Tensor, config: dict) -> Tensor:
        """Pixel L1 plus the L1 distance of Laplacian pyramids (a perceptual-like term in which
        coarse structure counts as much as fine detail; :func:`diffkit.kit.reconstruction.laplacian_l1`)."""
        from diffkit.kit.reconstruction import laplacian_l1, mean_absolute_error

        return mean_absolute_error(reconstruction, x) + laplacian_l1(reconstruction, x)

    def fit_data(self, model: nn.Module, dataset, config: dict) -> None:
        counts = torch.bincount(dataset.labels, minlength=len(dataset.class_names))
        _unwrap(model).set_classes(dataset.class_names, counts)

    def null_cond(self, cond: Any) -> Any:
        """The null label (the model's null class) for every sample."""
        return None if cond is None else torch.full_like(cond, kit.NULL_LABEL)

    # -- sampling -----------------------------------------------------------------------------

    def prepare_sampling(self, model: nn.Module, n: int, config: dict, *, cond: Any = None,
                         generator: torch.Generator | None = None) -> dict:
        """``cond``: class labels as :mod:`diffkit.kit.conditions` reads them, or ``None`` for
        labels drawn with the training data's class frequencies."""
        unet = _unwrap(model)
        device = next(unet.parameters()).device
        x = torch.zeros(n, unet.channels, unet.image_size, unet.image_size, device=device)
        if cond is None:
            labels = kit.draw_labels(n, len(unet.class_names), unet.class_counts, generator)
        else:
            labels = kit.parse_labels(cond, unet.class_names, n)
        return {"x": x, "cond": labels.to(device)}

    def load_known(self, init: str, mask: str | None, n: int, config: dict, *, model=None,
                   cond: str | None = None, generator=None) -> dict:
        """The picture ``init`` fitted to the configured size, repeated ``n`` times; with ``mask``
        (a picture: white = keep, black = generate) also ``keep (n, 1, H, W)``. ``cond`` as in
        :meth:`prepare_sampling` (digit names only: the model is not at hand)."""
        from .files import read_known

        settings = config["data"]
        x, keep = read_known(init, mask, int(settings["image_size"]), int(settings["channels"]))
        batch: dict = {"x": x.expand(n, *x.shape).clone()}
        if keep is not None:
            batch["keep"] = keep.expand(n, *keep.shape).clone()
        if cond is not None:
            names = [str(i) for i in range(int(config["model"]["num_classes"]))]
            batch["cond"] = kit.parse_labels(cond, names, n)
        return batch

    def decode(self, x: Tensor, batch: dict) -> Tensor:
        return x.clamp(-1.0, 1.0)

    def write_samples(self, samples: dict, out: Path, config: dict) -> list[kit.Output]:
        """PNGs in the folder ``out`` (one per sample plus ``grid.png``), or one grid if ``out``
        ends in ``.png``. Existing files are never overwritten."""
        from .files import write_images

        return write_images(samples["x"].detach().cpu(), Path(out))

    def to_objects(self, samples: dict, config: dict) -> list:
        """PIL images (mode ``L`` for gray, ``RGB`` for colour), the pixels of the PNGs that
        :meth:`write_samples` writes."""
        from .files import pil_image

        return [pil_image(image) for image in samples["x"].detach().cpu()]

    # -- evaluation ---------------------------------------------------------------------------

    def evaluate(self, samples: Path, reference: Path | None, config: dict, *, cond: Any = None) -> dict[str, float]:
        """Fréchet distance in the features of a cached classifier trained on the reference, and
        nearest-neighbour memorisation scores (see :mod:`diffkit_image.evaluation`); with the
        asked labels ``cond``, how often that classifier reads a sample as its label."""
        from .evaluation import score
        from .files import read_images

        settings = config["data"]
        pictures = read_images(Path(samples), int(settings["image_size"]), int(settings["channels"]))
        images = _images(reference, config)
        asked = kit.parse_labels(cond, images.class_names, len(pictures)) if cond is not None else None
        return score(pictures, images, epochs=int(config["evaluate"]["classifier_epochs"]),
                     cache=kit.cache_dir(self.name, config), asked=asked)

    def pretrained(self) -> Path | None:
        return WEIGHTS if WEIGHTS.is_dir() else None


def _images(source: str | Path | None, config: dict):
    """The bundled digits for ``None`` or ``"digits"``, else the pictures of a folder (decoded once
    into the cache when ``data.cache``)."""
    from .data import load_digits, load_folder

    settings = config["data"]
    size, channels = int(settings["image_size"]), int(settings["channels"])
    if source in (None, "", "digits"):
        return load_digits(size, channels)
    cache = kit.cache_dir("image", config) if settings["cache"] else None
    return load_folder(source, size, channels, cache=cache)


def _unwrap(model: nn.Module) -> nn.Module:
    """The U-Net inside DistributedDataParallel or torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
