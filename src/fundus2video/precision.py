"""Mixed precision that tells the training loop when the GradScaler skipped a step.

Under 16-mixed the GradScaler skips an optimizer step whose gradients hold inf or nan (and lowers
its scale). The learning-rate schedules and the generator-step clock must not advance for a step
that did not happen, so the plugin records it in `step_skipped`, which the module reads after
each optimizer step. Reading it adds no wait: `GradScaler.step` has already synchronised with
the device to decide.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins import MixedPrecision


class ScalerAwareMixedPrecision(MixedPrecision):
    """Lightning's MixedPrecision, plus `step_skipped` after every optimizer step."""

    step_skipped: bool = False

    def optimizer_step(self, optimizer: Any, model: Any, closure: Any, **kwargs: Any) -> Any:
        if self.scaler is None:  # bf16: nothing is ever skipped
            self.step_skipped = False
            return super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        before = self.scaler._scale.clone() if self.scaler._scale is not None else None
        out = super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        # the scaler lowers its scale exactly when it found inf/nan and skipped the step
        self.step_skipped = before is not None and bool((self.scaler._scale < before).item())
        return out


def precision_plugin(precision: str, accelerator: str) -> ScalerAwareMixedPrecision | None:
    """The plugin for 16-mixed (on any device; on the CPU, float16 autocast and a CPU GradScaler, the
    GPU recipe's code path, which Lightning would otherwise turn into bf16-mixed); None otherwise."""
    if precision != "16-mixed":
        return None
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    return ScalerAwareMixedPrecision("16-mixed", device, torch.amp.GradScaler(device))
