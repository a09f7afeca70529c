"""Peak training memory against the number of frames T: the method promises it flat in T.

One video of T = 6, 12, 24 frames goes through the module's own training step (`training_step`:
every window's forward, G step and D step), full loss set of experiments/fundus2video.yaml with a
random-weight VGG19, 128 x 128, ngf 16, ndf 16, fp32. Each T runs in its own subprocess, since the
peak resident set size (getrusage ru_maxrss) is per process and never goes down. Reported per T:
the peak RSS of the whole process, its level before training (imports, networks, VGG19, inputs)
and the difference; then, in a second pass of the same video under torch.profiler, the peak of
the memory torch itself allocates during the video above what it held before (activations,
gradients, temporaries; not the networks or the optimizer state, which exist from the first pass;
not Python's objects or the allocator's slack). Last, the same torch peak for one window of the
module against one of `tests/helpers/reference.py: release_window_step` (the release's order of passes),
each in its own process.

    python benchmarks/memory.py [--frames 6,12,24] [--size 128] [--ngf 16] [--no-torch-peak]
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from _common import build_module, emit, log, machine_info, timed, window_inputs
from helpers.reference import (
    module_window_step,
    outside_trainer,
    release_window_step,
    standalone_optimizers,
    write_random_vgg19,
)


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def torch_peak_mb(run: Callable[[], None]) -> float | None:
    """Peak of torch's own CPU allocations made during `run()`, MB, above those that existed before
    (networks, optimizer state): the running total the profiler records at every allocation
    (`profile_memory`). A private torch API: None when it is unavailable."""
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()

    def walk(events):
        for e in events:
            yield e
            yield from walk(e.children)

    try:
        totals = [e.extra_fields.total_allocated for e in walk(prof.profiler.kineto_results.experimental_event_tree())
                  if e.tag == _EventType.Allocation]
    except Exception as e:  # private API: report rather than fail
        log(f"  allocation events unavailable: {e}")
        return None
    return max(totals, default=0) / 2**20


def child(n_frames: int, size: int, ngf: int, ndf: int, torch_peak: bool) -> dict:
    """One video of `n_frames` through `training_step` in this process; the memory figures."""
    with tempfile.TemporaryDirectory() as tmp:
        vgg = write_random_vgg19(Path(tmp) / "vgg19-random.pth")
        module = build_module(size, [f"model.generator.ngf={ngf}", f"model.discriminator.ndf={ndf}"], vgg)
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(1, n_frames, 1, size, size, generator=g) * 2 - 1
    km = (torch.rand(1, 1, size, size, generator=g) > 0.9).float()
    batch = {"cf": torch.rand(1, 3, size, size, generator=g) * 2 - 1, "frames": frames, "km": km, "lesion": km}
    opt_g, opt_d, schedulers = standalone_optimizers(module)
    random.seed(0)  # scheduled sampling's draws

    def video() -> None:
        with outside_trainer(module, opt_g, opt_d, schedulers):
            module.training_step(batch, 0)

    before = peak_rss_mb()
    seconds = timed(video)
    peak = peak_rss_mb()
    out = {"frames": n_frames, "windows": n_frames, "peak_rss_mb": round(peak, 1),
           "rss_before_training_mb": round(before, 1), "training_rss_mb": round(peak - before, 1),
           "seconds": round(seconds, 2)}
    if torch_peak:
        module.zero_grad(set_to_none=True)  # frees before profiling go uncounted: drop the gradients now
        value = torch_peak_mb(video)
        out["torch_video_alloc_peak_mb"] = None if value is None else round(value, 1)
    return out


def window_peak(name: str, size: int, ngf: int, ndf: int) -> float | None:
    """Torch's allocation peak (MB) of one training window of `name`: "ours" (the module) or "release"
    (`tests/helpers/reference.py`'s order of passes), after a warm-up window. One formulation per process:
    what the profiler saw allocated and freed in an earlier profile would inflate a later one."""
    with tempfile.TemporaryDirectory() as tmp:
        vgg = write_random_vgg19(Path(tmp) / "vgg19-random.pth")
        module = build_module(size, [f"model.generator.ngf={ngf}", f"model.discriminator.ndf={ndf}"], vgg)
    inputs = window_inputs(size, module.cfg.model.window)
    step = {"ours": module_window_step, "release": release_window_step}[name]
    opt_g, opt_d, _ = standalone_optimizers(module)
    step(module, *inputs, opt_g, opt_d)  # warm-up: creates the optimizer state
    module.zero_grad(set_to_none=True)  # frees before profiling go uncounted: drop the gradients now
    peak = torch_peak_mb(functools.partial(step, module, *inputs, opt_g, opt_d))
    return None if peak is None else round(peak, 1)


def run_child(args: list[str]) -> dict:
    """This script with `args` in a fresh process; its last stdout line, parsed."""
    done = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="6,12,24")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--ngf", type=int, default=16)
    parser.add_argument("--ndf", type=int, default=16)
    parser.add_argument("--no-torch-peak", action="store_true", help="skip the profiled pass")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--window-child", choices=["ours", "release"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.size, args.ngf, args.ndf, not args.no_torch_peak)))
        return
    if args.window_child is not None:
        print(json.dumps({"peak_mb": window_peak(args.window_child, args.size, args.ngf, args.ndf)}))
        return
    shape = ["--size", str(args.size), "--ngf", str(args.ngf), "--ndf", str(args.ndf)]
    rows = []
    for n in [int(t) for t in args.frames.split(",")]:
        log(f"T = {n} ...")
        rows.append(run_child(["--child", str(n), *shape] + (["--no-torch-peak"] if args.no_torch_peak else [])))
        log(f"  {rows[-1]}")
    first, last = rows[0], rows[-1]
    ratio = {"peak_rss": round(last["peak_rss_mb"] / first["peak_rss_mb"], 3),
             "training_rss": round(last["training_rss_mb"] / max(first["training_rss_mb"], 1e-9), 3)}
    key = "torch_video_alloc_peak_mb"
    if first.get(key) and last.get(key):
        ratio["torch_video_alloc_peak"] = round(last[key] / first[key], 3)
    windows = None
    if not args.no_torch_peak:
        log("one window, ours against the release's order ...")
        windows = {name: run_child(["--window-child", name, *shape])["peak_mb"] for name in ("ours", "release")}
        log(f"  {windows}")
    emit({"machine": machine_info(),
          "settings": {"size": args.size, "ngf": args.ngf, "ndf": args.ndf, "batch": 1, "window": 3,
                       "precision": "fp32", "loss": "full set of experiments/fundus2video.yaml, random-weight VGG19",
                       "step": "Fundus2VideoModule.training_step (every window: forward, G step, D step)",
                       "process": "one subprocess per T, and per formulation for the window peaks"},
          "results": rows, f"ratio_T{last['frames']}_over_T{first['frames']}": ratio,
          "window_torch_alloc_peak_mb": windows})


if __name__ == "__main__":
    main()
