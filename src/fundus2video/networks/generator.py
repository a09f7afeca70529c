"""pix2pixHD global generator (Wang et al. 2018), as the Fundus2Video release uses it.

Layer sequence (all in one `nn.Sequential` called `model`, so parameter names and the layer
indices used by PatchNCE, {0, 4, 8, 12, 16}, match pix2pixHD's `GlobalGenerator`):
  reflect-pad 3, conv 7x7 (ngf), IN, ReLU
  n_downsample x [conv 3x3 stride 2 (channels x2), IN, ReLU]
  n_blocks x residual block [pad, conv 3x3, IN, ReLU, pad, conv 3x3, IN] + skip
  n_downsample x [transposed conv 3x3 stride 2 (channels /2), IN, ReLU]
  reflect-pad 3, conv 7x7 (output_nc), tanh
InstanceNorm has affine=False (no parameters), as in pix2pixHD.
"""

from __future__ import annotations

import torch
from torch import nn


def _pad(kind: str, width: int) -> list[nn.Module]:
    if kind == "reflect":
        return [nn.ReflectionPad2d(width)]
    if kind == "replicate":
        return [nn.ReplicationPad2d(width)]
    if kind == "zero":
        return []
    raise ValueError(f"padding '{kind}' is not one of reflect, replicate, zero")


class ResnetBlock(nn.Module):
    """x + [pad, conv3, IN, ReLU, pad, conv3, IN](x); the submodule is named `conv_block` as in pix2pixHD."""

    def __init__(self, dim: int, padding: str = "reflect"):
        super().__init__()
        p = 1 if padding == "zero" else 0
        self.conv_block = nn.Sequential(
            *_pad(padding, 1), nn.Conv2d(dim, dim, 3, padding=p), nn.InstanceNorm2d(dim), nn.ReLU(True),
            *_pad(padding, 1), nn.Conv2d(dim, dim, 3, padding=p), nn.InstanceNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class GlobalGenerator(nn.Module):
    """Maps (B, input_nc, H, W) in [-1, 1] to (B, output_nc, H, W) in [-1, 1].

    H and W must be divisible by 2**n_downsample.
    """

    def __init__(self, input_nc: int, output_nc: int, ngf: int = 64, n_downsample: int = 4,
                 n_blocks: int = 9, padding: str = "reflect"):
        super().__init__()
        self.n_downsample = n_downsample
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7),
                                   nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        for i in range(n_downsample):
            c = ngf * 2**i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * c), nn.ReLU(True)]
        c = ngf * 2**n_downsample
        layers += [ResnetBlock(c, padding) for _ in range(n_blocks)]
        for i in range(n_downsample):
            c = ngf * 2 ** (n_downsample - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(c // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def encode(self, x: torch.Tensor, layer_ids: list[int]) -> list[torch.Tensor]:
        """Outputs of the layers `layer_ids` of `model` (index 0 = the input padding's output),
        stopping after the deepest one: the features PatchNCE compares (CUT's `encode_only`)."""
        feats, last = [], max(layer_ids)
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in layer_ids:
                feats.append(x)
            if i == last:
                break
        return feats
