import pytest
import torch

from fundus2video.losses import feature_matching_loss, lsgan_loss
from fundus2video.networks import GlobalGenerator, MultiscaleDiscriminator
from fundus2video.networks.discriminator import pix2pixhd_key


@pytest.mark.parametrize("size, n_down", [(32, 2), (64, 3), (64, 4)])
def test_generator_shapes_and_range(size, n_down):
    g = GlobalGenerator(6, 3, ngf=8, n_downsample=n_down, n_blocks=2)
    out = g(torch.randn(2, 6, size, size))
    assert out.shape == (2, 3, size, size)
    assert out.abs().max() <= 1.0


def test_generator_layer_sequence_is_pix2pixhd():
    """Same indices and parameter names as pix2pixHD's GlobalGenerator (4 down, 9 blocks)."""
    g = GlobalGenerator(6, 3, ngf=64, n_downsample=4, n_blocks=9)
    names = {k: tuple(v.shape) for k, v in g.state_dict().items()}
    assert names["model.1.weight"] == (64, 6, 7, 7)
    assert names["model.4.weight"] == (128, 64, 3, 3)  # first stride-2 conv
    assert names["model.16.conv_block.1.weight"] == (1024, 1024, 3, 3)  # first residual block
    assert names["model.16.conv_block.5.weight"] == (1024, 1024, 3, 3)
    assert names["model.25.weight"] == (1024, 512, 3, 3)  # first transposed conv (in, out)
    assert names["model.38.weight"] == (3, 64, 7, 7)  # last conv, then tanh
    assert len(g.model) == 40
    # no norm parameters: InstanceNorm without affine, as in pix2pixHD
    assert not any("running" in k for k in names)


def test_generator_encode_returns_requested_layers():
    g = GlobalGenerator(6, 3, ngf=8, n_downsample=2, n_blocks=2)
    x = torch.randn(1, 6, 32, 32)
    feats = g.encode(x, [0, 4, 8])
    assert [f.shape[1] for f in feats] == [6, 16, 32]  # padded input, 1st and 2nd stride-2 stage
    assert torch.equal(feats[1], g.model[:5](x))


def test_discriminator_outputs_and_names():
    d = MultiscaleDiscriminator(6, ndf=8, n_layers=3, num_d=2)
    out = d(torch.randn(2, 6, 64, 64))
    assert len(out) == 2 and all(len(s) == 5 for s in out)
    assert out[0][-1].shape[1] == 1 and out[0][-1].shape[-1] > out[1][-1].shape[-1]
    assert [f.shape[1] for f in out[0][:-1]] == [8, 16, 32, 64]
    keys = [pix2pixhd_key(k, 2) for k in d.state_dict()]
    assert "scale1_layer0.0.weight" in keys and "scale0_layer4.0.weight" in keys
    assert len(set(keys)) == len(keys)


def test_lsgan_and_feature_matching_formulas():
    real = [[torch.ones(1, 2, 3, 3), torch.full((1, 1, 2, 2), 0.5)],
            [torch.zeros(1, 2, 2, 2), torch.full((1, 1, 1, 1), 2.0)]]
    fake = [[torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 2, 2)],
            [torch.ones(1, 2, 2, 2), torch.zeros(1, 1, 1, 1)]]
    # sum over scales of mean((score - 1)^2)
    assert lsgan_loss(real, True).item() == pytest.approx(0.25 + 1.0)
    assert lsgan_loss(real, False).item() == pytest.approx(0.25 + 4.0)
    # one feature layer per scale, weight (1/num_D) * 4/(n_layers+1) with n_layers = 1
    assert feature_matching_loss(fake, real, n_layers=1).item() == pytest.approx(0.5 * 2 * (1 + 1))


def test_kad_wraps_any_discriminator_and_keeps_its_parameter_names():
    """KAD holds no parameters: a D of another design is judged whole and masked alike, and a module's
    state dict is the wrapped D's (checkpoints and pix2pixHD weights fit with or without KAD)."""
    from fundus2video.networks.discriminator import KnowledgeAwareDiscriminator

    class OneScale(torch.nn.Module):  # another D: one scale, one feature layer and a score
        def __init__(self):
            super().__init__()
            self.features, self.score = torch.nn.Conv2d(4, 3, 3, padding=1), torch.nn.Conv2d(3, 1, 1)

        def forward(self, x):
            h = self.features(x)
            return [[h, self.score(h)]]

    d = OneScale()
    kad = KnowledgeAwareDiscriminator(d)
    x, km = torch.randn(2, 4, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    whole, masked = kad(x, km)
    torch.testing.assert_close(whole[0][-1], d(x)[0][-1])
    torch.testing.assert_close(masked[0][-1], d(x * km)[0][-1])
    assert KnowledgeAwareDiscriminator(d, knowledge_aware=False)(x, km)[1] is None
    holder = torch.nn.Module()
    holder.discriminator, holder.judge = d, kad
    assert list(holder.state_dict()) == [f"discriminator.{k}" for k in d.state_dict()]
