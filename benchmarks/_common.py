"""Shared helpers of the benchmark scripts (not a benchmark itself: `make bench` skips `_*.py`).

Every script prints one JSON object to stdout and its progress to stderr.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fundus2video.config import load_config, to_plain
from fundus2video.module import Fundus2VideoModule

ROOT = Path(__file__).resolve().parent.parent
# the release's order of passes and the random-weight VGG19 writer are test support (tests/helpers/)
sys.path.insert(0, str(ROOT / "tests"))
FULL_CONFIG = ROOT / "experiments" / "fundus2video.yaml"


def log(*parts: Any) -> None:
    """Progress to stderr (stdout carries the JSON only)."""
    print(*parts, file=sys.stderr, flush=True)


def emit(result: dict) -> None:
    """The script's one JSON object, to stdout."""
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


def env_int(name: str, default: int) -> int:
    """An integer setting from the environment (e.g. BENCH_REPEATS=5), else `default`."""
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def machine_info() -> dict:
    """CPU model, cores, torch version and threads, the SIMD features that decide bf16 speed, and the
    load average at the start (other processes on a shared machine skew every timing)."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "simd": {k: bool(caps.get(k)) for k in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16")},
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "platform": platform.platform()}


def synchronize() -> None:
    """Wait for queued GPU work (CUDA runs asynchronously: a timer must not stop before it ends)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def gpu_info(device: str) -> dict:
    """The GPU's name and memory when `device` is a CUDA device; {} otherwise."""
    if not device.startswith("cuda"):
        return {}
    props = torch.cuda.get_device_properties(torch.device(device))
    return {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}


def matmul_gflops(n: int = 2048, dtype: torch.dtype = torch.float32, repeats: int = 5, device: str = "cpu") -> float:
    """This machine's matmul rate in GFLOP/s (2 n^3 per n x n product), median of `repeats` after a warm-up."""
    a, b = torch.randn(n, n).to(device, dtype), torch.randn(n, n).to(device, dtype)
    timed(lambda: a @ b)  # warm-up
    return 2 * n**3 / statistics.median([timed(lambda: a @ b) for _ in range(repeats)]) / 1e9


def build_module(size: int, overrides: Sequence[str] = (), vgg_weights: str | Path | None = None,
                 seed: int = 0, device: str = "cpu") -> Fundus2VideoModule:
    """The full experiment (experiments/fundus2video.yaml) at `size` with `overrides`, random weights,
    on `device`; with `vgg_weights`, the VGG19 term loads from that file (`setup('fit')`)."""
    extra = [f"data.size={size}", *overrides]
    if vgg_weights is not None:
        extra.append(f"loss.vgg_weights={vgg_weights}")
    else:
        extra.append("loss.vgg=0")
    torch.manual_seed(seed)
    module = Fundus2VideoModule(to_plain(load_config(FULL_CONFIG, extra)))
    module.setup("fit")
    return module.to(device)


def window_inputs(size: int, window: int = 3, batch: int = 1, seed: int = 0, device: str = "cpu"
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (cf, prev, target, km) for one window: images in [-1, 1], a mask of a few boxes (about a tenth
    of the image; the knowledge-aware terms cost the same whatever the mask)."""
    g = torch.Generator().manual_seed(seed)
    cf = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    prev, target = (torch.rand(batch, window, size, size, generator=g) * 2 - 1 for _ in range(2))
    km = torch.zeros(batch, 1, size, size)
    for _ in range(4):
        y, x = torch.randint(0, size * 3 // 4, (2,), generator=g).tolist()
        km[..., y:y + size // 6, x:x + size // 6] = 1
    return cf.to(device), prev.to(device), target.to(device), km.to(device)


def timed(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call (GPU work included)."""
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def median_seconds(fns: dict[str, Callable[[], Any]], repeats: int, budget_s: float,
                   first: dict[str, float] | None = None) -> dict[str, dict]:
    """Median (and min) wall-clock seconds of each function, their repeats interleaved (a, b, a, b, ...) so
    that load from other processes hits all alike. `first`: the seconds of a warm-up call already
    made (excluded). When the warm-up shows that `repeats` would overrun `budget_s`, fewer repeats
    run (at least 1); with no warm-up and a budget already spent, the warm-up's time is reported
    (`warmup_included`)."""
    first = first or {}
    per_round = sum(first.values()) or 0.0
    n = repeats if per_round == 0 else max(0, min(repeats, int(budget_s // max(per_round, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(n):
        for name, fn in fns.items():
            times[name].append(timed(fn))
            log(f"  {name} repeat {i + 1}/{n}: {times[name][-1]:.3f} s")
    out = {}
    for name in fns:
        if times[name]:
            out[name] = {"seconds": statistics.median(times[name]), "min_seconds": min(times[name]),
                         "repeats": len(times[name]), "warmup_included": False}
        else:
            out[name] = {"seconds": first[name], "repeats": 1, "warmup_included": True}
    return out
