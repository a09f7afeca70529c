"""Outputs never replace what is not a regular file: a device node or a named pipe where an output
belongs stops the command in one line, whatever --overwrite says, and stays what it was."""

from __future__ import annotations

import os
import stat

import pytest

from fundus2video.errors import UserError
from fundus2video.io import atomic_path
from tests.helpers.cli import run_cli

pytestmark = pytest.mark.faults


def special(path, kind: str):
    if kind == "fifo":
        os.mkfifo(path)
        return stat.S_ISFIFO
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:
        pytest.skip("making a device node needs root")
    return stat.S_ISCHR


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_atomic_writes_refuse_special_files(tmp_path, kind):
    target = tmp_path / "out.json"
    check = special(target, kind)
    with pytest.raises(UserError, match="not a regular file; only regular files are replaced"):
        with atomic_path(target) as tmp:
            tmp.write_text("{}")
    assert check(os.stat(target).st_mode) and sorted(os.listdir(tmp_path)) == ["out.json"]


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_generate_and_export_keep_the_device(trained_run, tmp_path, kind):
    ckpt = trained_run("plain") / "checkpoints" / "last.ckpt"
    from fundus2video.data_modules.phantom import make_case
    from fundus2video.video_io import write_png

    photo = tmp_path / "cf.png"
    write_png(photo, make_case(0, size=64).cf)
    out = tmp_path / "null.mp4"
    check = special(out, kind)
    r = run_cli("generate", "--ckpt", ckpt, "--cf", photo, "--out", out, "--overwrite")
    assert r.returncode == 2 and "not a regular file" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert check(os.stat(out).st_mode)
    onnx = tmp_path / "null.onnx"
    check = special(onnx, kind)
    r = run_cli("export", "--ckpt", ckpt, "--format", "onnx", "--out", onnx, "--overwrite")
    assert r.returncode == 2 and "not a regular file" in r.stderr, r.stderr
    assert check(os.stat(onnx).st_mode)
