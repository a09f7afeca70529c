"""Callbacks that show a person what the model sees and makes.

Both collect the first `n_samples` validation cases, write files into the run directory on
global rank 0 (always), and hand the same pictures to whichever Lightning loggers can show
them (wandb: `log_image` / `log_video`). Nothing runs during the sanity check, and without a
logger or run directory they only write files, or nothing.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.loggers import WandbLogger

from fundus2video.video_io import write_all, write_png
from fundus2video.visuals import mask_panel, side_by_side


class _FirstCases(L.Callback):
    """Keeps the first `n_samples` validation cases of an epoch (on CPU)."""

    def __init__(self, out_dir: str | Path, n_samples: int = 2):
        self.out_dir, self.n_samples = Path(out_dir), n_samples
        self.cases: list[dict] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.cases = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking:
            return
        for i in range(batch["cf"].shape[0]):
            if len(self.cases) >= self.n_samples:
                return
            self.cases.append(self.keep(batch, outputs, i))

    def keep(self, batch: dict, outputs, i: int) -> dict:
        raise NotImplementedError

    def ready(self, trainer) -> bool:
        return bool(self.cases) and not trainer.sanity_checking and trainer.is_global_zero


class KnowledgeMaskLogger(_FirstCases):
    """Writes `knowledge_masks.png`: per case, CF | CF with KM and field of view | KM."""

    def keep(self, batch, outputs, i):
        return {k: batch[k][i].cpu() for k in ("cf", "km", "roi")}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.ready(trainer):
            return
        image = np.vstack([mask_panel(c["cf"], c["km"], c["roi"]) for c in self.cases])
        path = write_png(self.out_dir / "knowledge_masks.png", image)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/knowledge_masks", [str(path)], step=trainer.global_step)


class SampleVideoLogger(_FirstCases):
    """Writes `samples/epoch_NNN.{mp4,gif}` and `samples/last.{mp4,gif}`: CF | real | generated."""

    def __init__(self, out_dir: str | Path, n_samples: int = 2, fps: int = 4):
        super().__init__(out_dir, n_samples)
        self.fps = fps

    def keep(self, batch, outputs, i):
        return {"cf": batch["cf"][i].cpu(), "real": batch["frames"][i].cpu(),
                "fake": outputs["fake"][i].cpu()}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.ready(trainer):
            return
        videos = [side_by_side(c["cf"], c["real"], c["fake"]) for c in self.cases]
        n = min(len(v) for v in videos)  # cases may differ in length: show the common part
        frames = np.concatenate([v[:n] for v in videos], axis=1)  # cases stacked vertically
        samples = self.out_dir / "samples"
        paths = write_all(samples / f"epoch_{trainer.current_epoch:03d}", frames, self.fps)
        write_all(samples / "last", frames, self.fps)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_video("val/samples", [str(paths[0])], step=trainer.global_step)
