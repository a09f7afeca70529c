"""Knowledge-boosted attention: off it is pix2pixHD's generator; on, its heads and its loss pull the
attention toward the mask."""

import pytest
import torch

from fundus2video.networks.generator import GlobalGenerator
from tests.helpers.full import full_module, window_batch


def test_kba_off_is_plain_pix2pixhd_and_on_adds_heads():
    plain = GlobalGenerator(6, 3, ngf=8, n_downsample=2, n_blocks=2)
    assert not any(k.startswith("attention") for k in plain.state_dict())
    x = torch.randn(1, 6, 32, 32)
    assert torch.equal(plain(x), plain.model(x))
    kba = GlobalGenerator(6, 3, ngf=8, n_downsample=2, n_blocks=2, kba_stages=["bottleneck", "up1"])
    out, logits = kba(x, return_attention=True)
    assert out.shape == (1, 3, 32, 32)
    assert logits["bottleneck"].shape == (1, 1, 8, 8) and logits["up1"].shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="unknown KBA stage"):
        GlobalGenerator(6, 3, ngf=8, n_downsample=2, n_blocks=2, kba_stages=["up9"])


def test_kba_loss_pulls_attention_toward_the_mask(full):
    m = full_module(full, "loss.nce=0", "loss.kad=0")
    cf, prev, target, km = window_batch()
    _, _, parts, _, _ = m.window_losses(cf, prev, target, km)
    _, _, parts_other, _, _ = m.window_losses(cf, prev, target, 1 - km)
    assert parts["g_att"] != parts_other["g_att"]  # the term depends on the mask
    m.zero_grad()
    parts["g_att"].backward()
    assert m.generator.attention["bottleneck"].weight.grad.abs().sum() > 0
