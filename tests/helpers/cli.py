"""`fundus2video ...` run in the test's own process: what a user sees (exit status, stdout, stderr with
the log lines) without the seconds a fresh Python spends importing torch and Lightning. An uncaught
exception is not turned into a status: it fails the test with its traceback, as it would reach a user.
The entry point itself (`python -m fundus2video`) keeps a test of its own in a fresh process."""

from __future__ import annotations

import io
import logging
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args) -> Completed:
    from fundus2video.commands.cli import main

    out, err = io.StringIO(), io.StringIO()
    # the CLI's logging.basicConfig does nothing under pytest (its capture handlers are already on the
    # root logger): log lines reach stderr through this handler instead, formatted as the CLI does
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exit_:  # argparse's usage errors and --help
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return Completed(code, out.getvalue(), err.getvalue())
