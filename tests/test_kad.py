"""The knowledge-aware discriminator's terms see the masked regions alone."""

import torch

from tests.helpers.full import full_module, window_batch


def test_knowledge_aware_d_terms_ignore_pixels_outside_the_mask(full):
    torch.manual_seed(0)  # the networks' draws and the noise, whatever ran before in this process
    m = full_module(full, "loss.nce=0")
    cf, prev, target, km = window_batch()
    _, _, g1, _, d1 = m.window_losses(cf, prev, target, km)
    outside = 1 - km
    noise = torch.randn_like(cf) * outside
    d_only = {k: d1[k] for k in ("d_real_km",)}
    _, _, _, _, d2 = m.window_losses(cf + noise, prev, target + noise[:, :3] * 0.5, km)
    for k in d_only:
        assert torch.allclose(d1[k], d2[k], atol=1e-6), k
    # the plain D does see those pixels; with pix2pixHD's N(0, 0.02) weights its loss moves only in the
    # sixth digit or so, so any change counts
    assert not torch.equal(d1["d_real"], d2["d_real"])
