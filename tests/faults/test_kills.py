"""Stopping a study from outside: SIGTERM to its process reaches the running unit, which saves at the
end of its video; the study exits 143 and leaves no worker behind. SIGKILL to the study's process
ends its worker too (it dies with its parent). A rerun resumes the unit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SPEC = """variants: [pix2pixhd]
seeds: [0, 1]  # the second unit waits: a SIGTERM must not start it
budget:
  data: {size: 32, n_frames: 4, num_workers: 0, phantom: {render_size: 64, n_train: 8, n_val: 1, n_test: 1}}
  model: {generator: {ngf: 8, n_downsample: 2, n_blocks: 1}, discriminator: {ndf: 8, n_layers: 2}}
  loss: {vgg: 0.0}
  optim: {epochs_constant: 200, epochs_decay: 0}
  trainer: {accelerator: cpu, devices: 1, enable_progress_bar: false}
  logging: {wandb: disabled, n_samples: 1}
"""


def _session_pids(sid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-s", str(sid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _start(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    spec = tmp_path / "long.yaml"
    spec.write_text(SPEC)
    unit = tmp_path / "runs" / "long" / "pix2pixhd" / "seed0"
    proc = subprocess.Popen([sys.executable, "-m", "fundus2video", "study", str(spec), "--jobs", "1",
                             "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")],
                            cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240
    while not list(unit.rglob("metrics.csv")) or not list(unit.rglob("last.ckpt")):  # training, past an epoch
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-2000:]
        assert time.monotonic() < deadline, "the unit did not start training"
        time.sleep(0.5)
    return proc, unit


def _cleanup(proc: subprocess.Popen) -> None:
    for pid in _session_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_sigterm_to_the_study_stops_its_unit_and_leaves_no_worker(tmp_path):
    proc, unit = _start(tmp_path)
    try:
        os.kill(proc.pid, signal.SIGTERM)  # the study's process only, as `kill` or a scheduler's step would
        output = proc.communicate(timeout=150)[0].decode(errors="replace")
        assert proc.returncode == 143, output[-2000:]
        assert "stopped by SIGTERM" in output and "Traceback" not in output, output[-2000:]
        deadline = time.monotonic() + 10
        while _session_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _session_pids(proc.pid) == []  # no orphaned worker
        assert "SIGTERM: saved" in (unit / "log.txt").read_text()
        assert not (tmp_path / "results" / "pix2pixhd" / "seed0.json").exists()
        assert not (unit.parent / "seed1").exists(), "a waiting unit started after the SIGTERM"
        dry = subprocess.run([sys.executable, "-m", "fundus2video", "study", str(tmp_path / "long.yaml"),
                              "--dry-run", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")],
                             capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
        assert "partial (resumes" in dry.stdout, dry.stdout
    finally:
        _cleanup(proc)


def test_a_killed_study_takes_its_worker_with_it(tmp_path):
    proc, unit = _start(tmp_path)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 120
        while _session_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _session_pids(proc.pid) == [], "the worker outlived the study"
        assert "SIGTERM: saved" in (unit / "log.txt").read_text()  # it stopped at a video, with a checkpoint
    finally:
        _cleanup(proc)
