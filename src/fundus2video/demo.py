"""The demo (`fundus2video demo`): a browser page, colour fundus photo in, angiography video out (Gradio).

The page takes a photo and a number of frames and shows the generated FFA video, the side-by-side
CF | FFA video, a PNG strip of the frames, the field of view found and, for generators with KBA
attention heads, their attention over the photo. The work is `fundus2video.inference`'s
(`prepare_photo`, `rollout_photos`, `write_outputs`); a photo it cannot use gets its message in the
page. One generation runs at a time (a queue), on the GPU when there is one; on the CPU through the
fastest installed graph runtime (`--runtime`, `fundus2video.onnx_runtime`: the graph is exported, or
loaded from its cache, and `auto`'s choice made when the page is built, so that the first request is
not kept waiting).

Fully offline: analytics off, and gradio 6 serves its page, scripts and the theme's fonts itself
(`LocalFont`, no Google Fonts); tests/test_demo.py checks in a real browser that the page requests
nothing from another host. Gradio is the optional `[demo]` extra, imported inside the functions so
that the package and its other commands work without it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fundus2video.errors import UserError

if TYPE_CHECKING:
    import gradio as gr
    import numpy as np
    import torch

    from fundus2video.module import Fundus2VideoModule

MAX_FRAMES = 64  # the slider's end: longer rollouts drift and cost memory for little to see
MAX_QUEUE = 8  # requests waiting beyond this are refused (the page says the queue is full)
KEEP_RUNS = 8  # request folders kept on disk (gradio serves copies of the files from its cache)
DISPLAY_SIDE = 512  # the field-of-view picture shows large photos scaled down to this longest side
MIN_DISPLAY_SIDE = 256  # and small ones enlarged (nearest pixel) to at least this one
MAX_UPLOAD = "25mb"
# a colour fundus photo is orange-red inside its field of view (the phantom's and real photos' mean R
# is >= 2 x G and >= 4 x B); white, grey, noise and most non-fundus pictures are not
INSTALL_HINT = "the demo needs gradio: pip install 'fundus2video[demo]'"


def gradio_module():
    """gradio, imported with its analytics off (read from the environment at every call)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio as gr
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return gr


@dataclass
class DemoResult:
    """One generation's files (None where the page shows nothing) and the message for the page."""

    video: Path | None
    side_by_side: Path | None
    strip: Path | None
    fov: Path | None
    attention: Path | None
    message: str


def check_fundus_like(rgb: np.ndarray) -> None:
    """The data's own check of a colour fundus photo (uniform, not orange-red), with the message
    shown in the page."""
    from fundus2video.data_modules.cases import check_fundus_photo

    check_fundus_photo(rgb, "the photo")


def fov_picture(rgb: np.ndarray, prepared: torch.Tensor) -> np.ndarray:
    """The photo (scaled to a longest side between MIN_DISPLAY_SIDE and DISPLAY_SIDE) with the field of
    view outlined and its crop box, beside the generator's input: the page's "field of view found".
    rgb (H, W, 3) uint8."""
    import cv2
    import numpy as np
    import torch

    from fundus2video.knowledge import fov_mask, roi_box
    from fundus2video.visuals import label_band, mask_overlay, to_uint8

    roi = fov_mask(rgb)
    y0, y1, x0, x1 = roi_box(roi)
    h, w = rgb.shape[:2]
    # lines are drawn at the display's size, so they stay one pixel wide whatever the photo's
    scale = DISPLAY_SIDE / max(h, w) if max(h, w) > DISPLAY_SIDE else float(-(-MIN_DISPLAY_SIDE // max(h, w)))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
    small_roi = cv2.resize(roi.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    photo = torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1).float() / 127.5 - 1
    # no knowledge mask at inference (it needs the real frames): only mask_overlay's cyan outline
    img = mask_overlay(photo, torch.zeros(1, *small.shape[:2]), torch.from_numpy(small_roi))
    cv2.rectangle(img, (int(x0 * scale), int(y0 * scale)), (int((x1 - 1) * scale), int((y1 - 1) * scale)),
                  (255, 200, 0), 1)
    side = img.shape[0]
    crop = cv2.resize(to_uint8(prepared), (side, side), interpolation=cv2.INTER_NEAREST)
    return np.hstack([np.vstack([label_band(img.shape[1], ["field of view (cyan), crop (amber)"]), img]),
                      np.vstack([label_band(side, ["generator input"]), crop])])


def attention_picture(module: Fundus2VideoModule, cf: torch.Tensor) -> tuple[np.ndarray, list[str]] | None:
    """The KBA heads' attention over the prepared photo cf (3, S, S), or None without heads.

    The rollout's first window sees the CF alone (its "previous frames" are the CF's channels), so its
    attention is where the generator looks from the photo; several stages are averaged, each resized
    to S x S. Returns (generator input | heat map over it | heat map, with labels) and the stages."""
    import cv2
    import numpy as np
    import torch
    from torch.nn import functional as F

    from fundus2video.rollout import cf_as_frames
    from fundus2video.visuals import enlarge, label_band, to_uint8

    x = cf[None].to(module.device)
    with torch.inference_mode():
        _, logits = module.generator(torch.cat([x, cf_as_frames(x, module.cfg.model.window)], dim=1),
                                     return_attention=True)
    if not logits:
        return None
    maps = [F.interpolate(torch.sigmoid(v.float()), size=cf.shape[-2:], mode="bilinear", align_corners=False)
            for v in logits.values()]
    att = torch.stack(maps).mean(0)[0, 0].cpu().numpy()
    heat = cv2.applyColorMap((att * 255).round().astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    base = to_uint8(cf)
    over = (0.5 * base.astype(np.float32) + 0.5 * heat).round().astype(np.uint8)
    row = np.hstack([enlarge(base), enlarge(over), enlarge(np.ascontiguousarray(heat))])
    labels = ["generator input", "attention over it", "attention, 0..1"]
    return np.vstack([label_band(row.shape[1], labels), row]), list(logits)


class DemoModel:
    """A loaded checkpoint and the demo's one operation: a photo file -> `DemoResult`.

    Outputs go to a folder of their own per request under `work_dir` (the system's temp folder by
    default, which gradio is allowed to serve); only the newest KEEP_RUNS folders are kept."""

    def __init__(self, ckpt: str | Path, device: str | None = None, bf16: bool = False,
                 work_dir: str | Path | None = None, runtime: str = "auto"):
        from fundus2video import hub
        from fundus2video.devices import default_device
        from fundus2video.hub import load_module
        from fundus2video.onnx_runtime import resolve_runtime, window_function

        self.ckpt = ckpt  # as given: load_module also takes Hub folders and URLs
        self.device = device or default_device()
        resolve_runtime(runtime, self.device, bf16)  # an impossible choice is refused before the checkpoint loads
        local = hub.local_path(ckpt)
        self.module = load_module(local, self.device)
        self.bf16 = bf16
        # as `generate`: the graph beside the checkpoint, a Hub snapshot's in the user cache
        self.checkpoint = None if str(ckpt).startswith("hf://") else local
        found = window_function(self.module, self.size, runtime, self.checkpoint, bf16)
        self.runtime = found.runtime if found is not None else "torch"  # auto's choice, after any fallback
        self._own_dir = work_dir is None  # the temp folder made here is removed by close(); a given one is kept
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="fundus2video-demo-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.has_attention = len(getattr(self.module.cfg.model.generator, "kba_stages", None) or ()) > 0

    def close(self) -> None:
        """Remove the outputs' temp folder, if this object made it."""
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    @property
    def size(self) -> int:
        return int(self.module.cfg.data.size)

    @property
    def train_frames(self) -> int:
        return int(self.module.cfg.data.n_frames)

    def _request_dir(self) -> Path:
        runs = sorted((p for p in self.work_dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for old in runs[:max(0, len(runs) - KEEP_RUNS + 1)]:
            shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix="run-", dir=self.work_dir))

    def run(self, photo: str | Path | None, n_frames: int, fps: int = 4) -> DemoResult:
        """Generate; a photo that cannot be used (or settings out of range) gives a result with no files
        and the reason, for the page."""
        import torch

        def nothing(message: str) -> DemoResult:
            return DemoResult(None, None, None, None, None, message)

        if photo is None:
            return nothing("**Nothing generated:** upload a colour fundus photo first.")
        try:
            n_frames, fps = _whole(n_frames, "frames", 1, MAX_FRAMES), _whole(fps, "frames per second", 1, 60)
        except UserError as err:  # the page's sliders keep to the range; the API may not
            return nothing(f"**Nothing generated:** {err}")
        try:
            return self._run(Path(photo), n_frames, fps)
        except UserError as err:  # the server's path of the upload means nothing to the user: its name will do
            reason = str(err).replace(f"{photo}: ", "").replace(str(photo), Path(photo).name)
            return nothing(f"**This photo cannot be used:** {reason}")
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return nothing(f"**Nothing generated:** out of GPU memory for {n_frames} frames; try fewer.")

    def _run(self, photo: Path, n_frames: int, fps: int) -> DemoResult:
        from fundus2video.data_modules.cases import read_cf, read_image
        from fundus2video.inference import prepare_photo, rollout_photos, write_outputs
        from fundus2video.video_io import write_png
        from fundus2video.visuals import enlarge

        start = time.perf_counter()
        cf = prepare_photo(photo, self.size)  # unreadable, too small, no field of view: its own message
        rgb = read_cf(photo)
        check_fundus_like(rgb)
        frames = rollout_photos(self.module, cf[None], n_frames, self.bf16, self.runtime, self.checkpoint)[0]
        out = self._request_dir()
        video, strip, sbs = write_outputs(frames, cf, out / "ffa.mp4", ("mp4",), fps, strip=True,
                                          side_by_side=True)
        # small checkpoints' frames enlarged (nearest pixel) as the side-by-side video's are: the page shows
        # pictures at their own size
        strip_img = read_image(strip)
        if (big := enlarge(strip_img)).shape != strip_img.shape:
            write_png(strip, big)
        fov = write_png(out / "field_of_view.png", fov_picture(rgb, cf))
        attention, stages = None, []
        found = attention_picture(self.module, cf)
        if found is not None:
            picture, stages = found
            attention = write_png(out / "attention.png", picture)
        seconds = time.perf_counter() - start
        note = (f"KBA attention: {', '.join(stages)}" if stages
                else "this generator has no KBA attention heads (no attention map)")
        message = (f"Generated {n_frames} frames at {self.size} x {self.size} in {seconds:.1f} s on "
                   f"{self.device} with {self.runtime} ({note}).")
        return DemoResult(video, sbs, strip, fov, attention, message)


def _whole(value: Any, name: str, low: int, high: int) -> int:
    """A slider's value as a whole number in [low, high], or UserError saying which is out of range."""
    try:
        number = int(round(float(value)))
    except (TypeError, ValueError):
        raise UserError(f"{name}: expected a number, got {value!r}") from None
    if not low <= number <= high:
        raise UserError(f"{name} must be between {low} and {high}, got {number}")
    return number


def _photo_path(payload: Any) -> str | None:
    """The uploaded file's path from gr.Image's raw payload (a FileData dict), or a plain path."""
    if payload is None or isinstance(payload, str | Path):
        return payload
    return payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)


def offline_theme():
    """gradio's default look with bundled fonts only (LocalFont, then system fonts): no Google Fonts."""
    gr = gradio_module()
    local = gr.themes.LocalFont
    return gr.themes.Default(font=(local("Source Sans Pro"), "ui-sans-serif", "system-ui", "sans-serif"),
                             font_mono=(local("IBM Plex Mono"), "ui-monospace", "monospace"))


def launch_options() -> dict[str, Any]:
    """`Blocks.launch` settings of the demo (gradio 6 takes the theme at launch): `serve` uses them."""
    # footer: the API page and the settings, not the link to gradio.app (the page stays local)
    return {"theme": offline_theme(), "footer_links": ["api", "settings"], "max_file_size": MAX_UPLOAD,
            "show_error": False}


def build_app(ckpt: str | Path, device: str | None = None, bf16: bool = False,
              max_queue: int = MAX_QUEUE, runtime: str = "auto") -> gr.Blocks:
    """The page for checkpoint `ckpt` on `device` (default: cuda when available) with `runtime`
    (`DemoModel`), queued: one generation at a time, at most `max_queue` waiting. Launch it with
    `launch_options()`."""
    gr = gradio_module()
    model = DemoModel(ckpt, device, bf16, runtime=runtime)

    def generate(photo, n_frames, fps):
        result = model.run(_photo_path(photo), n_frames, fps)
        files = (result.video, result.side_by_side, result.strip, result.fov, result.attention)
        return (*(str(p) if p is not None else None for p in files), result.message)

    title = "fundus2video: fluorescein angiography from a colour fundus photo"
    with gr.Blocks(title="fundus2video demo", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(f"## {title}\n"
                    f"Checkpoint `{Path(str(model.ckpt)).name}` ({model.size} x {model.size} px, trained on "
                    f"{model.train_frames} frames), on {model.device} with {model.runtime}. Upload a colour fundus "
                    "photo, choose the number of frames and press *Generate*. Synthetic research output: not for "
                    "diagnosis.")
        with gr.Row():
            with gr.Column(scale=1):
                photo = gr.Image(label="colour fundus photo", type="filepath", sources=["upload", "clipboard"],
                                 image_mode=None, elem_id="photo")
                n_frames = gr.Slider(1, MAX_FRAMES, value=model.train_frames, step=1, label="frames",
                                     elem_id="frames")
                fps = gr.Slider(1, 12, value=4, step=1, label="frames per second")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=1):
                video = gr.Video(label="generated FFA", format="mp4", autoplay=True, loop=True, height=320,
                                 elem_id="ffa")
                sbs = gr.Video(label="CF | generated FFA", format="mp4", autoplay=True, loop=True, height=320,
                               elem_id="sbs")
        strip = gr.Image(label="frames: the prepared photo, then every generated frame (PNG)", format="png",
                         elem_id="strip")
        with gr.Row():  # these pictures carry their own labels (show_label=False: the badge would hide them)
            fov = gr.Image(label="field of view found", format="png", show_label=False, elem_id="fov")
            attention = gr.Image(label="KBA attention map", format="png", visible=model.has_attention,
                                 show_label=False, elem_id="attention")
        # preprocess=False: the upload reaches prepare_photo as a file, so an unreadable one gets its message
        # there instead of PIL's error inside gradio's own preprocessing
        button.click(generate, [photo, n_frames, fps], [video, sbs, strip, fov, attention, status],
                     api_name="generate", preprocess=False)
    demo.queue(default_concurrency_limit=1, max_size=max_queue)
    demo.model = model  # for callers and tests: the loaded checkpoint
    return demo


def serve(ckpt: str | Path, host: str = "127.0.0.1", port: int = 7860, device: str | None = None,
          bf16: bool = False, max_queue: int = MAX_QUEUE, block: bool = True, runtime: str = "auto") -> gr.Blocks:
    """Build the page and serve it at http://host:port/ (blocks until interrupted unless `block` is False)."""
    demo = build_app(ckpt, device, bf16, max_queue, runtime)
    print(f"fundus2video demo: {ckpt} on {demo.model.device} with {demo.model.runtime}; open http://{host}:{port}/ "
          "(Ctrl+C stops it)", flush=True)
    try:
        demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True,
                    **launch_options())
    except OSError as err:  # gradio's message for a taken port names it
        demo.model.close()
        raise UserError(f"cannot serve on {host}:{port}: {err}") from None
    except BaseException:  # Ctrl-C ends a blocking serve: the outputs' temp folder goes with it
        demo.model.close()
        raise
    if block:
        demo.model.close()
    return demo
