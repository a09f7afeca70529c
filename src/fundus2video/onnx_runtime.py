"""Generation through a graph runtime: the generator's window as an ONNX graph, exported once and
cached, run by ONNX Runtime or OpenVINO.

On CPUs both run the generator's window faster than PyTorch's eager kernels (benchmarks/generate.py
measures the whole `generate` command with each). Only the window goes through them:
(1, 3 + K, H, W) -> (1, K, H, W). The rollout loop stays `fundus2video.rollout.rollout`, given a
`GraphWindow` as its generator, so the schedule and the window averaging are the PyTorch path's.

The graph has fixed shapes, batch 1: with a dynamic batch dimension ONNX Runtime's CPU kernels run
about half as fast, and the instance norm works per sample, so a batch runs sample by sample with
the same frames. One graph per (weights, H x W), float32, in `<H>x<W>.onnx` with a record
`<H>x<W>.json` (what the graph was exported from, its SHA-256, each runtime's check, the speeds
`auto` measured) in:
  `<checkpoint>.onnx-cache/` beside the checkpoint file or Hub folder, when its folder is writable;
  else `$XDG_CACHE_HOME/fundus2video/onnx/<key>/` (default `~/.cache/fundus2video/onnx/<key>/`).
The key is the SHA-256 of the generator's weights, its architecture, the window K and the versions
of fundus2video, torch and onnxscript (which write the graph): a retrained checkpoint at the same
path gets a new graph. Each runtime (at its version) is checked once against the PyTorch generator
on a random input (|runtime - torch| <= TOLERANCE) before its first use, and the result kept in the
record; a freshly exported graph is renamed into place only once its first check passes. A cached
graph is used when its SHA-256 matches its record, else exported again (a corrupted or half-copied
file is rebuilt).

`runtime="auto"` times one window with each installed runtime that passes its check, and PyTorch,
once per graph and machine (kept in the record), and runs the fastest; it says which in one line.
A named runtime fails in one line (UserError) when the graph cannot be exported or differs from
PyTorch; `auto` then warns and leaves that runtime out. Every runtime gets the same threads:
PyTorch's, but no more than the CPUs this process may use (its affinity and its cgroup's CPU quota,
which containers set and which PyTorch and ONNX Runtime do not read; `limit_torch_threads`).
Windows are kept per generator for the life of the process and refreshed when its weights change
in place.

One file, though long: choosing, exporting, caching, checking and timing all read and write the
graph's record; split, its fields would be defined in one file and trusted in another.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fundus2video.devices import device_type
from fundus2video.errors import UserError

log = logging.getLogger(__name__)

GRAPH_RUNTIMES = ("onnxruntime", "openvino")  # run the exported ONNX graph
RUNTIMES = ("auto", "torch", *GRAPH_RUNTIMES)
TOLERANCE = 1e-4  # largest |runtime - PyTorch| accepted on the check input
EXPORTER = ("onnx", "onnxscript")  # torch.onnx.export(dynamo=True) writes with these
# each graph runtime: its package and the extra that installs it with the exporter
EXTRAS = {"onnxruntime": ("onnxruntime", "export"), "openvino": ("openvino", "openvino")}
CACHE_FORMAT = 2  # of the cache's records; another one is exported again
SUFFIX = ".onnx-cache"
TIMED_WINDOWS = 2  # per runtime, after its check's window, when auto measures: the faster counts


# ---------------------------------------------------------------------------- choosing the runtime
def _installed(name: str) -> bool:
    """Whether `name` can be imported, without importing it (onnx and onnxscript take seconds to
    import and are needed only to export). A module set to None in sys.modules counts as missing."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def installed(runtime: str) -> bool:
    """Whether the graph runtime `runtime` and the exporter are installed."""
    return all(_installed(name) for name in (*EXPORTER, EXTRAS[runtime][0]))


def installed_runtimes() -> list[str]:
    """The graph runtimes that can run here (with the exporter), in GRAPH_RUNTIMES' order."""
    return [runtime for runtime in GRAPH_RUNTIMES if installed(runtime)]


def onnx_available() -> bool:
    """Whether the [export] extra (onnx, onnxscript, onnxruntime) is installed."""
    return installed("onnxruntime")


def missing_message(runtime: str) -> str:
    package, extra = EXTRAS[runtime]
    return (f"--runtime {runtime} needs onnx, onnxscript and {package}, which are not installed: "
            f"pip install 'fundus2video[{extra}]' (or use --runtime torch)")


def resolve_runtime(runtime: str, device: str | torch.device, bf16: bool = False) -> str:
    """What runs the generator for `runtime` (one of RUNTIMES) on `device`: torch, onnxruntime,
    openvino, or auto when the choice among installed graph runtimes is left to `window_function`.

    auto: torch on a GPU, with bf16, or with no graph runtime installed. A graph runtime on a GPU,
    with bf16 or not installed: UserError, one line."""
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime {runtime}: expected one of {', '.join(RUNTIMES)}")
    on_cpu = device_type(device) == "cpu"
    if runtime == "auto":
        return "auto" if on_cpu and not bf16 and installed_runtimes() else "torch"
    if runtime in GRAPH_RUNTIMES:
        if not on_cpu:  # their GPU builds are separate packages; on a GPU, PyTorch is the fast path
            raise UserError(f"--runtime {runtime} runs on the CPU, found --device {device}; use --runtime torch "
                            "on a GPU")
        if bf16:
            raise UserError(f"--runtime {runtime} runs in float32, found --bf16; use --runtime torch for "
                            "bfloat16 autocast")
        if not installed(runtime):
            raise UserError(missing_message(runtime))
    return runtime


# ---------------------------------------------------------------------------- threads
def _cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (cgroup v2 cpu.max or v1 cfs), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: its affinity, and no more than its cgroup's quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus(cgroup)
    return max(1, min(cpus, math.ceil(quota))) if quota else max(1, cpus)


def limit_torch_threads() -> int:
    """Without OMP_NUM_THREADS, no more PyTorch threads than usable CPUs (PyTorch counts the machine's
    cores, not a container's quota: threads beyond it wait on each other at every operator). Returns
    PyTorch's threads."""
    if not os.environ.get("OMP_NUM_THREADS", "").strip() and torch.get_num_threads() > usable_cpus():
        torch.set_num_threads(usable_cpus())
    return torch.get_num_threads()


def runtime_threads() -> int:
    """Threads of a graph runtime: PyTorch's, no more than the usable CPUs."""
    return max(1, min(torch.get_num_threads(), usable_cpus()))


# ---------------------------------------------------------------------------- writing a graph
def save_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path, names: tuple[str, str],
              dynamic_batch: bool = True) -> None:
    """`net` exported at `example`'s shape to `path` (one file, no external data), input and output
    named `names`; `dynamic_batch`: any batch size (else the example's, which runs faster)."""
    # the exporter's notes (torchvision ops this model never uses, every optimizer pass) would flood
    # the CLI, whose logging shows INFO
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            dynamic = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
            torch.onnx.export(net, (example,), str(path), input_names=[names[0]], output_names=[names[1]],
                              dynamic_shapes=dynamic, dynamo=True, external_data=False, verbose=False)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# ---------------------------------------------------------------------------- running a graph
def _ort_session(model: str | Path | bytes, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # the graph is one chain of convolutions: nothing to run side by side
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings about unused initializers mean nothing here
    source = model if isinstance(model, bytes) else str(model)
    session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = session.get_inputs()[0].name, session.get_outputs()[0].name
    return lambda x: session.run([names[1]], {names[0]: x})[0]


def _openvino_model(model: str | Path | bytes, threads: int):
    # `import openvino` sends a usage event to Google Analytics from a process it forks off a thread
    # (openvino_telemetry): patient-side tools must not phone home, and a fork of a threaded process
    # can take its parent's pipes with it. Without that module OpenVINO uses its own no-op stub.
    sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    core = openvino.Core()
    # f32 explicitly: on CPUs with bf16 instructions OpenVINO's default precision is bf16, far outside TOLERANCE
    compiled = core.compile_model(core.read_model(model if isinstance(model, bytes) else str(model)), "CPU",
                                  {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                                   "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1})
    request = compiled.create_infer_request()
    # the request reuses its output buffer at the next call: the caller keeps a copy
    return lambda x: request.infer({0: x})[0].copy()


OPENERS = {"onnxruntime": _ort_session, "openvino": _openvino_model}


def runtime_version(runtime: str) -> str:
    return f"{runtime} {_version(EXTRAS[runtime][0] if runtime in EXTRAS else runtime)}"


class GraphWindow:
    """One generator window through a graph runtime, for `rollout`: (B, 3 + K, H, W) -> (B, K, H, W),
    float32 on the CPU. The graph has batch 1; a batch runs sample by sample."""

    def __init__(self, runtime: str, model: str | Path | bytes, path: Path, shape: tuple[int, int, int],
                 threads: int | None = None):
        self.runtime = runtime
        self.path = path  # the cached graph
        self.shape = shape  # (3 + K, H, W) of one sample
        self.threads = threads or runtime_threads()
        self._run = OPENERS[runtime](model, self.threads)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"{self.path}: the graph takes (B, {', '.join(map(str, self.shape))}), "
                             f"got {tuple(x.shape)}")
        x = x.detach().to("cpu", torch.float32).contiguous().numpy()
        outs = [self._run(x[i:i + 1]) for i in range(len(x))]
        return torch.from_numpy(outs[0] if len(outs) == 1 else np.concatenate(outs))


def run_onnx(path: Path, x: torch.Tensor, runtime: str = "onnxruntime") -> torch.Tensor:
    """The graph at `path` on `x` (CPU, the runtime's default threads)."""
    return torch.from_numpy(np.ascontiguousarray(OPENERS[runtime](path, runtime_threads())(x.numpy())))


# ---------------------------------------------------------------------------- the cache
def weights_digest(generator: torch.nn.Module) -> str:
    """SHA-256 of the generator's state dict: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, tensor in generator.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cache_key(module: Any, digest: str) -> dict:
    """What a cached graph must have been exported from to be used for `module`'s generator."""
    import fundus2video
    from fundus2video.hub import generator_config

    return {"format": CACHE_FORMAT, "weights_sha256": digest, "generator": generator_config(module.cfg),
            "window": module.cfg.model.window, "fundus2video": fundus2video.__version__,
            "torch": torch.__version__, "onnxscript": _version("onnxscript")}


def user_cache() -> Path:
    """$XDG_CACHE_HOME/fundus2video/onnx, default ~/.cache/fundus2video/onnx."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base) / "fundus2video" / "onnx"


def cache_folders(checkpoint: str | Path | None, key: dict) -> list[Path]:
    """Where the graph may be cached, first choice first: beside the checkpoint (file or Hub
    folder), then the user cache (a folder per key)."""
    from fundus2video.hub import hub_folder

    folders = []
    if checkpoint is not None:
        path = Path(checkpoint)
        path = (hub_folder(path) or path).resolve()  # a Hub folder's config.json: the folder
        folders.append(path.with_name(path.name + SUFFIX))
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return [*folders, user_cache() / name]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _load_cached(graph: Path, key: dict) -> tuple[bytes, dict] | None:
    """The cached graph's bytes and record when the record matches `key` and the bytes their SHA-256,
    else None (a stale graph silently, a corrupted one with a warning)."""
    record = _read_record(graph.with_suffix(".json"))
    if not graph.is_file() or record is None or record.get("key") != key:
        return None
    data = graph.read_bytes()
    if hashlib.sha256(data).hexdigest() != record.get("sha256"):
        log.warning("%s: the cached ONNX graph does not match its record (corrupted?); exporting it again", graph)
        return None
    return data, record


def _write_record(graph: Path, record: dict) -> None:
    from fundus2video.io import atomic_path

    with atomic_path(graph.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


def _update_record(graph: Path, record: dict) -> None:
    """Keep what was learnt (a check, a speed) in the record when its folder is writable; else learn
    it again next time."""
    try:
        _write_record(graph, record)
    except (OSError, UserError) as err:
        log.debug("%s: record not updated (%s)", graph, err)


def _gist(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def check_inputs(shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The export's example and the checks' input: fixed draws in [-1, 1], batch 1."""
    rng = torch.Generator().manual_seed(0)
    example, check = (torch.rand(1, *shape, generator=rng) * 2 - 1 for _ in range(2))
    return example, check


@torch.inference_mode()
def _difference(window: GraphWindow, generator: torch.nn.Module, shape: tuple[int, int, int]) -> float:
    """max |window - generator| on the check input, the generator in eval mode."""
    check = check_inputs(shape)[1]
    training = generator.training
    generator.eval()
    try:
        return (window(check) - generator(check)).abs().max().item()
    finally:
        generator.train(training)


def _differs(graph: Path, runtime: str, diff: float, cached: bool) -> UserError:
    kept = "the graph stays cached for the other runtimes" if cached else "nothing was cached"
    return UserError(f"{graph}: the ONNX graph under {runtime} differs from the PyTorch generator by up to "
                     f"{diff:.3g} (> {TOLERANCE}); {kept}; use --runtime torch")


def export_window(module: Any, graph: Path, key: dict, shape: tuple[int, int, int],
                  runtime: str = "onnxruntime") -> GraphWindow:
    """Export `module`'s generator window at `shape` to `graph` (atomically, with its record), after
    checking the graph under `runtime` against the PyTorch generator on the check input. UserError
    naming the file when the export fails or the check does not pass (then nothing is written)."""
    from fundus2video.io import atomic_path

    generator = module.generator
    training = generator.training
    example = check_inputs(shape)[0]
    start = time.perf_counter()
    log.info("exporting the generator to ONNX for %d x %d (once; cached in %s)", shape[1], shape[2], graph.parent)
    generator.eval()
    try:
        with torch.no_grad(), atomic_path(graph) as tmp:
            try:
                save_onnx(generator, example, tmp, ("x", "frames"), dynamic_batch=False)
                data = tmp.read_bytes()
                window = GraphWindow(runtime, data, graph, shape)
            except Exception as err:  # noqa: BLE001  (the exporter and the runtimes raise many types; the gist is enough)
                raise UserError(f"{graph}: exporting the generator to ONNX for {runtime} failed ({_gist(err)}); use "
                                "--runtime torch") from None
            diff = _difference(window, generator, shape)
            if not diff <= TOLERANCE:  # also catches NaN
                raise _differs(graph, runtime, diff, cached=False)
    finally:
        generator.train(training)
    record = {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "input": [1, *shape],
              "max_abs_diff_vs_torch": {runtime_version(runtime): diff},
              "export_seconds": round(time.perf_counter() - start, 2), "seconds_per_window": {}}
    _write_record(graph, record)
    log.info("exported %s in %.0f s (max |%s - torch| = %.2g)", graph, record["export_seconds"], runtime, diff)
    return window


# windows per generator module, kept while the module lives:
# (runtime or auto, H, W, threads, checkpoint) -> (fingerprint, window or auto's None)
_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(generator: torch.nn.Module) -> tuple:
    """Changes when a weight is replaced or changed in place (its storage or version counter), cheaply:
    the SHA-256 of 180 M weights takes a second. Tensors made under torch.inference_mode have no
    version counter: their storage alone."""
    return tuple((t.data_ptr(), None if t.is_inference() else t._version)
                 for t in (*generator.parameters(), *generator.buffers()))


def _digest(generator: torch.nn.Module) -> str:
    """`weights_digest`, once per weights in this process (hashing 180 M weights takes a second)."""
    memo = _SESSIONS.setdefault(generator, {})
    fingerprint = _fingerprint(generator)
    if "digest" not in memo or memo["digest"][0] != fingerprint:
        memo["digest"] = (fingerprint, weights_digest(generator))
    return memo["digest"][1]


def _sides(module: Any, size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    g = module.cfg.model.generator
    multiple = 2 ** (g.n_downsample + (g.netg == "local"))
    if h % multiple or w % multiple:
        raise UserError(f"{h} x {w}: this generator needs sides that are multiples of {multiple}")
    return h, w


def graph_window(module: Any, size: int | tuple[int, int], runtime: str,
                 checkpoint: str | Path | None = None) -> GraphWindow:
    """The window of `module`'s generator (a Fundus2VideoModule or hub.LoadedGenerator) at `size`
    (S or (H, W)) under the graph runtime `runtime`, from the process's windows, the cache, or a
    fresh export; checked against PyTorch before its first use. `checkpoint`: the .ckpt or Hub folder
    `module` was loaded from, to cache beside it (default: a LoadedGenerator's source; else the user
    cache). UserError when it cannot be exported or does not pass its check."""
    h, w = _sides(module, size)
    if checkpoint is None and getattr(module, "source", ""):
        checkpoint = module.source
    generator = module.generator
    memo = _SESSIONS.setdefault(generator, {})
    slot = (runtime, h, w, runtime_threads(), str(checkpoint))
    fingerprint = _fingerprint(generator)
    if slot in memo and memo[slot][0] == fingerprint:
        return memo[slot][1]
    shape = (3 + module.cfg.model.window, h, w)
    key = cache_key(module, _digest(generator))
    folders = cache_folders(checkpoint, key)
    name = f"{h}x{w}.onnx"
    window = None
    for folder in folders:
        if (found := _load_cached(folder / name, key)) is None:
            continue
        (data, record), graph = found, folder / name
        try:
            window = GraphWindow(runtime, data, graph, shape)
        except Exception as err:  # noqa: BLE001  (the runtimes raise their own types for a graph they cannot load)
            log.warning("%s: %s cannot load the cached graph (%s); exporting it again", graph, runtime, _gist(err))
            continue
        checks = record.setdefault("max_abs_diff_vs_torch", {})
        if (diff := checks.get(runtime_version(runtime))) is None:  # a runtime installed since the export
            checks[runtime_version(runtime)] = diff = _difference(window, generator, shape)
            _update_record(graph, record)
        if not diff <= TOLERANCE:
            raise _differs(graph, runtime, diff, cached=True)
        break
    if window is None:
        target = next((folder for folder in folders if _writable(folder)), None)
        if target is None:
            raise UserError(f"{folders[-1]}: cannot write the ONNX cache there (nor beside the checkpoint); set "
                            "XDG_CACHE_HOME to a writable folder or use --runtime torch")
        window = export_window(module, target / name, key, shape, runtime)
    memo[slot] = (fingerprint, window)
    return window


def onnx_window(module: Any, size: int | tuple[int, int], checkpoint: str | Path | None = None) -> GraphWindow:
    """`graph_window` under ONNX Runtime."""
    return graph_window(module, size, "onnxruntime", checkpoint)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@torch.inference_mode()
def _seconds_per_window(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    fn(x)  # warm-up: the first call plans its kernels
    times = []
    for _ in range(TIMED_WINDOWS):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return min(times)  # the least disturbed by other load


def _machine() -> str:
    return f"{cpu_name()}, {runtime_threads()} threads"


def _known_choice(module: Any, h: int, w: int, checkpoint: str | Path | None) -> tuple[str, dict, Path] | None:
    """auto's earlier timing of this graph on this machine, from the record alone (no graph loaded):
    (fastest name, speeds of the candidates, record) when every installed runtime has been checked and
    every candidate (torch and the runtimes that passed) timed; else None."""
    key = cache_key(module, _digest(module.generator))
    for folder in cache_folders(checkpoint, key):
        path = folder / f"{h}x{w}.json"
        record = _read_record(path)
        if record is None or record.get("key") != key or not (folder / f"{h}x{w}.onnx").is_file():
            continue
        checks = record.get("max_abs_diff_vs_torch", {})
        versions = [runtime_version(r) for r in installed_runtimes()]
        if any(not isinstance(checks.get(v), (int, float)) for v in versions):
            return None
        speeds = record.get("seconds_per_window", {}).get(_machine(), {})
        names = [f"torch {torch.__version__}", *(v for v in versions if checks[v] <= TOLERANCE)]
        if not all(isinstance(speeds.get(n), (int, float)) for n in names):
            return None
        best = min(names, key=lambda n: speeds[n])
        return best, {n: speeds[n] for n in names}, path
    return None


def _say_choice(best: str, speeds: dict, h: int, w: int, record: Path) -> None:
    others = ", ".join(f"{name.split(' ')[0]} {seconds:.3g} s" for name, seconds in speeds.items() if name != best)
    log.info("--runtime auto: %s, %.3g s a window at %d x %d against %s (timed once on this machine; kept in %s)",
             best.split(" ")[0], speeds[best], h, w, others, record)


def fastest_window(module: Any, size: int | tuple[int, int], checkpoint: str | Path | None = None
                   ) -> GraphWindow | None:
    """`auto`'s choice: the fastest of PyTorch (None) and the installed graph runtimes that pass their
    check, each timed once per graph and machine on the check input (kept in the graph's record; a
    later process opens only the fastest). Says which in one line."""
    h, w = _sides(module, size)
    memo = _SESSIONS.setdefault(module.generator, {})
    slot = ("auto", h, w, runtime_threads(), str(checkpoint))
    fingerprint = _fingerprint(module.generator)
    if slot in memo and memo[slot][0] == fingerprint:
        return memo[slot][1]
    chosen = None
    if (known := _known_choice(module, h, w, checkpoint)) is not None:
        best, speeds, record_path = known
        try:
            chosen = None if best.startswith("torch ") else graph_window(module, size, best.split(" ")[0], checkpoint)
        except UserError:  # the graph changed under the record: decide afresh below
            known = None
        else:
            _say_choice(best, speeds, h, w, record_path)
    if known is None:
        windows = {}
        for runtime in installed_runtimes():
            try:
                windows[runtime] = graph_window(module, size, runtime, checkpoint)
            except UserError as err:
                log.warning("--runtime auto: leaving %s out: %s", runtime, err)
        if not windows:
            log.warning("falling back to PyTorch: no graph runtime could run this generator")
        else:
            graph = next(iter(windows.values())).path
            record = _read_record(graph.with_suffix(".json")) or {}
            speeds = record.setdefault("seconds_per_window", {}).setdefault(_machine(), {})
            runners = {f"torch {torch.__version__}": module.generator,
                       **{runtime_version(r): window for r, window in windows.items()}}
            if missing := [name for name in runners if name not in speeds]:
                x = check_inputs(next(iter(windows.values())).shape)[1]
                for name in missing:
                    speeds[name] = round(_seconds_per_window(runners[name], x), 4)
                _update_record(graph, record)
            best = min(runners, key=lambda name: speeds[name])
            chosen = None if best.startswith("torch ") else windows[best.split(" ")[0]]
            _say_choice(best, {name: speeds[name] for name in runners}, h, w, graph.with_suffix(".json"))
    memo[slot] = (fingerprint, chosen)
    return chosen


def window_function(module: Any, size: int | tuple[int, int], runtime: str, checkpoint: str | Path | None = None,
                    bf16: bool = False) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The graph runtime's window for `runtime` on `module`'s device, or None where PyTorch runs it
    (`auto`: `fastest_window`)."""
    resolved = resolve_runtime(runtime, module.device, bf16)
    if resolved == "torch":
        return None
    if checkpoint is None and getattr(module, "source", ""):
        checkpoint = module.source
    if resolved == "auto":
        return fastest_window(module, size, checkpoint)
    return graph_window(module, size, resolved, checkpoint)
