"""A command's outputs appear together or not at all: an evaluation that fails midway (here a full
disk at its fourth file) leaves the folder exactly as the previous evaluation left it, with no
staging folder behind; a rerun never leaves an earlier run's file beside its own."""

from __future__ import annotations

import errno
import hashlib

import pytest

from fundus2video.io import staged_outputs
from tests.helpers.cli import run_cli

pytestmark = pytest.mark.faults


def _tree(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_evaluation_leaves_the_previous_one_whole(trained_run, tmp_path, monkeypatch):
    ckpt = trained_run("plain") / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    assert run_cli("evaluate", "--ckpt", ckpt, "--split", "val", "--protocol", "standard", "--out", out).returncode == 0
    before = _tree(out)
    assert "metrics.json" in before and "contact_sheet.png" in before

    from fundus2video import evaluation as ev

    def full_disk(path, image):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ev, "write_png", full_disk)
    r = run_cli("evaluate", "--ckpt", ckpt, "--split", "val", "--protocol", "paper", "--out", out)
    assert r.returncode == 2 and "no space left on device" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert _tree(out) == before  # not one new file beside the old ones, and no staging folder


def test_staged_outputs_swap_in_together_and_drop_what_the_run_no_longer_writes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("old a")
    (out / "b.txt").write_text("old b")
    (out / "mine.txt").write_text("the user's")
    with staged_outputs(out, {"a.txt", "b.txt"}, "t") as stage:
        (stage / "a.txt").write_text("new a")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "mine.txt"]
    assert (out / "a.txt").read_text() == "new a"
    with pytest.raises(RuntimeError):
        with staged_outputs(out, {"a.txt"}, "t") as stage:
            (stage / "a.txt").write_text("half")
            raise RuntimeError("killed midway")
    assert (out / "a.txt").read_text() == "new a" and sorted(p.name for p in out.iterdir()) == ["a.txt", "mine.txt"]
    (out / ".t-staging-left").mkdir()  # what a kill -9 leaves: cleared by the next run
    with staged_outputs(out, {"a.txt"}, "t") as stage:
        (stage / "a.txt").write_text("a")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "mine.txt"]


def test_a_full_disk_that_names_no_file_says_what_was_being_written(trained_run, tmp_path, monkeypatch):
    ckpt = trained_run("plain") / "checkpoints" / "last.ckpt"
    from fundus2video import evaluation

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as an encoder or torch.save raise it

    monkeypatch.setattr(evaluation, "write_png", full_disk)
    r = run_cli("evaluate", "--ckpt", ckpt, "--split", "val", "--protocol", "standard", "--out", tmp_path / "ev")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]  # after the warnings about the metrics it skips
    assert last == f"fundus2video: error: no space left on device: while writing --out {tmp_path / 'ev'}"


def test_a_photos_outputs_replace_an_earlier_generations_whole_or_not_at_all(trained_run, tmp_path, monkeypatch):
    from fundus2video import inference
    from fundus2video.data_modules.phantom import make_case
    from fundus2video.video_io import write_png

    ckpt = trained_run("plain") / "checkpoints" / "last.ckpt"
    photo = write_png(tmp_path / "cf.png", make_case(0, size=64).cf)
    out = tmp_path / "g"
    out.mkdir()
    args = ["generate", "--ckpt", ckpt, "--cf", photo, "--out", out / "v.mp4", "--runtime", "torch"]
    assert run_cli(*args, "--gif", "--strip").returncode == 0
    first = _tree(out)
    assert sorted(first) == ["v.gif", "v.mp4", "v_strip.png"]

    def full_disk(path, image):  # the strip is written after the videos
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(inference, "write_png", full_disk)
    r = run_cli(*args, "--gif", "--strip", "--frames", "5", "--overwrite")
    assert r.returncode == 2 and "no space left on device" in r.stderr, r.stderr
    assert _tree(out) == first and sorted(p.name for p in out.iterdir()) == sorted(first)  # no hidden file left
    monkeypatch.undo()
    assert run_cli(*args, "--frames", "5", "--overwrite").returncode == 0  # no --gif, no --strip this time
    assert sorted(_tree(out)) == ["v.mp4"] and _tree(out)["v.mp4"] != first["v.mp4"]


@pytest.fixture
def full_disk(tmp_path):
    """A real file system with 8 KiB of room (a tmpfs; needs root and mount, else the test skips)."""
    import shutil
    import subprocess

    folder = tmp_path / "full"
    folder.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("fmt, name", [("torchscript", "g.pt"), ("onnx", "g.onnx"), ("hub", "hub")])
def test_export_on_a_full_disk_says_so_and_leaves_nothing(trained_run, full_disk, fmt, name):
    """A full disk, for real: TorchScript's writer used to abort the process in C++ (leaving its temporary
    file), the Hub folder's safetensors writer to end in a traceback. In a subprocess: an abort must not
    take the test run with it."""
    import subprocess
    import sys

    if fmt == "onnx":
        pytest.importorskip("onnxscript")
    ckpt = trained_run("plain") / "checkpoints" / "last.ckpt"
    done = subprocess.run([sys.executable, "-m", "fundus2video", "export", "--ckpt", str(ckpt), "--out",
                           str(full_disk / name), "--format", fmt], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("fundus2video: error: no space left on device")
    assert "Traceback" not in done.stderr and "terminate called" not in done.stderr
    assert list(full_disk.iterdir()) == []  # no temporary file, no half-written folder
