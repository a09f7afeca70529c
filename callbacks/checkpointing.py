"""Checkpoints that survive interruption: atomic files, a checkpoint every N training videos,
and one more when the job is told to stop (SIGTERM, as cluster schedulers send before a kill).

`AtomicCheckpointIO` writes a checkpoint to a temporary file in the same folder, flushes it to
disk and renames it over the old one: a crash, a full disk or a kill mid-write leaves the
previous checkpoint intact, never a half file.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fundus2video.errors import UserError
from fundus2video.io import atomic_path

FULL_DISK_BYTES = 64 * 2**20  # a failed write with less than this left is taken for a full disk

log = logging.getLogger("fundus2video")


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` into a temporary file, fsync, then `os.replace` onto the target."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options (got {storage_options!r})")
        try:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    torch.save(checkpoint, f)
                    f.flush()
                    os.fsync(f.fileno())
        except (OSError, RuntimeError) as err:
            # torch reports a full disk as "[enforce fail at inline_container.cc] ... file write failed";
            # the free space says what happened (the previous checkpoint is intact either way)
            free = shutil.disk_usage(Path(path).parent).free
            if getattr(err, "errno", None) == errno.ENOSPC or free < FULL_DISK_BYTES:
                raise UserError(f"no space left on device: {path} ({free / 2**20:.0f} MiB free; the previous "
                                "checkpoint, if any, is intact)") from None
            raise


class ResumableCheckpoint(L.Callback):
    """Writes `<dirpath>/last.ckpt` every `every_n_batches` training videos (0: never; the epoch-end
    checkpoint is ModelCheckpoint's) and, after SIGTERM, at the end of the current video, then stops
    training. Lightning records SIGTERM in `trainer.received_sigterm` (and shares it across DDP ranks)."""

    def __init__(self, dirpath: str | Path, every_n_batches: int = 0):
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_batches = every_n_batches
        self.stopped_by_sigterm = False
        self.signal = ""  # the signal that stopped training (SIGTERM, or SIGINT: Ctrl-C)
        self.interrupt_requested = False  # set by train's SIGINT handler

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # every rank stops at the same video: a Ctrl-C seen by one rank is shared (SIGTERM already is)
        interrupt = (trainer.strategy.reduce_boolean_decision(self.interrupt_requested, all=False)
                     if trainer.world_size > 1 else self.interrupt_requested)
        if trainer.received_sigterm or interrupt:
            self.signal = "SIGTERM" if trainer.received_sigterm else "SIGINT"
            trainer.save_checkpoint(self.path)
            log.warning("%s: saved %s after %d training videos; stopping", self.signal, self.path,
                        getattr(pl_module, "video_step", -1))
            self.stopped_by_sigterm = True
            trainer.should_stop = True
            if self.signal == "SIGINT":
                # leave at once, as Lightning does after SIGTERM: a graceful stop would end the epoch and
                # write an epoch-end checkpoint over this one, as if the epoch's other videos were seen
                raise SystemExit(130)
        elif self.every_n_batches and (batch_idx + 1) % self.every_n_batches == 0:
            trainer.save_checkpoint(self.path)
