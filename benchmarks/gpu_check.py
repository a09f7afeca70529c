"""The GPU check: every CUDA path of the project in one command, and a summary table.

Each step runs in its own processes under its own time limit: a crash, a hang or a failed check stops
that step only (and the steps that need it are skipped, with the reason). One file, though long: the
steps call its helpers as `python benchmarks/gpu_check.py <helper>`, so a GPU machine runs the whole
check from a checkout with nothing but this script.

Steps, in order (`--steps` picks some and adds the steps they need):
  env                   torch, CUDA and cuDNN versions, the GPU, whether it has bf16
  prepare               the phantom as case folders (generate's CF photo) and a random-weight VGG19 (on the CPU)
  smoke-16-mixed        1 epoch of the full method at 64 x 64 (experiments/fundus2video_cpu.yaml: KBA, knowledge-
                        aware D, mask-enhanced PatchNCE, plus the VGG19 term) on cuda, trainer.precision=16-mixed;
                        then: checkpoints/last.ckpt, sample videos, every logged loss finite
  smoke-bf16-mixed      the same under bf16-mixed, with trainer.deterministic=warn (deterministic kernels where
                        CUDA has them; true is refused before training: reflection padding has none)
  train-window          benchmarks/train_window.py --device cuda: the module's window against the release's order
  speed-switches        benchmarks/gpu_speed.py: the paper window (512 x 512, ngf 64) under each speed switch:
                        s/window, peak memory, host syncs per window
  generate-cuda-vs-cpu  `fundus2video generate` from smoke-16-mixed's checkpoint on cuda and on cpu; the frames
                        compared (fp32 with TF32 off: max |cuda - cpu| <= 2e-3; the written strips in levels)
  evaluate-cuda-vs-cpu  `fundus2video evaluate` of that checkpoint on cuda and on cpu; metrics.json compared
  ddp-one-rank          the smoke training under trainer.strategy=ddp on one GPU (one NCCL rank)
  ddp-two-ranks-one-gpu tests/ddp_train.py (the full method at test size, 2 epochs) as two torchrun "nodes" on
                        127.0.0.1, both ranks on cuda:0 over gloo (NCCL refuses a shared GPU), with
                        trainer.ddp_reduce=per_network and =all: the ranks' parameters identical, and the two
                        reductions within 1e-3 of each other (the per-network hook's futures on CUDA)
The limits add up to 595 s (`--budget-scale` multiplies them): under 10 minutes on one modern GPU.

Installed beforehand (nothing is downloaded and the package index is never asked):
  - the repository's .venv as `make install` makes it (the project with its [dev,export,hub] extras), then a
    CUDA build of torch in place of the CPU wheel, from wheels on disk, e.g.
        .venv/bin/python -m pip install --no-index --find-links /path/to/wheels "torch==2.13.0+cu128"
    (with the nvidia-* and triton wheels it depends on in that folder);
  - an NVIDIA driver for that CUDA build; a C compiler (gcc) for torch.compile's Triton kernels (without
    one, only the `compile` speed switch fails, with its error recorded).
No pretrained weights are needed: the smoke runs use a random-weight VGG19 (same cost, meaningless
features), train_window.py and gpu_speed.py write their own, evaluate runs without LPIPS and FVD
(`--lpips '' --i3d ''`, both reported as skipped). Every step runs with FUNDUS2VIDEO_OFFLINE=1,
HF_HUB_OFFLINE=1 and WANDB_MODE=disabled.

Output (`--out`, default runs/gpu_check/<timestamp>/): <step>.log (the commands and their output),
the runs, videos and JSON the steps write, summary.md and summary.json (rewritten after every step).

    python benchmarks/gpu_check.py [--dry-run] [--steps env,smoke-16-mixed,...] [--out DIR] [--python PATH]
        [--budget-scale F]
Exit status: 0 when every step is ok, 1 when one is not, 2 for a usage error or without a CUDA device
(one line on stderr). `--dry-run` lists every step's limit and exact commands and writes the summary
with each step "dry-run"; it runs nothing and needs no GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ME = "benchmarks/gpu_check.py"  # the helpers below, as the steps call them (they run in ROOT)
MARK = "gpu-check: "  # a helper's line `gpu-check: {...}` carries key numbers into the summary
GRACE_S = 5.0  # after SIGTERM at a step's limit, before SIGKILL (a training saves a checkpoint on SIGTERM)
STEP_ENV = {"WANDB_MODE": "disabled", "WANDB_SILENT": "true", "FUNDUS2VIDEO_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
            "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
# 1 epoch of 8 phantom videos at 64 x 64, 6 frames: seconds on a GPU, and every loss term runs
SMOKE = ["data.size=64", "data.n_frames=6", "data.phantom.n_train=8", "data.phantom.n_val=2",
         "data.phantom.n_test=2", "data.num_workers=0", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
         "trainer.enable_progress_bar=false", "trainer.accelerator=gpu", "trainer.devices=1",
         "logging.wandb=disabled", "logging.n_samples=1", "loss.vgg=10.0"]
GENERATE_TOL = 2e-3  # max |cuda - cpu| of fp32 frames in [-1, 1], TF32 off
STRIP_TOL = 32  # max difference of the written 8-bit strips (TF32 on, as generate runs): only gross errors
DDP_TOL = 1e-3  # max |parameter| difference after 2 epochs, per-network hook against plain DDP, on one GPU
EVALUATE_TOL = 2e-2  # max |cuda - cpu| / max(|cpu|, 0.1) over the metrics


class UsageError(Exception):
    """A mistake on the command line or a machine that cannot run the check: one line, exit status 2."""


@dataclass
class Cmd:
    argv: list[str]
    stdout: Path | None = None  # the command's stdout goes to this file (its JSON), stderr to the step's log

    def shell(self) -> str:
        return shlex.join(self.argv) + (f" > {shlex.quote(str(self.stdout))}" if self.stdout else "")


@dataclass
class Step:
    name: str
    what: str
    timeout: float  # seconds, all its commands together
    commands: list[Cmd]
    needs: tuple[str, ...] = ()
    # key numbers and detail rows from the files the step wrote: fn(step) -> (numbers, rows)
    parse: Callable[[Step], tuple[dict, list[dict]]] | None = None


@dataclass
class Result:
    name: str
    status: str  # ok | failed | timeout | skipped | dry-run | pending
    detail: str = ""  # failed: rc=N; skipped: the reason
    seconds: float = 0.0
    timeout: float = 0.0
    numbers: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # a detail table (train-window, speed-switches)
    note: str = ""  # not ok: the last line of its log
    log: str = ""
    commands: list[str] = field(default_factory=list)

    def status_text(self) -> str:
        if self.status == "failed":
            return f"failed {self.detail}"
        if self.status == "timeout":
            return f"timeout after {self.timeout:.0f}s"
        if self.status == "skipped":
            return f"skipped: {self.detail}"
        return self.status


# ------------------------------------------------------------------ the steps
def build_steps(out: Path, python: str, scale: float = 1.0) -> list[Step]:
    """Every step, its limit multiplied by `scale`. Commands run in the repository root."""
    me, runs, vgg, phantom = [python, ME], out / "runs", out / "vgg19-random.pth", out / "phantom"
    ckpt = runs / "smoke-16-mixed" / "latest" / "checkpoints" / "last.ckpt"
    gen, ev = out / "generate", out / "evaluate"

    def train(name: str, extra: Sequence[str]) -> list[Cmd]:
        return [Cmd([python, "-m", "fundus2video", "train", "fundus2video_cpu", *SMOKE, *extra, f"name={name}",
                     f"loss.vgg_weights={vgg}", f"logging.root={runs}"]),
                Cmd([*me, "check-run", str(runs / name), "--log", str(out / f"{name}.log"),
                     *(["--backend", "nccl"] if "trainer.strategy=ddp" in extra else [])])]

    def generate(device: str) -> Cmd:
        return Cmd([python, "-m", "fundus2video", "generate", "--ckpt", str(ckpt), "--cf",
                    str(phantom / "phantom0000" / "cf.png"), "--out", str(gen / f"{device}.mp4"), "--strip",
                    "--device", device])

    def evaluate(device: str) -> Cmd:
        return Cmd([python, "-m", "fundus2video", "evaluate", "--ckpt", str(ckpt), "--split", "test",
                    "--lpips", "", "--i3d", "", "--out", str(ev / device), "--device", device])

    speed_budget = 140 * scale  # gpu_speed.py ends within it; the step's limit adds its start-up
    steps = [
        Step("env", "versions, the GPU, bf16", 20, [Cmd([*me, "env"])]),
        Step("prepare", "phantom case folders and a random-weight VGG19 (CPU)", 30, [
            Cmd([python, "-m", "fundus2video", "data", "phantom", "--out", str(phantom), "--cases", "2",
                 "--size", "128", "--frames", "6", "--video", "png", "--overwrite"]),
            Cmd([*me, "write-vgg", str(vgg)])]),
        Step("smoke-16-mixed", "1 epoch, full method, 16-mixed", 55, train("smoke-16-mixed",
             ["trainer.precision=16-mixed"]), needs=("prepare",)),
        Step("smoke-bf16-mixed", "1 epoch, full method, bf16-mixed, deterministic=warn", 45, train(
             "smoke-bf16-mixed", ["trainer.precision=bf16-mixed", "trainer.deterministic=warn"]), needs=("prepare",)),
        Step("train-window", "benchmarks/train_window.py --device cuda", 60, [
            Cmd([python, "benchmarks/train_window.py", "--device", "cuda", "--sizes", "128,256", "--precisions",
                 "fp32", "--repeats", "3", "--budget", "5", "--no-profile"], stdout=out / "train_window.json")],
             parse=parse_train_window),
        Step("speed-switches", "paper window under each speed switch", 160, [
            Cmd([python, "benchmarks/gpu_speed.py", "--device", "cuda", "--budget", f"{speed_budget:g}",
                 "--switch-timeout", f"{25 * scale:g}"], stdout=out / "gpu_speed.json")],
             parse=parse_speed),
        Step("generate-cuda-vs-cpu", "generate on cuda and cpu, frames compared", 55, [
            generate("cuda"), generate("cpu"),
            Cmd([*me, "compare-generate", "--ckpt", str(ckpt), "--cuda-strip", str(gen / "cuda_strip.png"),
                 "--cpu-strip", str(gen / "cpu_strip.png")])], needs=("prepare", "smoke-16-mixed")),
        Step("evaluate-cuda-vs-cpu", "evaluate on cuda and cpu, metrics compared", 45, [
            evaluate("cuda"), evaluate("cpu"),
            Cmd([*me, "compare-evaluate", str(ev / "cuda" / "metrics.json"), str(ev / "cpu" / "metrics.json")])],
             needs=("smoke-16-mixed",)),
        Step("ddp-one-rank", "1 epoch under DDP, one NCCL rank", 45, train("ddp-one-rank",
             ["trainer.strategy=ddp"]), needs=("prepare",)),
        Step("ddp-two-ranks-one-gpu", "2 gloo ranks on cuda:0, each gradient reduction", 80, [
            Cmd([*me, "ddp-two-ranks", str(out / "ddp-two-ranks"), "--limit", f"{37 * scale:g}"])]),
    ]
    for step in steps:
        step.timeout *= scale
    return steps


def select(steps: list[Step], names: str | None) -> tuple[list[Step], list[str]]:
    """The steps named (comma-separated; None: all) and those they need, in the usual order; also the
    names added as needed."""
    if not names:
        return steps, []
    by_name = {s.name: s for s in steps}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown or not wanted:
        raise UsageError(f"--steps: unknown step {', '.join(repr(n) for n in unknown) or '(none given)'} "
                         f"(valid: {', '.join(by_name)})")
    chosen, todo = set(), list(wanted)
    while todo:
        name = todo.pop()
        if name not in chosen:
            chosen.add(name)
            todo.extend(by_name[name].needs)
    return [s for s in steps if s.name in chosen], [s.name for s in steps if s.name in chosen - set(wanted)]


# ------------------------------------------------------------------ running them
def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def run_command(cmd: Cmd, log, env: dict, limit: float, cwd: Path = ROOT) -> int | None:
    """Run one command in its own process group, output to the open `log` (stdout to `cmd.stdout` when
    set); its exit status, or None when it overran `limit` seconds: then the whole group gets SIGTERM,
    and SIGKILL after GRACE_S. Whatever the group left running is killed either way."""
    sink = open(cmd.stdout, "w") if cmd.stdout else log  # closed below
    try:
        try:
            proc = subprocess.Popen(cmd.argv, stdout=sink, stderr=log, stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                                    start_new_session=True)
        except OSError as err:  # no such interpreter: the step fails, the others still run
            log.write(f"cannot start {cmd.argv[0]}: {err}\n")
            return 127
        try:
            return proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
                proc.wait()
            return None
        finally:
            _kill_group(proc, signal.SIGKILL)  # stragglers: a data loader worker, a compile worker
    finally:
        if sink is not log:
            sink.close()


def markers(text: str) -> dict:
    """The key numbers the helpers printed as `gpu-check: {...}` lines, merged."""
    numbers: dict = {}
    for line in text.splitlines():
        if line.startswith(MARK):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(line[len(MARK):])
                if isinstance(value, dict):
                    numbers.update(value)
    return numbers


def last_line(text: str) -> str:
    """The last line of a log that is not a command echo: usually the error."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith(("$ ", MARK))]
    return lines[-1][:200] if lines else ""


def run_step(step: Step, out: Path, env: dict) -> Result:
    """Run a step's commands in turn under its one limit; stops at the first that fails."""
    log_path = out / f"{step.name}.log"
    result = Result(step.name, "ok", timeout=step.timeout, log=log_path.name,
                    commands=[c.shell() for c in step.commands])
    start = time.monotonic()
    with open(log_path, "w") as log:
        for cmd in step.commands:
            log.write(f"$ {cmd.shell()}\n")
            log.flush()
            left = step.timeout - (time.monotonic() - start)
            code = run_command(cmd, log, env, left) if left > 0 else None
            log.flush()
            if code is None:
                result.status = "timeout"
                break
            if code != 0:
                result.status, result.detail = "failed", f"rc={code}"
                break
    result.seconds = round(time.monotonic() - start, 1)
    text = log_path.read_text(errors="replace")
    result.numbers = markers(text)
    if step.parse:
        try:
            numbers, result.rows = step.parse(step)
            result.numbers.update(numbers)
        except Exception as err:  # no or partial JSON: after a failure its log says why; else this does
            if result.status == "ok":
                result.status, result.detail = "failed", "(output unreadable)"
                result.note = f"{type(err).__name__}: {err}"[:200]
    if result.status != "ok" and not result.note:
        result.note = last_line(text)
    return result


def run_steps(steps: list[Step], out: Path, env: dict | None = None,
              on_result: Callable[[list[Result]], None] | None = None, echo: bool = False) -> list[Result]:
    """Run every step (skipping those whose needs are not ok); `on_result(results so far + pending)`
    after each."""
    env = {**os.environ, **STEP_ENV, **(env or {})}
    out.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    for i, step in enumerate(steps):
        done = {r.name: r for r in results}
        missing = [n for n in step.needs if done.get(n) is None or done[n].status != "ok"]
        if echo:
            print(f"[{i + 1}/{len(steps)}] {step.name} (limit {step.timeout:.0f} s) ...", flush=True)
        if missing:
            result = Result(step.name, "skipped", f"needs {', '.join(missing)}", timeout=step.timeout,
                            commands=[c.shell() for c in step.commands])
        else:
            result = run_step(step, out, env)
        results.append(result)
        if echo:
            print(f"    {result.status_text()}  {result.seconds:.1f} s  {format_numbers(result.numbers)}"
                  + (f"\n    {result.note}" if result.note else ""), flush=True)
        if on_result:
            on_result(results + [Result(s.name, "pending", timeout=s.timeout) for s in steps[i + 1:]])
    return results


# ------------------------------------------------------------------ parsing the benchmarks' JSON
def parse_train_window(step: Step) -> tuple[dict, list[dict]]:
    report = json.loads(step.commands[-1].stdout.read_text())
    numbers, rows = {}, []
    for r in report["results"]:
        key = f"{r['size']} {r['precision']}"
        if not r.get("measured", True):
            rows.append({"case": key, "ours s": None, "release s": None, "release / ours": None,
                         "ATen ops ours / release": None})
            continue
        ops = r.get("aten_ops_per_window", {})
        numbers[f"{key} s/window"] = r["ours"]["seconds"]
        numbers[f"{key} release/ours"] = r["ratio_release_over_ours"]
        rows.append({"case": key, "ours s": r["ours"]["seconds"], "release s": r["release"]["seconds"],
                     "release / ours": r["ratio_release_over_ours"],
                     "ATen ops ours / release": f"{ops.get('ours', '?')} / {ops.get('release', '?')}" if ops else None})
    return numbers, rows


def parse_speed(step: Step) -> tuple[dict, list[dict]]:
    report = json.loads(step.commands[-1].stdout.read_text())
    rows, ok = [], [r for r in report["results"] if r["status"] == "ok"]
    for r in report["results"]:
        rows.append({"switch": r["switch"], "status": r["status"], "s/window": r.get("seconds"),
                     "x baseline": r.get("speedup_vs_baseline"), "peak GiB": r.get("peak_memory_gb"),
                     "host syncs/window": r.get("host_syncs_per_window"), "error": r.get("error", "")})
    numbers: dict = {"switches ok": f"{len(ok)}/{len(report['results'])}"}
    base = next((r for r in ok if r["switch"] == "baseline"), None)
    if base:
        numbers["baseline s/window"] = base["seconds"]
        numbers["baseline peak GiB"] = base.get("peak_memory_gb")
        numbers["baseline syncs"] = base.get("host_syncs_per_window")
    best = min(ok, key=lambda r: r["seconds"], default=None)
    if best and base:
        numbers["fastest"] = f"{best['switch']} x{best.get('speedup_vs_baseline', 1.0):.2f}"
    not_ok = [r["switch"] for r in report["results"] if r["status"] != "ok"]
    if not_ok:
        numbers["not ok"] = ",".join(not_ok)
    return numbers, rows


# ------------------------------------------------------------------ the summary
def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_numbers(numbers: dict) -> str:
    return ", ".join(f"{k}={_cell(v)}" for k, v in numbers.items() if v is not None)


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def summary_markdown(results: list[Result], meta: dict) -> str:
    """The report: a header (GPU, versions), one row per step, the detail tables, failure notes."""
    env = next((r.numbers for r in results if r.name == "env"), {})
    machine = ", ".join(f"{k} {env[k]}" for k in ("gpu", "torch", "cuda", "cudnn", "bf16") if k in env)
    n_ok = sum(r.status == "ok" for r in results)
    total = sum(r.seconds for r in results)
    limits = sum(r.timeout for r in results)
    lines = [f"# GPU check, {meta.get('started', '')}", "",
             f"{machine or 'machine: see env.log'}  ", f"output: {meta.get('out', '')}  ",
             (f"{len(results)} steps listed, limits summing to {limits:.0f} s (dry run: nothing ran)"
              if meta.get("dry_run") else
              f"{n_ok} of {len(results)} steps ok in {total:.0f} s (limits sum to {limits:.0f} s)"), "",
             markdown_table([{"step": r.name, "status": r.status_text(), "s": r.seconds if r.seconds else None,
                              "limit s": round(r.timeout), "key numbers": format_numbers(r.numbers)}
                             for r in results])]
    for r in results:
        if r.rows:
            lines += ["", f"## {r.name}", "", markdown_table(r.rows)]
    notes = [r for r in results if r.note]
    if notes:
        lines += ["", "## Not ok", ""] + [f"- {r.name} ({r.status_text()}, {r.log}): {_cell(r.note)}"
                                          for r in notes]
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_summary(out: Path, results: list[Result], meta: dict) -> str:
    """summary.md and summary.json in `out`, each written whole or not at all; returns the markdown."""
    text = summary_markdown(results, meta)
    _atomic_write(out / "summary.md", text)
    payload = {**meta, "ok": all(r.status == "ok" for r in results),
               "steps": [{**asdict(r), "status_text": r.status_text()} for r in results]}
    _atomic_write(out / "summary.json", json.dumps(payload, indent=2) + "\n")
    return text


# ------------------------------------------------------------------ the helpers the steps call
def nccl_version() -> str | None:
    import torch

    try:
        version = torch.cuda.nccl.version()
    except Exception:  # a build without NCCL
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def helper_env(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        print(f"gpu-check: FAIL: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda})",
              file=sys.stderr)
        return 1
    props = torch.cuda.get_device_properties(0)
    info = {"gpu": props.name, "gpus": torch.cuda.device_count(), "memory GiB": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}", "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "bf16": torch.cuda.is_bf16_supported(),
            "nccl": nccl_version()}
    for key, value in info.items():
        print(f"{key}: {value}")
    print(MARK + json.dumps(info))
    return 0


def helper_write_vgg(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT / "tests"))  # the random-weight VGG19 writer is test support
    from helpers.reference import write_random_vgg19

    path = write_random_vgg19(args.path)
    print(f"wrote {path} (random weights, torchvision's VGG19 layout)")
    return 0


def check_run(root: Path, log: Path | None = None, backend: str | None = None) -> tuple[dict, list[str]]:
    """(key numbers, problems) of the newest training run under `root` (`<root>/latest`): its
    checkpoint, its sample videos and the losses in its metrics.csv."""
    problems: list[str] = []
    run = root / "latest"
    if not run.is_dir():
        return {}, [f"no run directory {run}"]
    run = run.resolve()
    numbers: dict = {}
    ckpt = run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file() or not zipfile.is_zipfile(ckpt):  # torch.save writes a zip archive
        problems.append(f"no readable checkpoint {ckpt}")
    else:
        numbers["ckpt MB"] = round(ckpt.stat().st_size / 2**20, 1)
    samples = sorted(p.name for p in (run / "samples").glob("*") if p.suffix in (".mp4", ".gif")) \
        if (run / "samples").is_dir() else []
    numbers["samples"] = len(samples)
    if not samples:
        problems.append(f"no sample videos in {run / 'samples'}")
    metrics = run / "metrics.csv"
    if not metrics.is_file():
        problems.append(f"no {metrics}")
    else:
        with open(metrics, newline="") as f:
            rows = list(csv.DictReader(f))
        losses = [k for k in (rows[0] if rows else {}) if k.startswith("train/") and k.split("/")[1] not in
                  ("lr", "real_share", "g_step")]
        values = [(k, row[k]) for row in rows for k in losses if row.get(k, "") != ""]
        bad = sorted({k for k, v in values if not math.isfinite(float(v))})
        g = [float(row["train/g_total"]) for row in rows if row.get("train/g_total")]
        numbers.update({"logged steps": len(g), "non-finite": len(bad)})
        if g:
            numbers["g_total last"] = g[-1]
        if not g:
            problems.append(f"no train/g_total logged in {metrics}")
        if bad:
            problems.append(f"non-finite losses logged: {', '.join(bad)}")
    if backend:
        text = log.read_text(errors="replace") if log and log.is_file() else ""
        seen = sorted({part.split("=", 1)[1].split()[0] for part in text.split() if
                       part.startswith("distributed_backend=")})
        numbers["backend"] = ",".join(seen) or "not in log"
        if seen and seen != [backend]:
            problems.append(f"distributed backend {','.join(seen)}, expected {backend}")
    return numbers, problems


def helper_check_run(args: argparse.Namespace) -> int:
    numbers, problems = check_run(Path(args.root), Path(args.log) if args.log else None, args.backend)
    print(MARK + json.dumps(numbers))
    for problem in problems:
        print(f"gpu-check: FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


def helper_compare_generate(args: argparse.Namespace) -> int:
    """The frames of one photo on cuda against cpu: fp32 with TF32 off (the tolerance), with TF32 on
    (PyTorch's default for convolutions, as generate runs), and the two strips generate wrote."""
    import numpy as np
    import torch
    from imageio.v3 import imread

    from fundus2video import Fundus2VideoModule

    a, b = imread(args.cuda_strip), imread(args.cpu_strip)
    numbers: dict = {}
    problems: list[str] = []
    if a.shape != b.shape:
        problems.append(f"strips differ in shape: {a.shape} and {b.shape}")
    else:
        numbers["strip max diff (levels)"] = int(np.abs(a.astype(int) - b.astype(int)).max())
        if numbers["strip max diff (levels)"] > args.strip_tol:
            problems.append(f"strips differ by {numbers['strip max diff (levels)']} levels (> {args.strip_tol})")
    modules = {d: Fundus2VideoModule.load_from_checkpoint(args.ckpt, map_location=d, weights_only=True).eval()
               for d in ("cpu", args.device)}
    size, n_frames = modules["cpu"].cfg.data.size, modules["cpu"].cfg.data.n_frames
    tile = a[:, :size] if a.ndim == 3 else np.repeat(a[:, :size, None], 3, axis=2)  # the strip's prepared CF
    cf = torch.from_numpy(np.ascontiguousarray(tile[..., :3])).permute(2, 0, 1)[None].float() / 127.5 - 1

    def frames(device: str, tf32: bool) -> torch.Tensor:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        with torch.inference_mode():
            return modules[device](cf.to(device), n_frames).float().cpu()

    cpu = frames("cpu", False)
    numbers["max |cuda-cpu| fp32"] = float((frames(args.device, False) - cpu).abs().max())
    numbers["max |cuda-cpu| tf32"] = float((frames(args.device, True) - cpu).abs().max())
    if not numbers["max |cuda-cpu| fp32"] <= args.tol:
        problems.append(f"fp32 frames differ by {numbers['max |cuda-cpu| fp32']:.3g} (> {args.tol:g})")
    print(MARK + json.dumps(numbers))
    for problem in problems:
        print(f"gpu-check: FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


def compare_metrics(a: dict, b: dict, tol: float) -> tuple[dict, list[str]]:
    """Key numbers and problems of two metrics.json reports (a: cuda, b: cpu)."""
    ma, mb = a.get("metrics", {}), b.get("metrics", {})
    problems = []
    if set(ma) != set(mb):
        problems.append(f"different metrics: {sorted(set(ma) ^ set(mb))}")
    diffs = {}
    for k in sorted(set(ma) & set(mb)):
        if ma[k] is None or mb[k] is None:
            if (ma[k] is None) != (mb[k] is None):
                problems.append(f"{k}: {ma[k]} on cuda, {mb[k]} on cpu")
            continue
        diffs[k] = abs(ma[k] - mb[k]) / max(abs(mb[k]), 0.1)
    worst = max(diffs, key=diffs.get, default=None)
    numbers = {"metrics": len(diffs), "max rel diff": round(diffs[worst], 6) if worst else None, "worst": worst}
    if worst and not diffs[worst] <= tol:
        problems.append(f"{worst}: {ma[worst]} on cuda, {mb[worst]} on cpu (relative {diffs[worst]:.3g} > {tol:g})")
    if not diffs:
        problems.append("no metric to compare")
    return numbers, problems


def helper_compare_evaluate(args: argparse.Namespace) -> int:
    numbers, problems = compare_metrics(json.loads(Path(args.cuda).read_text()),
                                        json.loads(Path(args.cpu).read_text()), args.tol)
    print(MARK + json.dumps(numbers))
    for problem in problems:
        print(f"gpu-check: FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_pair(out: Path, accelerator: str, reduce: str, limit: float) -> tuple[list[dict] | None, str]:
    """tests/ddp_train.py (the full method at test size) as two torchrun "nodes" of one process each on
    127.0.0.1, gloo, both ranks on the same device; (each rank's saved result, or None; the output)."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    port, torchrun = _free_port(), Path(sys.executable).with_name("torchrun")
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.full import FULL

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
    procs = [subprocess.Popen(
        [str(torchrun), "--nnodes=2", "--nproc-per-node=1", f"--node-rank={node}", "--master-addr=127.0.0.1",
         f"--master-port={port}", str(ROOT / "tests" / "ddp_train.py"), str(out), *FULL,
         f"trainer.accelerator={accelerator}", "trainer.devices=1", "trainer.num_nodes=2",
         "trainer.ddp_backend=gloo", f"trainer.ddp_reduce={reduce}", "trainer.max_epochs=2"],
        cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        for node in (0, 1)]
    try:
        texts = [p.communicate(timeout=limit)[0].decode(errors="replace") for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            _kill_group(p, signal.SIGKILL)
        return None, f"the two ranks did not end within {limit:.0f} s"
    if any(p.returncode != 0 for p in procs):
        return None, texts[0][-1500:] + texts[1][-1500:]
    return [torch.load(out / f"rank{r}.pt", map_location="cpu") for r in (0, 1)], texts[0]


def helper_ddp_two_ranks(args: argparse.Namespace) -> int:
    """Two DDP ranks sharing one device (NCCL refuses a duplicate GPU; gloo takes CUDA tensors), once with
    each gradient reduction: the ranks must end with identical parameters, and the per-network hook
    must train as plain DDP does (within `--tol`, as the GPU's kernels order sums differently)."""
    out, numbers, problems, params = Path(args.out), {}, [], {}
    for reduce in ("per_network", "all"):
        ranks, text = ddp_pair(out / reduce, args.accelerator, reduce, args.limit)
        if ranks is None:
            print(text, file=sys.stderr)
            print(f"gpu-check: FAIL: ddp_reduce={reduce}: the run failed", file=sys.stderr)
            return 1
        apart = max((ranks[0]["params"][k].float() - ranks[1]["params"][k].float()).abs().max().item()
                    for k in ranks[0]["params"])
        numbers[f"{reduce}: max |rank0 - rank1|"] = apart
        numbers[f"{reduce}: world size"] = ranks[0]["world_size"]
        if apart != 0 or ranks[0]["world_size"] != 2:
            problems.append(f"ddp_reduce={reduce}: the ranks' parameters differ by up to {apart:.3g} "
                            f"(world size {ranks[0]['world_size']})")
        params[reduce] = ranks[0]["params"]
        if "distributed_backend=gloo" not in text:
            problems.append(f"ddp_reduce={reduce}: Lightning's log names no gloo backend")
    gap = max((params["per_network"][k].float() - params["all"][k].float()).abs().max().item()
              for k in params["all"])
    numbers["max |per_network - all|"] = gap
    if not gap <= args.tol:
        problems.append(f"per_network and all end {gap:.3g} apart (tolerance {args.tol:g})")
    print(MARK + json.dumps(numbers))
    for problem in problems:
        print(f"gpu-check: FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


HELPERS = {"env": helper_env, "write-vgg": helper_write_vgg, "check-run": helper_check_run,
           "compare-generate": helper_compare_generate, "compare-evaluate": helper_compare_evaluate,
           "ddp-two-ranks": helper_ddp_two_ranks}


def helper_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=f"{ME} (helper)", description="the checks the steps run")
    sub = parser.add_subparsers(dest="helper", required=True)
    sub.add_parser("env")
    p = sub.add_parser("write-vgg")
    p.add_argument("path")
    p = sub.add_parser("check-run")
    p.add_argument("root", help="<logging.root>/<name>")
    p.add_argument("--log", help="the step's log (for --backend)")
    p.add_argument("--backend", help="the torch.distributed backend the log must name")
    p = sub.add_parser("compare-generate")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--cuda-strip", required=True)
    p.add_argument("--cpu-strip", required=True)
    p.add_argument("--tol", type=float, default=GENERATE_TOL)
    p.add_argument("--strip-tol", type=int, default=STRIP_TOL)
    p.add_argument("--device", default="cuda", help="the device compared with the cpu")
    p = sub.add_parser("ddp-two-ranks")
    p.add_argument("out")
    p.add_argument("--accelerator", default="gpu", help="gpu (both ranks on cuda:0) or cpu (the same, on the CPU)")
    p.add_argument("--tol", type=float, default=DDP_TOL)
    p.add_argument("--limit", type=float, default=150, help="seconds for each pair of ranks")
    p = sub.add_parser("compare-evaluate")
    p.add_argument("cuda")
    p.add_argument("cpu")
    p.add_argument("--tol", type=float, default=EVALUATE_TOL)
    return parser


# ------------------------------------------------------------------ the command line
class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints the usage first)."""

    def error(self, message: str):
        raise UsageError(message)


def probe_cuda(python: str, env: dict) -> dict:
    """torch's version and CUDA state as `python` sees them (in a subprocess: the steps' interpreter,
    and a hanging driver cannot hang the check)."""
    code = ("import json, torch; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
            "'available': torch.cuda.is_available(), 'count': torch.cuda.device_count()}))")
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UsageError(f"no CUDA device: {python} did not report on torch ({type(err).__name__}: {err})") from None
    if done.returncode != 0:
        raise UsageError(f"no CUDA device: {python} cannot import torch ({last_line(done.stderr) or done.returncode})")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    if info["cuda"] is None:
        raise UsageError(f"no CUDA device: torch {info['torch']} is a CPU build (torch.version.cuda is None); "
                         f"install a CUDA build as the top of {ME} says")
    if not info["available"]:
        raise UsageError(f"no CUDA device: torch {info['torch']} (CUDA {info['cuda']}) finds none: "
                         "torch.cuda.is_available() is False (driver? CUDA_VISIBLE_DEVICES?)")
    return info


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = OneLineParser(prog=ME, description=__doc__.splitlines()[0],
                           epilog="helpers the steps run: " + ", ".join(HELPERS))
    parser.add_argument("--dry-run", action="store_true", help="list the steps and their commands; run nothing")
    parser.add_argument("--steps", help="comma-separated subset (the steps they need are added)")
    parser.add_argument("--out", help="output folder (default runs/gpu_check/<timestamp>)")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the steps (default: this one)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every time limit")
    args = parser.parse_args(list(argv))
    if not (args.budget_scale > 0 and math.isfinite(args.budget_scale)):
        raise UsageError(f"--budget-scale: expected a positive number, got {args.budget_scale}")
    python = shutil.which(args.python) if os.sep not in args.python else args.python
    if not python or not os.access(python, os.X_OK) or Path(python).is_dir():
        raise UsageError(f"--python: not an executable: {args.python}")
    args.python = python
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in HELPERS:
            args = helper_parser().parse_args(argv)
            return HELPERS[args.helper](args)
        args = parse_args(argv)
        started = datetime.now()
        out = Path(args.out or ROOT / "runs" / "gpu_check" / started.strftime("%Y%m%d-%H%M%S")).resolve()
        steps, added = select(build_steps(out, args.python, args.budget_scale), args.steps)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out}: exists and is not a folder")
        meta = {"started": started.isoformat(timespec="seconds"), "out": str(out), "python": args.python,
                "dry_run": args.dry_run, "budget_scale": args.budget_scale,
                "limits_s": round(sum(s.timeout for s in steps))}
        if added:
            print(f"also running {', '.join(added)} (needed by the steps asked for)", file=sys.stderr)
        if args.dry_run:
            for step in steps:
                needs = f", needs {', '.join(step.needs)}" if step.needs else ""
                print(f"{step.name} (limit {step.timeout:.0f} s{needs}): {step.what}")
                for cmd in step.commands:
                    print(f"    {cmd.shell()}")
            out.mkdir(parents=True, exist_ok=True)
            results = [Result(s.name, "dry-run", timeout=s.timeout, commands=[c.shell() for c in s.commands])
                       for s in steps]
            print("\n" + write_summary(out, results, meta), end="")
            print(f"written: {out / 'summary.md'}, {out / 'summary.json'}")
            return 0
        meta["cuda"] = probe_cuda(args.python, {**os.environ, **STEP_ENV})
        out.mkdir(parents=True, exist_ok=True)
        try:
            results = run_steps(steps, out, on_result=lambda rs: write_summary(out, rs, meta), echo=True)
        except KeyboardInterrupt:  # the running step's processes are gone (run_command); the summary so far stays
            print(f"\ninterrupted; the steps finished so far: {out / 'summary.md'}", file=sys.stderr)
            return 130
        print("\n" + write_summary(out, results, meta), end="")
        print(f"written: {out / 'summary.md'}, {out / 'summary.json'}")
        return 0 if all(r.status == "ok" for r in results) else 1
    except UsageError as err:
        print(f"gpu_check: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
