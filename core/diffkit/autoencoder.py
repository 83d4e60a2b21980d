"""The latent stage's autoencoder, trained by the common runner: ``diffkit train --stage autoencoder``.

For a data state ``x`` the encoder gives a posterior ``q(z | x) = N(mean, var)``; a draw
``z = mean + std * eps`` (``eps`` from the run's noise generator, so resuming is exact) is decoded
to ``x_hat``, and the autoencoder minimises

    rec(x_hat, x) + kl_weight * KL(q(z | x) || N(0, I))   [+ adversarial_weight * G(x_hat)]

``rec`` is the domain's :meth:`~diffkit.Domain.reconstruction_loss`; the KL is the mean over the
latent's entries of its closed form (:meth:`~diffkit.nets.autoencoder.Posterior.kl`), which keeps
the latents near the scale of a standard normal without asking them to be one (latent diffusion
measures and undoes their scale and shift afterwards, :mod:`diffkit.latent`).

With ``autoencoder.adversarial_weight > 0`` a patch discriminator learns, with the hinge loss, to
tell ``x`` from ``x_hat``, and from step ``autoencoder.adversarial_start`` the autoencoder also
minimises ``G(x_hat) = -D(x_hat)``. Both live in one model trained by one optimizer: ``G`` reads
the discriminator through detached copies of its weights (its gradient reaches the autoencoder
only), and the discriminator's loss reads detached reconstructions (its gradient reaches the
discriminator only). Checkpoints with digests, exact resume, EMA, bf16 autocast on GPUs and DDP
are the runner's; previews show each original beside its reconstruction, and ``metrics.jsonl``
logs each term beside the loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import Dataset, default_collate

from .domain import Domain, accepted_keywords
from .nets.autoencoder import PatchDiscriminator
from .runner import DenoisingObjective, SeededItems, TrainingError
from .tree import batch_size


class AutoencoderTraining(nn.Module):
    """The autoencoder (``.autoencoder``) and its optional discriminator (``.discriminator``);
    ``forward(x, noise)`` returns the reconstruction from a posterior draw, each sample's KL and,
    with a discriminator, each sample's adversarial and discriminator terms (module docstring)."""

    def __init__(self, autoencoder: nn.Module, discriminator: nn.Module | None = None):
        super().__init__()
        self.autoencoder, self.discriminator = autoencoder, discriminator

    def forward(self, x: Tensor, noise: Tensor) -> dict[str, Tensor]:
        posterior = self.autoencoder.encode(x)
        reconstruction = self.autoencoder.decode(posterior.sample(noise))
        out = {"reconstruction": reconstruction, "kl": posterior.kl()}
        if self.discriminator is not None:
            frozen = {name: parameter.detach() for name, parameter in self.discriminator.named_parameters()}
            fooled = functional_call(self.discriminator, frozen, (reconstruction,))
            real, fake = self.discriminator(x), self.discriminator(reconstruction.detach())
            out["adversarial"] = -per_sample_mean(fooled)
            out["discriminator"] = per_sample_mean(F.relu(1 - real)) + per_sample_mean(F.relu(1 + fake))
        return out


def per_sample_mean(values: Tensor) -> Tensor:
    return values.float().reshape(values.shape[0], -1).mean(dim=1)


class AutoencoderObjective(DenoisingObjective):
    """The runner's objective for ``train.stage = "autoencoder"`` (module docstring)."""

    def __init__(self, config: dict):
        if config["latent"]["autoencoder"]:
            raise ValueError("an autoencoder learns the data itself: --stage autoencoder does not go with "
                             "--autoencoder (latent.autoencoder)")
        settings = config["autoencoder"]
        self.kl_weight = float(settings["kl_weight"])
        self.adversarial_weight = float(settings["adversarial_weight"])
        self.adversarial_start = int(settings["adversarial_start"])
        self.step, self.latent_shape, self.last_terms = 0, (), {}
        self.domain: Domain | None = None
        self.config: dict = config
        self.decoding_model: nn.Module | None = None

    def build_model(self, domain: Domain, config: dict, dataset: Dataset) -> nn.Module:
        self.domain, self.config = domain, config
        shape = state_shape(domain, dataset, config)
        try:
            autoencoder = domain.build_autoencoder(config, shape)
        except ValueError as error:
            raise TrainingError(f"the {domain.name} domain's autoencoder: {error}") from None
        self.latent_shape = tuple(autoencoder.latent_shape)
        discriminator = None
        if self.adversarial_weight > 0:
            discriminator = PatchDiscriminator(shape[0], len(shape) - 1, groups=int(config["autoencoder"]["groups"]))
        return AutoencoderTraining(autoencoder, discriminator)

    def fit_data(self, domain: Domain, model: nn.Module, dataset: Dataset, config: dict) -> None:
        """Nothing: the autoencoder learns the data's statistics."""

    def process(self, domain, config, registry, model, example) -> None:
        return None  # no diffusion: build_model checked the data

    def training_times(self, diffusion, size: int, generator: torch.Generator) -> Tensor:
        return torch.zeros(size)  # unused: an autoencoder has no times

    def training_noise(self, domain: Domain, like: Tensor, generator: torch.Generator, **extra) -> Tensor:
        """Standard normals shaped like the batch's latents: the posterior draws."""
        return torch.randn((batch_size(like), *self.latent_shape), generator=generator)

    def start_step(self, step: int) -> None:
        self.step = step

    def loss(self, diffusion, model: nn.Module, x0: Tensor, *, noise: Tensor, **options: Any) -> Tensor:
        out = model(x0, noise)
        reconstruction = self.domain.reconstruction_loss(out["reconstruction"], x0, self.config)
        loss = reconstruction + self.kl_weight * out["kl"]
        terms = {"reconstruction": reconstruction, "kl": out["kl"]}
        if "adversarial" in out:
            weight = self.adversarial_weight if self.step >= self.adversarial_start else 0.0
            loss = loss + weight * out["adversarial"] + out["discriminator"]
            terms.update(adversarial=out["adversarial"], discriminator=out["discriminator"])
        self.last_terms = {name: value.detach().mean() for name, value in terms.items()}
        return loss.mean()

    def terms(self) -> dict[str, Tensor]:
        return self.last_terms

    @torch.no_grad()
    def preview(self, domain: Domain, model: nn.Module, config: dict, device: torch.device, registry,
                dataset: Dataset) -> dict:
        """``train.preview_count`` states of the data spread over it, each followed by its
        reconstruction from the posterior's mean, decoded by the domain."""
        count = min(int(config["train"]["preview_count"]), len(dataset))
        indices = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()
        batch = default_collate([SeededItems(dataset)[index, index] for index in indices])
        x = batch["x"].to(device)
        autoencoder = model.autoencoder.eval()
        reconstruction = autoencoder.decode(autoencoder.encode(x).mean).to(x.dtype)
        pairs = {"x": torch.stack([x, reconstruction], dim=1).flatten(0, 1)}
        if "cond" in batch:
            pairs["cond"] = batch["cond"].repeat_interleave(2, dim=0)
        keywords = accepted_keywords(domain.decode, model=self._decoding_model(domain, dataset, config), config=config)
        pairs["x"] = domain.decode(pairs["x"], pairs, **keywords).cpu()
        return pairs

    def _decoding_model(self, domain: Domain, dataset: Dataset, config: dict) -> nn.Module | None:
        """A denoiser holding what :meth:`Domain.fit_data` records, for a ``decode`` that reads it
        (e.g. the statistics a dataset was standardised with); built once, only when needed."""
        if "model" not in accepted_keywords(domain.decode, model=None):
            return None
        if self.decoding_model is None:
            self.decoding_model = domain.build_model(config)
            domain.fit_data(self.decoding_model, dataset, config)
        return self.decoding_model

    def run_info(self) -> dict:
        return {"stage": "autoencoder", "latent_shape": list(self.latent_shape)}


def state_shape(domain: Domain, dataset: Dataset, config: dict) -> tuple[int, ...]:
    """The shape of one data state, read from the first item and recorded as
    ``autoencoder.state_shape`` (a value recorded before must agree with it); states an
    autoencoder cannot take are refused with the reason."""
    item = SeededItems(dataset)[0, 0]
    x = item["x"]
    if not isinstance(x, Tensor) or not x.is_floating_point():
        kind = type(x).__name__ if not isinstance(x, Tensor) else f"a {x.dtype} tensor"
        raise TrainingError(f"the {domain.name} domain's states are {kind}: the autoencoder stage encodes states "
                            "that are one floating-point tensor")
    extras = sorted(key for key in ("mask", "extra") if key in item)
    if extras:
        raise TrainingError(f"the {domain.name} domain's items carry {' and '.join(extras)}: the autoencoder stage "
                            "encodes dense states without padding or extra inputs")
    shape = tuple(x.shape)
    recorded = tuple(config["autoencoder"]["state_shape"])
    if recorded and recorded != shape:
        raise TrainingError(f"the data's states have shape {shape}, but autoencoder.state_shape is {recorded}: "
                            "this autoencoder was made for other data or settings")
    config["autoencoder"]["state_shape"] = list(shape)
    return shape
