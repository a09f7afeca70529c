"""`fundus2video generate`: an FFA video from a colour fundus photo, with a trained checkpoint.

The photo goes through training's preprocessing (field of view from the CF's green channel,
zero outside, crop to the ROI box, resize to the checkpoint's size), then the autoregressive
rollout with window averaging. Outputs: mp4 and/or gif, optionally a PNG strip of the frames
and a side-by-side video with the CF.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fundus2video.data_modules.cases import IMAGE_EXTS, read_cf
from fundus2video.data_modules.transforms import resize
from fundus2video.errors import UserError
from fundus2video.knowledge import crop_to_roi
from fundus2video.module import Fundus2VideoModule
from fundus2video.video_io import write_gif, write_mp4, write_png
from fundus2video.visuals import enlarge, label_band, to_uint8

MIN_SIDE = 64  # smaller photos hold too little of the fundus to be worth a video
MIN_ROI_FRACTION = 0.05  # a field of view smaller than this is not a fundus photo


@dataclass
class GeneratedVideo:
    frames: torch.Tensor  # (T, 1, S, S) in [-1, 1]
    cf: torch.Tensor  # (3, S, S) in [-1, 1], the prepared photo
    paths: list[Path]


def prepare_photo(path: Path, size: int) -> torch.Tensor:
    """A CF photo file -> (3, size, size) in [-1, 1], prepared as in training."""
    cf = read_cf(path)
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


def load_module(ckpt: str | Path, device: str = "cpu") -> Fundus2VideoModule:
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise UserError(f"checkpoint not found: {ckpt}")
    return Fundus2VideoModule.load_from_checkpoint(ckpt, map_location=device).eval()


@torch.inference_mode()
def generate_video(module: Fundus2VideoModule, cf_path: str | Path, out: str | Path, n_frames: int | None = None,
                   formats: tuple[str, ...] = ("mp4",), fps: int = 4, strip: bool = False,
                   side_by_side: bool = False) -> GeneratedVideo:
    """Generate and write the video of one photo. `out` names the video; other formats and
    extras are written next to it with the same stem (`.gif`, `_strip.png`, `_sbs.mp4`)."""
    size = module.cfg.data.size
    cf = prepare_photo(Path(cf_path), size).to(module.device)
    t = n_frames or module.cfg.data.n_frames
    if t < 1:
        raise UserError(f"--frames must be at least 1, got {t}")
    frames = module(cf[None], t)[0].float().cpu()  # (T, 1, S, S)
    out = Path(out)
    stem = out.with_suffix("")
    video = np.stack([to_uint8(f) for f in frames])
    writers = {"mp4": write_mp4, "gif": write_gif}
    paths = [writers[fmt](stem.with_suffix(f".{fmt}"), video, fps) for fmt in formats]
    if strip:
        paths.append(write_png(Path(f"{stem}_strip.png"), np.hstack([to_uint8(cf.cpu())] + list(video))))
    if side_by_side:
        cf_img = enlarge(to_uint8(cf.cpu()))
        rows = [np.hstack([cf_img, enlarge(f)]) for f in video]
        band = label_band(rows[0].shape[1], ["CF", "generated FFA"])
        paths.append(write_mp4(Path(f"{stem}_sbs.mp4"), np.stack([np.vstack([band, r]) for r in rows]), fps))
    return GeneratedVideo(frames, cf.cpu(), paths)


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
