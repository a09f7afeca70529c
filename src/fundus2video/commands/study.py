"""`fundus2video study`: variants x seeds at one budget, each (variant, seed) a resumable unit.

A study spec (`experiments/studies/NAME.yaml`) lists the variants (experiment files), the seeds
and a `budget` merged over every variant. Each unit lives in `<out>/<variant>/seed<k>/`:
  run/<stamp>/...      the training run (checkpoints, samples; never under version control)
  curve.json           the validation cases' scores after every epoch (learning curve)
  eval/                `fundus2video evaluate` on the test split (metrics.json, per_case.csv,
                       contact_sheet.png, kinetics.png)
and, once finished, its scores go to `<results>/<variant>/seed<k>.json` (small; meant to be
committed), which is what makes a unit finished: run again, the study skips it. An interrupted
unit resumes from its newest checkpoint (the epoch-end checkpoint, exact resume). `--jobs N`
runs N units at once with cores / N threads each. The report (`study.md`, `study.csv`,
`study.png`, `curves.png` in `<results>/`) is rebuilt from whatever unit files exist.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import logging
import os
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

from omegaconf import OmegaConf

from fundus2video.callbacks.learning_curve import LearningCurve
from fundus2video.commands.options import split_flags, take_option
from fundus2video.commands.study_report import short_name
from fundus2video.errors import ConfigError, UserError
from fundus2video.io import atomic_path

log = logging.getLogger("fundus2video")

# the per-test-case scores the report reads first; a unit keeps every numeric column of evaluate's
# per_case.csv (the kinetics' per-kind rises among them), so later analyses need no checkpoint
CASE_KEYS = ("psnr", "ssim", "psnr_lesion", "ssim_lesion", "psnr_km", "curve_mae", "lesion_rise",
             "real_lesion_rise", "false_bright", "time_corr")
# what an `analysis:` section of a spec may declare (the report applies it as written)
ANALYSIS_KEYS = {"unit", "test", "alpha", "correction", "primary", "secondary", "claims", "margins",
                 "power_targets", "skill_reference"}
@dataclass
class StudySpec:
    name: str
    variants: list[str]
    seeds: list[int]
    budget: dict
    reference: str = "fundus2video"
    baseline: str = "pix2pixhd"
    overrides: list[str] = field(default_factory=list)
    analysis: dict = field(default_factory=dict)  # the declared analysis (empty: the first study's rules)

    def analysis_id(self) -> str:
        """A short hash of the declared analysis: every unit records the one it was trained under."""
        if not self.analysis:
            return ""
        return hashlib.sha256(json.dumps(self.analysis, sort_keys=True).encode()).hexdigest()[:12]

    def budget_overrides(self) -> list[str]:
        """The budget as `key=value` overrides (applied over each variant's experiment file)."""
        return [*_dotlist(self.budget), *self.overrides]

    def budget_id(self) -> str:
        """A short hash of everything that defines a unit's training apart from variant and seed."""
        return hashlib.sha256(json.dumps(self.budget_overrides(), sort_keys=True).encode()).hexdigest()[:12]


def _dotlist(node: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        if isinstance(value, dict):
            out += _dotlist(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def resolve_study(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"study spec not found: {path}")
        return path
    from fundus2video.config import experiments_dir

    path = experiments_dir() / "studies" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise ConfigError(f"study not found: {path}" + (f" (available: {', '.join(known)})" if known else ""))
    return path


def load_study(name: str, variants: list[str] | None = None, seeds: list[int] | None = None,
               overrides: list[str] | None = None) -> StudySpec:
    """The spec file, with the command line's variants, seeds and overrides; checked before anything runs."""
    path = resolve_study(name)
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:  # yaml errors come in many types
        raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with variants, seeds and budget, found {type(raw).__name__}")
    unknown = set(raw) - {"variants", "seeds", "budget", "reference", "baseline", "analysis"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)} (expected variants, seeds, budget, reference, "
                          "baseline, analysis)")
    for key, kind in (("variants", list), ("seeds", list), ("budget", dict), ("reference", str), ("baseline", str),
                      ("analysis", dict)):
        if key in raw and not isinstance(raw[key], kind):
            raise ConfigError(f"{path}: {key}: expected a {kind.__name__}, found {raw[key]!r}")
    spec = StudySpec(name=path.stem, variants=list(variants if variants is not None else raw.get("variants") or []),
                     seeds=list(seeds if seeds is not None else raw.get("seeds", [0])),
                     budget=raw.get("budget") or {}, reference=raw.get("reference", "fundus2video"),
                     baseline=raw.get("baseline", "pix2pixhd"), overrides=list(overrides or []),
                     analysis=_checked_analysis(path, raw.get("analysis") or {}, raw.get("variants") or []))
    where = "--variants" if variants is not None else f"{path}: variants"
    if not spec.variants or not all(isinstance(v, str) and v for v in spec.variants):
        raise ConfigError(f"{where}: expected experiment names, found {spec.variants}")
    if len(set(spec.variants)) != len(spec.variants):
        raise ConfigError(f"{where}: {spec.variants} names a variant twice")
    where = "--seeds" if seeds is not None else f"{path}: seeds"
    if not spec.seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in spec.seeds):
        raise ConfigError(f"{where}: expected non-negative integers, found {spec.seeds}")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"{where}: {spec.seeds} names a seed twice (a unit per variant and seed)")
    for key in ("reference", "baseline"):  # the report's paired differences compare them
        if key in raw and raw[key] not in (raw.get("variants") or []):
            raise ConfigError(f"{path}: {key}: '{raw[key]}' is not one of the variants {raw.get('variants')}")
    for variant in spec.variants:
        unit_config(spec, variant, spec.seeds[0], Path("runs/study-check"))  # every variant resolves
    return spec


def _checked_analysis(path: Path, analysis: dict, variants: list) -> dict:
    """The declared analysis, refused in one line where the report could not apply it as written."""
    if not analysis:
        return {}
    unknown = set(analysis) - ANALYSIS_KEYS
    if unknown:
        raise ConfigError(f"{path}: analysis: unknown keys {sorted(unknown)} "
                          f"(expected {', '.join(sorted(ANALYSIS_KEYS))})")
    if analysis.get("test", "paired_t") != "paired_t" or analysis.get("correction", "holm") not in ("holm", "none"):
        raise ConfigError(f"{path}: analysis: test {analysis.get('test')!r} / correction "
                          f"{analysis.get('correction')!r} (expected test paired_t and correction holm or none)")
    alpha = analysis.get("alpha", 0.05)
    if not isinstance(alpha, float) or not 0 < alpha < 1:
        raise ConfigError(f"{path}: analysis.alpha: expected a number in (0, 1), found {alpha!r}")
    primary = analysis.get("primary")
    if not isinstance(primary, list) or not primary or not all(isinstance(p, str) for p in primary):
        raise ConfigError(f"{path}: analysis.primary: expected a list of score names, found {primary!r}")
    kinds = ("superiority", "non_inferiority", "superiority_of_variant")
    for claim in analysis.get("claims") or []:
        if not isinstance(claim, dict) or claim.get("variant") not in variants or claim.get("kind") not in kinds:
            raise ConfigError(f"{path}: analysis.claims: {claim!r} needs a name, a variant among {variants} and "
                              f"a kind among {list(kinds)}")
        if claim["kind"] == "non_inferiority" and not all(p in (analysis.get("margins") or {}) for p in primary):
            raise ConfigError(f"{path}: analysis.margins: a non-inferiority claim needs a margin for every primary "
                              f"endpoint {primary}, found {analysis.get('margins')!r}")
    return analysis


def code_state() -> dict:
    """The code a unit runs: the commit, whether the checkout had uncommitted changes, and when."""
    from fundus2video.training import git

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(status),
            "dirty_files": [line[3:] for line in status.splitlines()][:20],
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def unit_config(spec: StudySpec, variant: str, seed: int, unit_dir: Path):
    from fundus2video.config import load_config, resolve_experiment

    try:
        path = resolve_experiment(variant)
    except UserError as err:
        raise ConfigError(f"--variants: {err}") from None
    return load_config(path, [*spec.budget_overrides(), f"seed={seed}", "name=run", f"logging.root={unit_dir}"])


@dataclass
class Unit:
    variant: str
    seed: int
    unit_dir: Path
    result: Path

    @property
    def label(self) -> str:
        return f"{short_name(self.variant)}/seed{self.seed}"


def units(spec: StudySpec, out: Path, results: Path) -> list[Unit]:
    """Seed-major order: a study stopped early still has every variant at the first seeds."""
    return [Unit(v, s, out / short_name(v) / f"seed{s}", results / short_name(v) / f"seed{s}.json")
            for s in spec.seeds for v in spec.variants]


def unit_state(unit: Unit, spec: StudySpec) -> str:
    """finished | partial (a checkpoint exists) | new. A result from another budget is an error."""
    if unit.result.is_file():
        try:
            saved = json.loads(unit.result.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"{unit.result}: unreadable unit result ({err}); delete it to rerun the unit") from None
        if saved.get("budget_id") != spec.budget_id():
            raise UserError(f"{unit.result}: finished at another budget ({saved.get('budget_id')}, this study's is "
                            f"{spec.budget_id()}); use another --results folder or delete the file")
        return "finished"
    return "partial" if newest_checkpoint(unit.unit_dir) else "new"


def newest_checkpoint(unit_dir: Path) -> Path | None:
    # run directories only, not the `latest` link (which a resumed run moves before it has a checkpoint)
    ckpts = [p.resolve() for p in (unit_dir / "run").glob("*/checkpoints/last.ckpt")
             if p.is_file() and not p.parent.parent.is_symlink()]
    return max(ckpts, key=lambda p: p.stat().st_mtime) if ckpts else None


def _round(x, digits: int = 5):
    return None if x is None or x != x else round(float(x), digits)


def _number(text: str | None):
    """A per_case.csv cell: a rounded number, None when empty or NaN, the text when not a number."""
    if text in (None, ""):
        return None
    try:
        return _round(float(text))
    except ValueError:
        return text


# ------------------------------------------------------------------ one unit (in its own process)
def run_unit(spec: StudySpec, unit: Unit, threads: int) -> dict:
    """Train (or resume) one unit, score its test split, write its result file. Returns a summary;
    never raises (the study goes on with the other units)."""
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    unit.unit_dir.mkdir(parents=True, exist_ok=True)
    _UNIT_RUNNING.set()
    with open(unit.unit_dir / "log.txt", "a") as logfile, _redirected(logfile):
        try:
            return _run_unit(spec, unit, threads)
        except Exception as err:  # reported by the study, which carries on with the other units
            traceback.print_exc()
            return {"unit": unit.label, "error": f"{type(err).__name__}: {err} (see {unit.unit_dir / 'log.txt'})"}
        finally:
            _UNIT_RUNNING.clear()


@contextlib.contextmanager
def _redirected(logfile):
    """Everything the unit prints (Python, Lightning's handlers, C++) goes to its log file, at the
    file-descriptor level, so N units at once do not interleave on the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(logfile.fileno(), 1)
    os.dup2(logfile.fileno(), 2)
    handler = logging.StreamHandler(logfile)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.getLogger().removeHandler(handler)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _run_unit(spec: StudySpec, unit: Unit, threads: int) -> dict:
    from fundus2video.commands.evaluate import evaluate
    from fundus2video.training import Interrupted, train

    print(f"== {datetime.now().isoformat(timespec='seconds')} {unit.label}, {threads} thread(s)", flush=True)
    cfg = unit_config(spec, unit.variant, unit.seed, unit.unit_dir)
    resume = newest_checkpoint(unit.unit_dir)
    stamp = unit.unit_dir / "budget.json"  # what the unit's checkpoints were trained at
    if resume is not None and stamp.is_file() and json.loads(stamp.read_text()).get("budget_id") != spec.budget_id():
        raise UserError(f"{unit.unit_dir}: its checkpoints were trained at another budget "
                        f"({json.loads(stamp.read_text()).get('budget_id')}, this study's is {spec.budget_id()}); "
                        "use another --out or delete the folder")
    with atomic_path(stamp) as tmp:
        tmp.write_text(json.dumps({"budget_id": spec.budget_id(), "budget": spec.budget_overrides()}) + "\n")
    # the code of every start and resume, taken as it starts (a unit may resume on later code)
    starts = unit.unit_dir / "code.json"
    code = json.loads(starts.read_text()) if starts.is_file() else []
    code.append(code_state())
    with atomic_path(starts) as tmp:
        tmp.write_text(json.dumps(code, indent=1) + "\n")
    curve = LearningCurve(unit.unit_dir / "curve.json")
    try:
        run_dir = train(cfg, resume=resume, extra_callbacks=[curve])
    except Interrupted as err:
        return {"unit": unit.label, "error": f"interrupted; resumes from {err.checkpoint}"}
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        ckpt = newest_checkpoint(unit.unit_dir)
    out = evaluate(ckpt, split="test", protocol="standard", out=unit.unit_dir / "eval", sheet_cases=2)
    report = json.loads((out / "metrics.json").read_text())
    with open(out / "per_case.csv", newline="") as f:
        per_case = [{"case_id": r["case_id"], "patient_id": r["patient_id"],
                     **{k: _number(v) for k, v in r.items() if k not in ("case_id", "patient_id")}}
                    for r in csv.DictReader(f)]
    kinetics_file = out / "kinetics_cases.json"
    rows = curve.rows
    result = {
        "study": spec.name, "variant": short_name(unit.variant), "experiment": unit.variant, "seed": unit.seed,
        "budget_id": spec.budget_id(), "budget": spec.budget_overrides(), "analysis_id": spec.analysis_id(),
        "train_s": rows[-1]["train_s"] if rows else None, "videos": rows[-1]["videos"] if rows else None,
        "threads": threads, "git_commit": code[0]["commit"], "code": code,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics": report["metrics"], "per_case": per_case, "curve": rows,
        "kinetics_cases": json.loads(kinetics_file.read_text()) if kinetics_file.is_file() else None,
    }
    with atomic_path(unit.result) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    return {"unit": unit.label, "result": str(unit.result), "train_s": result["train_s"]}


def _init_worker() -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: this worker gets SIGTERM when the study's process dies, however it dies (SIGKILL too), so
    a unit stops at its next video with its checkpoint instead of training on, orphaned, and blocking
    on a result pipe nobody reads."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        # the SIGTERM stops a unit at its video's end; then nothing reads this worker's result, and the
        # pool's pipes would keep it waiting forever: leave once the unit is done, or after the grace
        while os.getppid() == parent:
            time.sleep(1.0)
        deadline = time.monotonic() + STOP_GRACE_S
        while _UNIT_RUNNING.is_set() and time.monotonic() < deadline:
            time.sleep(0.5)
        os._exit(143)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


_UNIT_RUNNING = threading.Event()  # set while this process trains or scores a unit


STOP_GRACE_S = 120  # after SIGTERM, how long the running units get to finish their video and save


class StudyStopped(Exception):
    """SIGTERM reached the study: its running units saved (or were ended) and no other unit starts."""


# ------------------------------------------------------------------ the study
def run_study(spec: StudySpec, out: Path, results: Path, jobs: int = 1, dry_run: bool = False,
              report: bool = True, report_spec: StudySpec | None = None) -> list[dict]:
    """Run every unit that is not finished (`jobs` at a time), then rebuild the report (of
    `report_spec`'s variants and seeds: the whole study when only a part of it is run)."""
    from tqdm import tqdm

    from fundus2video.commands.study_report import build_report

    if jobs < 1:
        raise ConfigError(f"--jobs: expected a positive number, found {jobs}")
    todo = [(u, unit_state(u, spec)) for u in units(spec, out, results)]
    pending = [u for u, state in todo if state != "finished"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // jobs)
    for u, state in todo:
        resumes = f" (resumes {newest_checkpoint(u.unit_dir)})" if state == "partial" else ""
        print(f"  {u.label:<24} {state}{resumes}")
    print(f"{len(todo) - len(pending)} of {len(todo)} units finished; {len(pending)} to run, {jobs} at a time, "
          f"{threads} thread(s) each; budget {spec.budget_id()}")
    if dry_run:
        return []
    summaries = []
    if pending:
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_init_worker)
        previous = _forward_sigterm(pool)
        try:
            bar = tqdm(total=len(pending), desc=f"study {spec.name}", unit="unit")
            for summary in _one_per_worker(pool, jobs, [(run_unit, spec, u, threads) for u in pending]):
                bar.update()
                summaries.append(summary)
                bar.write(f"{summary['unit']}: " + (f"error: {summary['error']}" if "error" in summary
                                                    else f"done in {summary['train_s']} s -> {summary['result']}"))
                if report and "error" not in summary:
                    build_report(report_spec or spec, results)
        except KeyboardInterrupt:
            # the running units save their checkpoints on the same Ctrl-C; none of the waiting ones starts
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        except StudyStopped:
            _stop_workers(pool)
            raise
        finally:
            if previous is not None:
                import signal

                signal.signal(signal.SIGTERM, previous)
        pool.shutdown(wait=True)
    if report:
        build_report(report_spec or spec, results)
    return summaries


def _one_per_worker(pool: ProcessPoolExecutor, jobs: int, calls: list[tuple]):
    """The calls' results as they finish, never more than `jobs` handed to the pool at once. The pool
    queues one call beyond its workers, which no cancel can take back: a unit waiting there would start
    after a SIGTERM, only to be killed at the end of the grace."""
    waiting, running = list(calls), set()
    while waiting or running:
        while waiting and len(running) < jobs:
            fn, *args = waiting.pop(0)
            running.add(pool.submit(fn, *args))
        done, running = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            yield future.result()


def _forward_sigterm(pool: ProcessPoolExecutor):
    """SIGTERM to the study (a scheduler's stop, `timeout`, `kill`) goes to its running units, which
    save at their video's end; the study then starts nothing more and leaves (`_stop_workers`). Returns
    the handler it replaced (None off the main thread, where no handler can be set)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def on_term(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop; a second SIGTERM changes nothing
        for process in list((pool._processes or {}).values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
        raise StudyStopped

    return signal.signal(signal.SIGTERM, on_term)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Wait up to STOP_GRACE_S for the units to save and exit, then end what is left: no worker
    outlives the study."""
    import signal

    processes = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.join(5)


def main_study(name: str, variants: list[str] | None, seeds: list[int] | None, overrides: list[str], out: str,
               results: str | None, jobs: int, dry_run: bool, report_only: bool, readme: str | None) -> int:
    from fundus2video.commands.study_report import build_report, update_readme

    spec = load_study(name, variants, seeds, overrides)
    whole = load_study(name, None, None, overrides)  # the report covers the whole study, not just this part
    results_dir = Path(results or f"results/{spec.name}_study")
    from fundus2video.io import file_in_the_way

    for flag, folder in (("--results", results_dir), ("--out", Path(out))):  # before any unit trains
        if (blocking := file_in_the_way(folder)) is not None:
            raise UserError(f"{flag} {folder}: {blocking} is a file, not a folder")
    if report_only:
        from fundus2video.commands.study_report import load_units

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
