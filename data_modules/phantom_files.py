"""Write the phantom to disk in the case-folder layout, so demos exercise the real loaders.

    <out>/<case>/cf.png, <case>/ffa.mp4 (or <case>/ffa/000.png ...), <case>/lesion.png
    <out>/<case>/lesion_<kind>.png (each lesion kind the case has), <case>/vessels.png (for scoring)
    <out>/cases.csv: case_id, patient_id, eye, times (seconds, ';'-separated)
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from fundus2video.data_modules.phantom import make_case
from tqdm import tqdm

from fundus2video.video_io import atomic_path, write_mp4, write_png


def write_phantom(out: str | Path, n_cases: int, size: int = 256, n_frames: int = 12,
                  video: str = "mp4", seed: int = 0, start: int = 0, fps: int = 4,
                  progress: bool = True) -> Path:
    """Cases `start .. start + n_cases - 1` of the phantom as case folders under `out`."""
    if video not in ("mp4", "png"):
        raise ValueError(f"video must be 'mp4' or 'png', got '{video}'")
    out = Path(out)
    rows = []
    for i in tqdm(range(start, start + n_cases), desc=f"writing phantom ({video})", unit="case",
                  disable=not progress, leave=False):
        case = make_case(i, size=size, n_frames=n_frames, seed=seed)
        case_dir = out / case.case_id
        write_png(case_dir / "cf.png", case.cf)
        write_png(case_dir / "lesion.png", case.lesion.astype(np.uint8) * 255)
        for kind, mask in case.lesion_kinds.items():
            if mask.any():
                write_png(case_dir / f"lesion_{kind}.png", mask.astype(np.uint8) * 255)
        write_png(case_dir / "vessels.png", case.vessels.astype(np.uint8) * 255)
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
