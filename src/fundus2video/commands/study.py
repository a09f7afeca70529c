"""`fundus2video study`: parse, run the study (`fundus2video.studies`), rebuild its report."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fundus2video.commands.options import split_flags, take_option
from fundus2video.errors import ConfigError, UserError
from fundus2video.studies.runner import StudyStopped, run_study
from fundus2video.studies.spec import load_study

log = logging.getLogger("fundus2video")


def main_study(name: str, variants: list[str] | None, seeds: list[int] | None, overrides: list[str], out: str,
               results: str | None, jobs: int, dry_run: bool, report_only: bool, readme: str | None) -> int:
    from fundus2video.studies.report import build_report
    from fundus2video.studies.results import update_readme

    spec = load_study(name, variants, seeds, overrides)
    whole = load_study(name, None, None, overrides)  # the report covers the whole study, not just this part
    results_dir = Path(results or f"results/{spec.name}_study")
    from fundus2video.io import file_in_the_way

    for flag, folder in (("--results", results_dir), ("--out", Path(out))):  # before any unit trains
        if (blocking := file_in_the_way(folder)) is not None:
            raise UserError(f"{flag} {folder}: {blocking} is a file, not a folder")
    if report_only:
        from fundus2video.studies.results import load_units

        if not results_dir.is_dir() or not load_units(whole, results_dir):
            raise UserError(f"--results {results_dir}: no finished units of study '{whole.name}' (expected "
                            f"<variant>/seed<k>.json files; run `fundus2video study {name}` first)")
        md = build_report(whole, results_dir)
    else:
        try:
            summaries = run_study(spec, Path(out) / spec.name, results_dir, jobs, dry_run, report_spec=whole)
        except StudyStopped:
            print(f"study {spec.name}: stopped by SIGTERM; the running units saved their checkpoints at the end of "
                  f"their video; run the same command again to resume", file=sys.stderr)
            return 143
        if dry_run:
            return 0
        md = results_dir / "study.md"
        failed = [s for s in summaries if "error" in s]
        if failed:
            print(f"{len(failed)} unit(s) did not finish: " + "; ".join(f"{s['unit']}: {s['error']}" for s in failed),
                  file=sys.stderr)
    if readme:
        update_readme(Path(readme), md, whole.name)
        print(f"updated {readme} from {md}")
    print(Path(md).read_text())
    return 1 if not report_only and not dry_run and any("error" in s for s in summaries) else 0


STUDY_OPTIONS = ("--variants", "--seeds", "--jobs", "--out", "--results", "--readme")


def cmd_study(args: argparse.Namespace) -> int:
    rest = list(args.overrides)
    if args.spec and "=" in args.spec:  # no spec named: the first word is already an override
        rest, args.spec = [args.spec, *rest], None
    for option in STUDY_OPTIONS:  # options may also come after the overrides
        value, rest = take_option(rest, option)
        if value is not None:
            setattr(args, option[2:].replace("-", "_"), value)
    flags, rest = split_flags(rest, {"--report-only", "--dry-run", "--"})
    args.report_only = args.report_only or "--report-only" in flags
    args.dry_run = args.dry_run or "--dry-run" in flags
    bad = [a for a in rest if "=" not in a]
    if bad:
        raise ConfigError(f"study: '{bad[0]}' is neither an option nor a key=value override "
                          f"(options: {', '.join(STUDY_OPTIONS)}, --report-only, --dry-run)")
    variants = [v for v in str(args.variants).split(",") if v] if args.variants is not None else None
    try:
        seeds = [int(s) for s in str(args.seeds).split(",") if s] if args.seeds is not None else None
        jobs = int(args.jobs)
    except ValueError:
        raise ConfigError(f"--seeds / --jobs: expected integers (e.g. --seeds 0,1,2 --jobs 2), found "
                          f"{args.seeds!r} / {args.jobs!r}") from None
    return main_study(args.spec or "phantom", variants, seeds, rest, args.out, args.results, jobs, args.dry_run,
                      args.report_only, args.readme)
