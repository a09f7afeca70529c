"""Frames per second of video generation: `Fundus2VideoModule.forward` (the autoregressive rollout,
one generator window per frame, overlapping windows averaged), as `fundus2video.inference` runs it.

Generator of experiments/fundus2video.yaml (ngf 64, 4 downsamplings, 9 residual blocks, KBA on the
bottleneck, window K = 3) with random weights, batch 1, under torch.inference_mode, at 256 and
512, fp32 and bf16 autocast; median over repeats after a warm-up window. CPUs without native bf16
run bf16 convolutions on a slow fallback: a bf16 case runs one frame in a subprocess stopped at the
budget, and reports a lower bound when stopped; after one such stop, larger sizes are not run.

`batching`: `generate --batch`'s case, photos per rollout 1 and 4 at 256 in fp32, their repeats
interleaved (1, 4, 1, 4, ...) so that other load hits both alike, and the ratio of their frames per
second from this same run. `bf16_small`: fp32 and bf16 at a small size (64) where the bf16 fallback
may fit the budget; run first, so that its bf16 GFLOP/s gives an estimate for the bf16 cases of
`results` that are not measured. When even the small case overruns, it is "measured": false with a
lower bound and an estimate from this machine's bf16 matmul rate.

`onnxruntime`: `generate --runtime onnxruntime` against `--runtime torch`, the whole rollout of 12
frames at 256 and 512, fp32, batch 1, in this one process: the PyTorch path (`Fundus2VideoModule.forward`)
and the ONNX Runtime path (`fundus2video.onnx_runtime.onnx_window`, the window graph exported into a
temporary cache, then `rollout` over it), their repeats interleaved (torch, ort, torch, ...) after a
warm-up window each, medians and the ratio of their frames per second. Same frames:
`max_abs_window_diff`, the largest |ORT - torch| of one window given the same input (the warm-up
input, and windows on consecutive frames of the PyTorch video); `free_running_frame_diff`, per
frame, of the two whole rollouts, each fed its own frames: with random weights the autoregression
amplifies float rounding frame after frame (a trained checkpoint's rollouts agree within 1e-4:
tests/test_onnx_runtime.py). The one-time costs are reported apart: the export (with its check
against PyTorch) and the load of the cached graph a later process pays (weights and file hashed, session built).

    python benchmarks/inference.py [--sizes 256,512] [--precisions fp32,bf16] [--frames 3] [--repeats 3]
        [--budget 60] [--batch-sizes 1,4] [--batch-at 256] [--bf16-size 64]
        [--ort-sizes 256,512] [--ort-frames 12] [--ort-repeats 3] [--ort-budget 600]
(an empty --sizes or --ort-sizes, or 0 for --batch-at / --bf16-size, skips that part)
Environment: BENCH_REPEATS, BENCH_BUDGET (seconds of timed rollouts per case).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import build_module, emit, env_int, log, machine_info, matmul_gflops, timed
from torch.utils.flop_counter import FlopCounterMode

from fundus2video.rollout import cf_as_frames, rollout


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


@torch.inference_mode()
def batching(module, size: int, frames: int, batches: list[int], repeats: int, budget: float) -> dict:
    """fp32 frames per second with `b` photos per rollout, for each b in `batches`. A warm-up window
    per batch size sets the repeats that fit the budget per case (at least 1); the rounds interleave
    the sizes."""
    g = torch.Generator().manual_seed(0)
    cfs = {b: torch.rand(b, 3, size, size, generator=g) * 2 - 1 for b in batches}
    window = module.cfg.model.window
    first = {b: timed(lambda b=b: module.generator(torch.cat([cfs[b], cf_as_frames(cfs[b], window)], dim=1)))
             for b in batches}
    log(f"size {size} batching: warm-up window " + ", ".join(f"batch {b} {t:.2f} s" for b, t in first.items()))
    n = max(1, min(repeats, int(budget // max(max(first.values()) * frames, 1e-9))))
    times: dict[int, list[float]] = {b: [] for b in batches}
    for i in range(n):
        for b in batches:
            times[b].append(timed(lambda b=b: module(cfs[b], frames)))
            log(f"  batch {b} rollout {i + 1}/{n}: {times[b][-1]:.2f} s")
    rows = []
    for b in batches:
        median = statistics.median(times[b])
        rows.append({"batch": b, "fps": round(b * frames / median, 4), "seconds_per_rollout": round(median, 3),
                     "rollout_seconds": [round(t, 3) for t in times[b]], "repeats": n, "warmup_included": False})
    base = rows[0]
    return {"size": size, "precision": "fp32", "frames": frames, "measured": True, "rows": rows,
            "fps_ratio": {f"batch{r['batch']}_over_batch{base['batch']}": round(r["fps"] / base["fps"], 3)
                          for r in rows[1:]},
            "fps_definition": "videos x frames / median seconds of a rollout of `batch` photos"}


@torch.inference_mode()
def onnxruntime_vs_torch(size: int, frames: int, repeats: int, budget: float) -> dict:
    """Frames per second of the whole rollout through PyTorch and through ONNX Runtime, interleaved."""
    from fundus2video import onnx_runtime

    module = build_module(size)
    module.eval()
    window = module.cfg.model.window
    cf = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x = torch.cat([cf, cf_as_frames(cf, window)], dim=1)
    with tempfile.TemporaryDirectory(prefix="f2v-ort-") as cache:
        # a checkpoint path in a fresh folder: the graph is exported (and checked) here, not taken from a cache
        ckpt = Path(cache) / "random.ckpt"
        start = time.perf_counter()
        onnx_runtime.onnx_window(module, size, ckpt)
        export = time.perf_counter() - start
        onnx_runtime._SESSIONS.clear()  # as a later process: the cached graph, hashed and loaded
        start = time.perf_counter()
        ort = onnx_runtime.onnx_window(module, size, ckpt)
        load = time.perf_counter() - start
        log(f"size {size} onnxruntime: export + check {export:.1f} s, load of the cached graph {load:.1f} s")
        fns = {"torch": lambda: module(cf, frames), "onnxruntime": lambda: rollout(ort, cf, frames, window)}
        first = {"torch": timed(lambda: module.generator(x)), "onnxruntime": timed(lambda: ort(x))}  # warm-up
        log(f"  warm-up window: torch {first['torch']:.2f} s, onnxruntime {first['onnxruntime']:.2f} s")
        n = max(1, min(repeats, int(budget // max(sum(first.values()) * frames, 1e-9))))
        times: dict[str, list[float]] = {name: [] for name in fns}
        videos = {}
        for i in range(n):
            for name, fn in fns.items():
                start = time.perf_counter()
                videos[name] = fn()
                times[name].append(time.perf_counter() - start)
                log(f"  {name} rollout {i + 1}/{n}: {times[name][-1]:.2f} s")
        drift = (videos["onnxruntime"] - videos["torch"]).abs().amax(dim=(0, 2, 3, 4))  # per frame
        # the same window inputs through both: windows on consecutive frames of the PyTorch video
        inputs = [torch.cat([cf, videos["torch"][:, s:s + window, 0]], dim=1)
                  for s in range(0, frames - window + 1, window)]
        window_diff = max((ort(x) - module.generator(x)).abs().max().item() for x in [x, *inputs])
    rows = {}
    for name in fns:
        median = statistics.median(times[name])
        rows[name] = {"fps": round(frames / median, 4), "seconds_per_rollout": round(median, 3),
                      "rollout_seconds": [round(t, 3) for t in times[name]], "warmup_window_seconds":
                      round(first[name], 3)}
    return {"size": size, "frames": frames, "repeats": n, "torch": rows["torch"], "onnxruntime": rows["onnxruntime"],
            "fps_ratio_onnxruntime_over_torch": round(rows["onnxruntime"]["fps"] / rows["torch"]["fps"], 3),
            "max_abs_window_diff": float(f"{window_diff:.3g}"),
            "free_running_frame_diff": [float(f"{d:.2g}") for d in drift.tolist()],
            "export_and_check_seconds": round(export, 1),
            "cached_load_seconds": round(load, 1)}


def bf16_small(size: int, frames: int, repeats: int, budget: float) -> dict:
    """fp32 (in this process) and bf16 (one frame in a capped subprocess, as `results`) at `size`."""
    module = build_module(size)
    module.eval()
    first, flops = window_flops(module, size)
    log(f"size {size} (bf16_small): warm-up window {first:.2f} s, {flops / 1e9:.2f} GFLOP")
    fp32 = statistics.median(rollout_seconds(module, size, frames, "fp32", repeats)) / frames
    out: dict = {"size": size, "gflop_per_frame": round(flops / 1e9, 2),
                 "fp32": {"fps": round(1 / fp32, 3), "seconds_per_frame": round(fp32, 4), "frames": frames,
                          "repeats": repeats}}
    log(f"size {size} bf16")
    seconds = capped_rollout(size, "bf16", budget)
    if seconds is not None:
        rate = flops / 1e9 / seconds
        out["bf16"] = {"measured": True, "fps": round(1 / seconds, 4), "seconds_per_frame": round(seconds, 3),
                       "frames": 1, "repeats": 1, "warmup_included": True, "achieved_gflops": round(rate, 3)}
        out["bf16_over_fp32_seconds"] = round(seconds / fp32, 1)
        return out
    log(f"  stopped after {budget:.0f} s; bf16 matmul rate for an estimate ...")
    rate = matmul_gflops(512, torch.bfloat16, 3)
    out["bf16"] = {"measured": False, "seconds_per_frame_above": budget, "fps_below": round(1 / budget, 5),
                   "estimated_seconds_per_frame": round(flops / 1e9 / rate, 1),
                   "estimated_from_bf16_matmul_gflops": round(rate, 3),
                   "note": "GFLOP / a 512 x 512 bf16 matmul's rate: rough (convolutions take another fallback)"}
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
    parser.add_argument("--batch-sizes", default="1,4", help="photos per rollout to compare (the first is the base)")
    parser.add_argument("--batch-at", type=int, default=256, help="image size of the batching comparison (0: skip)")
    parser.add_argument("--bf16-size", type=int, default=64, help="the small bf16 case's image size (0: skip)")
    parser.add_argument("--ort-sizes", default="256,512", help="sizes of the ONNX Runtime comparison")
    parser.add_argument("--ort-frames", type=int, default=12, help="frames per rollout of the comparison")
    parser.add_argument("--ort-repeats", type=int, default=3)
    parser.add_argument("--ort-budget", type=float, default=600.0,
                        help="seconds of timed rollouts per size (fewer repeats where a round takes longer)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        module = build_module(args.child)
        module.eval()
        print(json.dumps({"seconds": rollout_seconds(module, args.child, 1, args.precisions, 1)[0]}))
        return

    machine = machine_info()  # before the run: its load average is the other processes'
    peak = round(matmul_gflops(2048, torch.float32), 1)
    log(f"fp32 matmul {peak} GFLOP/s")
    small = bf16_small(args.bf16_size, args.frames, args.repeats, args.budget) if args.bf16_size else None
    bf16_rate = small["bf16"].get("achieved_gflops") if small else None  # to estimate unmeasured bf16 cases
    results, stopped_at = [], None  # the size at which a slow case overran the budget
    for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
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
                                f"overran the budget ({args.budget:.0f} s per frame)", **estimate(flops, bf16_rate)})
                continue
            else:
                seconds = capped_rollout(size, precision, args.budget)
                if seconds is None:
                    log(f"  stopped after {args.budget:.0f} s")
                    stopped_at = size
                    results.append({**row, "measured": False, "seconds_per_frame_above": args.budget,
                                    "fps_below": round(1 / args.budget, 5), **estimate(flops, bf16_rate)})
                    continue
                times, frames, repeats, warmup = [seconds], 1, 1, True
            per_frame = statistics.median(times) / frames
            results.append({**row, "measured": True, "frames": frames, "fps": round(1 / per_frame, 4),
                            "seconds_per_frame": round(per_frame, 3), "repeats": repeats, "warmup_included": warmup,
                            "rollout_seconds": [round(t, 3) for t in times],
                            "achieved_gflops": round(flops / 1e9 / per_frame, 1),
                            "fraction_of_fp32_matmul_peak": round(flops / 1e9 / per_frame / peak, 3)})
    batched = None
    if args.batch_at:
        module = build_module(args.batch_at)
        module.eval()
        batched = batching(module, args.batch_at, args.frames, [int(b) for b in args.batch_sizes.split(",")],
                           args.repeats, args.budget)
    ort = None
    if args.ort_sizes.strip():
        from fundus2video import onnx_runtime

        if onnx_runtime.onnx_available():
            import onnxruntime

            rows = [onnxruntime_vs_torch(int(s), args.ort_frames, args.ort_repeats, args.ort_budget)
                    for s in args.ort_sizes.split(",") if s.strip()]
            ort = {"onnxruntime": onnxruntime.__version__, "threads": torch.get_num_threads(),
                   "graph": "one window, batch 1, fixed shapes, fp32, torch.onnx.export(dynamo=True); "
                            "ORT CPU, graph optimization level all, intra-op threads = torch's",
                   "rows": rows,
                   "fps_definition": "frames / median seconds of a rollout (batch 1); warm-up and one-time costs "
                                     "excluded"}
        else:
            ort = {"measured": False, "note": "the [export] extra (onnx, onnxscript, onnxruntime) is not installed"}
    emit({"machine": machine, "fp32_matmul_gflops": peak,
          "settings": {"generator": "ngf 64, 4 downsamplings, 9 residual blocks, KBA bottleneck (random weights)",
                       "window": 3, "batch": 1, "frames": args.frames,
                       "mode": "torch.inference_mode, Fundus2VideoModule.forward",
                       "repeats": args.repeats, "budget_s": args.budget,
                       "batching": "photos per rollout, fp32, repeats interleaved; batch is `results`' 1 elsewhere",
                       "bf16_small": "run before `results`: its bf16 GFLOP/s estimates their unmeasured bf16 cases"},
          "results": results, "batching": batched, "bf16_small": small, "onnxruntime": ort})


def estimate(flops: int, bf16_rate: float | None) -> dict:
    """Estimated seconds per frame of an unmeasured bf16 case from the small case's bf16 GFLOP/s."""
    if not bf16_rate:
        return {}
    return {"estimated_seconds_per_frame": round(flops / 1e9 / bf16_rate, 1),
            "estimated_from_bf16_gflops": round(bf16_rate, 3),
            "estimate_note": "GFLOP / bf16_small's bf16 GFLOP/s: rough (a small size is bound by the weights' "
                             "memory traffic rather than FLOPs, and the bf16 fallback may slow down with size)"}


if __name__ == "__main__":
    main()
