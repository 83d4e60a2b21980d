"""An autoencoder that does nothing, for tests of the latent stage against the data itself."""

from __future__ import annotations

from torch import nn

from diffkit.nets.autoencoder import Posterior


class IdentityAutoencoder(nn.Module):
    """Latents that are the states: ``encode`` and ``decode`` return what they get."""

    def __init__(self, shape):
        super().__init__()
        self.latent_shape = tuple(shape)

    def encode(self, x):
        return Posterior(x)

    def decode(self, z):
        return z
