"""Plain `nn.Module` networks (no Lightning import): generator and discriminator."""

from fundus2video.networks.discriminator import MultiscaleDiscriminator
from fundus2video.networks.generator import GlobalGenerator

__all__ = ["GlobalGenerator", "MultiscaleDiscriminator"]
