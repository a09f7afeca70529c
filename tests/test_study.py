"""`fundus2video study`: units that finish once, resume exactly after a kill, a report rebuilt from
the unit files alone, and docs/STUDY.md's table equal to the committed results."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fundus2video.commands.cli import main
from fundus2video.studies.report import build_report, paired_difference
from fundus2video.studies.results import README_BEGIN, README_END, load_units
from fundus2video.studies.runner import run_study, units
from fundus2video.studies.spec import load_study

SPEC = """variants: [fundus2video, pix2pixhd]
seeds: [0, 1]
budget:
  data: {size: 32, n_frames: 4, num_workers: 0, phantom: {render_size: 64, n_train: N_TRAIN, n_val: 1, n_test: 2}}
  model: {generator: {ngf: 8, n_downsample: 2, n_blocks: 1}, discriminator: {ndf: 8, n_layers: 2}}
  loss: {vgg: 0.0, nce_patches: 16, nce_layers: [0, 2, 4]}
  optim: {epochs_constant: 1, epochs_decay: EPOCHS}
  trainer: {accelerator: cpu, devices: 1, enable_progress_bar: false}
  logging: {wandb: disabled, n_samples: 1}
"""


def _spec(tmp_path: Path, n_train: int = 2, epochs: int = 1) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC.replace("N_TRAIN", str(n_train)).replace("EPOCHS", str(epochs)))
    return path


def _runs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("run/*") if p.is_dir() and not p.is_symlink())


@pytest.mark.slow
def test_units_finish_once_and_the_report_is_rebuilt_from_their_files(tmp_path):
    spec = load_study(str(_spec(tmp_path)))
    out, results = tmp_path / "runs", tmp_path / "results"
    summaries = run_study(spec, out, results, jobs=2)
    assert len(summaries) == 4 and not [s for s in summaries if "error" in s]
    files = sorted(results.rglob("seed*.json"))
    assert [f.relative_to(results).as_posix() for f in files] == [
        "fundus2video/seed0.json", "fundus2video/seed1.json", "pix2pixhd/seed0.json", "pix2pixhd/seed1.json"]
    unit = json.loads(files[0].read_text())
    assert unit["budget_id"] == spec.budget_id() and len(unit["per_case"]) == 2
    assert [r["epoch"] for r in unit["curve"]] == [1, 2] and unit["curve"][-1]["videos"] == 4
    assert "lesion_rise" in unit["metrics"] and unit["train_s"] > 0
    runs = _runs(out)
    assert len(runs) == 4
    # run again: nothing is trained
    assert run_study(spec, out, results, jobs=2) == []
    assert _runs(out) == runs
    # the table: mean over each variant's seeds of the unit files' scores
    md = (results / "study.md").read_text()
    for name in ("fundus2video", "pix2pixhd"):
        psnr = [json.loads(f.read_text())["metrics"]["psnr"] for f in sorted((results / name).glob("*.json"))]
        row = next(line for line in md.splitlines() if line.startswith(f"| {name} |"))
        assert f"{np.mean(psnr):.2f} ± {np.std(psnr, ddof=1):.2f}" in row
    assert "| pix2pixhd |" in md.split("Paired difference")[1]
    for picture in ("study.png", "curves.png"):
        assert (results / picture).stat().st_size > 10_000
    # a missing unit is a missing cell, not an error
    (results / "pix2pixhd" / "seed1.json").unlink()
    md = build_report(spec, results).read_text()
    assert "3 of 4 units finished" in md and "| pix2pixhd | 0 |" in md


def test_a_result_from_another_budget_is_refused(tmp_path):
    spec = load_study(str(_spec(tmp_path)))
    stale = tmp_path / "results" / "fundus2video" / "seed0.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"budget_id": "000000000000"}))
    with pytest.raises(Exception, match="another budget"):
        run_study(spec, tmp_path / "runs", tmp_path / "results", dry_run=True)


def _study_cmd(spec: Path, out: Path, results: Path) -> list[str]:
    return [sys.executable, "-m", "fundus2video", "study", str(spec), "--variants", "fundus2video", "--seeds", "0",
            "--out", str(out), "--results", str(results)]


@pytest.mark.slow
def test_a_killed_unit_resumes_from_its_checkpoint_exactly(tmp_path):
    spec = _spec(tmp_path, n_train=4, epochs=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    interrupted = subprocess.Popen(_study_cmd(spec, tmp_path / "a", tmp_path / "ra"), env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((tmp_path / "a").rglob("checkpoints/last.ckpt")):
        time.sleep(0.05)
    os.killpg(interrupted.pid, signal.SIGKILL)  # the study and its worker, mid-unit
    interrupted.wait()
    assert not (tmp_path / "ra" / "fundus2video" / "seed0.json").exists(), "the kill came too late"
    again = subprocess.run(_study_cmd(spec, tmp_path / "a", tmp_path / "ra"), env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "partial (resumes" in again.stdout
    log = next((tmp_path / "a").rglob("log.txt")).read_text()
    assert "resuming" in log
    whole = subprocess.run(_study_cmd(spec, tmp_path / "b", tmp_path / "rb"), env=env, capture_output=True,
                           text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    resumed, straight = (json.loads((tmp_path / r / "fundus2video" / "seed0.json").read_text()) for r in ("ra", "rb"))
    assert resumed["metrics"] == straight["metrics"]  # bit-exact resume: the same scores to the last digit
    assert resumed["per_case"] == straight["per_case"]
    assert [r["epoch"] for r in resumed["curve"]] == [1, 2, 3, 4, 5]


def test_the_command_line_takes_variants_seeds_and_overrides_together(tmp_path, capsys):
    spec = str(_spec(tmp_path))
    args = ["study", spec, "--variants", "pix2pixhd", "optim.lr=0.001", "--seeds", "3", "--", "data.size=32",
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res"), "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pix2pixhd/seed3" in out and "fundus2video" not in out and "1 to run" in out
    assert main(["ablation", spec, "--dry-run", "--results", str(tmp_path / "res")]) == 0  # the old name
    assert main(["study", spec, "pix2pixhd", "--dry-run"]) == 2
    assert "neither an option nor a key=value" in capsys.readouterr().err
    assert main(["study", spec, "--jobs", "0", "--results", str(tmp_path / "res")]) == 2
    assert main(["study", spec, "--variants", "nope", "--dry-run"]) == 2
    assert "experiment not found" in capsys.readouterr().err
    # the overrides are part of the budget: another override, another budget
    a = load_study(spec, overrides=["optim.lr=0.001"]).budget_id()
    assert a != load_study(spec).budget_id() and a == load_study(spec, overrides=["optim.lr=0.001"]).budget_id()


def _units(values: dict[int, list[float]]) -> dict[int, dict]:
    return {s: {"per_case": [{"case_id": f"c{i}", "psnr": v} for i, v in enumerate(vs)]} for s, vs in values.items()}


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(0)
    ref = {s: list(rng.normal(20, 2, 30)) for s in range(3)}
    same = paired_difference(_units(ref), _units(ref), "psnr")
    assert same["mean"] == 0 and same["lo"] == 0 and same["hi"] == 0 and same["seeds"] == 3
    shifted = {s: [v + 1 + rng.normal(0, 0.3) for v in vs] for s, vs in ref.items()}
    d = paired_difference(_units(shifted), _units(ref), "psnr")
    assert 0.8 < d["lo"] < d["mean"] < d["hi"] < 1.2
    noisy = {s: [v + rng.normal(0, 3) for v in vs] for s, vs in ref.items()}
    d = paired_difference(_units(noisy), _units(ref), "psnr")
    assert d["lo"] < 0 < d["hi"]  # no difference: the interval spans 0


def test_the_documented_study_table_is_the_committed_results():
    """docs/STUDY.md's study block is what the report makes of results/phantom_study/ (and its means
    are those of the unit files)."""
    results = Path("results/phantom_study")
    spec = load_study("phantom")
    units_found = load_units(spec, results)
    assert units_found, "no finished units in results/phantom_study"
    readme = Path("docs/STUDY.md").read_text()
    block = readme.split(README_BEGIN, 1)[1].split(README_END, 1)[0]
    assert block.strip() == re.sub(r"\]\((\w+\.png)\)", r"](../results/phantom_study/\1)",
                                   (results / "study.md").read_text()).strip()
    for name, by_seed in units_found.items():
        lesion = [u["metrics"]["psnr_lesion"] for u in by_seed.values()]
        row = next(line for line in block.splitlines() if line.startswith(f"| {name} |"))
        assert f"{np.mean(lesion):.2f}" in row
        seeds = ",".join(str(s) for s in sorted(by_seed))
        assert f"| {name} | {seeds} |" in row
    for unit in units(spec, Path("runs"), results):
        if unit.result.is_file():
            assert json.loads(unit.result.read_text())["budget_id"] == spec.budget_id()


def test_report_only_without_finished_units_is_one_line(tmp_path, capsys):
    """--report-only on a missing or empty results folder: one line, and no folder made."""
    from fundus2video.commands.cli import main

    for results in (tmp_path / "nope", tmp_path):
        assert main(["study", "phantom", "--report-only", "--results", str(results)]) == 2
        assert f"--results {results}: no finished units of study 'phantom'" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()
    import shutil  # finished units (a copy of two of the committed variants) still give the report

    copy = tmp_path / "res"
    for variant in ("fundus2video", "pix2pixhd"):
        shutil.copytree(f"results/phantom_study/{variant}", copy / variant)
    assert main(["study", "phantom", "--report-only", "--results", str(copy)]) == 0


@pytest.mark.parametrize("text, message", [
    ("variants: [fundus2video, fundus2video]\n", "variants: ['fundus2video', 'fundus2video'] names a variant twice"),
    ("variants: [fundus2video]\nseeds: [0, 0]\n", "seeds: [0, 0] names a seed twice"),
    ("variants: [fundus2video]\nseeds: []\n", "seeds: expected non-negative integers, found []"),
    ("variants: [fundus2video]\nbudget: [1, 2]\n", "budget: expected a dict, found [1, 2]"),
    ("variants: [fundus2video]\nreference: nosuch\n", "reference: 'nosuch' is not one of the variants"),
])
def test_a_spec_that_cannot_mean_what_it_says_is_named(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(Exception, match=re.escape(message)):
        load_study(str(tmp_path / "bad.yaml"))


def test_empty_variants_or_seeds_on_the_command_line_are_refused(tmp_path, capsys):
    for flag in ("--variants", "--seeds"):
        assert main(["study", "phantom", flag, ",,", "--dry-run", "--results", str(tmp_path / "r")]) == 2
        assert f"{flag}: expected" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["study", "phantom", "--dry-run", "--results", str(tmp_path / "file" / "r")]) == 2
    assert capsys.readouterr().err.strip() == (f"fundus2video: error: --results {tmp_path / 'file' / 'r'}: "
                                               f"{tmp_path / 'file'} is a file, not a folder")
