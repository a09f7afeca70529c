"""`fundus2video ablation` end to end at test size: table, CSV and contact sheet."""

import csv

from fundus2video.ablation import run_ablation
from tests.conftest import TINY


def test_ablation_writes_table_csv_and_picture(tmp_path):
    out = run_ablation(tmp_path / "abl", variants=["pix2pixhd", "ablations/no_kad"],
                       extra=[*TINY, "trainer.max_epochs=1", "data.phantom.n_test=2"])
    rows = list(csv.DictReader(open(out / "ablation.csv")))
    assert [r["variant"] for r in rows] == ["pix2pixhd", "no_kad"]
    for r in rows:
        for key in ("psnr", "ssim", "psnr_lesion", "time_corr", "train_s"):
            assert r[key] not in ("", "nan"), key
    table = (out / "ablation.md").read_text()
    assert "| pix2pixhd |" in table and "Budget" in table
    assert (out / "ablation.png").stat().st_size > 0
    again = run_ablation(tmp_path / "abl", variants=["pix2pixhd"], extra=[*TINY, "data.phantom.n_test=2"],
                         evaluate_only=True)
    first = next(csv.DictReader(open(again / "ablation.csv")))
    assert first["psnr"] == rows[0]["psnr"] and first["train_s"] == rows[0]["train_s"]
