"""Knowledge-boosted attention (KBA): the loss that teaches the generator where to look.

At each KBA stage the generator (`networks/kba.py`, `KnowledgeBoostedAttention.boost`) computes an
attention map A = sigmoid(logit) and boosts its features by (1 + A). The loss supervises A with the
knowledge mask, the regions where early and late frames differ (`knowledge.py`):

    L_att = mean over stages s of BCE(logit_s, area-resize(KM, size of stage s))

Area resizing turns the binary mask into the share of each coarse cell the mask covers, so a
cell half inside a lesion asks for A = 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.nn import functional as F

from fundus2video.losses.terms import Window, generator_term


def kba_loss(attention: Mapping[str, torch.Tensor], km: torch.Tensor) -> torch.Tensor:
    """attention: the generator's logits per stage, each (B, 1, h, w); km: (B, 1, H, W) in [0, 1]."""
    if not attention:
        raise ValueError("kba_loss: no attention stages (model.generator.kba_stages is empty)")
    terms = [F.binary_cross_entropy_with_logits(logit.float(), F.interpolate(km.float(), size=logit.shape[-2:],
                                                                             mode="area"))
             for logit in attention.values()]
    return torch.stack(terms).mean()


@generator_term("att", applies=lambda window: window.attention is not None)
def _att_term(window: Window) -> torch.Tensor:
    return kba_loss(window.attention, window.mask)
