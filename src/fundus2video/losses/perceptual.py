"""VGG19 perceptual loss (pix2pixHD's `VGGLoss`, kept unchanged in the authors' release).

    L = sum_i w_i * mean|phi_i(fake) - phi_i(real)|,   w = (1/32, 1/16, 1/8, 1/4, 1)

phi_1..phi_5 are the ImageNet VGG19's relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1
activations; the real features carry no gradient. As in pix2pixHD, the images go into the VGG
as they are: no ImageNet mean/std normalisation and no rescaling (the generator's [-1, 1]
range), and the release applies it to the 3-channel window (3 frames) as if it were RGB.

The VGG is written here (torchvision is not a dependency) with torchvision's layer indices, so
torchvision's weight file `vgg19-dcbb9e9d.pth` loads into it unchanged (`load_vgg19`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fundus2video.errors import ConfigError, UserError
from fundus2video.losses.terms import Window, generator_term

WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"
WEIGHTS_URL = f"https://download.pytorch.org/models/{WEIGHTS_FILE}"
CONFIG_KEY = "loss.vgg_weights"

# torchvision's configuration "E": output channels of each 3x3 conv, "M" a 2x2 max-pool
VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
# pix2pixHD's slices end after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1: features[0:2],
# [2:7], [7:12], [12:21], [21:30]; the layers after index 29 are never used
SLICE_ENDS = (2, 7, 12, 21, 30)
PIX2PIXHD_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


class VGG19Features(nn.Module):
    """torchvision's `vgg19().features` (same indices, same parameter names), frozen, in eval
    mode. `forward` returns [relu1_1, relu2_1, relu3_1, relu4_1, relu5_1] of a (B, 3, H, W)
    input: 64, 128, 256, 512, 512 channels at strides 1, 2, 4, 8, 16."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for v in VGG19_CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                # in-place ReLU as in torchvision: saves one activation per layer, and nothing
                # later modifies a returned activation in place
                layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.requires_grad_(False)
        self.eval()  # no dropout or batch norm, so the mode changes nothing; stated for clarity

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"the VGG19 takes (B, 3, H, W) input, got {tuple(x.shape)}")
        out, start = [], 0
        for end in SLICE_ENDS:
            x = self.features[start:end](x)
            out.append(x)
            start = end
        return out


WEIGHTS_HELP = (f"torchvision's ImageNet VGG19 weights, {WEIGHTS_FILE} ({WEIGHTS_URL}): download it and set "
                f"{CONFIG_KEY} to its path")


def _features_mismatch(state: Mapping, expected: Mapping[str, torch.Tensor], limit: int = 5) -> list[str]:
    """Problems with the file's `features.*` entries, one line each (at most `limit` per kind)."""
    given = {k: v for k, v in state.items() if isinstance(k, str) and k.startswith("features.")}
    missing = [f"missing {k} (expected shape {tuple(v.shape)})" for k, v in expected.items() if k not in given]
    unexpected = [f"unexpected {k}" for k in given if k not in expected]
    wrong = []
    for k, v in given.items():
        if k not in expected:
            continue
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        if shape != tuple(expected[k].shape):
            wrong.append(f"{k} has shape {shape}, expected {tuple(expected[k].shape)}")
    problems = []
    for kind in (missing, wrong, unexpected):
        problems += kind[:limit] + ([f"... and {len(kind) - limit} more"] if len(kind) > limit else [])
    return problems


def load_vgg19(path: str | Path) -> VGG19Features:
    """The frozen VGG19 features with the ImageNet weights of torchvision's `vgg19-dcbb9e9d.pth`.

    `path` holds a torchvision-format state dict (keys `features.<i>.weight|bias`; the
    `classifier.*` entries are ignored), or a dict with one under "state_dict". Raises
    `UserError` for a missing or unreadable file and for missing, unexpected or misshaped
    `features.*` entries (naming the first few with the expected shapes). `auto` (or "", unset)
    and the name `vgg19` mean the cached file, downloaded and verified first where it is missing
    (`fundus2video.pretrained`).
    """
    from fundus2video.pretrained import is_name, weights_file

    if isinstance(path, str) and (not path or is_name(path)):
        path = weights_file(path or "auto", CONFIG_KEY, auto=("vgg19",))
    from fundus2video.io import read_state_dict

    path = Path(path)
    state = read_state_dict(path, WEIGHTS_HELP)
    vgg = VGG19Features()
    expected = vgg.state_dict()
    problems = _features_mismatch(state, expected)
    if problems:
        raise UserError(f"{path} does not match VGG19's features:\n  " + "\n  ".join(problems)
                        + f"\nexpected {WEIGHTS_HELP}")
    vgg.load_state_dict({k: state[k] for k in expected})
    return vgg


def vgg_perceptual_loss(vgg: VGG19Features, fake: torch.Tensor, real: torch.Tensor,
                        weights: Sequence[float] = PIX2PIXHD_WEIGHTS) -> torch.Tensor:
    """pix2pixHD's VGG loss between (B, 3, H, W) `fake` and `real`, fed to the VGG as they are
    (no ImageNet normalisation, as pix2pixHD): sum_i weights[i] * L1(phi_i(fake), phi_i(real))."""
    fake_feats = vgg(fake)
    # pix2pixHD detaches the real features; not recording their graph at all gives the same
    # value and gradients and saves the memory of a second VGG graph
    with torch.no_grad():
        real_feats = vgg(real)
    return sum(w * F.l1_loss(f, r) for w, f, r in zip(weights, fake_feats, real_feats, strict=True))


class VGGLoss(nn.Module):
    """`vgg_perceptual_loss` around a VGG19Features (e.g. `VGGLoss(load_vgg19(path))`).

    The VGG is fixed ImageNet weights, not model state: it stays out of the owner's
    `state_dict` (so out of Lightning checkpoints), `parameters()` and DDP, yet moves with
    `.to()`, `.cuda()`, `.double()` and the like.
    """

    def __init__(self, vgg: VGG19Features, weights: Sequence[float] = PIX2PIXHD_WEIGHTS):
        super().__init__()
        # object.__setattr__ skips nn.Module's registration, so the VGG is a plain attribute:
        # not a child, hence absent from state_dict/load_state_dict (no 80 MB per checkpoint,
        # no missing-key errors on strict loading) and from parameters(). Moving is the one
        # thing a child would get for free; `_apply` below carries the VGG along.
        object.__setattr__(self, "vgg", vgg)
        self.weights = tuple(weights)

    def _apply(self, fn, recurse=True):
        # every device/dtype conversion (.to, .cuda, .float, .half, ...) ends up here
        self.vgg._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return vgg_perceptual_loss(self.vgg, fake, real, self.weights)


@generator_term("vgg")
def _vgg_term(window: Window) -> torch.Tensor:
    """K = 3 frames go into VGG as the three colour channels, as in the release; other K frame by
    frame (grey repeated to RGB), averaged."""
    vgg, fake, target = window.module.vgg_loss, window.fake, window.target
    if vgg is None:
        raise ConfigError("loss.vgg > 0 but the VGG19 is not loaded: it loads in setup('fit') from "
                          "loss.vgg_weights (outside a Trainer, call module.setup('fit') first)")
    if fake.shape[1] == 3:
        return vgg(fake, target)
    fold = lambda x: x.flatten(0, 1).unsqueeze(1).expand(-1, 3, -1, -1)  # noqa: E731  (B*K, 3, H, W)
    return vgg(fold(fake), fold(target))
