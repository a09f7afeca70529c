"""A learning curve: the validation cases scored after every training epoch, as `evaluate` scores a
finished run, one row per epoch in a JSON file (the study's units keep theirs in curve.json)."""

from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from fundus2video.io import atomic_path
from fundus2video.metrics.kinetics import LesionKinetics, reference_rise
from fundus2video.scoring import Scores, score_samples

# the scores of a row; the kinetics ones only where the cases carry lesion annotations
CURVE_KEYS = ("psnr", "ssim", "psnr_lesion", "ssim_lesion", "curve_mae", "lesion_rise", "real_lesion_rise",
              "lesion_rise_ratio", "false_bright", "time_corr", "rise_skill_all", "direction_acc_all",
              "rise_corr_all", "false_dark")


class LearningCurve(L.Callback):
    """After every training epoch: the `split` cases scored as `evaluate` scores them, the kinetics
    skill against the same constant predictor (the training split's mean real rise per lesion kind),
    one row per epoch in `path` (rows of epochs not yet checkpointed are rewritten on resume). Runs
    before the epoch's checkpoint, so a kill in between only repeats the epoch."""

    def __init__(self, path: Path, split: str = "val"):
        self.path, self.split = Path(path), split
        self.rows = json.loads(self.path.read_text()) if self.path.is_file() else []
        self.samples: list | None = None
        self.reference: dict[str, float] = {}
        self.started = time.perf_counter()
        self.offset = 0.0
        self.scoring_s = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        done = trainer.current_epoch  # epochs the resumed checkpoint already holds
        self.rows = [r for r in self.rows if r["epoch"] <= done]
        self.offset = self.rows[-1]["train_s"] if self.rows else 0.0
        self.started, self.scoring_s = time.perf_counter(), 0.0
        datasets = trainer.datamodule.datasets
        with _training_streams_untouched():
            with datasets[self.split].as_scored() as scored:
                self.samples = [scored[i] for i in range(len(scored))]
            if any(LesionKinetics.applies(s) for s in self.samples):
                with datasets["train"].as_scored() as train:
                    self.reference = reference_rise(train[i] for i in range(len(train)))[0]
        if done and not any(r["epoch"] == done for r in self.rows):
            # killed after the epoch's checkpoint but before its row: the weights are that epoch's
            self._record(pl_module, done, self.offset)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        start = time.perf_counter()
        self._record(pl_module, trainer.current_epoch + 1, self.offset + (start - self.started) - self.scoring_s)
        self.scoring_s += time.perf_counter() - start

    def _record(self, pl_module, epoch: int, train_s: float) -> None:
        was_training = pl_module.training
        pl_module.eval()
        try:
            device = str(pl_module.device)
            scores = Scores("standard", pl_module.cfg.data.size, km_threshold=pl_module.cfg.data.km_threshold,
                            device=device, reference_rise=self.reference)
            with _training_streams_untouched():
                score_samples(pl_module, self.samples, scores, device=device, progress=False)
            results = scores.results()
        finally:
            pl_module.train(was_training)
        row = {"epoch": epoch, "videos": int(pl_module.video_step), "train_s": round(train_s, 1),
               **{k: _round(results[k]) for k in CURVE_KEYS if k in results}}
        self.rows = sorted([r for r in self.rows if r["epoch"] != epoch] + [row], key=lambda r: r["epoch"])
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.rows, indent=1) + "\n")


@contextlib.contextmanager
def _training_streams_untouched():
    """Scoring in the middle of a run leaves Python's, numpy's and torch's CPU random streams as it
    found them: a run with its curve trains exactly as one without."""
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])


def _round(x, digits: int = 5):
    return None if x is None or x != x else round(float(x), digits)
