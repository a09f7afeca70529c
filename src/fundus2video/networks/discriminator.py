"""Multi-scale PatchGAN discriminator of pix2pixHD, returning intermediate features.

Each scale is an N-layer PatchGAN (kernel 4, padding 2, LeakyReLU 0.2, InstanceNorm):
  conv s2 (ndf), LReLU | (n_layers - 1) x [conv s2 (x2, max 512), IN, LReLU]
  | conv s1 (x2, max 512), IN, LReLU | conv s1 (1)
Scale i sees the input average-pooled i times (3x3, stride 2, padding 1, not counting padding).
The output is a list over scales (full resolution first) of lists of layer outputs; the last
entry of each is the patch score map, the others are the features for feature matching.

Parameter names: pix2pixHD stores scale s, layer j as `scale{s}_layer{j}.*`, where its output
list is in reverse scale order (output i comes from scale num_D - 1 - i). Here they are
`scales.{i}.{j}.*` in output order; `pix2pixhd_key` maps one name onto the other.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def patch_layers(input_nc: int, ndf: int = 64, n_layers: int = 3) -> nn.ModuleList:
    """The n_layers + 2 blocks of one PatchGAN, each an `nn.Sequential`."""
    kw, pad = 4, math.ceil((4 - 1) / 2)
    blocks = [nn.Sequential(nn.Conv2d(input_nc, ndf, kw, stride=2, padding=pad), nn.LeakyReLU(0.2, True))]
    nf = ndf
    for _ in range(1, n_layers):
        prev, nf = nf, min(nf * 2, 512)
        blocks.append(nn.Sequential(nn.Conv2d(prev, nf, kw, stride=2, padding=pad),
                                    nn.InstanceNorm2d(nf), nn.LeakyReLU(0.2, True)))
    prev, nf = nf, min(nf * 2, 512)
    blocks.append(nn.Sequential(nn.Conv2d(prev, nf, kw, stride=1, padding=pad),
                                nn.InstanceNorm2d(nf), nn.LeakyReLU(0.2, True)))
    blocks.append(nn.Sequential(nn.Conv2d(nf, 1, kw, stride=1, padding=pad)))
    return nn.ModuleList(blocks)


class MultiscaleDiscriminator(nn.Module):
    """(B, input_nc, H, W) -> [[features..., score] per scale], full resolution first."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, num_d: int = 2):
        super().__init__()
        self.n_layers, self.num_d = n_layers, num_d
        self.scales = nn.ModuleList(patch_layers(input_nc, ndf, n_layers) for _ in range(num_d))

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        outputs = []
        for i, blocks in enumerate(self.scales):
            if i > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            feats, h = [], x
            for block in blocks:
                h = block(h)
                feats.append(h)
            outputs.append(feats)
        return outputs


def build_discriminator(input_nc: int, ndf: int = 64, n_layers: int = 3, num_d: int = 2) -> nn.Module:
    """The one place a discriminator is made: pix2pixHD's multi-scale PatchGAN (another D goes here,
    returning [[features..., score] per scale] as it does, and KAD wraps it unchanged)."""
    return MultiscaleDiscriminator(input_nc, ndf, n_layers, num_d)


class KnowledgeAwareDiscriminator:
    """The knowledge-aware discriminator (KAD) around any discriminator `d`: an input judged whole
    and, when `knowledge_aware`, also multiplied by the knowledge mask (x * km), so that the masked
    regions, where the dye's kinetics show, are judged on their own. Its loss terms are in
    `losses/kad.py`. Without `knowledge_aware` it is `d` alone. It holds no parameters (not an
    nn.Module): `d` keeps its own names, so checkpoints and imported pix2pixHD weights fit either."""

    def __init__(self, d: nn.Module, knowledge_aware: bool = True):
        self.d = d
        self.knowledge_aware = knowledge_aware

    def __call__(self, x: torch.Tensor, km: torch.Tensor) -> tuple[list[list[torch.Tensor]],
                                                                    list[list[torch.Tensor]] | None]:
        """(D(x), D(x * km)), the second None without `knowledge_aware`. Both in one batched call
        (D is per sample: convolutions and instance norm), split back. A km of C > 1 channels (the
        signed mask: brightening, darkening) gives C masked views of each sample, judged alike; the
        second output then holds C x B samples, so its LSGAN mean weighs the views equally."""
        if not self.knowledge_aware:
            return self.d(x), None
        n = x.shape[0]
        views = [x * km[:, c:c + 1] for c in range(km.shape[1])]
        outs = self.d(torch.cat([x, *views], dim=0))
        return [[f[:n] for f in scale] for scale in outs], [[f[n:] for f in scale] for scale in outs]


def pix2pixhd_key(name: str, num_d: int) -> str:
    """Our parameter name `scales.i.j.rest` -> pix2pixHD's `scale{num_d-1-i}_layer{j}.rest`."""
    _, i, j, rest = name.split(".", 3)
    return f"scale{num_d - 1 - int(i)}_layer{j}.{rest}"
