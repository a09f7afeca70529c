"""LSGAN adversarial loss over a multi-scale discriminator (pix2pixHD's `GANLoss`, lsgan).

    L = sum over scales s of mean((D_s(x) - y)^2),  y = 1 for "real", 0 for "fake"

Scores are summed (not averaged) over scales, as pix2pixHD does. The generator's term uses
y = 1 on its fakes; the discriminator's terms use y = 1 on reals and y = 0 on fakes.
"""

from __future__ import annotations

import torch
from torch import nn

from fundus2video.losses.terms import Window, generator_term


def lsgan_loss(outputs: list[list[torch.Tensor]], target_is_real: bool) -> torch.Tensor:
    """outputs: the discriminator's per-scale lists; the last tensor of each is the score map."""
    target = 1.0 if target_is_real else 0.0
    return sum(torch.mean((scale[-1].float() - target) ** 2) for scale in outputs)


class LSGANLoss(nn.Module):
    def forward(self, outputs: list[list[torch.Tensor]], target_is_real: bool) -> torch.Tensor:
        return lsgan_loss(outputs, target_is_real)


@generator_term("gan", applies=lambda window: True)  # logged even at weight 0: how well G fools D
def _gan_term(window: Window) -> torch.Tensor:
    return window.module.gan_loss(window.pred_fake, True)
