"""Generation through ONNX Runtime: the generator's window as an ONNX graph, exported once and cached.

On CPUs ONNX Runtime runs the generator's window markedly faster than PyTorch's eager kernels
(benchmarks/inference.py measures both in one run). Only the window goes through it:
(1, 3 + K, H, W) -> (1, K, H, W). The rollout loop stays `fundus2video.rollout.rollout`, given
`OnnxWindow` as its generator, so the schedule and the window averaging are the PyTorch path's.

The graph has fixed shapes, batch 1: with a dynamic batch dimension ONNX Runtime's CPU kernels run
about half as fast, and the instance norm works per sample, so a batch runs sample by sample with
the same frames. One graph per (weights, H x W), float32, in `<H>x<W>.onnx` with a record
`<H>x<W>.json` (what the graph was exported from, its SHA-256, the check's difference) in:
  `<checkpoint>.onnx-cache/` beside the checkpoint file or Hub folder, when its folder is writable;
  else `$XDG_CACHE_HOME/fundus2video/onnx/<key>/` (default `~/.cache/fundus2video/onnx/<key>/`).
The key is the SHA-256 of the generator's weights, its architecture, the window K and the versions
of fundus2video, torch and onnxscript (which write the graph): a retrained checkpoint at the same
path gets a new graph. A freshly exported graph is checked against the PyTorch generator on a random
input before it is renamed into place (|ORT - torch| <= TOLERANCE); a cached one is used when its
SHA-256 matches its record, else exported again (a corrupted or half-copied file is rebuilt).

`runtime="onnxruntime"` fails in one line (UserError) when the graph cannot be exported or
differs from PyTorch; `runtime="auto"` then warns and falls back to PyTorch. Sessions are kept per
generator for the life of the process and refreshed when its weights change in place.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import sys
import time
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fundus2video.errors import UserError

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime")
TOLERANCE = 1e-4  # largest |ONNX Runtime - PyTorch| accepted on the check input
EXTRA = ("onnx", "onnxscript", "onnxruntime")  # the [export] extra: the exporter writes with onnx and onnxscript
RUNTIME_MISSING = ("--runtime onnxruntime needs onnx, onnxscript and onnxruntime, which are not installed: "
                   "pip install 'fundus2video[export]' (or use --runtime torch)")
CACHE_FORMAT = 1  # of the cache's records; another one is exported again
SUFFIX = ".onnx-cache"


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


def onnx_available() -> bool:
    """Whether the [export] extra (onnx, onnxscript, onnxruntime) is installed."""
    return all(_installed(name) for name in EXTRA)


def resolve_runtime(runtime: str, device: str | torch.device, bf16: bool = False) -> str:
    """'torch' or 'onnxruntime' for `runtime` ('auto', 'torch' or 'onnxruntime') on `device`.

    auto: onnxruntime on the CPU in float32 when the [export] extra is installed, else torch.
    onnxruntime on a GPU, with bf16 or without the extra: UserError, one line."""
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime {runtime}: expected one of {', '.join(RUNTIMES)}")
    on_cpu = (device.type if isinstance(device, torch.device) else str(device).split(":")[0]) == "cpu"
    if runtime == "auto":
        return "onnxruntime" if on_cpu and not bf16 and onnx_available() else "torch"
    if runtime == "onnxruntime":
        if not on_cpu:  # the CUDA execution provider is a separate package; on a GPU, PyTorch is the fast path
            raise UserError(f"--runtime onnxruntime runs on the CPU, found --device {device}; use --runtime torch "
                            "on a GPU")
        if bf16:
            raise UserError("--runtime onnxruntime runs in float32, found --bf16; use --runtime torch for "
                            "bfloat16 autocast")
        if not onnx_available():
            raise UserError(RUNTIME_MISSING)
    return runtime


# ---------------------------------------------------------------------------- writing and running a graph
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


def session_options() -> onnxruntime.SessionOptions:
    """Every graph optimization, on as many threads as PyTorch uses (both paths get the same cores)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1  # the graph is one chain of convolutions: nothing to run side by side
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings about unused initializers mean nothing here
    return options


def open_session(model: str | Path | bytes) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session of a graph file (or its bytes)."""
    import onnxruntime

    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, session_options(), providers=["CPUExecutionProvider"])


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    """The graph at `path` on `x` (CPU, default session settings)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


class OnnxWindow:
    """One generator window through an ONNX Runtime session, for `rollout`: (B, 3 + K, H, W) ->
    (B, K, H, W), float32 on the CPU. The graph has batch 1; a batch runs sample by sample."""

    def __init__(self, session: onnxruntime.InferenceSession, path: Path, shape: tuple[int, int, int]):
        self.session = session
        self.path = path  # the cached graph
        self.shape = shape  # (3 + K, H, W) of one sample
        self._input = session.get_inputs()[0].name
        self._output = session.get_outputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"{self.path}: the graph takes (B, {', '.join(map(str, self.shape))}), "
                             f"got {tuple(x.shape)}")
        x = x.detach().to("cpu", torch.float32).contiguous()
        outs = [self.session.run([self._output], {self._input: x[i:i + 1].numpy()})[0] for i in range(len(x))]
        return torch.from_numpy(outs[0] if len(outs) == 1 else np.concatenate(outs))


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


def _load_cached(graph: Path, key: dict, shape: tuple[int, int, int]) -> OnnxWindow | None:
    """The cached graph when its record matches `key` and its bytes their SHA-256, else None (a
    stale graph silently, a corrupted one with a warning)."""
    record = _read_record(graph.with_suffix(".json"))
    if not graph.is_file() or record is None or record.get("key") != key:
        return None
    data = graph.read_bytes()
    if hashlib.sha256(data).hexdigest() != record.get("sha256"):
        log.warning("%s: the cached ONNX graph does not match its record (corrupted?); exporting it again", graph)
        return None
    try:
        session = open_session(data)
    except Exception as err:  # noqa: BLE001  (onnxruntime raises its own types for a graph it cannot load)
        log.warning("%s: ONNX Runtime cannot load the cached graph (%s); exporting it again", graph, _gist(err))
        return None
    return OnnxWindow(session, graph, shape)


def _gist(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def export_window(module: Any, graph: Path, key: dict, shape: tuple[int, int, int]) -> OnnxWindow:
    """Export `module`'s generator window at `shape` to `graph` (atomically, with its record), after
    checking the graph against the PyTorch generator on a random input. UserError naming the file
    when the export fails or the check does not pass (then nothing is written)."""
    from fundus2video.io import atomic_path

    generator = module.generator
    training = generator.training
    rng = torch.Generator().manual_seed(0)
    example, check = (torch.rand(1, *shape, generator=rng) * 2 - 1 for _ in range(2))
    start = time.perf_counter()
    log.info("exporting the generator to ONNX for %d x %d (once; cached in %s)", shape[1], shape[2], graph.parent)
    generator.eval()
    try:
        with torch.no_grad(), atomic_path(graph) as tmp:
            try:
                save_onnx(generator, example, tmp, ("x", "frames"), dynamic_batch=False)
                window = OnnxWindow(open_session(tmp), graph, shape)
            except Exception as err:  # noqa: BLE001  (the exporter raises many types; the gist is enough)
                raise UserError(f"{graph}: exporting the generator to ONNX failed ({_gist(err)}); use "
                                "--runtime torch") from None
            diff = (window(check) - generator(check)).abs().max().item()
            if not diff <= TOLERANCE:  # also catches NaN
                raise UserError(f"{graph}: the exported ONNX graph differs from the PyTorch generator by up to "
                                f"{diff:.3g} (> {TOLERANCE}); nothing was cached; use --runtime torch")
            sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    finally:
        generator.train(training)
    record = {"key": key, "sha256": sha, "bytes": graph.stat().st_size, "input": [1, *shape],
              "max_abs_diff_vs_torch": diff, "export_seconds": round(time.perf_counter() - start, 2)}
    with atomic_path(graph.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    log.info("exported %s in %.0f s (max |onnxruntime - torch| = %.2g)", graph, record["export_seconds"], diff)
    return window


# sessions per generator module, kept while the module lives: (H, W, threads, checkpoint) -> (fingerprint, window)
_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(generator: torch.nn.Module) -> tuple:
    """Changes when a weight is replaced or changed in place (its storage or version counter), cheaply:
    the SHA-256 of 180 M weights takes a second. Tensors made under torch.inference_mode have no
    version counter: their storage alone."""
    return tuple((t.data_ptr(), None if t.is_inference() else t._version)
                 for t in (*generator.parameters(), *generator.buffers()))


def onnx_window(module: Any, size: int | tuple[int, int], checkpoint: str | Path | None = None) -> OnnxWindow:
    """The ONNX Runtime window of `module`'s generator (a Fundus2VideoModule or hub.LoadedGenerator)
    at `size` (S or (H, W)), from the process's sessions, the cache, or a fresh export.
    `checkpoint`: the .ckpt or Hub folder `module` was loaded from, to cache beside it (default: a
    LoadedGenerator's source; else the user cache). UserError when it cannot be exported."""
    h, w = (size, size) if isinstance(size, int) else size
    g = module.cfg.model.generator
    multiple = 2 ** (g.n_downsample + (g.netg == "local"))
    if h % multiple or w % multiple:
        raise UserError(f"{h} x {w}: this generator needs sides that are multiples of {multiple}")
    if checkpoint is None and getattr(module, "source", ""):
        checkpoint = module.source
    generator = module.generator
    memo = _SESSIONS.setdefault(generator, {})
    slot = (h, w, torch.get_num_threads(), str(checkpoint))
    fingerprint = _fingerprint(generator)
    if slot in memo and memo[slot][0] == fingerprint:
        return memo[slot][1]
    shape = (3 + module.cfg.model.window, h, w)
    key = cache_key(module, weights_digest(generator))
    folders = cache_folders(checkpoint, key)
    name = f"{h}x{w}.onnx"
    window = next((found for folder in folders if (found := _load_cached(folder / name, key, shape))), None)
    if window is None:
        target = next((folder for folder in folders if _writable(folder)), None)
        if target is None:
            raise UserError(f"{folders[-1]}: cannot write the ONNX cache there (nor beside the checkpoint); set "
                            "XDG_CACHE_HOME to a writable folder or use --runtime torch")
        window = export_window(module, target / name, key, shape)
    memo[slot] = (fingerprint, window)
    return window


def window_function(module: Any, size: int | tuple[int, int], runtime: str, checkpoint: str | Path | None = None,
                    bf16: bool = False) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The ONNX Runtime window for `runtime` on `module`'s device, or None where PyTorch runs it.
    With 'auto', a graph that cannot be exported or fails its check warns and gives None."""
    if resolve_runtime(runtime, module.device, bf16) != "onnxruntime":
        return None
    try:
        return onnx_window(module, size, checkpoint)
    except UserError as err:
        if runtime != "auto":
            raise
        log.warning("falling back to PyTorch: %s", err)
        return None
