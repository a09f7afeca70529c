"""Knowledge guidance (KBA, knowledge-aware D, mask-enhanced PatchNCE), the full loss set,
mask sources, and weight compatibility with the authors' release / pix2pixHD."""


import pytest
import torch
from torch.nn import functional as F

from fundus2video.config import load_config, to_plain
from fundus2video.errors import ConfigError, UserError
from fundus2video.losses import feature_matching_loss, gradient_variance_loss, lsgan_loss
from fundus2video.module import Fundus2VideoModule
from fundus2video.networks.discriminator import pix2pixhd_key
from fundus2video.networks.generator import GlobalGenerator, LocalEnhancer
from fundus2video.release_weights import import_weights
from fundus2video.training import build_trainer, train
from tests.helpers.cli import run_cli

# the full method (the smoke experiment the tiny configs start from is the backbone only)
FULL = ["model.generator.kba_stages=[bottleneck]", "loss.att=1", "loss.kad=1", "loss.nce=1", "loss.gv=5",
        "model.init=normal", "loss.nce_layers=[0,4,8,12,16]"]


@pytest.fixture
def full(tiny):
    return lambda *overrides: tiny(*FULL, *overrides)


def _module(full, *overrides):
    return Fundus2VideoModule(to_plain(full(*overrides)))


def _inputs(seed=0, s=32):
    g = torch.Generator().manual_seed(seed)
    cf, prev, target = (torch.rand(1, c, s, s, generator=g) * 2 - 1 for c in (3, 3, 3))
    km = torch.zeros(1, 1, s, s)
    km[..., 8:20, 10:24] = 1
    return cf, prev, target, km


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
    m = _module(full, "loss.nce=0", "loss.kad=0")
    cf, prev, target, km = _inputs()
    _, _, parts, _, _ = m.window_losses(cf, prev, target, km)
    _, _, parts_other, _, _ = m.window_losses(cf, prev, target, 1 - km)
    assert parts["g_att"] != parts_other["g_att"]  # the term depends on the mask
    m.zero_grad()
    parts["g_att"].backward()
    assert m.generator.attention["bottleneck"].weight.grad.abs().sum() > 0


def test_knowledge_aware_d_terms_ignore_pixels_outside_the_mask(full):
    m = _module(full, "loss.nce=0")
    cf, prev, target, km = _inputs()
    _, _, g1, _, d1 = m.window_losses(cf, prev, target, km)
    outside = 1 - km
    noise = torch.randn_like(cf) * outside
    d_only = {k: d1[k] for k in ("d_real_km",)}
    _, _, _, _, d2 = m.window_losses(cf + noise, prev, target + noise[:, :3] * 0.5, km)
    for k in d_only:
        assert torch.allclose(d1[k], d2[k], atol=1e-6), k
    assert not torch.allclose(d1["d_real"], d2["d_real"])  # the plain D does see those pixels


def test_mask_sources(full):
    batch = {"km": torch.zeros(1, 1, 4, 4), "lesion": torch.ones(1, 1, 4, 4) * 0.5}
    assert torch.equal(_module(full)._mask(batch), batch["km"])
    assert torch.equal(_module(full, "model.mask_source=lesion")._mask(batch), batch["lesion"])
    assert torch.equal(_module(full, "model.mask_source=none")._mask(batch), torch.ones(1, 1, 4, 4))


def test_projector_is_trained(full):
    # an all-ones mask: the tiny phantom cases may have an empty knowledge mask at 32 x 32, and an
    # all-zero masked input gives the projector no gradient
    cfg = full("trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=0",
               "model.mask_source=none")
    module = Fundus2VideoModule(to_plain(cfg))
    before = {k: v.clone() for k, v in module.projector.state_dict().items()}
    from fundus2video.data_modules import Fundus2VideoDataModule

    build_trainer(cfg, None).fit(module, datamodule=Fundus2VideoDataModule(to_plain(cfg.data)))
    after = module.projector.state_dict()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, unchanged


def _release_style_losses(m, cf, prev, target, km):
    """The release's formulas (pix2pixHD_model_tempo.py + train.py), written out directly."""
    n_layers, num_d = m.cfg.model.discriminator.n_layers, m.cfg.model.discriminator.num_d
    D = m.discriminator
    fake = m.generator(torch.cat([cf, prev], 1))
    real_in, fake_in = torch.cat([cf, target], 1), torch.cat([cf, fake], 1)
    mse = lambda outs, y: sum(torch.mean((o[-1] - y) ** 2) for o in outs)  # noqa: E731
    pred_real, pred_fake = D(real_in), D(fake_in)
    fm = sum((1 / num_d) * (4 / (n_layers + 1)) * torch.mean(torch.abs(pred_fake[i][j] - pred_real[i][j]))
             for i in range(num_d) for j in range(len(pred_fake[i]) - 1))
    d = 0.5 * (mse(D(fake_in.detach()), 0) + mse(pred_real, 1)) + \
        0.5 * (mse(D(fake_in.detach() * km), 0) + mse(D(real_in * km), 1))
    gray = lambda x: 0.2989 * x[:, :1] + 0.5870 * x[:, 1:2] + 0.1140 * x[:, 2:3]  # noqa: E731
    sx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    sy = torch.tensor([[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]]).view(1, 1, 3, 3)

    def patch_var(x, k):
        return F.unfold(F.conv2d(gray(x), k, padding=1), 12, stride=12).var(dim=1)

    gv = F.mse_loss(patch_var(target, sx), patch_var(fake, sx)) + F.mse_loss(patch_var(target, sy), patch_var(fake, sy))
    g = 2 * mse(pred_fake, 1) + 10 * fm + 5 * gv + 1 * mse(D(fake_in * km), 1)
    return fake, g, d


def test_loss_terms_equal_the_release_formulas(full):
    # KBA and NCE have no release counterpart (KBA is ours, NCE samples at random): off here
    m = _module(full, "loss.nce=0", "loss.att=0", "model.generator.kba_stages=[]", "loss.l1=0")
    cf, prev, target, km = _inputs(3)
    fake, g, _, d, parts = m.window_losses(cf, prev, target, km)
    ref_fake, ref_g, ref_d = _release_style_losses(m, cf, prev, target, km)
    assert torch.allclose(fake, ref_fake)
    assert torch.allclose(g, ref_g, rtol=1e-5) and torch.allclose(d, ref_d, rtol=1e-5)
    # and the pieces against our own pure functions
    assert torch.allclose(parts["d_real"], lsgan_loss(m.discriminator(torch.cat([cf, target], 1)), True))
    assert torch.isfinite(feature_matching_loss(m.discriminator(torch.cat([cf, fake], 1)),
                                                m.discriminator(torch.cat([cf, target], 1)), 2))
    assert torch.allclose(gradient_variance_loss(fake, target, 12), m.gv_loss(fake, target))


def _pix2pixhd_files(tmp_path, full):
    """A 'release' checkpoint: a reference module's G and D saved under pix2pixHD's names."""
    ref = _module(full, "model.generator.kba_stages=[]")
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


def test_vgg_needs_its_weights_file(full, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # loss.vgg_weights=auto: an empty cache,
    monkeypatch.setenv("FUNDUS2VIDEO_OFFLINE", "1")  # and no download
    with pytest.raises(ConfigError, match="vgg19-dcbb9e9d.pth"):
        train(full("loss.vgg=10"))
    with pytest.raises(ConfigError, match="file not found: /no/such/vgg.pth"):
        train(full("loss.vgg=10", "loss.vgg_weights=/no/such/vgg.pth"))


@pytest.mark.slow
def test_every_experiment_trains_one_video(tmp_path):
    """Each experiment file (paper configurations shrunk to test size, VGG off: no ImageNet weights
    here) takes a training step with finite losses and writes a checkpoint."""
    import csv
    import math
    from pathlib import Path

    from tests.conftest import TINY

    for path in sorted(p for p in Path("experiments").rglob("*.yaml") if not {"sweeps", "studies"} & set(p.parts)):
        cfg = load_config(path, [*TINY, "loss.vgg=0", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                                 "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
                                 f"logging.root={tmp_path}"])
        run_dir = train(cfg)
        with open(run_dir / "metrics.csv", newline="") as f:
            logged = [row for row in csv.DictReader(f) if row.get("train/g_total")]
        assert logged and all(math.isfinite(float(row[k])) for row in logged
                              for k in ("train/g_total", "train/d_total")), path
        assert (run_dir / "checkpoints" / "last.ckpt").is_file(), path
