"""Pixel L1 between generated and real frames: L = mean|fake - real|.

Not part of Fundus2Video (weight 0 in the paper's configuration); offered because a small
CPU demo converges much faster with it.
"""

from __future__ import annotations

import torch
from torch import nn

from fundus2video.losses.terms import Window, generator_term


def l1_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return torch.mean(torch.abs(fake.float() - real.float()))


class L1Loss(nn.Module):
    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return l1_loss(fake, real)


@generator_term("l1")
def _l1_term(window: Window) -> torch.Tensor:
    return window.module.l1_loss(window.fake, window.target)
