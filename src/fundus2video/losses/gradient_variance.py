"""Gradient-variance loss, as in the authors' release (`models/networks.py`, `GradientVariance`;
used there with patch_size=12 and weight 5 in the generator loss, `train.py`).

For a (B, 3, H, W) image x, with p = patch_size:

    g(x)    = 0.2989 x_0 + 0.5870 x_1 + 0.1140 x_2               (one channel; weights as written)
    G_d(x)  = S_d * g(x),  d in {x, y}                          (3 x 3 cross-correlation, zero padding 1)
              S_x = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]        (unnormalised Sobel)
              S_y = [[ 1, 2, 1], [ 0, 0, 0], [-1, -2, -1]]
    V_d(x)  = unbiased variance (divisor p^2 - 1) of G_d(x) over each non-overlapping p x p patch,
              patches tiled from the top-left corner: floor(H/p) * floor(W/p) per image
    L       = sum over d of mean over (batch, patch) of (V_d(fake) - V_d(real))^2

i.e. `F.mse_loss` (mean reduction) between the patch variances, once for x and once for y,
the two added. The last H mod p rows and W mod p columns of the gradient maps fall outside
every patch and do not count (the release's `nn.Unfold(p, stride=p)` drops them).

The release calls the input "RGB" and mixes its channels with these luma weights; in
Fundus2Video the three channels are the K = 3 frames of one window, so the loss compares a
fixed weighted blend of the three frames. Only 3-channel input is defined (the release's
expression fails for any other count), and H, W must be at least p (the release returns NaN
when there is no patch; here that is an error instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fundus2video.losses.terms import Window, generator_term

# ITU-R BT.601 luma weights, with the release's rounding (they sum to 0.9999)
LUMA = (0.2989, 0.5870, 0.1140)


def sobel_kernels(device: torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The release's x and y Sobel kernels stacked as conv2d weights: (2, 1, 3, 3)."""
    kx = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]
    ky = [[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]
    return torch.tensor([[kx], [ky]], device=device, dtype=dtype)


def _patch_gradient_variance(x: torch.Tensor, kernels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 2, L): variance of the x / y gradient over each of the L patches."""
    gray = LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3]
    grads = F.conv2d(gray, kernels.to(gray.dtype), padding=1)  # (B, 2, H, W)
    # unfold orders its rows channel by channel, so this reshape splits the x and y patches
    patches = F.unfold(grads, kernel_size=patch_size, stride=patch_size)  # (B, 2 p^2, L)
    patches = patches.reshape(x.shape[0], 2, patch_size * patch_size, -1)
    return patches.var(dim=2)  # unbiased, as torch.var's default the release relies on


def _gradient_variance(fake: torch.Tensor, real: torch.Tensor, patch_size: int,
                       kernels: torch.Tensor) -> torch.Tensor:
    """The loss with given Sobel kernels (the module passes its buffer, the function builds them)."""
    if fake.shape != real.shape:
        raise ValueError(f"fake and real differ in shape: {tuple(fake.shape)} vs {tuple(real.shape)}")
    if fake.dim() != 4 or fake.shape[1] != 3:
        raise ValueError(f"gradient variance needs (B, 3, H, W) input (the release's channel mix is "
                         f"defined for 3 channels only), got {tuple(fake.shape)}")
    if min(fake.shape[2], fake.shape[3]) < patch_size:
        raise ValueError(f"image {fake.shape[2]} x {fake.shape[3]} is smaller than one "
                         f"{patch_size} x {patch_size} patch")
    # in float32 whatever the training precision, as the other losses: variances of Sobel gradients
    # square small differences, which fp16 flushes to zero and bf16 rounds to a few digits
    with torch.autocast(device_type=fake.device.type, enabled=False):
        dtype = torch.promote_types(fake.dtype, torch.float32)  # float64 stays float64
        fake, real, kernels = fake.to(dtype), real.to(dtype), kernels.to(dtype)
        var_fake = _patch_gradient_variance(fake, kernels, patch_size)
        var_real = _patch_gradient_variance(real, kernels, patch_size)
        # mean over batch and patches for each direction, then x + y (two F.mse_loss in the release)
        return ((var_fake - var_real) ** 2).mean(dim=(0, 2)).sum()


def gradient_variance_loss(fake: torch.Tensor, real: torch.Tensor, patch_size: int = 12) -> torch.Tensor:
    """Gradient-variance loss between (B, 3, H, W) `fake` and `real`; a scalar (see the module
    docstring for the formula). Gradients flow into both inputs; pass `real` detached."""
    return _gradient_variance(fake, real, patch_size, sobel_kernels(fake.device, fake.dtype))


class GradientVarianceLoss(nn.Module):
    """`gradient_variance_loss` with the Sobel kernels as buffers, so `.to()` moves them once."""

    def __init__(self, patch_size: int = 12):
        super().__init__()
        self.patch_size = patch_size
        # constants, not state: kept out of checkpoints
        self.register_buffer("kernels", sobel_kernels(), persistent=False)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return _gradient_variance(fake, real, self.patch_size, self.kernels)


@generator_term("gv")
def _gv_term(window: Window) -> torch.Tensor:
    return window.module.gv_loss(window.fake, window.target)
