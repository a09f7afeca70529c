"""Atomic writes: a failure names the file the user asked for, and leaves neither litter nor a
half-written file."""

import errno
import os

import pytest

from fundus2video import io
from fundus2video.io import atomic_path


def test_a_failed_write_names_the_target_not_its_temporary_sibling(tmp_path, monkeypatch):
    out = tmp_path / "generator.onnx"
    out.write_text("the earlier export")

    def full(src, dst):  # the disk fills as the finished file is moved into place
        raise OSError(errno.ENOSPC, "No space left on device", src)

    monkeypatch.setattr(io.os, "replace", full)
    with pytest.raises(OSError) as caught, atomic_path(out) as tmp:
        tmp.write_text("new")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(out)
    assert out.read_text() == "the earlier export" and sorted(os.listdir(tmp_path)) == ["generator.onnx"]


def test_an_error_about_another_file_is_left_as_it_is(tmp_path):
    with pytest.raises(FileNotFoundError) as caught, atomic_path(tmp_path / "a.json"):
        open(tmp_path / "missing.txt")
    assert caught.value.filename == str(tmp_path / "missing.txt") and list(tmp_path.iterdir()) == []
