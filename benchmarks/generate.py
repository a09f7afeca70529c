"""Seconds per frame of the `generate` command end to end, with each runtime, as people run it.

For each size, a Hub folder of the generator of experiments/fundus2video.yaml (paper widths: ngf 64,
4 downsamplings, 9 residual blocks, KBA, window K = 3) with random weights, and a 512 x 512 phantom
colour photo. Each runtime runs `python -m fundus2video generate --frames N` in a fresh process, in
the default environment (OMP_NUM_THREADS unset), for a short and a long video: seconds per frame is
the difference of the two wall-clock times over the difference of their frames, so start-up, the
checkpoint's load, the photo's preparation and the graph's load cancel out; what remains is what each
further frame costs (its window, the averaging, its share of the mp4). Repeats are interleaved
(torch, onnxruntime, openvino, auto, torch, ...) so that other load hits all alike; medians, and each
runtime's ratio to torch's median. A warm-up call per runtime first pays the one-time costs (the
export, each runtime's check, auto's timing), reported apart. `--omp N` adds the same measurements
with OMP_NUM_THREADS=N.

`demo`: the browser demo's work (`DemoModel.run`, in this process: preparation, rollout, the mp4, the
side-by-side video, the strip) for the short and the long video, torch and auto, at --demo-size.

`checks`: each graph runtime's max |runtime - torch| on the check input (the graph's record).
`gflop_per_window` (the graph's convolutions) over each runtime's timed window gives `window_gflops`,
the arithmetic rate each sustains, to set against `fp32_fma_peak`: what the CPUs reach on nothing but
independent AVX-512 FMAs (a small C program, compiled when `cc` is there).

    python benchmarks/generate.py [--sizes 256,512] [--runtimes torch,onnxruntime,openvino,auto]
        [--frames 3,13] [--repeats 3] [--omp 2] [--demo-size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
from _common import ROOT, build_module, emit, log, machine_info

from fundus2video.data_modules.phantom import make_case
from fundus2video.hub import save_hub
from fundus2video.onnx_runtime import installed_runtimes, runtime_threads, runtime_version

PHOTO_SIZE = 512


def _env(omp: str | None) -> dict:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if omp:
        env["OMP_NUM_THREADS"] = omp
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    return env


def run_generate(folder: Path, photo: Path, out: Path, runtime: str, frames: int, env: dict) -> float:
    """Wall-clock seconds of one `generate` process."""
    command = [sys.executable, "-m", "fundus2video", "generate", "--ckpt", str(folder), "--cf", str(photo),
               "--out", str(out), "--frames", str(frames), "--runtime", runtime, "--overwrite"]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"generate --runtime {runtime} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds


def auto_choice(folder: Path, photo: Path, out: Path, env: dict) -> str:
    """What `--runtime auto` ran, from its one line."""
    command = [sys.executable, "-m", "fundus2video", "generate", "--ckpt", str(folder), "--cf", str(photo),
               "--out", str(out), "--frames", "1", "--runtime", "auto", "--overwrite"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    line = next((ln for ln in done.stderr.splitlines() if "--runtime auto:" in ln), "")
    return line.split("--runtime auto:", 1)[1].split(",")[0].strip() if line else "torch"


def per_frame(folder: Path, photo: Path, work: Path, runtimes: list[str], frames: tuple[int, int], repeats: int,
              env: dict) -> dict:
    short, long = frames
    warm = {}
    for runtime in runtimes:  # the export, the checks and auto's timing, once
        warm[runtime] = round(run_generate(folder, photo, work / f"{runtime}.mp4", runtime, 1, env), 1)
        log(f"  warm-up {runtime}: {warm[runtime]} s")
    samples: dict[str, list[float]] = {r: [] for r in runtimes}
    for i in range(repeats):
        for runtime in runtimes:
            a = run_generate(folder, photo, work / f"{runtime}.mp4", runtime, short, env)
            b = run_generate(folder, photo, work / f"{runtime}.mp4", runtime, long, env)
            samples[runtime].append((b - a) / (long - short))
            log(f"  repeat {i + 1}/{repeats} {runtime}: {short} frames {a:.1f} s, {long} frames {b:.1f} s -> "
                f"{samples[runtime][-1]:.3f} s/frame")
    rows = {r: {"seconds_per_frame": round(statistics.median(v), 3), "all": [round(x, 3) for x in v]}
            for r, v in samples.items()}
    if "torch" in rows:
        for row in rows.values():
            row["speedup_over_torch"] = round(rows["torch"]["seconds_per_frame"] / row["seconds_per_frame"], 2)
    out = {"frames": [short, long], "repeats": repeats, "runtimes": rows, "warm_up_seconds": warm}
    if "auto" in runtimes:
        out["auto_ran"] = auto_choice(folder, photo, work / "auto.mp4", env)
    return out


def graph_gflop(graph: Path) -> float:
    """Floating-point operations of one window, counted from the ONNX graph: 2 x the multiply-adds of
    every convolution (more than 99 % of the window's arithmetic; norms and activations left out)."""
    import numpy as np
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(graph)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    weights = {w.name: list(w.dims) for w in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":  # each output element: in/groups x kernel multiply-adds
            macs += int(np.prod(shapes[node.output[0]])) * int(np.prod(weights[node.input[1]][1:]))
        elif node.op_type == "ConvTranspose":  # each input element scatters into out/groups x kernel
            macs += int(np.prod(shapes[node.input[0]])) * int(np.prod(weights[node.input[1]][1:]))
    return 2 * macs / 1e9


# twelve independent AVX-512 FMA chains per thread (more than latency x pipes): the cores' fp32 peak
FMA_PEAK_C = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#define FMA(k) a##k = _mm512_fmadd_ps(a##k, m, c)
int main(int argc, char **argv) {
    long iters = atol(argv[1]);
    float sink = 0;
    int threads = 1;
    double start = omp_get_wtime();
#pragma omp parallel reduction(+ : sink)
    {
#pragma omp single
        threads = omp_get_num_threads();
        __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
        __m512 a0 = m, a1 = m, a2 = m, a3 = m, a4 = m, a5 = m, a6 = m, a7 = m, a8 = m, a9 = m, a10 = m, a11 = m;
        for (long i = 0; i < iters; i++) {
            FMA(0); FMA(1); FMA(2); FMA(3); FMA(4); FMA(5); FMA(6); FMA(7); FMA(8); FMA(9); FMA(10); FMA(11);
        }
        sink += _mm512_reduce_add_ps(a0) + _mm512_reduce_add_ps(a5) + _mm512_reduce_add_ps(a11);
    }
    printf("%f %g\n", threads * iters * 12.0 * 16 * 2 / (omp_get_wtime() - start) / 1e9, sink);
    return 0;
}
"""


def fma_peak_gflops(threads: int, work: Path, iters: int = 300_000_000) -> float | None:
    """The fp32 rate the CPUs reach on nothing but independent AVX-512 FMAs (a C program compiled here),
    median of 3; None without a C compiler with OpenMP or without AVX-512."""
    source, binary = work / "fma_peak.c", work / "fma_peak"
    source.write_text(FMA_PEAK_C)
    built = subprocess.run(["cc", "-O2", "-mavx512f", "-fopenmp", str(source), "-o", str(binary)],
                           capture_output=True, text=True) if shutil.which("cc") else None
    if built is None or built.returncode != 0:
        return None
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    rates = []
    for _ in range(3):
        done = subprocess.run([str(binary), str(iters)], env=env, capture_output=True, text=True)
        if done.returncode != 0:  # no AVX-512 on this CPU: an illegal instruction
            return None
        rates.append(float(done.stdout.split()[0]))
    return round(statistics.median(rates), 1)


def demo_per_frame(folder: Path, photo: Path, frames: tuple[int, int], repeats: int) -> dict:
    from fundus2video.demo import DemoModel
    from fundus2video.onnx_runtime import limit_torch_threads

    limit_torch_threads()  # as `fundus2video demo` does
    short, long = frames
    models = {r: DemoModel(folder, "cpu", runtime=r) for r in ("torch", "auto")}
    samples: dict[str, list[float]] = {r: [] for r in models}
    try:
        for model in models.values():
            model.run(photo, 1)  # warm-up
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model.run(photo, short)
                middle = time.perf_counter()
                model.run(photo, long)
                samples[name].append((time.perf_counter() - middle - (middle - start)) / (long - short))
                log(f"  demo {name}: {samples[name][-1]:.3f} s/frame")
    finally:
        for model in models.values():
            model.close()
    rows = {n: {"seconds_per_frame": round(statistics.median(v), 3), "ran": models[n].runtime}
            for n, v in samples.items()}
    rows["auto"]["speedup_over_torch"] = round(rows["torch"]["seconds_per_frame"] /
                                               rows["auto"]["seconds_per_frame"], 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--runtimes", default="torch,onnxruntime,openvino,auto")
    parser.add_argument("--frames", default="3,13", help="the short and the long video's frames")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--omp", default="", help="also measure with OMP_NUM_THREADS set to this")
    parser.add_argument("--demo-size", type=int, default=256, help="0: no demo measurement")
    args = parser.parse_args()
    frames = tuple(int(f) for f in args.frames.split(","))
    if len(frames) != 2 or not 1 <= frames[0] < frames[1]:
        raise SystemExit(f"--frames {args.frames}: expected SHORT,LONG with 1 <= SHORT < LONG")
    available = {"torch", "auto", *installed_runtimes()}
    runtimes = [r for r in args.runtimes.split(",") if r in available]
    conditions = {"default (OMP_NUM_THREADS unset)": None, **({f"OMP_NUM_THREADS={args.omp}": args.omp}
                                                               if args.omp else {})}
    results, demo = [], None
    with tempfile.TemporaryDirectory(prefix="f2v-bench-generate-") as tmp:
        work = Path(tmp)
        photo = work / "cf.png"
        cv2.imwrite(str(photo), make_case(0, size=PHOTO_SIZE, n_frames=2).cf[..., ::-1])
        for size in (int(s) for s in args.sizes.split(",") if s.strip()):
            folder = work / f"generator{size}"
            save_hub(build_module(size).eval(), folder)
            row = {"size": size}
            for name, omp in conditions.items():
                log(f"size {size}, {name}")
                row[name] = per_frame(folder, photo, work, runtimes, frames, args.repeats, _env(omp))
            record = json.loads((work / f"generator{size}.onnx-cache" / f"{size}x{size}.json").read_text()) \
                if (work / f"generator{size}.onnx-cache").is_dir() else {}
            row["checks"] = record.get("max_abs_diff_vs_torch", {})
            row["auto_timed_seconds_per_window"] = timed = record.get("seconds_per_window", {})
            graph = work / f"generator{size}.onnx-cache" / f"{size}x{size}.onnx"
            if graph.is_file():  # how close each runtime's window comes to the machine's fp32 ceiling
                row["gflop_per_window"] = gflop = round(graph_gflop(graph), 1)
                row["window_gflops"] = {machine: {r: round(gflop / t, 1) for r, t in times.items() if t}
                                        for machine, times in timed.items()}
            results.append(row)
            if size == args.demo_size:
                log(f"demo at {size}")
                demo = {"size": size, **demo_per_frame(folder, photo, frames, args.repeats)}
        peak = {"threads": runtime_threads(), "gflops": fma_peak_gflops(runtime_threads(), work)}
    emit({"machine": machine_info(), "fp32_fma_peak": peak,
          "runtimes": {r: runtime_version(r) for r in installed_runtimes()},
          "photo": f"{PHOTO_SIZE} x {PHOTO_SIZE} phantom colour photo", "results": results, "demo": demo})


if __name__ == "__main__":
    main()
