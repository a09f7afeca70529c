"""`fundus2video data register SRC --out DIR`: case folders in, registered case folders out.

For every case folder of SRC (the layout `data_modules/cases.py` reads) every FFA frame is registered
onto frame 0 and the CF onto frame 0 (`registration.estimate`), and DIR receives:

    DIR/<case>/cf.png               the CF moved onto frame 0's pixel grid (the frames' size)
    DIR/<case>/ffa/000.png ...      the frames moved onto frame 0 (PNG: a second lossy video encoding
                                    would blur the vessels just aligned), frame 0 as it was
    DIR/<case>/lesion*.png, vessels.png   copied unchanged (drawn in frame 0's coordinates already)
    DIR/<case>/registration.json    per frame and for the CF: the 2 x 3 matrix that maps the source image's
                                    pixels onto frame 0's (cv2.warpAffine), its size, the vessel maps'
                                    correlation before and after, status
    DIR/<case>/registration.png     the case's overlays (figures.PANELS)
    DIR/cases.csv                   case_id, patient_id, eye, times (of the frames kept)
    DIR/registration.csv            one row per case and image: status, problem, size of the transform,
                                    correlation before and after, the matrix
    DIR/registration_sheet.png      every case's overlays, one row each (32 a sheet: _2, _3 ... after)

What is not trusted is never written as registered: a case whose CF or last frame fails (the knowledge
mask compares the last frame with the first) is left out of DIR, listed with its reason; a failed frame
between them is dropped from the series (its time too), listed. SRC is only read; DIR is built in a
temporary folder beside it and renamed into place at the end.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from fundus2video.data_modules.cases import (
    CaseError,
    CaseRecord,
    folder_records,
    read_cf,
    read_frame,
    read_video_frames,
)
from fundus2video.errors import UserError
from fundus2video.io import atomic_path, file_in_the_way, swap_folder_into_place
from fundus2video.limits import MAX_FRAMES
from fundus2video.registration import figures
from fundus2video.registration.estimate import (
    MODELS,
    WORK_SIDE,
    PairResult,
    composite,
    decide,
    register_cf,
    register_frames,
    resize_matrix,
    warp_to_reference,
)
from fundus2video.video_io import write_png

REPORT_FILES = ("cases.csv", "registration.csv")
SHEET = re.compile(r"registration_sheet(_\d+)?\.png")
# what a case folder of ours holds (a user's file among them keeps the folder from ever being replaced)
CASE_FILE = re.compile(r"cf\.png|ffa/\d{3,}\.png|registration\.(json|png)|vessels\.png|lesion(_[^/]+)?\.png",
                       re.IGNORECASE)
ROWS_PER_SHEET = 32
CASE_SIDE, SHEET_SIDE = 320, 160  # panel sides of a case's figure and of the contact sheet
CSV_COLUMNS = ("case_id", "image", "output", "status", "problem", "shift_px", "rotation_deg", "scale",
               "motion_px", "ncc_before", "ncc_after", "m00", "m01", "m02", "m10", "m11", "m12")


@dataclass
class CaseOutcome:
    case_id: str
    status: str = "ok"  # ok | skipped
    reason: str = ""  # why skipped
    frames: list[dict] = field(default_factory=list)  # per frame: registration.json's entries
    cf: dict | None = None
    dropped: list[str] = field(default_factory=list)  # "<frame>: <problem>"
    row: np.ndarray | None = None  # the contact sheet's row


@dataclass
class RegisterReport:
    src: Path
    out: Path
    model: str
    cases: list[CaseOutcome] = field(default_factory=list)

    @property
    def written(self) -> list[CaseOutcome]:
        return [c for c in self.cases if c.status == "ok"]

    @property
    def exit_code(self) -> int:
        """0 when every case and frame registered, 1 when anything was flagged."""
        return 0 if all(c.status == "ok" and not c.dropped for c in self.cases) else 1

    def lines(self) -> list[str]:
        """The flagged cases and frames, one line each, then the summary line."""
        out = [f"SKIPPED {c.case_id}: {c.reason}" for c in self.cases if c.status != "ok"]
        out += [f"DROPPED {c.case_id} {d}" for c in self.written for d in c.dropped]
        return out + [self.summary()]

    def summary(self) -> str:
        done, n = self.written, len(self.cases)
        frames = [f["motion_px"] for c in done for f in c.frames[1:] if f["status"] == "ok"]
        cfs = [c.cf["motion_px"] for c in done if c.cf]
        text = f"registered {len(done)} of {n} case(s) into {self.out} ({self.model})"
        if frames:
            text += (f": frames moved {np.median(frames):.1f} px median (95th percentile "
                     f"{np.percentile(frames, 95):.1f}) onto frame 0")
        if cfs:
            text += f", the CF {np.median(cfs):.1f} px median"
        skipped = [c for c in self.cases if c.status != "ok"]
        if skipped:
            text += f"; {len(skipped)} case(s) skipped ({skipped[0].case_id}: {skipped[0].reason}" + (
                "; ..." if len(skipped) > 1 else "") + ")"
        dropped = sum(len(c.dropped) for c in done)
        if dropped:
            text += f"; {dropped} frame(s) dropped in {sum(1 for c in done if c.dropped)} case(s)"
        return text + f"; details in {self.out / 'registration.csv'}"


# ------------------------------------------------------------------ options
def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _previous_output(out: Path) -> list[Path] | None:
    """What an earlier `data register` left in `out` (its case folders, each with a registration.json,
    and its report files), or None when anything else is there."""
    entries = list(out.iterdir())
    for entry in entries:
        if entry.is_file() and (entry.name in REPORT_FILES or SHEET.fullmatch(entry.name)):
            continue
        if entry.is_dir() and (entry / "registration.json").is_file() and all(
                CASE_FILE.fullmatch(p.relative_to(entry).as_posix()) for p in entry.rglob("*") if not p.is_dir()):
            continue
        return None
    return entries if (out / "registration.csv").is_file() else None


def check_options(src: Path, out: Path, model: str, overwrite: bool) -> list[Path]:
    """Stop (UserError) at a usage problem; returns what an --overwrite will replace."""
    if model not in MODELS:
        raise UserError(f"--model: '{model}' (expected one of {', '.join(MODELS)})")
    if not src.exists():
        raise UserError(f"data register: SRC {src} not found (expected a folder of case folders)")
    if not src.is_dir():
        raise UserError(f"data register: SRC {src} is a file (expected a folder of case folders: "
                        "<SRC>/<case>/cf.png with ffa.mp4 or ffa/)")
    if _inside(out, src):
        raise UserError(f"--out {out}: inside SRC {src}; nothing is written into the source, choose a folder "
                        "outside it")
    if _inside(src, out):
        raise UserError(f"--out {out}: holds SRC {src}; choose a folder outside the source")
    blocking = file_in_the_way(out, itself=False)
    if blocking is not None:
        raise UserError(f"--out {out}: {blocking} is a file, not a folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is a file (expected a new or empty folder)")
    if out.is_dir() and any(out.iterdir()):
        old = _previous_output(out)
        if old is None:
            raise UserError(f"--out {out}: exists and holds files that are not a registration written by "
                            "fundus2video, so it is never replaced; choose a new or empty folder")
        if not overwrite:
            raise UserError(f"--out {out}: exists and is not empty; add --overwrite to replace the registration "
                            "written there")
        return old
    return []


# ------------------------------------------------------------------ reading a case
@dataclass
class _Series:
    cf: np.ndarray
    frames: np.ndarray
    names: list[str]  # where each frame came from (file name, or video#index)
    times: list[float] | None


def _read(rec: CaseRecord) -> _Series:
    cf = read_cf(rec.cf, rec.colour_check)
    if rec.video is not None:
        frames, idx = read_video_frames(rec.video, None, MAX_FRAMES)
        if idx != list(range(len(idx))):
            raise CaseError(f"{rec.video}: more than {MAX_FRAMES} frames (expected at most {MAX_FRAMES})")
        names = [f"{rec.video.name}#{i}" for i in idx]
        times = rec.times
    else:
        if not rec.frames:
            raise CaseError(f"case {rec.case_id}: no FFA frames found")
        if len(rec.frames) > MAX_FRAMES:
            raise CaseError(f"{rec.frames[0].path.parent}: {len(rec.frames)} frames (expected at most {MAX_FRAMES})")
        frames = [read_frame(f.path) for f in rec.frames]
        shapes = sorted({f.shape for f in frames})
        if len(shapes) > 1:
            raise CaseError(f"case {rec.case_id}: FFA frames differ in size {shapes}")
        frames = np.stack(frames)
        names = [f.path.name for f in rec.frames]
        times = rec.times
    if times is not None and len(times) != len(frames):
        raise CaseError(f"cases.csv: case {rec.case_id}: {len(times)} times for {len(frames)} frames "
                        "(expected one time per frame)")
    if len(frames) < 2:
        raise CaseError(f"case {rec.case_id}: only {len(frames)} frame (a series to register needs at least 2)")
    return _Series(cf, frames, names, times)


# ------------------------------------------------------------------ one case
def _entry(result: PairResult, **extra) -> dict:
    return {**extra, **result.as_dict()}


def register_case_folder(rec: CaseRecord, case_dir: Path | None, model: str, work_side: int = WORK_SIDE,
                  progress=None) -> CaseOutcome:
    """Register one case and, unless it is skipped (or `case_dir` is None), write it into `case_dir`."""
    outcome = CaseOutcome(rec.case_id)
    if rec.problem:
        outcome.status, outcome.reason = "skipped", rec.problem
        outcome.row = figures.row(rec.case_id, f"SKIPPED: {rec.problem}", None, SHEET_SIDE, True)
        return outcome
    try:
        series = _read(rec)
    except CaseError as err:
        outcome.status, outcome.reason = "skipped", str(err)
        outcome.row = figures.row(rec.case_id, f"SKIPPED: {err}", None, SHEET_SIDE, True)
        return outcome
    frames, names = series.frames, series.names
    h, w = frames.shape[1:]
    try:
        results = register_frames(frames, model, work_side, progress)
        cf_result = register_cf(series.cf, composite(frames, results, work_side), model, work_side)
    except (cv2.error, ValueError, ArithmeticError) as err:  # images no check foresaw: this case, not the run
        detail = (str(err).strip().splitlines() or [""])[-1].strip()  # OpenCV's messages run over several lines
        reason = f"registration failed ({type(err).__name__}: {detail})"
        outcome.status, outcome.reason = "skipped", reason
        outcome.row = figures.row(rec.case_id, f"SKIPPED: {reason}", None, SHEET_SIDE, True)
        return outcome
    reason, dropped = decide(results, cf_result, names)
    width = max(3, len(str(len(frames) - 1)))
    kept = [k for k in range(len(frames)) if k not in dropped]
    out_name = {k: f"ffa/{i:0{width}d}.png" for i, k in enumerate(kept)}
    for k, result in enumerate(results):
        status = "reference" if k == 0 else "ok" if result.ok else "dropped"
        entry = _entry(result, index=k, source=names[k], output=out_name.get(k) if not reason else None)
        entry["status"] = status
        if series.times is not None:
            entry["time"] = series.times[k]
        outcome.frames.append(entry)
    outcome.cf = _entry(cf_result, source=rec.cf.name, output="cf.png" if not reason else None)
    outcome.dropped = [f"{names[k]}: {results[k].problem}" for k in dropped]
    cf_after = warp_to_reference(series.cf, cf_result.matrix, (w, h))
    last = len(frames) - 1 if reason else kept[-1]  # a skipped case shows the frame that failed it
    last_after = warp_to_reference(frames[last], results[last].matrix, (w, h))
    # the CF as the loader would pair it with the frames: resized to their size
    cf_before = warp_to_reference(series.cf, resize_matrix(series.cf.shape[1::-1], (w, h)), (w, h))
    panels = figures.case_panels(cf_before, cf_after, frames[0], frames[last], last_after, SHEET_SIDE)
    if reason:
        outcome.status, outcome.reason = "skipped", reason
        outcome.row = figures.row(rec.case_id, f"SKIPPED: {reason}", panels, SHEET_SIDE, True)
        return outcome
    note = f"{len(kept)} frames, CF moved {cf_result.extent.motion_px:.1f} px" + (
        f"; {len(dropped)} frame(s) dropped" if dropped else "")
    outcome.row = figures.row(rec.case_id, note, panels, SHEET_SIDE, bool(dropped))
    if case_dir is None:
        return outcome
    write_png(case_dir / "cf.png", cf_after)
    for k in kept:
        image = frames[k] if k == 0 else warp_to_reference(frames[k], results[k].matrix, (w, h))
        write_png(case_dir / out_name[k], image)
    for path in ([rec.lesion] if rec.lesion is not None else []) + list(rec.regions.values()):
        with atomic_path(case_dir / path.name) as tmp:
            shutil.copyfile(path, tmp)
    big = figures.case_panels(cf_before, cf_after, frames[0], frames[last], last_after, CASE_SIDE)
    write_png(case_dir / "registration.png", figures.sheet([figures.row(rec.case_id, note, big, CASE_SIDE,
                                                                        bool(dropped))], CASE_SIDE))
    document = {
        "model": model,
        "convention": "matrix maps the source image's pixels onto frame 0's: cv2.warpAffine(source, matrix, "
                      "(width, height)) is the image registered",
        "reference": {"source": names[0], "width": w, "height": h},
        "work_side": work_side,
        "cf": outcome.cf,
        "frames": outcome.frames,
    }
    with atomic_path(case_dir / "registration.json") as tmp:
        tmp.write_text(json.dumps(document, indent=1) + "\n")
    return outcome


def read_registration(path: str | Path) -> dict:
    """A registration.json as written, its matrices as (2, 3) float64 arrays."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
        document["cf"]["matrix"] = np.asarray(document["cf"]["matrix"], np.float64)
        for entry in document["frames"]:
            entry["matrix"] = np.asarray(entry["matrix"], np.float64)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a registration.json written by fundus2video data register ({err})") from None
    return document


# ------------------------------------------------------------------ the whole folder
def _csv_rows(outcome: CaseOutcome) -> list[list]:
    if outcome.cf is None:
        return [[outcome.case_id, "", "", "skipped", outcome.reason] + [""] * (len(CSV_COLUMNS) - 5)]
    rows = []
    for name, entry in [("cf", outcome.cf)] + [(f["source"], f) for f in outcome.frames]:
        # in a skipped case: the images that failed it, and the others that are not written either
        status = entry["status"] if outcome.status == "ok" else "failed" if entry["problem"] else "skipped"
        problem = entry["problem"] or (outcome.reason if outcome.status != "ok" else "")
        m = np.asarray(entry["matrix"]).ravel()
        rows.append([outcome.case_id, name, entry["output"] or "", status, problem, entry["shift_px"],
                     entry["rotation_deg"], entry["scale"], entry["motion_px"], entry["ncc_before"],
                     entry["ncc_after"], *[round(float(v), 6) for v in m]])
    return rows


def _times_text(outcome: CaseOutcome) -> str:
    times = [f["time"] for f in outcome.frames if f["output"] and "time" in f]
    return ";".join(f"{t:g}" for t in times)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def register_folder(src: str | Path, out: str | Path, model: str = "similarity", overwrite: bool = False,
                    progress: bool = False, work_side: int = WORK_SIDE) -> RegisterReport:
    """Register every case folder of `src` into `out` (see the module doc). Usage problems raise
    UserError; cases and frames that fail are in the returned report (and in out/registration.csv)."""
    src, out = Path(src), Path(out)
    check_options(src, out, model, overwrite)
    records = folder_records(src)
    report = RegisterReport(src, out, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.register-", dir=out.parent))
    try:
        bar = tqdm(records, desc="registering cases", unit="case", disable=not progress, leave=False)
        for rec in bar:
            case_dir = tmp / rec.case_id
            counter = itertools.count(2)  # frame 1 is the first registered (frame 0 is the reference)

            def tick(case_id=rec.case_id, counter=counter):
                bar.set_postfix_str(f"{case_id} frame {next(counter)}", refresh=True)

            outcome = register_case_folder(rec, case_dir, model, work_side, tick)
            if outcome.status != "ok":
                shutil.rmtree(case_dir, ignore_errors=True)
            report.cases.append(outcome)
        _write_reports(report, tmp, records)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the usual mode
        if out.is_dir() and any(out.iterdir()):  # checked again: the old registration goes only now
            check_options(src, out, model, overwrite)
        swap_folder_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def _write_reports(report: RegisterReport, folder: Path, records: list[CaseRecord]) -> None:
    info = {r.case_id: r for r in records}
    with atomic_path(folder / "cases.csv") as path, open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case_id", "patient_id", "eye", "times"])
        for c in report.written:
            writer.writerow([c.case_id, info[c.case_id].patient_id, info[c.case_id].eye, _times_text(c)])
    with atomic_path(folder / "registration.csv") as path, open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for c in report.cases:
            writer.writerows(_csv_rows(c))
    rows = [c.row for c in report.cases if c.row is not None]
    for page in range(0, len(rows), ROWS_PER_SHEET):
        name = "registration_sheet.png" if page == 0 else f"registration_sheet_{page // ROWS_PER_SHEET + 1}.png"
        write_png(folder / name, figures.sheet(rows[page:page + ROWS_PER_SHEET], SHEET_SIDE))
