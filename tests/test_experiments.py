"""Every experiment file trains."""

import pytest

from fundus2video.config import load_config
from fundus2video.training import train


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
