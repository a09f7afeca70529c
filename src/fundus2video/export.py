"""A checkpoint's generator as one standalone file for other projects (`fundus2video export`).

TorchScript (`torch.jit.load`, needs torch only) or ONNX (any ONNX runtime; the optional extra
`fundus2video[export]`), or `--format hub`: a Hugging Face Hub folder (safetensors weights, config.json,
model card; `fundus2video.hub`) that `generate --ckpt` and `fundus2video.load_generator` read back,
optionally pushed with `--push`. Two things can be exported as one file: one autoregressive window of the generator,
(B, 3 + K, H, W) -> (B, K, H, W), for callers that run their own rollout; or the whole rollout
for a fixed number of frames T, CF (B, 3, H, W) -> video (B, T, 1, H, W), the same video as
`fundus2video generate`. Every export is reloaded from disk and checked against the eager
generator before it is renamed into place, and a JSON sidecar `<out>.json` says how to call it.
The ONNX writer is `fundus2video.onnx_runtime`'s, which `generate --runtime onnxruntime` also uses.

Torch is imported inside the functions so that `fundus2video --help`, whose export parser imports
`FORMATS` from here, stays fast.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fundus2video.errors import UserError
from fundus2video.limits import MAX_FRAMES, MAX_SIZE

if TYPE_CHECKING:
    import torch

FORMATS = ("torchscript", "onnx", "hub")  # hub: a folder for the Hugging Face Hub (fundus2video.hub)
TOLERANCE = 1e-4  # largest |exported - eager| accepted on the check input (of one window)
# A video's later frames are generated from its earlier ones, which amplifies float32 rounding frame
# after frame: two float32 implementations of the same rollout part by more than TOLERANCE within a
# dozen frames, and neither is the more right. So a video export is checked against the rollout in
# float64, and passes when it is no further from it than VIDEO_SLACK times the eager float32 rollout
# is (and always when within TOLERANCE).
VIDEO_SLACK = 4.0
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")
CHECK_BATCH = 2  # the check runs another batch size than the export's example (1): batch is dynamic
ONNX_MISSING = "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'fundus2video[export]'"


@dataclass
class ExportResult:
    """What `export_generator` wrote."""

    path: Path  # the exported file
    sidecar: Path  # <path>.json, its description
    max_abs_diff: float  # largest |exported - eager| on the check input
    float64_check: dict | None = None  # a video's: how far the export and the eager rollout are from float64


def video_generator(generator: torch.nn.Module, window: int, n_frames: int) -> torch.nn.Module:
    """The rollout of T frames as a module: forward(cf (B, 3, H, W)) -> (B, T, 1, H, W), in [-1, 1].

    T is fixed, so the window loop unrolls into T generator calls when traced or exported.
    """
    import torch

    from fundus2video.rollout import rollout

    class VideoGenerator(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.generator = generator

        def forward(self, cf: torch.Tensor) -> torch.Tensor:
            return rollout(self.generator, cf, n_frames, window)

    return VideoGenerator().eval()


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError(ONNX_MISSING) from None


def _save_torchscript(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    import torch

    with warnings.catch_warnings():
        # shape checks inside InstanceNorm become constants (harmless: the check below runs another
        # batch size), and torch 2.13 marks TorchScript deprecated while still saving and loading it
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
        traced = torch.jit.trace(net, example, check_trace=False)
    # serialised in memory, then written by Python: torch.jit.save to a file that fills the disk aborts
    # the process in C++ (no exception to catch, the temporary file left behind)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    path.write_bytes(buffer.getvalue())


def _run_torchscript(path: Path, x: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.jit.load(str(path), map_location="cpu")(x)


def _describe(fmt: str, ckpt: Path, window: int, size: int, frames: int | None, names: tuple[str, str],
              diff: float, file: str) -> dict:
    """The sidecar: what goes in, what comes out, how to call it, where it came from."""
    import torch

    import fundus2video

    cf = {"channels": "0-2: the colour fundus photo, RGB, cropped to its field of view and resized to size x size "
                      "(as fundus2video.inference.prepare_photo does)"}
    if frames is None:
        inp = {"name": names[0], "shape": ["B", 3 + window, size, size], **cf}
        inp["channels"] += f"; 3-{2 + window}: the K = {window} previous frames (first window: CF channels cycled)"
        out = {"name": names[1], "shape": ["B", window, size, size],
               "channels": f"the next K = {window} FFA frames (grey)"}
        rollout = (f"window n = 0 .. T-1 predicts frames n .. n+{window - 1} (clamped at T-1) from the CF and the "
                   "previous window's output; each frame is the mean of every window that predicted it, clamped "
                   "duplicates not counted (fundus2video.rollout.rollout)")
    else:
        inp = {"name": names[0], "shape": ["B", 3, size, size], **cf}
        out = {"name": names[1], "shape": ["B", frames, 1, size, size], "channels": f"T = {frames} FFA frames (grey)"}
        rollout = "included: the file runs every window"
    call = {"torchscript": f"torch.jit.load('{file}')(x)",
            "onnx": f"onnxruntime.InferenceSession('{file}').run(None, {{'{names[0]}': x}})[0]"}[fmt]
    return {
        "file": file, "format": fmt, "kind": "window" if frames is None else "video",
        "input": inp, "output": out, "dtype": "float32", "value_range": [-1.0, 1.0],
        "batch": "any", "size": size, "window": window, "frames": frames,
        "rollout": rollout, "call": call, "max_abs_diff_vs_eager": diff, "checkpoint": str(ckpt.resolve()),
        "fundus2video_version": fundus2video.__version__, "torch_version": torch.__version__,
    }


def export_hub(ckpt: str | Path, out: str | Path, overwrite: bool = False, push: str | None = None,
               private: bool = False, license: str = "mit") -> ExportResult:
    """The Hub folder of checkpoint `ckpt` (a .ckpt, a Hub folder, a URL, hf://) at `out`
    (`fundus2video.hub.save_hub`), uploaded to the Hub repository `push` if given. The model card
    describes the run the checkpoint was saved in (<run dir>/checkpoints/<name>.ckpt)."""
    from fundus2video import hub
    from fundus2video.hub import load_module

    if push is not None:
        hub.hf_module()  # a missing extra is answered before any work
        hub.check_repo_id(push)
    elif private:
        raise UserError("--private applies to the repository --push creates; give --push REPO_ID, or leave --private")
    local = hub.local_path(ckpt)
    module = load_module(local)
    run_dir = local.parent.parent if local.is_file() and local.parent.name == "checkpoints" else None
    inputs = (local, *([run_dir] if run_dir else []))  # never written over, whatever --overwrite says
    path = hub.save_hub(module, out, run_dir, overwrite=overwrite, license=license, repo_id=push, inputs=inputs)
    if push is not None:
        hub.push(path, push, private)
    return ExportResult(path, path / hub.CONFIG, 0.0)  # save_hub compared the weights exactly


def export_generator(ckpt: str | Path, out: str | Path, format: str = "torchscript", size: int | None = None,
                     frames: int | None = None, overwrite: bool = False, push: str | None = None,
                     private: bool = False, license: str = "mit") -> ExportResult:
    """Export the generator of checkpoint `ckpt` to `out` (and its description to `<out>.json`).

    frames=None exports one window, (B, 3 + K, H, W) -> (B, K, H, W); frames=T the rollout of T
    frames, (B, 3, H, W) -> (B, T, 1, H, W). H = W = `size` (default: the checkpoint's data.size);
    any batch size. Raises UserError for bad arguments, and when the reloaded file does not
    reproduce the eager generator within TOLERANCE (a video: as closely as the eager float32 rollout,
    see VIDEO_SLACK; then nothing is written).
    format="hub" writes a folder instead (`export_hub`; `overwrite`, `push`, `private`, `license`).
    """
    if format not in FORMATS:
        raise UserError(f"format '{format}' is not one of {', '.join(FORMATS)}")
    if format == "hub":
        if size is not None or frames is not None:
            raise UserError("--size and --frames do not apply to --format hub (the folder runs any size and T)")
        return export_hub(ckpt, out, overwrite, push, private, license)
    if push is not None or private:
        raise UserError(f"{'--push' if push is not None else '--private'} needs --format hub")
    if not str(out):
        raise UserError("--out: empty (expected a .pt file, or .onnx with --format onnx)")
    if frames is not None and not 1 <= frames <= MAX_FRAMES:  # the traced graph holds every window
        raise UserError(f"--frames {frames}: expected 1 to {MAX_FRAMES}")
    if format == "onnx":
        _require_onnx()
    ckpt, out = Path(ckpt), Path(out)
    if not ckpt.is_file():  # checked before the slow imports: a mistyped path is answered at once
        raise UserError(f"checkpoint not found: {ckpt}")
    from fundus2video.io import refuse_input_as_output, refuse_special

    refuse_input_as_output("--out", [out, f"{out}.json"], [ckpt])
    suffix = Path(out).suffix.lower()
    if (format == "onnx") != (suffix == ".onnx") or (format == "torchscript" and suffix not in TORCHSCRIPT_SUFFIXES):
        # the file's name says what reads it
        raise UserError(f"--out {out}: --format {format} writes " + ("a .onnx file" if format == "onnx" else
                        "a TorchScript file (.pt, .pth or .ts); for .onnx give --format onnx"))
    for path in (out, Path(f"{out}.json")):
        refuse_special(path)
    if not overwrite and (out.exists() or Path(f"{out}.json").exists()):
        raise UserError(f"--out {out}: exists (--overwrite replaces it and its .json, or choose another --out)")
    import torch

    from fundus2video.hub import load_module
    from fundus2video.io import atomic_path

    module = load_module(ckpt)  # weights_only: exporting a checkpoint from elsewhere runs none of its code
    cfg = module.cfg
    window, g = cfg.model.window, cfg.model.generator
    multiple = 2 ** (g.n_downsample + (g.netg == "local"))  # the local enhancer halves the input first
    size = cfg.data.size if size is None else size
    if size < multiple or size % multiple or size > MAX_SIZE:
        raise UserError(f"--size {size}: expected a multiple of {multiple} (this generator's) from {multiple} to "
                        f"{MAX_SIZE}")
    net = module.generator if frames is None else video_generator(module.generator, window, frames)
    channels, names = (3 + window, ("x", "frames")) if frames is None else (3, ("cf", "video"))
    rng = torch.Generator().manual_seed(0)
    example, check = (torch.rand(n, channels, size, size, generator=rng) * 2 - 1 for n in (1, CHECK_BATCH))
    with torch.no_grad(), atomic_path(out) as tmp:
        if format == "torchscript":
            _save_torchscript(net, example, tmp)
            got = _run_torchscript(tmp, check)
        else:
            from fundus2video.onnx_runtime import run_onnx, save_onnx

            save_onnx(net, example, tmp, names)  # any batch size: callers run their own batches
            got = run_onnx(tmp, check)
        expected = net(check)
        if got.shape != expected.shape:
            raise UserError(f"{out}: export check failed: the exported {format} gives {tuple(got.shape)}, the "
                            f"eager generator {tuple(expected.shape)}; nothing was written")
        diff = (got - expected).abs().max().item()
        exact = None if frames is None or diff <= TOLERANCE else _float64_check(net, check, got, expected)
        if exact is not None and not exact["exported"] <= max(TOLERANCE, VIDEO_SLACK * exact["eager_float32"]):
            raise UserError(f"{out}: export check failed: the exported {format}'s {frames}-frame video is "
                            f"{exact['exported']:.3g} from the float64 rollout, more than {VIDEO_SLACK:g} times the "
                            f"eager float32 rollout's {exact['eager_float32']:.3g}; nothing was written")
        if exact is None and not diff <= TOLERANCE:  # also catches NaN
            raise UserError(f"{out}: export check failed: the exported {format} differs from the eager generator "
                            f"by up to {diff:.3g} (> {TOLERANCE}); nothing was written")
    sidecar = Path(f"{out}.json")
    with atomic_path(sidecar) as tmp:
        description = _describe(format, ckpt, window, size, frames, names, diff, out.name)
        if exact is not None:
            description["max_abs_diff_vs_float64"] = exact
        tmp.write_text(json.dumps(description, indent=2) + "\n")
    return ExportResult(out, sidecar, diff, exact)


def _float64_check(net: torch.nn.Module, check: torch.Tensor, got: torch.Tensor, expected: torch.Tensor) -> dict:
    """How far the exported and the eager float32 videos are from the same rollout in float64."""
    import copy

    exact = copy.deepcopy(net).double()(check.double())
    return {name: (video.double() - exact).abs().max().item()
            for name, video in (("exported", got), ("eager_float32", expected))}
