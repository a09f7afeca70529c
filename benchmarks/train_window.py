"""Seconds per training window (G step + D step), the module's against the release's order of passes.

Full loss set of experiments/fundus2video.yaml (gan, feat, vgg, gv, nce, kad, att; KBA on the
bottleneck; 4 downsamplings, 9 residual blocks), batch 1, window K = 3, at 128 x 128 (ngf 16, ndf 16)
and 256 x 256 (ngf 32, ndf 32), fp32 and bf16 autocast. The VGG19 has random weights (same cost as
ImageNet's). Ours: `Fundus2VideoModule._window_step`; release: `tests/helpers/reference.py: release_window_step`,
each on its own copy of the same module with its own optimizers, repeats interleaved; the ratio
release / ours comes from the same run. `ours_shared` is the module with `loss.d_pass=shared` (one D
pass on the fake serving both losses), timed beside them: `ratio_ours_over_ours_shared` says what the
shared pass buys. FLOPs of one window (forward and backward of both steps)
from `torch.utils.flop_counter.FlopCounterMode`, against this machine's fp32 matmul rate measured
in the same run; `ratio_bound_at_fp32_peak` is the largest release / ours ratio our FLOPs allow here
(the release's measured time over our FLOPs at that peak), and `target` the fraction of that peak
our window would need for the issue's ratio (over 1: out of reach here). `aten_ops_per_window`
counts the kernels each order dispatches: a device-independent measure of the per-op overhead that
dominates small windows on a GPU. A bf16 case whose cost, estimated from an earlier bf16 case's
rate, exceeds the budget is estimated, not run (CPUs without native bf16 convolve bf16 on a slow
fallback path).
`--device cuda` runs the same comparison on a GPU (its peak measured there too; cuDNN may convolve
fp32 in TF32, PyTorch's default, so the fraction of the fp32 matmul peak can exceed 1).

    python benchmarks/train_window.py [--repeats 3] [--budget 60] [--sizes 128,256]
        [--precisions fp32,bf16] [--no-profile] [--device cuda]
Environment: BENCH_REPEATS, BENCH_BUDGET (seconds per case and formulation pair).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from _common import (
    build_module,
    emit,
    env_int,
    gpu_info,
    log,
    machine_info,
    matmul_gflops,
    median_seconds,
    timed,
    window_inputs,
)
from helpers.reference import module_window_step, release_window_step, standalone_optimizers, write_random_vgg19
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from fundus2video.config import loss_terms

CASES = {128: (16, 16), 256: (32, 32)}  # size: (ngf, ndf)
TERMS = list(loss_terms(paper_only=True))  # the paper's terms, as config.py declares them
TARGETS = {128: 2.0, 256: 1.3}  # the asked-for release / ours ratios, fp32


def precision_context(precision: str, device: str) -> contextlib.AbstractContextManager:
    bf16 = torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return bf16 if precision == "bf16" else contextlib.nullcontext()


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched to kernels (forward, backward, optimizer): about one kernel
    launch each on a GPU, where at small sizes each costs more than its arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def counted(fn: Callable[[], object]) -> tuple[float, int, int]:
    """(seconds, FLOPs, ATen ops) of one call under FlopCounterMode and OpCounter (a warm-up call)."""
    counter, ops = FlopCounterMode(display=False), OpCounter()
    with counter, ops:
        seconds = timed(fn)
    return seconds, counter.get_total_flops(), ops.count


def forward_gflop_by_network(module, inputs: tuple) -> dict[str, float]:
    """GFLOP of the window's forward (`window_losses`) per network: G (with its PatchNCE encoder passes),
    D, VGG19, projector. Forward only: FlopCounterMode's attribution of backward ops to modules is not
    reliable (it credits the VGG's backward to the loss evaluated after it)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module.window_losses(*inputs)
    counts = counter.get_flop_counts()
    names = {"GlobalGenerator": "generator", "MultiscaleDiscriminator": "discriminator", "VGG19Features": "vgg19",
             "PatchProjector": "projector", "GradientVarianceLoss": "gradient_variance"}
    out = {name: round(sum(counts[key].values()) / 1e9, 2) for key, name in names.items() if key in counts}
    out["total"] = round(counter.get_total_flops() / 1e9, 2)
    return out


def top_ops(fn: Callable[[], object], limit: int = 12) -> list[dict]:
    """The ops with the most self CPU time in one call (torch.profiler)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    log(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=limit))
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 1),
             "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in events[:limit]]


def steppers(base, shared, inputs: tuple, precision: str, device: str) -> dict[str, Callable[[], None]]:
    """One window of each formulation, each on its own copy of the modules with its own optimizers:
    ours (`base`, `loss.d_pass=separate`, the default), ours_shared (`shared`, the same weights with
    `loss.d_pass=shared`) and the release's order (on `base`)."""
    def module_step(source) -> Callable[[], None]:
        module = copy.deepcopy(source)
        opt_g, opt_d, scheds = standalone_optimizers(module)

        def step() -> None:
            with precision_context(precision, device):
                module_window_step(module, *inputs, opt_g, opt_d, scheds)
        return step

    ref = copy.deepcopy(base)
    r_g, r_d, _ = standalone_optimizers(ref)

    def step_ref() -> None:
        with precision_context(precision, device):
            release_window_step(ref, *inputs, r_g, r_d)

    return {"ours": module_step(base), "ours_shared": module_step(shared), "release": step_ref}


def rounded(d: dict, digits: int) -> dict:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in d.items()}


def measure(steps: dict[str, Callable[[], None]], flops: dict[str, int], count: bool, repeats: int,
            budget: float, peak_fp32: float) -> dict:
    """Times (and with `count`, first counts the FLOPs of) both formulations: one result row's fields."""
    row: dict = {"measured": True}
    first: dict[str, float] = {}
    if count:  # the warm-up call counts the FLOPs (autocast leaves them unchanged) and the ops
        ops = {}
        for name, step in steps.items():
            first[name], flops[name], ops[name] = counted(step)
        row["aten_ops_per_window"] = ops
    else:  # a plain warm-up: its time may stand in for a slow case's measurement
        first = {name: timed(step) for name, step in steps.items()}
    log(f"  warm-up {', '.join(f'{k} {v:.2f} s' for k, v in first.items())}; FLOPs {flops}")
    times = median_seconds(steps, repeats, budget, first)
    rate = {k: flops[k] / 1e9 / times[k]["seconds"] for k in times}
    row.update({
        **{name: rounded(times[name], 4) for name in steps},
        "ratio_release_over_ours": round(times["release"]["seconds"] / times["ours"]["seconds"], 3),
        "ratio_ours_over_ours_shared": round(times["ours"]["seconds"] / times["ours_shared"]["seconds"], 3),
        "gflop_per_window": {k: round(v / 1e9, 2) for k, v in flops.items()},
        "achieved_gflops": rounded(rate, 2),
        "fraction_of_fp32_matmul_peak": {k: round(v / peak_fp32, 3) for k, v in rate.items()},
    })
    return row


def against_targets(row: dict, peak_fp32: float, target: float | None) -> dict:
    """fp32 rows: the release order's time over the time our FLOPs would take at the fp32 matmul peak
    (no direct-convolution implementation of our FLOPs beats the release order by more here), and
    the fraction of that peak our window would need to reach the issue's target ratio."""
    ours_gflop, release_s = row["gflop_per_window"]["ours"], row["release"]["seconds"]
    out = {"ratio_bound_at_fp32_peak": round(release_s / (ours_gflop / peak_fp32), 3)}
    if target:
        out["target"] = {"ratio": target,
                         "fraction_of_fp32_peak_needed": round(ours_gflop * target / release_s / peak_fp32, 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=env_int("BENCH_REPEATS", 5))
    parser.add_argument("--budget", type=float, default=float(env_int("BENCH_BUDGET", 60)),
                        help="seconds of timed repeats per case (both formulations)")
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile of the first fp32 case")
    parser.add_argument("--device", default="cpu",
                        help="cpu, or cuda[:i] to compare both orders on a GPU (where per-op overhead weighs more)")
    args = parser.parse_args()
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: no CUDA device here (torch {torch.__version__})")
    sizes = [int(s) for s in args.sizes.split(",")]
    precisions = args.precisions.split(",")

    log("matmul peak ...")
    peak = {"fp32_matmul_gflops": round(matmul_gflops(2048, torch.float32, device=device), 1), "fp32_n": 2048,
            "bf16_matmul_gflops": round(matmul_gflops(512, torch.bfloat16, 3, device=device), 2), "bf16_n": 512}
    log(peak)
    results, profile_ops = [], None
    bf16_rate: float | None = None  # GFLOP/s of the last measured bf16 case, to estimate the next
    with tempfile.TemporaryDirectory() as tmp:
        vgg = write_random_vgg19(Path(tmp) / "vgg19-random.pth")
        for size in sizes:
            ngf, ndf = CASES.get(size, (16, 16))
            base = build_module(size, [f"model.generator.ngf={ngf}", f"model.discriminator.ndf={ndf}"], vgg,
                                device=device)
            shared = build_module(size, [f"model.generator.ngf={ngf}", f"model.discriminator.ndf={ndf}",
                                         "loss.d_pass=shared"], vgg, device=device)
            shared.load_state_dict(base.state_dict())
            inputs = window_inputs(size, base.cfg.model.window, device=device)
            flops: dict[str, int] = {}
            forward_flops = forward_gflop_by_network(base, inputs)
            for precision in precisions:
                log(f"size {size} ngf {ngf} ndf {ndf} {precision}")
                row: dict = {"size": size, "ngf": ngf, "ndf": ndf, "precision": precision}
                slow = precision == "bf16" and bf16_rate
                estimate = {k: v / 1e9 / bf16_rate for k, v in flops.items()} if slow else {}
                if estimate and sum(estimate.values()) > args.budget:
                    log(f"  estimated {estimate} s per window: over the budget, not run")
                    results.append({**row, "measured": False, "estimated_seconds": rounded(estimate, 1),
                                    "estimated_from_bf16_gflops": round(bf16_rate, 3),
                                    "note": "FLOPs / the smaller bf16 case's rate; optimistic: the bf16 fallback "
                                            "slows down further with size"})
                    continue
                steps = steppers(base, shared, inputs, precision, device)
                row.update(measure(steps, flops, precision == "fp32" or not flops, args.repeats, args.budget,
                                   peak["fp32_matmul_gflops"]))
                if precision == "fp32":
                    row.update(against_targets(row, peak["fp32_matmul_gflops"], TARGETS.get(size)))
                    row["forward_gflop_by_network"] = forward_flops
                if precision == "bf16":
                    bf16_rate = row["achieved_gflops"]["ours"]
                results.append(row)
                if profile_ops is None and precision == "fp32" and not args.no_profile:
                    log("  profile of our window")
                    profile_ops = {"size": size, "precision": precision, "top_self_cpu": top_ops(steps["ours"])}
    emit({"machine": {**machine_info(), "device": device, **gpu_info(device)}, "peak": peak,
          "settings": {"batch": 1, "window": 3, "loss_terms": TERMS, "kba": "bottleneck",
                       "generator": "global, 4 downsamplings, 9 residual blocks", "discriminator": "2 scales, 3 layers",
                       "vgg": "random-weight VGG19 (torchvision layout): the cost of the ImageNet one, not its values",
                       "repeats": args.repeats, "budget_s": args.budget,
                       "ours": "Fundus2VideoModule._window_step, loss.d_pass=separate (the default)",
                       "ours_shared": "the same with loss.d_pass=shared", "release": "reference.release_window_step",
                       "flops": "FlopCounterMode: forward and backward of the G and D steps (not the optimizer steps)"},
          "results": results, "profile": profile_ops})


if __name__ == "__main__":
    main()
