"""`fundus2video sweep`: parse, then run the sweep (`fundus2video.sweeps.run`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fundus2video.commands.options import Parser
from fundus2video.config import resolve_sweep
from fundus2video.errors import UserError
from fundus2video.sweeps.run import create_and_agent, default_out, run_local
from fundus2video.sweeps.spec import load_sweep


def _add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--local", action="store_true", help="run the sweep here, without a wandb server")
    parser.add_argument("--count", type=int, default=None,
                        help="number of runs (random/bayes: required unless run_cap; grid: at most this many)")
    parser.add_argument("--seed", type=int, default=0, help="--local: seed of the random/bayes search")
    parser.add_argument("--out", default=None, help="--local: folder of the runs and sweep.csv/md "
                                                    "(default runs/sweeps/<sweep name>)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `fundus2video sweep SWEEP [--local] [--count N] [--seed N] [--out DIR] [key=value ...]`."""
    p = subparsers.add_parser(
        "sweep", help="run a hyperparameter sweep (wandb, or here with --local)",
        description="Run a wandb sweep file: create it on the wandb server and start an agent, or with --local "
                    "run it here (grid, random, bayes) and print the runs sorted by the sweep's metric. "
                    "Overrides (key=value) apply to every run. Exit status 1 when a local run failed.")
    p.add_argument("sweep", help="experiments/sweeps/NAME.yaml or NAME")
    _add_flags(p)
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="key=value ... (the flags may also come here)")
    return p


def cmd_sweep(args: argparse.Namespace) -> int:
    """The `sweep` command: flags given after SWEEP arrive among the overrides and are parsed here."""
    flags = Parser(prog="fundus2video sweep", add_help=False, allow_abbrev=False)
    _add_flags(flags)
    args, overrides = flags.parse_known_args(args.overrides, namespace=args)
    if args.count is not None and args.count < 1:
        raise UserError(f"--count: expected a positive number, got {args.count}")
    sweep = load_sweep(resolve_sweep(args.sweep))
    if not args.local:
        create_and_agent(sweep, args.count, overrides)
        return 0
    results = run_local(sweep, args.count, overrides, args.out, args.seed)
    out = Path(args.out) if args.out else default_out(sweep)
    print((out / "sweep.md").read_text(), end="")
    print(f"table: {out / 'sweep.md'}, {out / 'sweep.csv'}")
    return 1 if any(r.status.startswith("failed") for r in results) else 0
