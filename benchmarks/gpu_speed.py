"""Seconds per paper-size training window on a GPU under each speed switch, each in a fresh process.

The window of experiments/fundus2video.yaml (512 x 512, ngf 64, ndf 64, 4 downsamplings, 9 residual
blocks, KBA, every loss term; the VGG19 with random weights, the cost of the ImageNet one), batch 1,
K = 3: `Fundus2VideoModule._window_step` (forward, G step, D step) outside a Trainer, as
benchmarks/train_window.py runs it. The baseline is what training runs by default: the module's own
optimizers (`optim.fused=auto`: fused Adam on a GPU), fp32, no channels_last, no compile. Switches,
one at a time on top of it, each as its training option applies it:

  baseline         the defaults (cuDNN may convolve fp32 in TF32; matmuls in full fp32)
  cudnn_benchmark  torch.backends.cudnn.benchmark = True (cuDNN times its algorithms for each shape)
  matmul_high      torch.set_float32_matmul_precision("high") (TF32 matmuls: the PatchNCE, the projector)
  unfused_adam     optim.fused=false: the per-parameter Adam (what fused Adam saves)
  channels_last    model.channels_last=true: G, D and the VGG19 in channels_last (the inputs stay as
                   the data loader gives them)
  bf16_autocast    the window under torch.autocast(bfloat16), as trainer.precision=bf16-mixed runs it
  fp16_scaler      the window under torch.autocast(float16) with a GradScaler scaling both backward
                   passes and stepping both optimizers, as trainer.precision=16-mixed runs it
  compile          model.compile=true: nn.Module.compile() of G and D (the first windows compile)

Each switch runs in its own process (the flags are process-wide, a compile cache or a crash must not
reach the next switch) under its own time limit, all within `--budget` seconds: `compile` comes last
and gets what is left. Per switch: median and min seconds of `--repeats` windows after two warm-up
windows, the peak of torch's GPU allocations (`torch.cuda.max_memory_allocated`, warm-up included),
and the host syncs of one window: the warnings of `torch.cuda.set_sync_debug_mode("warn")`, one per
synchronising CUDA call (a `.item()`, a device-to-host copy; not those of torch.distributed). A switch
that fails or overruns is recorded with its error and the rest still run.

    python benchmarks/gpu_speed.py [--device cuda] [--switches baseline,...] [--repeats 5] [--budget 170]
        [--switch-timeout 25] [--size 512] [--ngf 64]
`--device cpu` (with a small --size and --ngf) runs the same code on a CPU (no syncs counted there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from _common import build_module, emit, gpu_info, log, machine_info, timed, window_inputs
from helpers.reference import module_window_step, outside_trainer, standalone_optimizers, write_random_vgg19

SWITCHES = {
    "baseline": "PyTorch's defaults",
    "cudnn_benchmark": "torch.backends.cudnn.benchmark = True",
    "matmul_high": "torch.set_float32_matmul_precision('high')",
    "unfused_adam": "optim.fused=false: per-parameter Adam instead of the default",
    "channels_last": "model.channels_last=true: G, D and the VGG19 in torch.channels_last",
    "bf16_autocast": "torch.autocast(bfloat16) around the window",
    "fp16_scaler": "torch.autocast(float16) and a GradScaler, as trainer.precision=16-mixed",
    "compile": "model.compile=true: nn.Module.compile() of G and D",
}
WARMUPS = 2  # cudnn.benchmark tunes on the first call of each shape; compile may recompile on the second


class ScaledOptimizer:
    """An optimizer stepped through a GradScaler, as Lightning's 16-mixed plugin steps it."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler):
        self.optimizer, self.scaler = optimizer, scaler
        self.param_groups = optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()


def count_syncs(fn: Callable[[], object]) -> int:
    """Synchronising CUDA calls made by one call of `fn`, counted from the sync debug mode's warnings
    (backward's are replayed on the calling thread by the autograd engine)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


def run_switch(name: str, size: int, ngf: int, repeats: int, vgg: Path, device: str) -> dict:
    """One switch in this process: warm-ups, timed windows, peak memory, host syncs."""
    cuda = device.startswith("cuda")
    if name == "cudnn_benchmark":
        torch.backends.cudnn.benchmark = True
    if name == "matmul_high":
        torch.set_float32_matmul_precision("high")
    overrides = [f"model.generator.ngf={ngf}", f"model.discriminator.ndf={ngf}"]
    if name == "unfused_adam":
        overrides.append("optim.fused=false")
    if name == "channels_last":
        overrides.append("model.channels_last=true")
    if name == "compile":
        overrides.append("model.compile=true")
    # build_module runs setup("fit"): channels_last and compile are applied there, as in training
    module = build_module(size, overrides, vgg, device=device)
    inputs = window_inputs(size, module.cfg.model.window, device=device)
    opt_g, opt_d, _ = standalone_optimizers(module)
    dtype = {"bf16_autocast": torch.bfloat16, "fp16_scaler": torch.float16}.get(name)
    autocast = (torch.autocast(torch.device(device).type, dtype=dtype) if dtype is not None
                else contextlib.nullcontext())
    if name == "fp16_scaler":
        scaler = torch.amp.GradScaler(torch.device(device).type)
        opt_g, opt_d = ScaledOptimizer(opt_g, scaler), ScaledOptimizer(opt_d, scaler)

        def step() -> None:
            with autocast, outside_trainer(module, opt_g, opt_d):
                module.__dict__["manual_backward"] = lambda loss, *a, **k: scaler.scale(loss).backward(*a, **k)
                module._window_step(*inputs)
    else:
        def step() -> None:
            with autocast:
                module_window_step(module, *inputs, opt_g, opt_d)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    warmup = [round(timed(step), 4) for _ in range(WARMUPS)]
    log(f"  {name}: warm-up {warmup} s")
    times = [timed(step) for _ in range(repeats)]
    log(f"  {name}: {[round(t, 4) for t in times]} s")
    out = {"seconds": round(statistics.median(times), 5), "min_seconds": round(min(times), 5),
           "repeats": repeats, "warmup_seconds": warmup}
    if cuda:
        out["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        out["host_syncs_per_window"] = count_syncs(step)
        out.update(gpu_info(device))
    return out


_child: subprocess.Popen | None = None  # the switch running now, stopped with us


def _stop_child(signum: int, frame: object) -> None:
    """SIGTERM (gpu_check's time limit): end the running switch's process group too, then ourselves."""
    if _child is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(_child.pid, signal.SIGKILL)
    raise SystemExit(128 + signum)


def run_capped(cmd: list[str], limit: float) -> tuple[int | None, str]:
    """(exit status, stdout) of `cmd`, or (None, "") when it overran `limit` seconds. The child gets its
    own process group, killed whole on overrun: torch.compile's worker processes go with it."""
    global _child
    _child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, _ = _child.communicate(timeout=limit)  # the child's progress goes straight to our stderr
        return _child.returncode, stdout
    except subprocess.TimeoutExpired:
        return None, ""
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(_child.pid, signal.SIGKILL)  # on overrun; else any worker it left behind
        _child.wait()
        _child = None


def run_all(switches: list[str], args: argparse.Namespace) -> list[dict]:
    """Every switch in its own subprocess, each under min(--switch-timeout, what is left of --budget);
    compile, last, under all that is left."""
    deadline = time.monotonic() + args.budget
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        vgg = write_random_vgg19(Path(tmp) / "vgg19-random.pth")
        for name in switches:
            left = deadline - time.monotonic()
            limit = left if name == "compile" else min(args.switch_timeout, left)
            row: dict = {"switch": name, "what": SWITCHES[name]}
            if limit < 5:
                results.append({**row, "status": "skipped", "error": f"budget of {args.budget:g} s spent"})
                continue
            log(f"{name} (limit {limit:.0f} s)")
            cmd = [sys.executable, __file__, "--one", name, "--vgg", str(vgg), "--size", str(args.size),
                   "--ngf", str(args.ngf), "--repeats", str(args.repeats), "--device", args.device]
            start = time.monotonic()
            code, stdout = run_capped(cmd, limit)
            if code is None:
                results.append({**row, "status": "timeout", "error": f"over its limit of {limit:.0f} s"})
                continue
            row["process_seconds"] = round(time.monotonic() - start, 1)
            try:
                payload = json.loads(stdout) if stdout.strip() else {}
            except json.JSONDecodeError:
                payload = {"error": f"unreadable output: {stdout[-200:]!r}"}
            if code != 0 or "error" in payload:
                error = payload.get("error") or f"exit status {code}"
                results.append({**row, "status": "failed", "error": error})
            else:
                results.append({**row, "status": "ok", **payload})
    base = next((r["seconds"] for r in results if r["switch"] == "baseline" and r["status"] == "ok"), None)
    for r in results:
        if base and r["status"] == "ok":
            r["speedup_vs_baseline"] = round(base / r["seconds"], 3)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--switches", default=",".join(SWITCHES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=170.0, help="seconds for all switches together")
    parser.add_argument("--switch-timeout", type=float, default=25.0, help="seconds per switch (not compile)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--ngf", type=int, default=64, help="ngf of G and ndf of D")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run this one switch here (the children)
    parser.add_argument("--vgg", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device here (torch {torch.__version__})")
    if args.one:
        try:
            emit(run_switch(args.one, args.size, args.ngf, args.repeats, Path(args.vgg), args.device))
        except Exception as err:  # the parent records it and goes on with the next switch
            traceback.print_exc()
            lines = str(err).strip().splitlines()
            emit({"error": f"{type(err).__name__}: {lines[0][:300] if lines else ''}"})
            raise SystemExit(1) from None
        return
    switches = [s for s in args.switches.split(",") if s]
    unknown = [s for s in switches if s not in SWITCHES]
    if unknown:
        parser.error(f"--switches: unknown {', '.join(unknown)} (known: {', '.join(SWITCHES)})")
    switches.sort(key=lambda s: s == "compile")  # compile last: it takes what the others leave
    signal.signal(signal.SIGTERM, _stop_child)
    results = run_all(switches, args)
    emit({"machine": {**machine_info(), "device": args.device}, "gpu": next(
              ({k: r[k] for k in ("gpu", "gpu_memory_gb", "cuda") if k in r} for r in results if "gpu" in r), {}),
          "settings": {"size": args.size, "ngf": args.ngf, "ndf": args.ngf, "batch": 1, "window": 3,
                       "config": "experiments/fundus2video.yaml, every loss term, random-weight VGG19",
                       "repeats": args.repeats, "warmups": WARMUPS, "budget_s": args.budget,
                       "switch_timeout_s": args.switch_timeout,
                       "host_syncs": "torch.cuda.set_sync_debug_mode('warn') warnings in one window"},
          "results": results})


if __name__ == "__main__":
    main()
