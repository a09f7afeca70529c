"""Write the phantom to disk in the case-folder layout, so demos exercise the real loaders.

    <out>/<case>/cf.png, <case>/ffa.mp4 (or <case>/ffa/000.png ...), <case>/lesion.png
    <out>/<case>/lesion_<kind>.png (each lesion kind the case has), <case>/vessels.png (for scoring)
    <out>/cases.csv: case_id, patient_id, eye, times (seconds, ';'-separated)
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fundus2video.data_modules.phantom import PRESETS, Nuisances, make_case
from fundus2video.errors import UserError
from fundus2video.io import atomic_path
from fundus2video.limits import MAX_SIZE
from fundus2video.video_io import write_mp4, write_png

CASE_FILE = re.compile(r"cf\.png|lesion(_[a-z_]+)?\.png|vessels\.png|ffa\.mp4|ffa/\d{3}\.png|truth\.json")


def _phantom_entries(out: Path) -> list[Path] | None:
    """What a previous `write_phantom` left in the folder `out` (case folders holding only the files
    it writes, and cases.csv), or None when anything else is there."""
    if not out.is_dir():
        return None
    entries = list(out.iterdir())
    for entry in entries:
        if entry.name == "cases.csv" and entry.is_file():
            continue
        if not (entry.is_dir() and re.fullmatch(r"phantom\d+", entry.name)):
            return None
        files = [p.relative_to(entry).as_posix() for p in entry.rglob("*") if not p.is_dir()]
        if not all(CASE_FILE.fullmatch(f) for f in files):
            return None
    return entries


MIN_SIZE = 32  # below, the vessels are sub-pixel (above MAX_SIZE one frame takes gigabytes to render)


def write_phantom(out: str | Path, n_cases: int, size: int = 256, n_frames: int = 12,
                  video: str = "mp4", seed: int = 0, start: int = 0, fps: int = 4,
                  progress: bool = True, overwrite: bool = False, preset: str = "aligned") -> Path:
    """Cases `start .. start + n_cases - 1` of the phantom as case folders under `out`. With nuisances
    (`preset` realistic), each folder also gets `truth.json`: the frames' times, the arrival, the
    camera's gain and offset per frame, the eye's motion (`frame_to_ref`: the 2 x 3 affine that maps
    frame k's pixels onto frame 0's, as cv2.warpAffine takes it) and the CF's (`cf_to_ref`)."""
    nuisances = Nuisances.preset(preset) if preset in PRESETS else None
    if nuisances is None:
        raise UserError(f"--preset: '{preset}' (expected one of {', '.join(PRESETS)})")
    if video not in ("mp4", "png"):
        raise ValueError(f"video must be 'mp4' or 'png', got '{video}'")
    out = Path(out)
    if n_cases < 1:
        raise UserError(f"--cases: {n_cases} (expected at least 1)")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"--size: {size} (expected {MIN_SIZE} to {MAX_SIZE} pixels a side)")
    if n_frames < 2:  # a video, and the knowledge mask compares its first and last frames
        raise UserError(f"--frames: {n_frames} (expected at least 2)")
    if seed < 0:
        raise UserError(f"--seed: {seed} (expected a number >= 0)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        old = _phantom_entries(out)
        if not overwrite or old is None:
            raise UserError(f"--out {out}: exists and is not empty; " + (
                "add --overwrite to replace the phantom written there" if old is not None else
                "it holds files that are not a phantom written by fundus2video, so it is never replaced"))
        # the old case folders go entirely: new CFs must never be paired with old frames
        for entry in old:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    rows = []
    for i in tqdm(range(start, start + n_cases), desc=f"writing phantom ({video})", unit="case", delay=0.5,
                  disable=not progress, leave=False):
        case = make_case(i, size=size, n_frames=n_frames, seed=seed, nuisances=nuisances)
        case_dir = out / case.case_id
        write_png(case_dir / "cf.png", case.cf)
        write_png(case_dir / "lesion.png", case.lesion.astype(np.uint8) * 255)
        for kind, mask in case.lesion_kinds.items():
            if mask.any():
                write_png(case_dir / f"lesion_{kind}.png", mask.astype(np.uint8) * 255)
        write_png(case_dir / "vessels.png", case.vessels.astype(np.uint8) * 255)
        if nuisances.any():
            truth = {"times": case.times.tolist(), "arrival": case.arrival, "looks": case.looks,
                     **{k: None if getattr(case, k) is None else np.round(getattr(case, k), 6).tolist()
                        for k in ("exposure", "frame_to_ref", "cf_to_ref")}}
            with atomic_path(case_dir / "truth.json") as tmp:
                tmp.write_text(json.dumps(truth) + "\n")
        if video == "mp4":
            write_mp4(case_dir / "ffa.mp4", np.repeat(case.frames[..., None], 3, axis=3), fps=fps)
        else:
            for t, frame in enumerate(case.frames):
                write_png(case_dir / "ffa" / f"{t:03d}.png", frame)
        rows.append([case.case_id, case.patient_id, case.eye, ";".join(f"{t:.2f}" for t in case.times)])
    with atomic_path(out / "cases.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case_id", "patient_id", "eye", "times"])
        writer.writerows(rows)
    return out
