"""Frames per second of video generation: `Fundus2VideoModule.forward` (the autoregressive rollout,
one generator window per frame, overlapping windows averaged), as `fundus2video.generate` runs it.

Generator of experiments/fundus2video.yaml (ngf 64, 4 downsamplings, 9 residual blocks, KBA on the
bottleneck, window K = 3) with random weights, batch 1, under torch.inference_mode, at 256 and
512, fp32 and bf16 autocast; median over repeats after a warm-up window. CPUs without native bf16
run bf16 convolutions on a slow fallback: a bf16 case runs one frame in a subprocess stopped at the
budget, and reports a lower bound when stopped; after one such stop, larger sizes are not run.

    python benchmarks/inference.py [--sizes 256,512] [--precisions fp32,bf16] [--frames 3] [--repeats 3]
        [--budget 60]
Environment: BENCH_REPEATS, BENCH_BUDGET (seconds of timed rollouts per case).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys

import torch
from _common import build_module, emit, env_int, log, machine_info, matmul_gflops, timed
from torch.utils.flop_counter import FlopCounterMode

from fundus2video.rollout import cf_as_frames


def autocast(precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


@torch.inference_mode()
def window_flops(module, size: int) -> tuple[float, int]:
    """(seconds, FLOPs) of one fp32 generator window at `size` (the warm-up call)."""
    cf = torch.rand(1, 3, size, size) * 2 - 1
    x = torch.cat([cf, cf_as_frames(cf, module.cfg.model.window)], dim=1)
    counter = FlopCounterMode(display=False)
    with counter:
        seconds = timed(lambda: module.generator(x))
    return seconds, counter.get_total_flops()


@torch.inference_mode()
def rollout_seconds(module, size: int, frames: int, precision: str, repeats: int) -> list[float]:
    """Seconds of `repeats` whole rollouts of `frames` frames from one random CF photo."""
    cf = torch.rand(1, 3, size, size) * 2 - 1
    out = []
    for i in range(repeats):
        with autocast(precision):
            out.append(timed(lambda: module(cf, frames)))
        log(f"  rollout {i + 1}/{repeats}: {out[-1]:.2f} s")
    return out


def capped_rollout(size: int, precision: str, timeout: float) -> float | None:
    """Seconds of a one-frame rollout (no warm-up) in a subprocess; None when it overruns `timeout`."""
    cmd = [sys.executable, __file__, "--child", str(size), "--precisions", precision]
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--frames", type=int, default=3, help="frames per rollout (one window each)")
    parser.add_argument("--repeats", type=int, default=env_int("BENCH_REPEATS", 3))
    parser.add_argument("--budget", type=float, default=float(env_int("BENCH_BUDGET", 60)))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        module = build_module(args.child)
        module.eval()
        print(json.dumps({"seconds": rollout_seconds(module, args.child, 1, args.precisions, 1)[0]}))
        return

    peak = round(matmul_gflops(2048, torch.float32), 1)
    log(f"fp32 matmul {peak} GFLOP/s")
    results, stopped_at = [], None  # the size at which a slow case overran the budget
    for size in [int(s) for s in args.sizes.split(",")]:
        module = build_module(size)
        module.eval()
        first, flops = window_flops(module, size)  # warm-up; autocast leaves the FLOPs unchanged
        log(f"size {size}: warm-up window {first:.2f} s, {flops / 1e9:.1f} GFLOP")
        for precision in args.precisions.split(","):
            row: dict = {"size": size, "precision": precision, "gflop_per_frame": round(flops / 1e9, 1)}
            log(f"size {size} {precision}")
            if precision == "fp32":
                repeats = max(1, min(args.repeats, int(args.budget // max(first * args.frames, 1e-9))))
                frames, warmup = args.frames, False
                times = rollout_seconds(module, size, frames, precision, repeats)
            elif stopped_at is not None:
                results.append({**row, "measured": False, "note": f"not run: {stopped_at} x {stopped_at} already "
                                f"overran the budget ({args.budget:.0f} s per frame)"})
                continue
            else:
                seconds = capped_rollout(size, precision, args.budget)
                if seconds is None:
                    log(f"  stopped after {args.budget:.0f} s")
                    stopped_at = size
                    results.append({**row, "measured": False, "seconds_per_frame_above": args.budget,
                                    "fps_below": round(1 / args.budget, 5)})
                    continue
                times, frames, repeats, warmup = [seconds], 1, 1, True
            per_frame = statistics.median(times) / frames
            results.append({**row, "measured": True, "frames": frames, "fps": round(1 / per_frame, 4),
                            "seconds_per_frame": round(per_frame, 3), "repeats": repeats, "warmup_included": warmup,
                            "rollout_seconds": [round(t, 3) for t in times],
                            "achieved_gflops": round(flops / 1e9 / per_frame, 1),
                            "fraction_of_fp32_matmul_peak": round(flops / 1e9 / per_frame / peak, 3)})
    emit({"machine": machine_info(), "fp32_matmul_gflops": peak,
          "settings": {"generator": "ngf 64, 4 downsamplings, 9 residual blocks, KBA bottleneck (random weights)",
                       "window": 3, "batch": 1, "frames": args.frames,
                       "mode": "torch.inference_mode, Fundus2VideoModule.forward",
                       "repeats": args.repeats, "budget_s": args.budget},
          "results": results})


if __name__ == "__main__":
    main()
