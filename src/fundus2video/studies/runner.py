"""Running a study (`fundus2video study`): variants x seeds at one budget, each (variant, seed) a resumable unit.

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

import contextlib
import csv
import json
import logging
import os
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

from fundus2video.callbacks.learning_curve import LearningCurve
from fundus2video.errors import ConfigError, UserError
from fundus2video.io import atomic_path
from fundus2video.studies.results import short_name
from fundus2video.studies.spec import StudySpec, unit_config

log = logging.getLogger("fundus2video")


def code_state() -> dict:
    """The code a unit runs: the commit, whether the checkout had uncommitted changes, and when."""
    from fundus2video.training import git

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(status),
            "dirty_files": [line[3:] for line in status.splitlines()][:20],
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


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
    from fundus2video.evaluation import evaluate
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

    from fundus2video.studies.report import build_report

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
