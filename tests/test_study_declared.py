"""A study spec that declares its analysis: the declaration is checked, and the report applies it
(paired t over seeds, Holm, power, verdicts) to the unit files alone."""

import json
import re

import numpy as np
import pytest

from fundus2video.studies.report import build_report
from fundus2video.studies.spec import load_study

SPEC = """variants: [fundus2video, pix2pixhd, ablations/lesion_mask]
seeds: [0, 1, 2, 3, 4]
budget:
  data: {size: 32, n_frames: 4, phantom: {n_train: 2, n_val: 1, n_test: 3}}
analysis:
  alpha: 0.05
  correction: holm
  primary: [psnr_lesion, rise_skill_all]
  secondary: [false_dark]
  claims:
    - {name: "beats pix2pixHD", variant: pix2pixhd, kind: superiority}
    - {name: "KM no worse than lesion mask", variant: ablations/lesion_mask, kind: non_inferiority}
  margins: {psnr_lesion: 0.3, rise_skill_all: 0.05}
  power_targets: {psnr_lesion: 0.3, rise_skill_all: 0.05}
"""


def _write_units(spec, results, arms: dict[str, tuple[float, float]], noise: float):
    rng = np.random.default_rng(0)
    for arm, (psnr, skill) in arms.items():
        for seed in spec.seeds:
            metrics = {"psnr_lesion": psnr + rng.normal(0, noise), "rise_skill_all": skill + rng.normal(0, noise / 10),
                       "false_dark": 0.01, "psnr_fov": 20.0, "rise_mae_all": 0.1, "const_rise_mae_all": 0.12}
            unit = {"budget_id": spec.budget_id(), "analysis_id": spec.analysis_id(), "seed": seed, "train_s": 1.0,
                    "metrics": metrics, "curve": [], "code": [{"commit": "abc", "dirty": False}],
                    "per_case": [{"case_id": f"phantom{i:04d}", "patient_id": f"P{i // 2:04d}", "km_iou": 0.1 * i,
                                  "lesion_rise": 0.1 * i, "real_lesion_rise": 0.2 * i} for i in range(3)]}
            path = results / arm / f"seed{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(unit))


def test_the_report_applies_the_declared_analysis(tmp_path):
    (tmp_path / "v2.yaml").write_text(SPEC)
    spec = load_study(str(tmp_path / "v2.yaml"))
    assert spec.analysis["correction"] == "holm" and len(spec.analysis_id()) == 12
    results = tmp_path / "results"
    _write_units(spec, results, {"fundus2video": (16.0, 0.4), "pix2pixhd": (15.0, 0.1), "lesion_mask": (16.0, 0.4)},
                 noise=0.05)
    md = build_report(spec, results).read_text()
    assert "15 of 15 units finished" in md and "**The declared analysis**" in md
    assert "- beats pix2pixHD (pix2pixhd): **held**." in md
    assert "- KM no worse than lesion mask (lesion_mask): **held**." in md
    assert "4 (claim, primary endpoint) tests" in md and "median 0.10" in md
    row = next(line for line in md.splitlines() if line.startswith("| fundus2video | 0,1,2,3,4 |"))
    mean = np.mean([json.loads((results / "fundus2video" / f"seed{s}.json").read_text())["metrics"]["psnr_lesion"]
                    for s in range(5)])
    assert f"{mean:.2f}" in row
    for picture in ("study.png", "cases.png"):
        assert (results / picture).stat().st_size > 5_000
    # seeds far noisier than the differences: nothing is decided, and the power says why
    _write_units(spec, results, {"fundus2video": (16.0, 0.4), "pix2pixhd": (15.9, 0.39), "lesion_mask": (16.0, 0.4)},
                 noise=2.0)
    md = build_report(spec, results).read_text()
    assert re.search(r"- beats pix2pixHD \(pix2pixhd\): \*\*not tested\*\* \(power reached: 0\.\d\d", md)


@pytest.mark.parametrize("analysis, message", [
    ("  primary: psnr\n", "analysis.primary: expected a list of score names"),
    ("  primary: [psnr]\n  test: bootstrap\n", "analysis: test 'bootstrap'"),
    ("  primary: [psnr]\n  alpha: 2.0\n", "analysis.alpha: expected a number in (0, 1)"),
    ("  primary: [psnr]\n  claims: [{name: x, variant: nosuch, kind: superiority}]\n", "needs a name, a variant"),
    ("  primary: [psnr]\n  claims: [{name: x, variant: pix2pixhd, kind: non_inferiority}]\n",
     "a non-inferiority claim needs a margin"),
    ("  primary: [psnr]\n  power: 0.8\n", "analysis: unknown keys ['power']"),
    ("  primary: [psnr]\n  compare: [nosuch]\n", "analysis.compare: expected a list of variants"),
])
def test_a_declaration_the_report_could_not_apply_is_refused(tmp_path, analysis, message):
    (tmp_path / "bad.yaml").write_text("variants: [fundus2video, pix2pixhd]\nanalysis:\n" + analysis)
    with pytest.raises(Exception, match=re.escape(message)):
        load_study(str(tmp_path / "bad.yaml"))


def test_a_descriptive_comparison_reports_intervals_and_no_verdict(tmp_path):
    (tmp_path / "d.yaml").write_text("variants: [fundus2video, pix2pixhd]\nseeds: [0, 1, 2]\nbudget:\n"
                                     "  data: {size: 32, n_frames: 4}\nanalysis:\n  correction: none\n"
                                     "  primary: [psnr_lesion, rise_skill_all]\n  claims: []\n  compare: [pix2pixhd]\n")
    spec = load_study(str(tmp_path / "d.yaml"))
    results = tmp_path / "results"
    _write_units(spec, results, {"fundus2video": (16.0, 0.4), "pix2pixhd": (15.0, 0.1)}, noise=0.05)
    md = build_report(spec, results).read_text()
    assert "descriptive: no claim is tested, so nothing is corrected" in md
    assert "Verdicts" not in md and "**held**" not in md
    row = next(line for line in md.splitlines() if line.startswith("| pix2pixhd | 3 | "))
    diffs = [json.loads((results / "fundus2video" / f"seed{s}.json").read_text())["metrics"]["psnr_lesion"]
             - json.loads((results / "pix2pixhd" / f"seed{s}.json").read_text())["metrics"]["psnr_lesion"]
             for s in range(3)]
    assert f"{np.mean(diffs):+.2f} [" in row  # fundus2video - pix2pixhd, about +1 dB


def test_the_case_by_case_table_judges_each_lesion_against_the_constant(tmp_path):
    """A model that copies each real curve is closer than the constant on every lesion; one that draws the
    constant's course for every lesion never is, however its set means come out."""
    (tmp_path / "v2.yaml").write_text(SPEC)
    spec = load_study(str(tmp_path / "v2.yaml"))
    results = tmp_path / "results"
    _write_units(spec, results, {"fundus2video": (16.0, 0.4), "pix2pixhd": (15.0, 0.1), "lesion_mask": (16.0, 0.4)},
                 noise=0.05)
    rng = np.random.default_rng(1)
    for arm in ("fundus2video", "pix2pixhd"):
        for seed in spec.seeds:
            path = results / arm / f"seed{seed}.json"
            unit = json.loads(path.read_text())
            unit["metrics"].update({"const_rise_leakage": 0.2, "const_rise_blocked": -0.1})
            cases = []
            for i in range(4):
                kinds = {}
                for kind, const in (("leakage", 0.2), ("blocked", -0.1)):
                    real = [0.3, 0.3 + const + rng.normal(0, 0.1)]
                    fake = real if arm == "fundus2video" else [0.0, const]  # rise: exactly the constant
                    kinds[kind] = {"real": real, "fake": fake, "px": 20}
                cases.append({"case_id": f"phantom{i:04d}", "kinds": kinds})
            unit["kinetics_cases"] = cases
            path.write_text(json.dumps(unit))
    md = build_report(spec, results).read_text()
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in md.splitlines()
            if line.startswith("| ") and line.endswith(" | 8 |")}
    assert rows["fundus2video"][1:3] == ["100, 100, 100, 100, 100", "100"]
    assert rows["pix2pixhd"][1:3] == ["0, 0, 0, 0, 0", "0"] and rows["pix2pixhd"][3] == "0.150"  # consts 0.2, -0.1
    assert "lesion_mask" not in rows  # no per-case curves: no row
