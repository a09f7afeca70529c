"""Plain `nn.Module` networks (no Lightning import): generators, knowledge-boosted attention,
discriminator, projector."""

from fundus2video.networks.discriminator import MultiscaleDiscriminator
from fundus2video.networks.generator import GlobalGenerator, LocalEnhancer
from fundus2video.networks.kba import KnowledgeBoostedAttention
from fundus2video.networks.projector import PatchProjector

__all__ = ["GlobalGenerator", "KnowledgeBoostedAttention", "LocalEnhancer", "MultiscaleDiscriminator",
           "PatchProjector"]
