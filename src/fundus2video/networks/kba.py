"""Knowledge-boosted attention (KBA): where in the generator, and the attention head itself.

This project's formulation (docs/METHOD.md; the release has no KBA code): at each configured stage,
an attention head gives A = sigmoid(conv3x3(f)) in [0, 1]^(h x w) and the features are boosted,
f' = f * (1 + A); training pulls A toward the knowledge mask resized to h x w (BCE,
`losses/kba.py`), so at inference, from the CF alone, the generator attends where dynamics happen.
Stages: "bottleneck" (after the residual blocks) and "up1".."up{n_downsample}" (after each
upsampling block). With no stages the generator is exactly pix2pixHD's and loads its weights.
"""

from __future__ import annotations

import torch
from torch import nn


def kba_positions(n_downsample: int, n_blocks: int) -> dict[str, int]:
    """Stage name -> index of the layer of the global generator's `model` after which KBA acts."""
    bottleneck = 4 + 3 * n_downsample + n_blocks - 1
    return {"bottleneck": bottleneck, **{f"up{i}": bottleneck + 3 * i for i in range(1, n_downsample + 1)}}


def kba_channels(ngf: int, n_downsample: int) -> dict[str, int]:
    """Stage name -> feature channels there."""
    return {"bottleneck": ngf * 2**n_downsample,
            **{f"up{i}": ngf * 2 ** (n_downsample - i) for i in range(1, n_downsample + 1)}}


class KnowledgeBoostedAttention(nn.Conv2d):
    """The attention head of one stage. Calling it gives the logits (B, 1, h, w); `boost` gives the
    boosted features and the logits. It is the 3x3 convolution itself, so its parameters keep the
    names `attention.<stage>.weight` and `.bias` of existing checkpoints."""

    def __init__(self, channels: int):
        super().__init__(channels, 1, 3, padding=1)

    def boost(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self(f)
        return f * (1 + torch.sigmoid(logit)), logit
