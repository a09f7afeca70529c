"""Discriminator feature matching (pix2pixHD).

    L = sum_s sum_{j < last} (1 / num_D) * (4 / (n_layers + 1)) * mean|D_s^j(fake) - D_s^j(real)|

over every intermediate layer j of every scale s; the real features carry no gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from fundus2video.losses.terms import Window, generator_term


def feature_matching_loss(fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]],
                          n_layers: int) -> torch.Tensor:
    num_d = len(fake)
    weight = (1.0 / num_d) * (4.0 / (n_layers + 1))
    total = 0.0
    for fake_s, real_s in zip(fake, real, strict=True):
        for f, r in zip(fake_s[:-1], real_s[:-1], strict=True):
            total = total + weight * torch.mean(torch.abs(f.float() - r.detach().float()))
    return total


class FeatureMatchingLoss(nn.Module):
    def __init__(self, n_layers: int):
        super().__init__()
        self.n_layers = n_layers

    def forward(self, fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]]) -> torch.Tensor:
        return feature_matching_loss(fake, real, self.n_layers)


@generator_term("feat")
def _feat_term(window: Window) -> torch.Tensor:
    return window.module.feat_loss(window.pred_fake, window.pred_real)
