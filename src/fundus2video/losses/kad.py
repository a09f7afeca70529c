"""The knowledge-aware discriminator's (KAD) loss terms, next to the plain LSGAN ones.

KAD (`networks/discriminator.py`, `KnowledgeAwareDiscriminator`) judges every input twice: whole,
and multiplied by the knowledge mask (x * KM), so that real and fake must also be told apart
where the angiogram changes over time. With `loss.kad` > 0:

    D:  1/2 (LSGAN(D(real), 1) + LSGAN(D(fake), 0)) + 1/2 (LSGAN(D(real*KM), 1) + LSGAN(D(fake*KM), 0))
    G:  loss.gan * LSGAN(D(fake), 1) + loss.kad * LSGAN(D(fake*KM), 1)

Without KAD the discriminator's loss is the first half alone (pix2pixHD).
"""

from __future__ import annotations

import torch

from fundus2video.losses.adversarial import lsgan_loss
from fundus2video.losses.terms import Window, generator_term

Outputs = list[list[torch.Tensor]]  # the multi-scale discriminator's output: per scale, features + score


def discriminator_terms(pred_real: Outputs, pred_fake: Outputs, pred_real_km: Outputs | None = None,
                        pred_fake_km: Outputs | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """D's loss and its named terms; the knowledge-aware half when the masked outputs are given."""
    parts = {"d_real": lsgan_loss(pred_real, True), "d_fake": lsgan_loss(pred_fake, False)}
    total = 0.5 * (parts["d_real"] + parts["d_fake"])
    if pred_real_km is not None and pred_fake_km is not None:
        parts["d_real_km"] = lsgan_loss(pred_real_km, True)
        parts["d_fake_km"] = lsgan_loss(pred_fake_km, False)
        total = total + 0.5 * (parts["d_real_km"] + parts["d_fake_km"])
    return total, parts


def generator_kad_term(pred_fake_km: Outputs) -> torch.Tensor:
    """G's knowledge-aware adversarial term: the masked fake judged real."""
    return lsgan_loss(pred_fake_km, True)


@generator_term("kad", name="g_gan_km", applies=lambda window: window.pred_fake_km is not None)
def _kad_term(window: Window) -> torch.Tensor:
    return generator_kad_term(window.pred_fake_km)
