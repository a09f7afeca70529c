"""Mixed precision that tells the training loop how many steps the GradScaler skipped.

Under 16-mixed the GradScaler skips an optimizer step whose gradients hold inf or nan (and lowers
its scale). The learning-rate schedules and the generator-step clock must not count a step that
did not happen, and a run whose every step is skipped has diverged. Asking after each step would
wait for the device twice per window (a GPU's fused Adam decides on the device and never waits), so
the plugin counts the skipped steps of each optimizer on the device, and the module reads the
counts and the scale once per video (`take_skipped`, one host sync).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins import MixedPrecision


class ScalerAwareMixedPrecision(MixedPrecision):
    """Lightning's MixedPrecision, plus a count of the steps the GradScaler skipped, per optimizer."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._skipped: dict[int, torch.Tensor] = {}  # id(optimizer) -> skipped steps, on the device

    def optimizer_step(self, optimizer: Any, model: Any, closure: Any, **kwargs: Any) -> Any:
        if self.scaler is None:  # bf16: nothing is ever skipped
            return super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        before = self.scaler._scale.clone() if self.scaler._scale is not None else None
        out = super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        if before is not None:  # the scaler lowers its scale exactly when it found inf/nan and skipped the step
            skipped = (self.scaler._scale < before).to(torch.int64).reshape(())
            key = id(optimizer)
            self._skipped[key] = self._skipped[key] + skipped if key in self._skipped else skipped
        return out

    def take_skipped(self, *optimizers: Any) -> tuple[list[int], float]:
        """The steps of each of `optimizers` (torch optimizers) skipped since the last call, and the
        scale now: one host sync. Resets the counts."""
        if self.scaler is None or self.scaler._scale is None:
            return [0] * len(optimizers), 1.0
        scale = self.scaler._scale.reshape(()).float()
        counts = [self._skipped.pop(id(opt), torch.zeros((), dtype=torch.int64, device=scale.device)).float()
                  for opt in optimizers]
        *skipped, now = torch.stack([*counts, scale]).tolist()
        return [int(n) for n in skipped], now


def precision_plugin(precision: str, accelerator: str) -> ScalerAwareMixedPrecision | None:
    """The plugin for 16-mixed (on any device; on the CPU, float16 autocast and a CPU GradScaler, the
    GPU recipe's code path, which Lightning would otherwise turn into bf16-mixed); None otherwise."""
    if precision != "16-mixed":
        return None
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    return ScalerAwareMixedPrecision("16-mixed", device, torch.amp.GradScaler(device))
