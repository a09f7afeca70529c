"""Mixed precision from the config, on CPU: bf16-mixed runs G and D under autocast; 16-mixed scales
the losses through `manual_backward` with one GradScaler for both optimizers, and a window whose G
loss overflows skips G's step only (D still steps) and halves the scale."""

import math

import lightning as L
import pytest
import torch

import fundus2video.training.fit as train_module
from fundus2video.module import Fundus2VideoModule
from fundus2video.training import train
from tests.test_knowledge_guidance import FULL


def _with_callback(monkeypatch, callback):
    build = train_module.build_trainer
    monkeypatch.setattr(train_module, "build_trainer", lambda c, d, callbacks=None, loggers=False: build(
        c, d, [callback, *(callbacks or [])], loggers))


@pytest.mark.slow
def test_bf16_mixed_trains_under_autocast(tiny, monkeypatch):
    dtypes = set()

    class Probe(L.Callback):
        def on_train_start(self, trainer, module):
            module.generator.register_forward_hook(
                lambda m, i, out: dtypes.add((out[0] if isinstance(out, tuple) else out).dtype))

    _with_callback(monkeypatch, Probe())
    run_dir = train(tiny(*FULL, "loss.vgg=0", "trainer.max_epochs=1", "trainer.precision=bf16-mixed"))
    assert dtypes == {torch.bfloat16}
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["state_dict"].values() if v.is_floating_point())


def test_16_mixed_skips_only_the_overflowing_step(tiny, monkeypatch):
    seen: dict = {}
    losses, step = Fundus2VideoModule.window_losses, Fundus2VideoModule._window_step

    def overflowing_first_window(self, *args):
        fake, g_total, g_parts, d_total, d_parts = losses(self, *args)
        overflow = "overflowed" not in seen  # the first window's G loss only
        seen["overflowed"] = True
        return fake, (g_total * math.inf if overflow else g_total), g_parts, d_total, d_parts

    def observed_step(self, *args):
        first = "g" not in seen
        g_before, step_before = next(self.generator.parameters()).detach().clone(), self.g_step
        if first:
            seen["scale"] = self.trainer.precision_plugin.scaler.get_scale()
            seen["g_step"], seen["lr"] = self.g_step, self.optimizers()[0].param_groups[0]["lr"]
            seen["sched"] = [s.last_epoch for s in self.lr_schedulers()]
            seen["g"] = [p.detach().clone() for p in self.generator.parameters()]
            seen["d"] = [p.detach().clone() for p in self.discriminator.parameters()]
        out = step(self, *args)
        if first:
            seen["scale_after"] = self.trainer.precision_plugin.scaler.get_scale()
            seen["g_step_after"] = self.g_step
            seen["sched_after"] = [s.last_epoch for s in self.lr_schedulers()]
            seen["g_after"] = [p.detach().clone() for p in self.generator.parameters()]
            seen["d_after"] = [p.detach().clone() for p in self.discriminator.parameters()]
        # (G moved, the clock advanced) for every window
        seen.setdefault("windows", []).append(
            (not torch.equal(g_before, next(self.generator.parameters())), self.g_step - step_before))
        return out

    monkeypatch.setattr(Fundus2VideoModule, "window_losses", overflowing_first_window)
    monkeypatch.setattr(Fundus2VideoModule, "_window_step", observed_step)
    run_dir = train(tiny(*FULL, "loss.vgg=0", "trainer.max_epochs=1", "trainer.precision=16-mixed"))
    assert seen["scale_after"] == seen["scale"] / 2  # halved once, by G's skipped step; D's was finite
    assert all(torch.equal(a, b) for a, b in zip(seen["g"], seen["g_after"]))  # G's step was skipped
    assert any(not torch.equal(a, b) for a, b in zip(seen["d"], seen["d_after"]))  # D stepped
    # a skipped step is not a step of the schedules: the clock and both schedulers stay; the next one counts
    assert seen["g_step_after"] == seen["g_step"] and seen["sched_after"] == seen["sched"]
    # so in every window (fp16 overflows at the first scales happen naturally too): the clock counts G's steps
    assert all(advanced == int(moved) for moved, advanced in seen["windows"]), seen["windows"]
    assert any(moved for moved, _ in seen["windows"])
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_validation_scores_are_float32_under_any_autocast(tiny):
    from fundus2video.config import to_plain
    from fundus2video.module import Fundus2VideoModule

    torch.manual_seed(0)
    cf = torch.rand(1, 3, 32, 32) * 2 - 1
    frames = torch.rand(1, 4, 1, 32, 32) * 2 - 1
    fake = (frames + 0.3 * torch.randn_like(frames)).clamp(-1, 1)

    def ssim(autocast: bool) -> float:
        module = Fundus2VideoModule(to_plain(tiny()))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            module.update_val_metrics(cf, frames, fake)
        return float(module.val_metrics["ssim"].compute())

    assert ssim(True) == ssim(False)
