"""The LightningModule: updates, schedules counted in generator steps, fast_dev_run."""

import lightning as L
import pytest
import torch
from torch.nn import functional as F

from fundus2video.commands.cli import main
from fundus2video.config import to_plain
from fundus2video.data_modules import Fundus2VideoDataModule
from fundus2video.errors import ConfigError
from fundus2video.losses import feature_matching_loss, gradient_variance_loss, lsgan_loss
from fundus2video.module import ConstantThenLinear, Fundus2VideoModule
from fundus2video.training import build_trainer, train
from tests.helpers.full import full_module, window_batch


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


class _Spy(L.Callback):
    """Snapshots G and D at batch start, right before each optimizer step, and at batch end."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = (_snapshot(pl_module.generator), _snapshot(pl_module.discriminator))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        first = optimizer.param_groups[0]["params"][0]
        which = "d" if first is next(pl_module.discriminator.parameters()) else "g"
        self.steps.append((which, _snapshot(pl_module.generator), _snapshot(pl_module.discriminator)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = (_snapshot(pl_module.generator), _snapshot(pl_module.discriminator))


def _fit(cfg, callbacks=()):
    module = Fundus2VideoModule(to_plain(cfg))
    trainer = build_trainer(cfg, None, list(callbacks))
    trainer.fit(module, datamodule=Fundus2VideoDataModule(to_plain(cfg.data)))
    return module, trainer


def test_one_window_changes_g_and_d_and_the_d_step_leaves_g(tiny):
    # four frames = four windows, each a G step then a D step
    cfg = tiny("data.n_frames=4", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=0")
    spy = _Spy()
    _fit(cfg, [spy])
    assert [s[0] for s in spy.steps] == ["g", "d"] * 4
    g_start, d_start = spy.start
    _, g_before_d, d_before_d = spy.steps[1]  # after the first G step, before the D step
    _, g_after_d, d_after_d = spy.steps[2]  # after the D step, before the next G step
    assert _changed(g_start, g_before_d)  # the G step changed G ...
    assert not _changed(d_start, d_before_d)  # ... and not D
    assert not _changed(g_before_d, g_after_d)  # the D step left G unchanged ...
    assert _changed(d_before_d, d_after_d)  # ... and changed D
    assert _changed(g_start, spy.end[0]) and _changed(d_start, spy.end[1])


def test_learning_rate_schedule_counts_generator_steps(tiny):
    # 2 videos per epoch x 4 windows = 8 generator steps an epoch; 1 constant + 2 decay epochs
    cfg = tiny("data.n_frames=4", "optim.epochs_constant=1", "optim.epochs_decay=2",
        "trainer.max_epochs=2", "trainer.limit_val_batches=0")
    module, trainer = _fit(cfg)
    assert module.g_step == 16 and module.video_step == 4
    assert trainer.global_step == 32  # Lightning counts the steps of both optimizers
    for opt in trainer.optimizers:  # factor(16) = 1 - (16 - 8) / 16
        assert opt.param_groups[0]["lr"] == pytest.approx(cfg.optim.lr * 0.5)


def test_constant_then_linear():
    f = ConstantThenLinear(constant=4, decay=4)
    assert [f(s) for s in (0, 3, 4, 6, 8, 20)] == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0]


def test_fast_dev_run_of_smoke(tmp_path, capsys):
    assert main(["train", "smoke", "trainer.fast_dev_run=2", "logging.wandb=disabled",
                 f"logging.root={tmp_path}", "trainer.enable_progress_bar=false"]) == 0
    out = capsys.readouterr().out
    # a number of batches is Lightning's, not turned into true; the summary lists only what exists
    assert "no checkpoint: trainer.fast_dev_run only checks the loop, it saves nothing" in out
    assert "checkpoints/last.ckpt" not in out and not list(tmp_path.rglob("*.ckpt"))


def test_validation_rollout_logs_psnr_ssim_and_baseline(tiny):
    cfg = tiny("trainer.max_epochs=1")
    _, trainer = _fit(cfg)
    logged = trainer.callback_metrics
    for key in ("val/psnr", "val/ssim", "val/psnr_cf_green", "val/ssim_cf_green"):
        assert key in logged and torch.isfinite(logged[key])


def test_a_diverged_training_stops_in_one_line(tmp_path, capsys):
    from tests.conftest import TINY

    assert main(["train", "smoke", *TINY, "optim.lr=1e30", "trainer.max_epochs=2", f"logging.root={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fundus2video: error: training diverged: after 1 training videos the losses are "
                          "g_total = nan"), err
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing saved with NaN weights


def test_mask_sources(full):
    batch = {"km": torch.zeros(1, 1, 4, 4), "lesion": torch.ones(1, 1, 4, 4) * 0.5}
    assert torch.equal(full_module(full)._mask(batch), batch["km"])
    assert torch.equal(full_module(full, "model.mask_source=lesion")._mask(batch), batch["lesion"])
    assert torch.equal(full_module(full, "model.mask_source=none")._mask(batch), torch.ones(1, 1, 4, 4))


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
    m = full_module(full, "loss.nce=0", "loss.att=0", "model.generator.kba_stages=[]", "loss.l1=0")
    cf, prev, target, km = window_batch(3)
    fake, g, _, d, parts = m.window_losses(cf, prev, target, km)
    ref_fake, ref_g, ref_d = _release_style_losses(m, cf, prev, target, km)
    assert torch.allclose(fake, ref_fake)
    assert torch.allclose(g, ref_g, rtol=1e-5) and torch.allclose(d, ref_d, rtol=1e-5)
    # and the pieces against our own pure functions
    assert torch.allclose(parts["d_real"], lsgan_loss(m.discriminator(torch.cat([cf, target], 1)), True))
    assert torch.isfinite(feature_matching_loss(m.discriminator(torch.cat([cf, fake], 1)),
                                                m.discriminator(torch.cat([cf, target], 1)), 2))
    assert torch.allclose(gradient_variance_loss(fake, target, 12), m.gv_loss(fake, target))


def test_vgg_needs_its_weights_file(full, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # loss.vgg_weights=auto: an empty cache,
    monkeypatch.setenv("FUNDUS2VIDEO_OFFLINE", "1")  # and no download
    with pytest.raises(ConfigError, match="vgg19-dcbb9e9d.pth"):
        train(full("loss.vgg=10"))
    with pytest.raises(ConfigError, match="file not found: /no/such/vgg.pth"):
        train(full("loss.vgg=10", "loss.vgg_weights=/no/such/vgg.pth"))
