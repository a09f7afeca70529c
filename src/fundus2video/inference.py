"""Generation: an FFA video from a colour fundus photo, with a trained checkpoint.

The photo goes through training's preprocessing (field of view from the CF's green channel,
zero outside, crop to the ROI box, resize to the checkpoint's size), then the autoregressive
rollout with window averaging. Outputs: mp4 and/or gif, optionally a PNG strip of the frames
and a side-by-side video with the CF. Several photos can share one rollout (`batch`), and the
rollout can run under bfloat16 autocast (`bf16`), always under `torch.inference_mode`, and its
windows through ONNX Runtime or OpenVINO (`runtime`, `fundus2video.onnx_runtime`: faster on CPUs, the
same frames within 1e-4; the rollout loop and its window averaging stay the same).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fundus2video.data_modules.cases import IMAGE_EXTS, read_cf
from fundus2video.data_modules.transforms import resize
from fundus2video.errors import UserError
from fundus2video.io import refuse_special
from fundus2video.knowledge import crop_to_roi
from fundus2video.module import Fundus2VideoModule
from fundus2video.rollout import rollout
from fundus2video.video_io import write_gif, write_mp4, write_png
from fundus2video.visuals import enlarge, label_band, to_uint8

MIN_SIDE = 64  # smaller photos hold too little of the fundus to be worth a video
MIN_ROI_FRACTION = 0.05  # a field of view smaller than this is not a fundus photo


@dataclass
class GeneratedVideo:
    frames: torch.Tensor  # (T, 1, S, S) in [-1, 1]
    cf: torch.Tensor  # (3, S, S) in [-1, 1], the prepared photo
    paths: list[Path]


def prepare_photo(path: Path, size: int, colour_check: bool = True) -> torch.Tensor:
    """A CF photo file -> (3, size, size) in [-1, 1], prepared as in training. `colour_check`: refuse a
    photo that is not orange-red inside its field of view (off for pseudo-colour cameras)."""
    cf = read_cf(path, colour_check)
    h, w = cf.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise UserError(f"{path}: the photo is {w}x{h}; at least {MIN_SIDE} pixels a side are needed")
    try:  # no frames at inference: the field of view comes from the CF alone
        crop = crop_to_roi(cf, np.full((1, h, w), 255, np.uint8))
    except ValueError:
        raise UserError(f"{path}: no field of view found (no pixel with green > 11): not a fundus photo?") from None
    if crop["roi"].sum() < MIN_ROI_FRACTION * h * w:
        raise UserError(f"{path}: the field of view covers only {crop['roi'].sum() / (h * w):.1%} of the "
                        "photo: not a fundus photo?")
    cf_s = resize(crop["cf"], size)  # validation's resize
    return torch.from_numpy(np.ascontiguousarray(cf_s)).permute(2, 0, 1).float() / 127.5 - 1.0


@torch.inference_mode()
def rollout_photos(module: Fundus2VideoModule, cfs: torch.Tensor, n_frames: int, bf16: bool = False,
                   runtime: str = "torch", checkpoint: str | Path | None = None) -> torch.Tensor:
    """Prepared photos (B, 3, S, S) -> their videos (B, T, 1, S, S), float32 on the CPU, in one rollout.

    The generator's instance norm works per sample, so a photo's video does not depend on the
    others in the batch. `bf16`: bfloat16 autocast (fast on GPUs and CPUs with bf16 instructions,
    a slow fallback elsewhere); the frames are averaged and returned in float32 all the same.
    `runtime`: torch, onnxruntime or openvino (the windows through the generator's ONNX graph, exported
    once per weights and size and cached beside `checkpoint`, the file or Hub folder `module` came from;
    see `fundus2video.onnx_runtime`) or auto (on the CPU in float32, the fastest of torch and the
    installed graph runtimes, timed once per graph and machine; else torch).
    """
    from fundus2video.onnx_runtime import window_function

    window = window_function(module, tuple(cfs.shape[-2:]), runtime, checkpoint, bf16)
    if window is not None:
        return rollout(window, cfs.float().cpu(), n_frames, module.cfg.model.window)
    autocast = torch.autocast(module.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with autocast:
        frames = module(cfs.to(module.device), n_frames)
    return frames.float().cpu()


def format_path(out: str | Path, fmt: str) -> Path:
    """Where the `fmt` file of a video named `out` goes: `out` itself when it already ends so (any
    case: V.MP4 stays V.MP4), else beside it with the same stem."""
    out = Path(out)
    return out if out.suffix.lower() == f".{fmt}" else out.with_suffix(f".{fmt}")


def write_outputs(frames: torch.Tensor, cf: torch.Tensor, out: str | Path, formats: tuple[str, ...] = ("mp4",),
                  fps: int = 4, strip: bool = False, side_by_side: bool = False) -> list[Path]:
    """One photo's files: `out` names the video; other formats and extras are written next to it
    with the same stem (`.gif`, `_strip.png`, `_sbs.mp4`). frames (T, 1, S, S), cf (3, S, S).

    They appear together or not at all: each is written to a hidden sibling first and all are renamed
    into place once every one is written. When they replace an earlier generation's, the files of this
    stem that it wrote and this one does not (a `.gif` of a run with --gif) are removed, so no outputs
    of two runs lie side by side."""
    stem = Path(out).with_suffix("")
    video = np.stack([to_uint8(f) for f in frames])
    jobs: list[tuple[Path, Callable[[Path], Path]]] = [
        (format_path(out, fmt), lambda p, fmt=fmt: {"mp4": write_mp4, "gif": write_gif}[fmt](p, video, fps))
        for fmt in formats]
    if strip:
        jobs.append((Path(f"{stem}_strip.png"), lambda p: write_png(p, np.hstack([to_uint8(cf)] + list(video)))))
    if side_by_side:
        cf_img = enlarge(to_uint8(cf))
        rows = [np.hstack([cf_img, enlarge(f)]) for f in video]
        band = label_band(rows[0].shape[1], ["CF", "generated FFA"])
        sbs = np.stack([np.vstack([band, r]) for r in rows])
        jobs.append((Path(f"{stem}_sbs.mp4"), lambda p: write_mp4(p, sbs, fps)))
    replacing = any(path.is_file() for path, _ in jobs)  # an earlier generation of this name is there
    token = f"{os.getpid()}-{secrets.token_hex(3)}"
    staged = []
    try:
        for path, write in jobs:
            hidden = path.with_name(f".{path.stem}.{token}{path.suffix}")  # the writers read the suffix
            staged.append((write(hidden), path))
    except BaseException:
        for hidden, _ in staged:
            hidden.unlink(missing_ok=True)
        raise
    for hidden, path in staged:
        os.replace(hidden, path)
    written = {path for _, path in staged}
    siblings = (format_path(out, "mp4"), format_path(out, "gif"), Path(f"{stem}_strip.png"), Path(f"{stem}_sbs.mp4"))
    for sibling in siblings if replacing else ():
        if sibling not in written and sibling.is_file() and not sibling.is_symlink():
            sibling.unlink()
    return [path for _, path in staged]


def generate_videos(module: Fundus2VideoModule, photos: Sequence[str | Path],
                    out: str | Path | Sequence[str | Path], n_frames: int | None = None,
                    formats: tuple[str, ...] = ("mp4",), fps: int = 4, strip: bool = False,
                    side_by_side: bool = False, batch: int = 1, bf16: bool = False,
                    colour_check: bool = True, runtime: str = "torch",
                    checkpoint: str | Path | None = None) -> Iterator[GeneratedVideo]:
    """Generate and write the videos of several photos, `batch` photos per rollout.

    `out`: a folder (photo `p` -> `<out>/<p.stem>.mp4`) or one video path per photo (extras as in
    `generate_video`). Returns an iterator over the photos' results, in order, each yielded once
    its files are written: the work happens as it is consumed (`list(...)` to run it all), and only
    one batch of videos is held at a time. Photos are prepared one by one; a photo that cannot be
    prepared raises its UserError after the photos before it are written, as one at a time would.
    A batch costs `batch` videos' memory and pays where one photo leaves the hardware idle (small
    images, a GPU); benchmarks/inference.py measures it. `runtime` and `checkpoint`: as in
    `rollout_photos` (an impossible runtime is refused here, before any work; the graph is exported
    or loaded at the first rollout).
    """
    from fundus2video.onnx_runtime import resolve_runtime

    resolve_runtime(runtime, module.device, bf16)
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    t = module.cfg.data.n_frames if n_frames is None else n_frames
    if t < 1:
        raise UserError(f"--frames must be at least 1, got {t}")
    if fps < 1:
        raise UserError(f"--fps must be at least 1 frame per second, got {fps}")
    photos = [Path(p) for p in photos]
    if isinstance(out, str | Path):
        targets = folder_targets(photos, Path(out))
    else:
        targets = [Path(o) for o in out]
        if len(targets) != len(photos):
            raise ValueError(f"{len(photos)} photos but {len(targets)} output paths")
    return _generate(module, list(zip(photos, targets, strict=True)), t, formats, fps, strip, side_by_side, batch,
                     bf16, colour_check, runtime, checkpoint)


def _generate(module: Fundus2VideoModule, jobs: list[tuple[Path, Path]], t: int, formats: tuple[str, ...],
              fps: int, strip: bool, side_by_side: bool, batch: int, bf16: bool,
              colour_check: bool = True, runtime: str = "torch",
              checkpoint: str | Path | None = None) -> Iterator[GeneratedVideo]:
    """`generate_videos`' work, (photo, video path) after (photo, video path)."""
    def flush(pending: list[tuple[torch.Tensor, Path]]) -> Iterator[GeneratedVideo]:
        if not pending:
            return
        videos = rollout_photos(module, torch.stack([cf for cf, _ in pending]), t, bf16, runtime, checkpoint)
        for (cf, target), frames in zip(pending, videos, strict=True):
            yield GeneratedVideo(frames, cf, write_outputs(frames, cf, target, formats, fps, strip, side_by_side))

    size = module.cfg.data.size
    pending: list[tuple[torch.Tensor, Path]] = []
    for photo, target in jobs:
        try:
            cf = prepare_photo(photo, size, colour_check)
        except UserError:  # the photos before it are written first, as one at a time would
            yield from flush(pending)
            raise
        pending.append((cf, target))
        if len(pending) == batch:
            yield from flush(pending)
            pending = []
    yield from flush(pending)


def generate_video(module: Fundus2VideoModule, cf_path: str | Path, out: str | Path, n_frames: int | None = None,
                   formats: tuple[str, ...] = ("mp4",), fps: int = 4, strip: bool = False,
                   side_by_side: bool = False, bf16: bool = False, runtime: str = "torch",
                   checkpoint: str | Path | None = None) -> GeneratedVideo:
    """Generate and write the video of one photo. `out` names the video; other formats and
    extras are written next to it with the same stem (`.gif`, `_strip.png`, `_sbs.mp4`).
    `runtime` and `checkpoint`: as in `rollout_photos`."""
    (result,) = generate_videos(module, [cf_path], [out], n_frames, formats, fps, strip, side_by_side, bf16=bf16,
                                runtime=runtime, checkpoint=checkpoint)
    return result


def folder_targets(photos: Sequence[Path], folder: Path) -> list[Path]:
    """`<folder>/<stem>.mp4` per photo; photos that share a stem (a.png, a.jpg) get their extension
    into the name (a_png.mp4, a_jpg.mp4), so no video replaces another."""
    stems = [p.stem for p in photos]
    names = [f"{p.stem}_{p.suffix[1:].lower()}" if stems.count(p.stem) > 1 else p.stem for p in photos]
    taken: set[str] = set()
    for i, name in enumerate(names):  # a.PNG + a.png, or a_png.jpg beside a.png + a.jpg: count on
        unique, k = name, 2
        while unique.lower() in taken:
            unique, k = f"{name}_{k}", k + 1
        taken.add(unique.lower())
        names[i] = unique
    return [folder / f"{name}.mp4" for name in names]


def output_targets(photos: Sequence[Path], out: Path, formats: tuple[str, ...] = ("mp4",), strip: bool = False,
                   side_by_side: bool = False, overwrite: bool = True) -> list[Path]:
    """The video path of each photo for `--out`, after checking that nothing written (videos and
    extras) would land on an input photo, nor, without `overwrite`, on a file that exists: one photo
    and `--out` a `.mp4`, or a folder."""
    several = len(photos) > 1 or out.is_dir()
    if several:
        if out.suffix and not out.is_dir():
            raise UserError(f"--out {out}: {len(photos)} photos need a folder, not a file name")
        targets = folder_targets(photos, out)
    else:
        if out.suffix.lower() != ".mp4":
            raise UserError(f"--out {out}: expected a .mp4 file name (--gif writes a .gif beside it) or a folder, "
                            f"found '{out.suffix or 'no extension'}'")
        targets = [out]
    inputs = {p.resolve(): p for p in photos}
    for target in targets:
        stem = target.with_suffix("")
        written = [format_path(target, fmt) for fmt in formats]
        written += [Path(f"{stem}_strip.png")] * strip + [Path(f"{stem}_sbs.mp4")] * side_by_side
        for path in written:
            if path.resolve() in inputs:
                raise UserError(f"{path}: would overwrite the input photo {inputs[path.resolve()]}; "
                                "choose another --out")
            refuse_special(path)
            if not overwrite and path.exists():
                raise UserError(f"{path}: exists (--overwrite replaces it, or choose another --out)")
    return targets


def photos_in(path: str | Path) -> list[Path]:
    """One photo, or every image of a folder (sorted)."""
    path = Path(path)
    if path.is_dir():
        photos = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not photos:
            raise UserError(f"{path}: no images ({', '.join(IMAGE_EXTS)}) in the folder")
        return photos
    if not path.is_file():
        raise UserError(f"photo not found: {path}")
    return [path]
