"""Weights of the authors' release / pix2pixHD imported into a checkpoint (`import-weights`): names
mapped, shapes checked, inputs never written over."""

import pytest
import torch

from fundus2video.errors import UserError
from fundus2video.module import Fundus2VideoModule
from fundus2video.networks.discriminator import pix2pixhd_key
from fundus2video.networks.generator import LocalEnhancer
from fundus2video.release_weights import import_weights
from tests.helpers.cli import run_cli
from tests.helpers.full import full_module


def _pix2pixhd_files(tmp_path, full):
    """A 'release' checkpoint: a reference module's G and D saved under pix2pixHD's names."""
    ref = full_module(full, "model.generator.kba_stages=[]")
    torch.save(ref.generator.state_dict(), tmp_path / "latest_net_G.pth")
    num_d = ref.cfg.model.discriminator.num_d
    torch.save({pix2pixhd_key(k, num_d): v for k, v in ref.discriminator.state_dict().items()},
               tmp_path / "latest_net_D.pth")
    return ref


def test_import_weights_round_trip_and_mismatch(tmp_path, full):
    ref = _pix2pixhd_files(tmp_path, full)
    cfg = full()  # the full method: KBA heads have no release counterpart and stay initialised
    out = import_weights(cfg, tmp_path / "latest_net_G.pth", tmp_path / "model.ckpt", tmp_path / "latest_net_D.pth")
    torch.load(out, weights_only=True)
    loaded = Fundus2VideoModule.load_from_checkpoint(out, map_location="cpu")
    for k, v in ref.generator.state_dict().items():
        assert torch.equal(loaded.generator.state_dict()[k], v)
    for k, v in ref.discriminator.state_dict().items():
        assert torch.equal(loaded.discriminator.state_dict()[k], v)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    plain = Fundus2VideoModule.load_from_checkpoint(
        import_weights(full("model.generator.kba_stages=[]"), tmp_path / "latest_net_G.pth", tmp_path / "p.ckpt"))
    assert torch.equal(plain(x, 4), ref(x, 4))  # identical weights, identical videos
    with pytest.raises(UserError, match="wrong shape"):
        import_weights(full("model.generator.ngf=16"), tmp_path / "latest_net_G.pth", tmp_path / "bad.ckpt")
    with pytest.raises(UserError, match="weights file not found"):
        import_weights(cfg, tmp_path / "nope.pth", tmp_path / "bad.ckpt")
    before = (tmp_path / "latest_net_G.pth").read_bytes()
    for out in ("latest_net_G.pth", "latest_net_D.pth"):  # never written over the release's files
        with pytest.raises(UserError, match="writing it would replace the input"):
            import_weights(cfg, tmp_path / "latest_net_G.pth", tmp_path / out, tmp_path / "latest_net_D.pth")
    assert (tmp_path / "latest_net_G.pth").read_bytes() == before


def test_import_weights_cli(tmp_path, full):
    _pix2pixhd_files(tmp_path, full)
    from tests.conftest import TINY

    base = ["import-weights", "--config", "smoke"]
    ok = run_cli(*base, "--netG", tmp_path / "latest_net_G.pth", "--out", tmp_path / "c.ckpt", *TINY)
    assert ok.returncode == 0, ok.stderr
    bad = run_cli(*base, "--netG", tmp_path / "latest_net_G.pth", "--out", tmp_path / "d.ckpt", *TINY,
                  "model.generator.ngf=4")
    assert bad.returncode == 2 and "does not match the configured network" in bad.stderr


def test_local_enhancer_names_follow_pix2pixhd():
    net = LocalEnhancer(6, 3, ngf=8, n_downsample=2, n_blocks=1, n_blocks_local=1)
    keys = set(net.state_dict())
    assert {"global_net.model.1.weight", "model1_1.1.weight", "model1_2.0.conv_block.1.weight"} <= keys
    assert net(torch.randn(1, 6, 32, 32)).shape == (1, 3, 32, 32)
    assert net.global_net.model[1].in_channels == 6 and net.global_net.model[1].out_channels == 16  # 2 x ngf
