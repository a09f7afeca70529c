"""Mixed precision from the config, on CPU: bf16-mixed runs G and D under autocast; 16-mixed scales
the losses through `manual_backward` with one GradScaler for both optimizers, a window whose G
loss overflows skips G's step only (D still steps) and halves the scale, the skipped steps are not
steps of the schedules (counted once per video, no host sync per step), and a run whose every
generator step is skipped stops in one line."""

import math
import os
import sys

import lightning as L
import pytest
import torch

import fundus2video.training.fit as train_module
from fundus2video.module import Fundus2VideoModule
from fundus2video.training import train
from tests.helpers.full import FULL


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
        g_before = next(self.generator.parameters()).detach().clone()
        if first:
            seen["scale"] = self.trainer.precision_plugin.scaler.get_scale()
            seen["g"] = [p.detach().clone() for p in self.generator.parameters()]
            seen["d"] = [p.detach().clone() for p in self.discriminator.parameters()]
        out = step(self, *args)
        if first:
            seen["scale_after"] = self.trainer.precision_plugin.scaler.get_scale()
            seen["g_after"] = [p.detach().clone() for p in self.generator.parameters()]
            seen["d_after"] = [p.detach().clone() for p in self.discriminator.parameters()]
        seen.setdefault("moved", []).append(not torch.equal(g_before, next(self.generator.parameters())))
        return out

    monkeypatch.setattr(Fundus2VideoModule, "window_losses", overflowing_first_window)
    monkeypatch.setattr(Fundus2VideoModule, "_window_step", observed_step)
    # the skip is read once per video, not after each optimizer step: the plugin's step never waits
    # for the device (GradScaler.step itself does on the CPU, not with a GPU's fused Adam)
    item = torch.Tensor.item

    def counted_item(self):
        caller = sys._getframe(1).f_code
        if caller.co_filename.endswith(os.path.join("fundus2video", "precision.py")):
            seen["item_in_step"] = caller.co_name
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counted_item)
    run_dir = train(tiny(*FULL, "loss.vgg=0", "trainer.max_epochs=1", "trainer.precision=16-mixed"))
    assert seen["scale_after"] == seen["scale"] / 2  # halved once, by G's skipped step; D's was finite
    assert all(torch.equal(a, b) for a, b in zip(seen["g"], seen["g_after"]))  # G's step was skipped
    assert any(not torch.equal(a, b) for a, b in zip(seen["d"], seen["d_after"]))  # D stepped
    assert "item_in_step" not in seen
    # a skipped step is not a step of the schedules: the clock and both schedulers count G's real steps
    # (fp16 overflows at the first scales happen naturally too)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    steps = sum(seen["moved"])
    assert 0 < steps < len(seen["moved"]) and not seen["moved"][0]
    assert state["fundus2video"]["g_step"] == steps
    assert [s["last_epoch"] for s in state["lr_schedulers"]] == [steps, steps]
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_16_mixed_stops_when_every_generator_step_is_skipped(tiny, monkeypatch, tmp_path):
    import fundus2video.module as module_file
    from fundus2video.errors import UserError

    losses = Fundus2VideoModule.window_losses

    def always_overflowing(self, *args):
        fake, g_total, g_parts, d_total, d_parts = losses(self, *args)
        return fake, g_total * math.inf, g_parts, d_total, d_parts

    monkeypatch.setattr(Fundus2VideoModule, "window_losses", always_overflowing)
    monkeypatch.setattr(module_file, "SKIPPED_IN_A_ROW", 6)  # a few videos' worth, to keep the test short
    with pytest.raises(UserError) as err:
        train(tiny(*FULL, "loss.vgg=0", "trainer.max_epochs=3", "trainer.precision=16-mixed"))
    message = str(err.value)
    assert message.startswith("training diverged under 16-mixed: after ") and "\n" not in message
    assert "GradScaler skipped the last" in message and "trainer.precision=bf16-mixed" in message


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
