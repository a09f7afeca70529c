"""Plain `nn.Module` networks (no Lightning import): generators, discriminator, projector."""

from fundus2video.networks.discriminator import MultiscaleDiscriminator
from fundus2video.networks.generator import GlobalGenerator, LocalEnhancer
from fundus2video.networks.projector import PatchProjector

__all__ = ["GlobalGenerator", "LocalEnhancer", "MultiscaleDiscriminator", "PatchProjector"]
