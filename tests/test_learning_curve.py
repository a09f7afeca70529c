"""The learning-curve callback: its last row is what `evaluate` says of the run's last checkpoint on
the same cases (the kinetics skill against the same constant predictor), and a run with the curve
trains exactly as one without it."""

import json

import pytest
import torch

from fundus2video.callbacks import LearningCurve
from fundus2video.evaluation import evaluate
from fundus2video.training import train

pytestmark = pytest.mark.slow

# three validation cases on the realistic phantom: brightening and darkening kinds to score
OVERRIDES = ["data.phantom.n_val=3", "data.phantom.preset=realistic", "trainer.max_epochs=2"]


def test_a_curve_row_is_the_evaluation_of_that_epoch_and_changes_no_training(tiny, tmp_path):
    curve = LearningCurve(tmp_path / "curve.json")
    with_curve = train(tiny(*OVERRIDES, f"logging.root={tmp_path / 'a'}"), extra_callbacks=[curve])
    without = train(tiny(*OVERRIDES, f"logging.root={tmp_path / 'b'}"))
    weights = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
               for run in (with_curve, without)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), "the curve changed the training"

    rows = json.loads((tmp_path / "curve.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["videos"] == 4
    out = evaluate(with_curve / "checkpoints" / "last.ckpt", split="val", protocol="standard",
                   out=tmp_path / "eval")
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    for key in ("psnr", "psnr_lesion", "rise_skill_all", "direction_acc_all", "false_dark"):
        assert rows[-1][key] is not None, key
        assert rows[-1][key] == pytest.approx(metrics[key], abs=2e-5), key
