"""Read every case as training would and report what is wrong, case by case.

Used by `fundus2video data check PATH` and, before training, by the DataModule: a bad case
stops training with the same list unless `data.skip_bad_cases` is set. Nothing is dropped
silently.

Where a case carries a lesion mask (`lesion.png`: the dynamic lesions), the report also gives the
knowledge mask's IoU with it inside the field of view (`km_lesion_iou`, the table's `km/lesion`,
and its median over the set): how far the unsupervised mask that guides the method is from the
annotated lesions.

With `registration` (`data check --registration`) each case's frames are also registered onto its first
frame (`fundus2video.registration`), and the table gets a `motion_px` column: how misaligned the data set
is, without changing it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from fundus2video.data_modules.cases import CaseError, CaseRecord, image_size, load_case
from fundus2video.knowledge import FRAME_MIN, crop_to_roi, knowledge_mask


@dataclass
class CaseReport:
    case_id: str
    patient_id: str
    eye: str
    n_frames: int = 0
    phases: str = ""  # e.g. "V:4 L:4"
    image_size: str = ""  # W x H of the CF
    roi_fraction: float = float("nan")  # share of the CF inside the field of view
    km_fraction: float = float("nan")  # share of the field of view inside the knowledge mask
    # IoU of the knowledge mask with the lesion mask in the field of view: NaN without a lesion
    # mask, or when both are empty
    km_lesion_iou: float = float("nan")
    # with `registration`: how far the frames have moved against the first (median over the frames of
    # each one's mean displacement, pixels of the stored images), and how many could not be estimated
    motion_px: float = float("nan")
    motion_unsure: int = 0
    problem: str = ""  # empty when the case is usable

    @property
    def ok(self) -> bool:
        return not self.problem


def _too_few(n: int, min_frames: int) -> str:
    return f"only {n} frame(s), need at least {min_frames} (window K + 1)"


def check_case(rec: CaseRecord, size: int, min_frames: int, per_phase: int, n_frames: int,
               km_threshold: float, registration: bool = False) -> CaseReport:
    """Load `rec` deterministically (as validation does) and measure it; never raises. `registration`:
    also estimate the frames' motion against the first (`fundus2video data check --registration`)."""
    report = CaseReport(rec.case_id, rec.patient_id, rec.eye)
    if rec.frames and len(rec.frames) < min_frames:  # frame files listed: too few is the first thing to say
        report.problem = _too_few(len(rec.frames), min_frames)
        return report
    if rec.frames:  # training draws any listed frame, the check reads a selection: all are sized here
        sizes = {}
        for frame in rec.frames:
            sizes.setdefault(image_size(frame.path), []).append(frame.path.name)
        known = {k: v for k, v in sizes.items() if k is not None}
        if len(known) > 1:
            (common, _), *others = sorted(known.items(), key=lambda kv: -len(kv[1]))
            odd = [name for _, names in others for name in names]
            report.problem = (f"frames differ in size: {', '.join(odd[:3])}{' ...' if len(odd) > 3 else ''} "
                              f"not {common[0]}x{common[1]} like the others")
            return report
    try:
        raw = load_case(rec, per_phase, n_frames, rng=None)
    except CaseError as err:
        report.problem = str(err)
        return report
    report.n_frames = len(raw.frames)
    report.image_size = f"{raw.cf.shape[1]}x{raw.cf.shape[0]}"
    report.phases = " ".join(f"{p}:{n}" for p, n in Counter(raw.phases).items() if p)
    if len(raw.frames) < min_frames:
        report.problem = _too_few(len(raw.frames), min_frames)
        return report
    black = [name for name, f in zip(raw.frame_names, raw.frames, strict=True) if f.max() <= FRAME_MIN]
    if black:
        report.problem = f"all-black frame(s): {', '.join(black[:4])}{' ...' if len(black) > 4 else ''}"
        return report
    # an angiogram has a dark border outside the field of view: a frame without one dark pixel is blank
    white = [name for name, f in zip(raw.frame_names, raw.frames, strict=True) if f.min() >= 255 - FRAME_MIN]
    if white:
        report.problem = f"all-white frame(s): {', '.join(white[:4])}{' ...' if len(white) > 4 else ''}"
        return report
    # one grey level everywhere (a test card, a failed export): no angiogram, and no dark border either
    flat = [name for name, f in zip(raw.frame_names, raw.frames, strict=True) if int(f.max()) - int(f.min()) <= 2]
    if flat:
        report.problem = f"uniform frame(s), one grey level: {', '.join(flat[:4])}{' ...' if len(flat) > 4 else ''}"
        return report
    try:
        crop = crop_to_roi(raw.cf, raw.frames, {"lesion": raw.lesion} if raw.lesion is not None else None)
    except ValueError:
        report.problem = "empty field of view: no pixel has CF green > 11 and every frame > 2"
        return report
    roi = crop["roi"]
    report.roi_fraction = float(roi.sum()) / (raw.cf.shape[0] * raw.cf.shape[1])
    small = [cv2.resize(crop["frames"][i], (size, size), interpolation=cv2.INTER_AREA) / 255.0 for i in (0, -1)]
    roi_small = cv2.resize(roi.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    km = knowledge_mask(small[0], small[1], km_threshold) & roi_small
    report.km_fraction = float(km.sum()) / max(1, int(roi_small.sum()))
    if raw.lesion is not None:  # resized as the datasets resize masks (nearest)
        lesion = cv2.resize(crop["lesion"].astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
        lesion &= roi_small
        union = int((km | lesion).sum())
        report.km_lesion_iou = float((km & lesion).sum()) / union if union else float("nan")
    if registration:
        _measure_motion(report, raw.frames)
    return report


MOTION_WORK_SIDE = 256  # the motion estimate's resolution: a check, not a registration to write


def _measure_motion(report: CaseReport, frames: np.ndarray) -> None:
    from fundus2video.registration.estimate import register_frames

    results = register_frames(frames, "similarity", work_side=MOTION_WORK_SIDE)[1:]
    moved = [r.extent.motion_px for r in results if r.ok]
    report.motion_px = float(np.median(moved)) if moved else float("nan")
    report.motion_unsure = sum(not r.ok for r in results)


def check_records(records: list[CaseRecord], size: int, min_frames: int, per_phase: int,
                  n_frames: int, km_threshold: float, progress: bool = True,
                  registration: bool = False) -> list[CaseReport]:
    """Reports for every record (in order), duplicate case ids included; `registration`: with the frames'
    estimated motion (slower)."""
    counts = Counter(r.case_id for r in records)
    reports = []
    # delay: no bar for a check that ends (or fails) within a second
    for rec in tqdm(records, desc="checking cases", unit="case", disable=not progress, leave=False, delay=1.0):
        if counts[rec.case_id] > 1:
            reports.append(CaseReport(rec.case_id, rec.patient_id, rec.eye,
                                      problem=f"duplicate case id ({counts[rec.case_id]} cases share it)"))
            continue
        if rec.problem:
            reports.append(CaseReport(rec.case_id, rec.patient_id, rec.eye, problem=rec.problem))
            continue
        reports.append(check_case(rec, size, min_frames, per_phase, n_frames, km_threshold, registration))
    return reports


def shown(text: str) -> str:
    """A name as a terminal may print it: control characters (escape sequences, newlines) escaped, so
    a folder's name can neither forge output lines nor drive the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def format_table(reports: list[CaseReport], n_frames: int = 0) -> str:
    """A plain-text table, one row per case, then the bad cases with their reasons. `n_frames`: the
    frames per video asked for (`data.n_frames`), to name the cases that have fewer."""
    header = ["case", "patient", "eye", "frames", "phases", "size", "roi", "km", "km/lesion", "status"]
    rows = [[shown(r.case_id), shown(r.patient_id), shown(r.eye) or "-", str(r.n_frames) if r.n_frames else "-",
             r.phases or "-", r.image_size or "-",
             "-" if np.isnan(r.roi_fraction) else f"{r.roi_fraction:.0%}",
             "-" if np.isnan(r.km_fraction) else f"{r.km_fraction:.1%}",
             "-" if np.isnan(r.km_lesion_iou) else f"{r.km_lesion_iou:.2f}",
             "ok" if r.ok else "BAD"] for r in reports]
    motion = any(not np.isnan(r.motion_px) or r.motion_unsure for r in reports)
    if motion:  # measured only when asked (--registration): the column is there only then
        header.insert(-1, "motion_px")
        for r, row in zip(reports, rows, strict=True):
            cell = "-" if np.isnan(r.motion_px) else f"{r.motion_px:.1f}"
            row.insert(-1, cell + (f"({r.motion_unsure}?)" if r.motion_unsure else ""))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    bad = [r for r in reports if not r.ok]
    good = [r for r in reports if r.ok]
    frames = [r.n_frames for r in good]
    out.append("")
    out.append(f"{len(reports)} cases, {len(good)} ok, {len(bad)} bad"
               + (f"; frames per case {min(frames)}..{max(frames)}" if frames else ""))
    if line_iou := km_lesion_line(good):
        out.append(line_iou)
    if motion and (line_motion := motion_line(good)):
        out.append(line_motion)
    out += [f"BAD {shown(r.case_id)}: {shown(r.problem)}" for r in bad]
    if note := short_note(good, n_frames):
        out.append(f"NOTE {note}")
    return "\n".join(out)


def km_lesion_line(good: list[CaseReport]) -> str:
    """One line summing up the knowledge mask's IoU with the lesion masks over the cases that have
    one, or ''."""
    ious = [r.km_lesion_iou for r in good if not np.isnan(r.km_lesion_iou)]
    if not ious:
        return ""
    return (f"knowledge mask vs lesion mask: IoU median {np.median(ious):.2f} (min {min(ious):.2f}, max "
            f"{max(ious):.2f}) over {len(ious)} case(s) with a lesion mask")


MOTION_NOTE_PX = 1.0  # frames moved more than this (median case): registration is worth running


def motion_line(good: list[CaseReport]) -> str:
    """One line summing up the frames' motion against each case's first frame (data check --registration)."""
    moved = [r for r in good if not np.isnan(r.motion_px)]
    unsure = sum(r.motion_unsure for r in good)
    if not moved:
        return f"frame motion: not estimated ({unsure} frame(s) could not be registered)" if unsure else ""
    worst = max(moved, key=lambda r: r.motion_px)
    text = (f"frame motion against the first frame: median {np.median([r.motion_px for r in moved]):.1f} px over "
            f"{len(moved)} case(s) (max {worst.motion_px:.1f} px, {worst.case_id})")
    if unsure:
        text += f"; {unsure} frame(s) could not be registered (marked ?)"
    if np.median([r.motion_px for r in moved]) > MOTION_NOTE_PX:
        text += "; align them with: fundus2video data register SRC --out DIR"
    return text


def short_note(good: list[CaseReport], n_frames: int) -> str:
    """A line naming the usable cases with fewer frames than asked for (used with all they have), or ''.
    Cases read by phase (a manifest's per_phase) are not counted: their length is per_phase x phases."""
    short = [r for r in good if not r.phases and 0 < r.n_frames < n_frames]
    if not short:
        return ""
    names = ", ".join(shown(r.case_id) for r in short[:4]) + (" ..." if len(short) > 4 else "")
    return (f"{len(short)} case(s) have fewer frames than data.n_frames={n_frames} and are used with all "
            f"they have ({min(r.n_frames for r in short)}..{max(r.n_frames for r in short)}): {names}")


def bad_cases_message(reports: list[CaseReport]) -> str:
    """Every bad case with its reason, one per line (for a log)."""
    bad = [r for r in reports if not r.ok]
    return f"{len(bad)} bad case(s):\n" + "\n".join(f"  {shown(r.case_id)}: {shown(r.problem)}" for r in bad)


def bad_cases_line(reports: list[CaseReport], limit: int = 3) -> str:
    """The bad cases in one line (an error): the first `limit` with their reasons, then a count."""
    bad = [r for r in reports if not r.ok]
    first = "; ".join(f"{shown(r.case_id)}: {shown(r.problem)}" for r in bad[:limit])
    return f"{len(bad)} bad case(s): {first}" + (f"; and {len(bad) - limit} more" if len(bad) > limit else "")
