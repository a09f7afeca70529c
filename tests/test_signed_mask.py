"""The signed knowledge mask (`model.km_sign=signed`) and plain PatchNCE (`loss.nce_masked=false`)."""

import pytest
import torch

from fundus2video.config import loss_terms, to_plain
from fundus2video.errors import ConfigError
from fundus2video.losses.patchnce import mask_enhanced_nce
from fundus2video.losses.terms import Window, generator_terms
from fundus2video.module import Fundus2VideoModule
from fundus2video.networks.discriminator import KnowledgeAwareDiscriminator, build_discriminator

FULL = ["model.generator.kba_stages=[bottleneck]", "loss.att=1", "loss.kad=1", "loss.nce=1",
        "loss.nce_layers=[0,4,8]"]


def _batch(s=32):
    """Frames whose last frame is brighter than the first on the left half, darker on the right."""
    frames = torch.zeros(1, 4, 1, s, s)
    frames[:, -1, :, :, : s // 2] = 0.8
    frames[:, -1, :, :, s // 2:] = -0.8
    km = torch.zeros(1, 1, s, s)
    km[..., 4:28, 4:28] = 1
    return {"frames": frames, "km": km, "lesion": torch.zeros_like(km)}


def test_signed_mask_splits_the_knowledge_mask_by_the_sign_of_the_change(tiny):
    module = Fundus2VideoModule(to_plain(tiny(*FULL, "model.km_sign=signed")))
    batch = _batch()
    mask = module._mask(batch)
    assert mask.shape == (1, 2, 32, 32)
    brighter, darker = mask[0, 0].bool(), mask[0, 1].bool()
    assert not (brighter & darker).any()
    assert torch.equal(brighter | darker, batch["km"][0, 0].bool())  # the union is the knowledge mask
    assert brighter[:, :16].sum() > 0 and not brighter[:, 16:].any() and not darker[:, :16].any()
    unsigned = Fundus2VideoModule(to_plain(tiny(*FULL)))
    assert torch.equal(unsigned._mask(batch), batch["km"])


def test_kad_judges_each_signed_view_alike():
    d = build_discriminator(4, ndf=8, n_layers=2, num_d=2).eval()
    kad = KnowledgeAwareDiscriminator(d)
    x, km = torch.randn(2, 4, 32, 32), (torch.rand(2, 2, 32, 32) > 0.5).float()
    whole, views = kad(x, km)
    assert views[0][-1].shape[0] == 4  # two views of each of the two samples
    for c in range(2):
        _, one = kad(x, km[:, c:c + 1])
        for got, want in zip(views, one):
            torch.testing.assert_close(got[-1][2 * c:2 * c + 2], want[-1])
    torch.testing.assert_close(whole[0][-1], d(x)[0][-1])


def test_signed_window_trains(tiny):
    module = Fundus2VideoModule(to_plain(tiny(*FULL, "model.km_sign=signed")))
    batch = _batch()
    cf, prev, target = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    fake, g_total, parts, d_total, d_parts = module.window_losses(cf, prev, target, module._mask(batch))
    assert torch.isfinite(g_total) and torch.isfinite(d_total) and "g_gan_km" in parts and "d_real_km" in d_parts
    g_total.backward()


@pytest.mark.parametrize("overrides, words", [
    (["model.mask_source=none"], "model.mask_source is none"),
    (["loss.kad=0"], "loss.kad > 0"),
])
def test_signed_mask_needs_a_mask_and_the_kad(tiny, overrides, words):
    with pytest.raises(ConfigError, match=words):
        tiny(*FULL, "model.km_sign=signed", *overrides)


def test_plain_patchnce_is_the_same_term_without_the_mask(tiny):
    torch.manual_seed(0)
    plain = Fundus2VideoModule(to_plain(tiny(*FULL, "loss.nce_masked=false", "loss.att=0", "loss.kad=0")))
    cf, prev, target = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    km = _batch()["km"]
    fake = plain.generator(torch.cat([cf, prev], 1))
    w = plain.cfg.loss
    terms = generator_terms(Window(plain, w, cf, fake, target, km, plain.discriminator(torch.cat([cf, fake], 1)),
                                   plain.discriminator(torch.cat([cf, target], 1)), None, None,
                                   torch.Generator().manual_seed(3)), loss_terms())
    want = {}
    for name, mask in (("ones", torch.ones_like(km)), ("km", km)):
        want[name], _ = mask_enhanced_nce(plain.generator.encode, plain.projector, cf, fake, target, mask,
                                          list(w.nce_layers), w.nce_patches, w.nce_temperature,
                                          identity=w.nce_identity, in_channels=6,
                                          generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(terms["g_nce"], want["ones"])
    assert not torch.allclose(terms["g_nce"], want["km"])
