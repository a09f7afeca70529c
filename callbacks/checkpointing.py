"""Checkpoints that survive interruption: atomic files, a checkpoint every N training videos,
and one more when the job is told to stop (SIGTERM, as cluster schedulers send before a kill).

`AtomicCheckpointIO` writes a checkpoint to a temporary file in the same folder, flushes it to
disk and renames it over the old one: a crash, a full disk or a kill mid-write leaves the
previous checkpoint intact, never a half file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fundus2video.errors import UserError
from fundus2video.io import atomic_path

FULL_DISK_BYTES = 64 * 2**20  # a failed write with less than this left is taken for a full disk

log = logging.getLogger("fundus2video")

DEFAULT_STOP_GRACE_S = 90.0  # schedulers commonly allow 30-300 s between SIGTERM and SIGKILL


def stop_grace() -> float:
    """Seconds from SIGTERM to the watchdog's exit when no video boundary comes
    (FUNDUS2VIDEO_STOP_GRACE_S; set it below your scheduler's grace period)."""
    text = os.environ.get("FUNDUS2VIDEO_STOP_GRACE_S", "").strip()
    try:
        value = float(text) if text else DEFAULT_STOP_GRACE_S
    except ValueError:
        return DEFAULT_STOP_GRACE_S
    return value if value > 0 else DEFAULT_STOP_GRACE_S


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
    checkpoint is ModelCheckpoint's) and, after SIGTERM or a first Ctrl-C, at the end of the current
    video, then stops training.

    The stop is decided together: every rank takes part, once per video, in one all-reduce of
    (SIGTERM seen, Ctrl-C seen), so all ranks save at the same video and leave together, whichever
    rank the signal reached (a scheduler may signal one process; Lightning's own SIGTERM handler,
    replaced here while training runs, broadcasts from inside the handler and stops only the rank that
    got it). If no video boundary comes within the grace (`stop_grace()`: a collective that never
    returns, because another rank is gone or stuck), the watchdog exits 143 without a new checkpoint
    rather than wait for the scheduler's SIGKILL; the newest checkpoint on disk resumes the run."""

    def __init__(self, dirpath: str | Path, every_n_batches: int = 0):
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_batches = every_n_batches
        self.stopped_by_sigterm = False
        self.signal = ""  # the signal that stopped training (SIGTERM, or SIGINT: Ctrl-C)
        self.interrupt_requested = False  # set by train's SIGINT handler
        self.sigterm_requested = False  # set by the SIGTERM handler below
        self._fit_over = threading.Event()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread can take a signal; Lightning's handler stays

        def on_sigterm(signum, frame) -> None:
            if not self.sigterm_requested:
                self.sigterm_requested = True
                log.warning("SIGTERM: saving a checkpoint at the end of this video and stopping (all ranks)")

        signal.signal(signal.SIGTERM, on_sigterm)  # Lightning's teardown puts its saved handlers back
        # Python runs a handler only when the main thread runs Python again, never while it waits in a
        # collective; the C-level handler still writes the signal's number to the wakeup fd at once, so
        # the watchdog learns of SIGTERM from there even when the main thread never comes back
        read, write = os.pipe()
        os.set_blocking(write, False)
        self._wakeup = (read, write, signal.set_wakeup_fd(write, warn_on_full_buffer=False))
        threading.Thread(target=self._watch_signals, args=(read, stop_grace()), daemon=True,
                         name="stop-watchdog").start()

    def _watch_signals(self, read: int, grace: float) -> None:
        while True:
            got = os.read(read, 64)
            if not got or self._fit_over.is_set():
                return
            if signal.SIGTERM in got:
                break
        self._watchdog(grace)

    def _end_watch(self) -> None:
        self._fit_over.set()
        wakeup = getattr(self, "_wakeup", None)
        if wakeup is None or threading.current_thread() is not threading.main_thread():
            return
        read, write, previous = wakeup
        self._wakeup = None
        signal.set_wakeup_fd(previous)
        with contextlib.suppress(OSError):
            os.write(write, b"\0")  # lets the watching thread leave
            os.close(write)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end_watch()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._end_watch()

    def _watchdog(self, grace: float) -> None:
        if self._fit_over.wait(grace):
            return
        sys.stderr.write(f"fundus2video: error: SIGTERM: no video boundary reached within {grace:g} s (a collective "
                         f"between the ranks never returned); exiting without a new checkpoint; resume from the "
                         f"newest one in {self.path.parent}\n")
        sys.stderr.flush()
        os._exit(143)

    def _stop_decision(self, trainer: L.Trainer) -> tuple[bool, bool]:
        """(SIGTERM, Ctrl-C) as any rank saw them: one all-reduce per video under DDP."""
        flags = [self.sigterm_requested or bool(trainer.received_sigterm), self.interrupt_requested]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            agreed = torch.tensor(flags, dtype=torch.int32, device=trainer.strategy.root_device)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
            flags = [bool(v) for v in agreed.tolist()]
        return flags[0], flags[1]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        sigterm, interrupt = self._stop_decision(trainer)
        if sigterm or interrupt:
            self.signal = "SIGTERM" if sigterm else "SIGINT"
            trainer.save_checkpoint(self.path)
            log.warning("%s: saved %s after %d training videos; stopping", self.signal, self.path,
                        getattr(pl_module, "video_step", -1))
            self.stopped_by_sigterm = True
            trainer.should_stop = True
            self._fit_over.set()
            # leave at once on every rank: a graceful stop would end the epoch and write an epoch-end
            # checkpoint over this one, as if the epoch's other videos were seen
            raise SystemExit(143 if sigterm else 130)
        elif self.every_n_batches and (batch_idx + 1) % self.every_n_batches == 0:
            trainer.save_checkpoint(self.path)
