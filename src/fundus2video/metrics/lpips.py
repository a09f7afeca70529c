"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features") without torchvision.

The backbone (VGG16 or AlexNet ``features``) is built here with torchvision's module indices, so a
torchvision ImageNet state dict (``vgg16-397923af.pth``, ``alexnet-owt-7be5be79.pth``: keys
``features.0.weight``, ...) loads as is, from a path the user gives (nothing is downloaded). The
learned 1x1 linear heads are the ones torchmetrics ships (``torchmetrics/functional/image/lpips_models``).

LPIPS(x0, x1), images in [-1, 1]: shift/scale each image by the ImageNet constants below, take the
backbone's activations at 5 ReLUs, unit-normalise each activation over channels, square the difference,
weight channels with the layer's 1x1 head, average over space, sum over layers. 0 for identical images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torchmetrics.functional.image
from torch import Tensor, nn
from torchmetrics import Metric

__all__ = ["LPIPS", "LPIPSBackbone", "VideoLPIPS", "load_backbone"]

HEADS_DIR = Path(torchmetrics.functional.image.__file__).parent / "lpips_models"
_SHIFT = (-0.030, -0.088, -0.188)  # the LPIPS ScalingLayer constants
_SCALE = (0.458, 0.448, 0.450)


def _vgg16_features() -> nn.Sequential:
    """torchvision vgg16().features up to relu5_3 (index 29; the last max-pool has no weights)."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU()]
            c_in = v
    return nn.Sequential(*layers)


def _alexnet_features() -> nn.Sequential:
    """torchvision alexnet().features up to relu5 (index 11)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )


# net -> (features builder, indices of the ReLUs LPIPS taps, their channels, torchvision's file and constructor)
_NETS: dict[str, tuple[Callable[[], nn.Sequential], tuple[int, ...], tuple[int, ...], str, str]] = {
    "vgg": (_vgg16_features, (3, 8, 15, 22, 29), (64, 128, 256, 512, 512), "vgg16-397923af.pth", "vgg16"),
    "alex": (_alexnet_features, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256), "alexnet-owt-7be5be79.pth", "alexnet"),
}


def _check_net(net: str) -> None:
    if net not in _NETS:
        raise ValueError(f"net must be one of {sorted(_NETS)}, got {net!r}")


class LPIPSBackbone(nn.Module):
    """VGG16 or AlexNet ``features`` with torchvision's key names; forward returns LPIPS' 5 ReLU activations."""

    def __init__(self, net: str = "vgg") -> None:
        super().__init__()
        _check_net(net)
        build, self.taps, self.channels, _, _ = _NETS[net]
        self.features = build()

    def forward(self, x: Tensor) -> list[Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                taps.append(x)
        return taps


def _load(path: Path, expected: str) -> Mapping:
    from fundus2video.io import read_state_dict

    return read_state_dict(path, expected)


def load_backbone(path: str | Path, net: str = "vgg") -> LPIPSBackbone:
    """The backbone with weights from a torchvision state dict file; other keys (classifier.*) are ignored."""
    _check_net(net)
    path = Path(path)
    _, _, _, tv_file, tv_name = _NETS[net]
    expected = (f"a torchvision {tv_name} state dict (torchvision.models.{tv_name}(weights=...).state_dict(), "
                f"e.g. {tv_file}) with keys features.0.weight, features.0.bias, ...")
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS backbone file {path} not found; expected {expected}")
    state = _load(path, expected)
    with torch.device("meta"):  # no random init: every weight comes from the file
        model = LPIPSBackbone(net)
    for key, want in model.state_dict().items():
        if key not in state:
            raise ValueError(f"{path} has no key {key}; expected {expected}")
        if tuple(state[key].shape) != tuple(want.shape):
            raise ValueError(f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(want.shape)} "
                             f"for {tv_name}")
    model.load_state_dict({key: state[key].float() for key in model.state_dict()}, assign=True)
    return model


def _load_heads(net: str, channels: tuple[int, ...]) -> nn.ModuleList:
    """The 1x1 heads from torchmetrics' lpips_models/{net}.pth (keys lin{k}.model.1.weight)."""
    path = HEADS_DIR / f"{net}.pth"
    expected = "the LPIPS linear heads shipped with torchmetrics (keys lin0.model.1.weight, ...)"
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS head file {path} not found; expected {expected}")
    state = _load(path, expected)
    heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
    for k, head in enumerate(heads):
        key = f"lin{k}.model.1.weight"
        if key not in state or tuple(state[key].shape) != tuple(head.weight.shape):
            raise ValueError(f"{path}: expected {key} of shape {tuple(head.weight.shape)}")
        head.weight.data.copy_(state[key])
    return heads


def _unit(f: Tensor, eps: float = 1e-10) -> Tensor:
    """Unit-normalise over channels, as the reference (lpips.normalize_tensor: f / (norm + 1e-10))."""
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)


def _frozen_buffers(module: nn.Module) -> None:
    """Turn parameters into non-persistent buffers: they move with .to() but stay out of optimisers and checkpoints."""
    for m in module.modules():
        for name, p in list(m.named_parameters(recurse=False)):
            delattr(m, name)
            m.register_buffer(name, p.detach(), persistent=False)


class LPIPS(nn.Module):
    """LPIPS distance; forward(x0, x1) for images (N, 3, H, W) in [-1, 1] -> (N,). Frozen, weights not saved."""

    def __init__(self, backbone_path: str | Path, net: str = "vgg") -> None:
        super().__init__()
        self.backbone = load_backbone(backbone_path, net)
        self.heads = _load_heads(net, self.backbone.channels)
        self.register_buffer("shift", torch.tensor(_SHIFT)[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE)[None, :, None, None], persistent=False)
        _frozen_buffers(self)
        self.eval()

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        feats = self.backbone((torch.cat([x0, x1]) - self.shift) / self.scale)
        return sum(head((_unit(f[: len(x0)]) - _unit(f[len(x0):])) ** 2).mean((1, 2, 3))
                   for head, f in zip(self.heads, feats))


class VideoLPIPS(Metric):
    """LPIPS per frame of videos (B, T, C, H, W) in [0, 1], averaged over frames; lower is better.

    C is 1 (grey frames, repeated to 3 channels, as LPIPS' authors advise for grey images) or 3.
    ``backbone_path``: a torchvision state dict file for ``net`` ('vgg': vgg16-397923af.pth, 'alex':
    alexnet-owt-7be5be79.pth); heads from torchmetrics. States: ``total`` (sum of per-frame distances)
    and ``count`` (frames), summed under DDP. Frames go through the network ``chunk`` at a time.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, backbone_path: str | Path, net: str = "vgg", chunk: int = 16, **kwargs) -> None:
        super().__init__(**kwargs)
        self.lpips = LPIPS(backbone_path, net)
        self.chunk = chunk
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, fake: Tensor, real: Tensor) -> None:
        """Add videos (B, T, C, H, W), C in {1, 3}, values in [0, 1]."""
        if fake.ndim != 5 or fake.shape != real.shape or fake.shape[2] not in (1, 3):
            raise ValueError(f"expected fake and real videos of one shape (B, T, C, H, W) with C 1 or 3, "
                             f"got {tuple(fake.shape)} and {tuple(real.shape)}")
        lo, hi = min(fake.min(), real.min()), max(fake.max(), real.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"VideoLPIPS expects frames in [0, 1], got values in [{float(lo):.3g}, {float(hi):.3g}]")
        fake, real = (v.flatten(0, 1).float().expand(-1, 3, -1, -1) * 2 - 1 for v in (fake, real))
        with torch.no_grad():
            for i in range(0, len(fake), self.chunk):
                self.total += self.lpips(fake[i:i + self.chunk], real[i:i + self.chunk]).sum().double()
        self.count += len(fake)

    def compute(self) -> Tensor:
        """Mean LPIPS over frames."""
        return (self.total / self.count).float()
