"""What is echoed: a file given as an experiment base is named, never printed; case folder names with
escape sequences or newlines are shown escaped by `data check`."""

from __future__ import annotations

import pytest

from fundus2video.data_modules.phantom_files import write_phantom
from tests.helpers.cli import run_cli

pytestmark = pytest.mark.faults


def test_a_private_file_as_base_is_not_echoed(tmp_path):
    secret = tmp_path / "netrc"
    secret.write_text("machine api.example.org login alice password hunter2\n")
    spec = tmp_path / "x.yaml"
    spec.write_text(f"base: {secret}\nname: x\n")
    r = run_cli("train", spec, "--dry-run")
    assert r.returncode == 2 and "not an experiment file" in r.stderr, r.stderr
    assert "hunter2" not in r.stderr + r.stdout and "alice" not in r.stderr + r.stdout


def test_escape_sequences_in_case_names_are_shown_escaped(tmp_path):
    root = write_phantom(tmp_path / "data", 2, size=64, n_frames=4, video="png", progress=False)
    evil = "case\x1b[31mRED\nBAD fake: forged"
    (root / "phantom0001").rename(root / evil)
    (root / "cases.csv").unlink()
    r = run_cli("data", "check", root)
    out = r.stdout + r.stderr
    assert "\x1b" not in out and "\nBAD fake: forged" not in out, out
    assert "\\x1b[31mRED\\nBAD fake: forged" in out
