"""pix2pixHD generators (Wang et al. 2018) as Fundus2Video uses them, with knowledge-boosted
attention (KBA).

Global generator: one `nn.Sequential` called `model`, so parameter names and the layer indices
PatchNCE uses, {0, 4, 8, 12, 16}, match pix2pixHD's `GlobalGenerator`:
  reflect-pad 3, conv 7x7 (ngf), IN, ReLU
  n_downsample x [conv 3x3 stride 2 (channels x2), IN, ReLU]
  n_blocks x residual block [pad, conv 3x3, IN, ReLU, pad, conv 3x3, IN] + skip
  n_downsample x [transposed conv 3x3 stride 2 (channels /2), IN, ReLU]
  reflect-pad 3, conv 7x7 (output_nc), tanh
InstanceNorm has affine=False (no parameters), as in pix2pixHD.

Knowledge-boosted attention (KBA, `networks/kba.py`) acts after the configured layers of `model`;
with none, the generator is exactly pix2pixHD's and loads its weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fundus2video.networks.kba import KnowledgeBoostedAttention, kba_channels, kba_positions


def init_weights(module: nn.Module) -> None:
    """pix2pixHD's initialisation: conv weights ~ N(0, 0.02) (biases keep PyTorch's default)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)


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

    H and W must be divisible by 2**n_downsample. `kba_stages` lists where knowledge-boosted
    attention acts (empty: plain pix2pixHD).
    """

    def __init__(self, input_nc: int, output_nc: int, ngf: int = 64, n_downsample: int = 4,
                 n_blocks: int = 9, padding: str = "reflect", kba_stages: list[str] | tuple[str, ...] = ()):
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

        positions = kba_positions(n_downsample, n_blocks)
        unknown = [s for s in kba_stages if s not in positions]
        if unknown:
            raise ValueError(f"unknown KBA stage(s) {unknown}; expected some of {list(positions)}")
        channels = kba_channels(ngf, n_downsample)
        # attention heads, keyed by stage; `_kba_at` maps a layer index to its stage
        self.attention = nn.ModuleDict({s: KnowledgeBoostedAttention(channels[s]) for s in kba_stages})
        self._kba_at = {positions[s]: s for s in kba_stages}

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """The generated frames; with `return_attention`, also the KBA logits per stage
        (B, 1, h, w), for the auxiliary loss toward the knowledge mask."""
        logits = {}
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in self._kba_at:
                x, logits[self._kba_at[i]] = self.attention[self._kba_at[i]].boost(x)
        return (x, logits) if return_attention else x

    def encode(self, x: torch.Tensor, layer_ids: list[int]) -> list[torch.Tensor]:
        """Outputs of the layers `layer_ids` of `model` (index 0 = the input padding's output),
        stopping after the deepest one: the features PatchNCE compares (CUT's `encode_only`)."""
        feats, last = [], max(layer_ids)
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in self._kba_at:
                x, _ = self.attention[self._kba_at[i]].boost(x)
            if i in layer_ids:
                feats.append(x)
            if i == last:
                break
        return feats


class LocalEnhancer(nn.Module):
    """pix2pixHD's local enhancer for higher resolutions: a global generator (ngf x 2) on the
    input downsampled once, without its final conv layers, whose features are added to a local
    branch at full resolution. Parameter names follow pix2pixHD (`model`, `model1_1`, `model1_2`);
    KBA acts in the global part. One enhancer level (pix2pixHD's default).
    """

    def __init__(self, input_nc: int, output_nc: int, ngf: int = 32, n_downsample: int = 3,
                 n_blocks: int = 9, n_blocks_local: int = 3, padding: str = "reflect",
                 kba_stages: list[str] | tuple[str, ...] = ()):
        super().__init__()
        self.global_net = GlobalGenerator(input_nc, output_nc, 2 * ngf, n_downsample, n_blocks, padding, kba_stages)
        del self.global_net.model[-3:]  # the global branch ends at its last upsampling block
        self.model1_1 = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(True),
            nn.Conv2d(ngf, 2 * ngf, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * ngf), nn.ReLU(True))
        self.model1_2 = nn.Sequential(
            *[ResnetBlock(2 * ngf, padding) for _ in range(n_blocks_local)],
            nn.ConvTranspose2d(2 * ngf, ngf, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(ngf), nn.ReLU(True),
            nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh())

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        small = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        coarse, logits = self.global_net(small, return_attention=True)
        out = self.model1_2(self.model1_1(x) + coarse)
        return (out, logits) if return_attention else out

    def encode(self, x: torch.Tensor, layer_ids: list[int]) -> list[torch.Tensor]:
        """PatchNCE features: layers of the global branch on the downsampled input."""
        small = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        return self.global_net.encode(small, layer_ids)


# netg -> the class and its constructor's arguments besides input_nc / output_nc, in order: the one
# place a name becomes a generator (the module, and the Hub loader, which picks among these only and
# never imports a name read from a file)
GENERATORS: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "global": (GlobalGenerator, ("ngf", "n_downsample", "n_blocks", "padding", "kba_stages")),
    "local": (LocalEnhancer, ("ngf", "n_downsample", "n_blocks", "n_blocks_local", "padding", "kba_stages")),
}


def build_generator(netg: str, input_nc: int, output_nc: int, **settings) -> nn.Module:
    """The generator `netg` names (model.generator.netg), given the settings its class takes (others,
    e.g. n_blocks_local for a global generator, are left out)."""
    if netg not in GENERATORS:
        raise ValueError(f"generator '{netg}' is not one of {', '.join(GENERATORS)}")
    cls, names = GENERATORS[netg]
    return cls(input_nc, output_nc, **{name: settings[name] for name in names})
