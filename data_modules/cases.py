"""Cases on disk: the two layouts, frame selection and reading, with errors that name the file.

(Long because every way a case on disk can be wrong is said here, next to where it is read.)

Layouts (chosen by `data.source`):
- `folders`: `<root>/<case>/cf.(png|jpg|jpeg|tif|tiff)` with either `ffa.mp4` (read with
  decord, decoding only the frames used) or `ffa/` holding frame images in name order;
  optional `lesion.png`; optional `<root>/cases.csv` with columns case_id, patient_id, eye,
  times (frame times in seconds separated by ';').
- `manifest`: a CSV in the authors' style, one row per FFA frame (patient, eye, CF path,
  frame path, phase, time order; column names configurable; paths relative to the CSV).
  Rows of one patient's eye form a case. Phases are dropped/merged as configured and frames
  drawn per phase: with replacement at train time (then de-duplicated and sorted by time, as
  the release does), evenly spaced and deterministic at val/test.
Images may be 8- or 16-bit; frames may be grayscale or stored as RGB (the green channel is
used); everything is returned as 8-bit.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# OpenCV's own ceiling (read when it first decodes) matches ours, for the formats Pillow cannot size
from fundus2video.limits import MAX_CASE_ROWS, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE  # noqa: I001 (before cv2, which reads the env)

os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from fundus2video.errors import CaseError  # noqa: E402

log = logging.getLogger("fundus2video")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv")


@dataclass
class Frame:
    path: Path  # an image file, or the video file holding the frame
    index: int | None = None  # frame number inside a video
    time: float | None = None  # seconds (or any increasing order)
    phase: str | None = None


@dataclass
class CaseRecord:
    case_id: str
    patient_id: str
    eye: str
    cf: Path
    frames: list[Frame] = field(default_factory=list)  # candidates in time order (image layouts)
    video: Path | None = None  # folders layout with ffa.mp4: frames are chosen when loading
    times: list[float] | None = None  # per video frame (cases.csv), if known
    lesion: Path | None = None
    regions: dict[str, Path] = field(default_factory=dict)  # lesion_<kind>.png, vessels.png (scoring only)
    problem: str = ""  # a problem found while listing the case (e.g. conflicting manifest rows)
    colour_check: bool = True  # refuse a CF that is not orange-red (data.fundus_check)


@dataclass
class RawCase:
    """A case as read from disk: cf (H, W, 3) uint8 RGB, frames (T, H, W) uint8."""

    cf: np.ndarray
    frames: np.ndarray
    times: np.ndarray
    phases: list[str]
    lesion: np.ndarray | None = None
    frame_names: list[str] = field(default_factory=list)
    regions: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (H, W) bool, for scoring


# ------------------------------------------------------------------ reading pixels
def _to_uint8(img: np.ndarray, path: Path) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:  # 16-bit: scale to 8-bit (65535 -> 255)
        peak = int(img.max())
        if 255 < peak < 4096:  # read as 16 bits it would be nearly black, and judged so
            raise CaseError(f"{path}: a 16-bit image whose values stop at {peak} (a 10- or 12-bit camera's samples "
                            "stored without scaling?); expected the 16-bit range: save it scaled to 0..65535, or as "
                            "8-bit")
        return (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    raise CaseError(f"{path}: unsupported pixel type {img.dtype} (expected 8- or 16-bit)")


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as the file's header declares it, read without decoding the pixels (None when
    the header is not one Pillow knows; OpenCV's own pixel ceiling then still applies)."""
    from PIL import Image

    ceiling = Image.MAX_IMAGE_PIXELS
    try:
        # Pillow's own bomb check would hide the declared size; the caller's ceiling says it in one line
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                return img.size
    except Exception:  # noqa: BLE001 - unknown or broken headers: left to OpenCV's reading and message
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = ceiling


def read_image(path: Path) -> np.ndarray:
    """(H, W) grayscale or (H, W, 3) RGB uint8; alpha dropped. The header's size is checked before any
    pixel is decoded: a small file can declare a picture of billions of pixels."""
    if not path.is_file():
        raise CaseError(f"missing file: {path}")
    size = image_size(path)
    if size is not None and (size[0] * size[1] > MAX_IMAGE_PIXELS or max(size) > MAX_IMAGE_SIDE):
        raise CaseError(f"{path}: the image declares {size[0]}x{size[1]} pixels (expected at most "
                        f"{MAX_IMAGE_SIDE} a side and {MAX_IMAGE_PIXELS // 1_000_000} megapixels)")
    # JPEGs are 8-bit and carry the camera's EXIF orientation, which IMREAD_COLOR applies (and
    # IMREAD_UNCHANGED, needed for 16-bit PNG and TIFF, would ignore)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    try:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR if jpeg else cv2.IMREAD_UNCHANGED)
    except cv2.error as err:  # e.g. past OpenCV's own pixel ceiling, for formats Pillow cannot size
        detail = " ".join(str(err).split())[-200:]  # OpenCV's message names its source file first
        raise CaseError(f"unreadable image: {path} ({detail})") from None
    if img is None or img.size == 0:
        raise CaseError(f"unreadable image: {path}")
    img = _to_uint8(img, path)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)
    return img


MIN_CF_SIDE = 16  # below this a photo holds no fundus worth a frame (data.size is at least 16 too)
MIN_CF_STD = 4.0  # grey levels: a uniform picture (white, black, grey) has no anatomy
# a colour fundus photo is orange-red inside its field of view (dark and red-free-looking ones still
# have red above green); noise and grey pictures have R, G and B alike
RED_OVER_GREEN, RED_OVER_BLUE = 1.05, 1.15


def check_fundus_photo(rgb: np.ndarray, path: Path | str, colour: bool = True) -> None:
    """Stop (CaseError) at what no colour fundus photo is: tiny, uniform inside its field of view,
    or (`colour`) not orange-red there (noise, grey-scale or most other pictures; pseudo-colour
    cameras such as Optos are green-dominant: turn the colour test off for them). rgb (H, W, 3) uint8."""
    from fundus2video.knowledge import fov_mask

    h, w = rgb.shape[:2]
    if min(h, w) < MIN_CF_SIDE:
        raise CaseError(f"{path}: the colour fundus photo is {w}x{h} (expected at least {MIN_CF_SIDE} pixels a side)")
    roi = fov_mask(rgb)
    if not roi.any():
        return  # the field-of-view step reports an empty field of view in its own words
    inside = rgb[roi].astype(np.float32)
    std = float(inside.std(axis=0).max())
    if std < MIN_CF_STD:
        raise CaseError(f"{path}: the photo is uniform (std {std:.1f} grey levels): not a colour fundus photo?")
    r, g, b = (float(v) for v in inside.mean(axis=0))
    if colour and (r < RED_OVER_GREEN * g or r < RED_OVER_BLUE * b):
        raise CaseError(f"{path}: the field of view is not orange-red (mean R, G, B = {r:.0f}, {g:.0f}, {b:.0f}): "
                        "not a colour fundus photo? (pseudo-colour photos: data.fundus_check=false, "
                        "generate --no-fundus-check)")


def read_cf(path: Path, colour_check: bool = True) -> np.ndarray:
    img = read_image(path)
    if img.ndim != 3:
        raise CaseError(f"{path}: the colour fundus photo is grayscale (expected RGB)")
    check_fundus_photo(img, path, colour_check)
    return img


def read_frame(path: Path) -> np.ndarray:
    """An FFA frame as (H, W) uint8: grayscale as is, RGB through its green channel."""
    img = read_image(path)
    return img[..., 1] if img.ndim == 3 else img


def read_video_frames(path: Path, indices: list[int] | None, n_frames: int) -> tuple[np.ndarray, list[int]]:
    """Decode only the frames needed from a video: `indices`, or `n_frames` evenly spaced.

    Returns (T, H, W) uint8 green channel and the frame numbers.
    """
    import decord

    if not path.is_file():
        raise CaseError(f"missing file: {path}")
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        total = len(reader)
    except Exception as err:  # decord raises its own error types
        raise CaseError(f"unreadable video: {path} ({str(err).splitlines()[0][:120]})") from None
    if indices is None:
        indices = evenly_spaced(total, n_frames)
    try:
        frames = reader.get_batch(indices).asnumpy()[..., 1]
    except Exception as err:
        raise CaseError(f"truncated or corrupt video: {path} (could not decode frames "
                        f"{indices[0]}..{indices[-1]} of {total}: {str(err).splitlines()[0][:120]})") from None
    return frames, list(indices)


def video_times(path: Path, indices: list[int]) -> list[float] | None:
    """The presentation times (seconds) of a video's frames `indices`, from its container: a
    variable-frame-rate recording's frames are not evenly spaced in time. None when the container
    gives none that increase (then frame numbers stand in for times)."""
    import decord

    try:
        stamps = decord.VideoReader(str(path), num_threads=1).get_frame_timestamp(list(indices))[:, 0]
    except Exception:  # noqa: BLE001  (decord's own error types; the frames themselves were readable)
        return None
    times = [float(t) for t in stamps]
    if len(times) != len(indices) or not all(np.isfinite(times)) or any(b <= a for a, b in zip(times, times[1:])):
        return None
    return times


def evenly_spaced(total: int, n: int) -> list[int]:
    """n indices spread over 0..total-1 including both ends (all of them if total <= n)."""
    if total <= n:
        return list(range(total))
    return sorted({int(round(i)) for i in np.linspace(0, total - 1, n)})


# ------------------------------------------------------------------ layouts
def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def read_csv_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV as people's tools write it: UTF-8 with or without Excel's byte
    order mark; a row with fewer or more fields than the header, or a byte that is not UTF-8,
    stops with the line named (never a guess at the encoding)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise CaseError(f"{path}:{line}: byte 0x{data[err.start]:02x} is not UTF-8 (save the CSV as UTF-8; "
                        "Excel: 'CSV UTF-8')") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))  # extras go under the key None, missing fields are None
    rows = []
    for row in reader:
        line = reader.line_num
        if None in row:
            raise CaseError(f"{path}:{line}: {len(reader.fieldnames) + len(row[None])} fields, the header has "
                            f"{len(reader.fieldnames)}")
        if any(v is None for v in row.values()):
            given = sum(v is not None for v in row.values())
            raise CaseError(f"{path}:{line}: {given} fields, the header has {len(reader.fieldnames)}")
        rows.append((line, row))
    return rows


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CaseError(f"{where}: '{text}' is not a number") from None
    if not np.isfinite(value):
        raise CaseError(f"{where}: '{text}' is not a finite number")
    return value


def _read_cases_csv(root: Path) -> dict[str, dict]:
    path = root / "cases.csv"
    if not path.is_file():
        return {}
    with open(path, "rb") as f:  # counted before parsing: a million rows take seconds and gigabytes
        n_lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    if n_lines > MAX_CASE_ROWS + 1:
        raise CaseError(f"{path}: {n_lines} lines (at most {MAX_CASE_ROWS} cases, one row each, are read)")
    rows = read_csv_rows(path)
    if rows and "case_id" not in rows[0][1]:
        raise CaseError(f"{path}: expected a case_id column (optional: patient_id, eye, times); found "
                        f"{', '.join(rows[0][1])}")
    out: dict[str, dict] = {}
    first_line: dict[str, int] = {}
    for line, row in rows:
        case_id = row["case_id"].strip()
        if not case_id:
            raise CaseError(f"{path}:{line}: empty case_id")
        if case_id in out:  # a second row would silently change the case's patient, eye or times
            raise CaseError(f"{path}:{line}: case {case_id} is listed twice (also on line {first_line[case_id]})")
        if "patient_id" in row and not row["patient_id"].strip():
            raise CaseError(f"{path}:{line}: case {case_id}: empty patient_id (splits group cases by patient)")
        times = row.get("times") or ""
        parsed = [_number(t.strip(), f"{path}:{line}: case {case_id}: times") for t in times.split(";")
                  if t.strip()] or None
        back = next((i for i in range(1, len(parsed or ())) if parsed[i] <= parsed[i - 1]), None)
        if back is not None:  # frames are ordered by name; times that go back pair them with the wrong phase
            raise CaseError(f"{path}:{line}: case {case_id}: times must increase frame by frame, found "
                            f"{parsed[back]:g} after {parsed[back - 1]:g}")
        out[case_id] = {"patient_id": (row.get("patient_id") or case_id).strip(),
                        "eye": (row.get("eye") or "").strip(), "times": parsed}
        first_line[case_id] = line
    return out


def _match_cases_csv(root: Path, meta: dict[str, dict], names: list[str]) -> None:
    """cases.csv's rows against the case folders: an id that differs from its folder's name only in
    letter case would leave the case without its patient (one patient's eyes split across training
    and test), so it stops; rows naming no folder at all are said once."""
    if not meta:
        return
    lower = {n.lower(): n for n in names}
    unmatched = [case_id for case_id in meta if case_id not in set(names)]
    for case_id in unmatched:
        if case_id.lower() in lower:
            raise CaseError(f"{root / 'cases.csv'}: case {case_id} has no folder; the folder "
                            f"{lower[case_id.lower()]} differs from it in letter case only (case ids are matched "
                            "exactly: rename one of them)")
    if unmatched:
        log.warning("%s: %d row(s) name no case folder and are not used (%s%s)", root / "cases.csv", len(unmatched),
                    ", ".join(unmatched[:3]), ", ..." if len(unmatched) > 3 else "")


def folder_records(root: str | Path) -> list[CaseRecord]:
    """One record per sub-folder of `root` (the folders layout). File problems surface when
    a case is loaded (see `check.py`), so one bad case never hides the others."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise CaseError(f"{root}: a file, not a folder of case folders (a manifest is a .csv file)")
    if not root.is_dir():
        raise CaseError(f"data folder not found: {root}")
    meta = _read_cases_csv(root)
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: _natural_key(p.name))
    _match_cases_csv(root, meta, [p.name for p in folders])
    records = []
    for case_dir in folders:
        info = meta.get(case_dir.name, {})
        cfs = _named(case_dir, "cf", IMAGE_EXTS)
        lesions = _named(case_dir, "lesion", (".png",))
        rec = CaseRecord(case_id=case_dir.name, patient_id=info.get("patient_id", case_dir.name),
                         eye=info.get("eye", ""), cf=cfs[0] if cfs else case_dir / "cf.png", times=info.get("times"),
                         lesion=lesions[0] if lesions else None, regions=region_files(case_dir))
        if len(cfs) > 1:  # which one is the photo is the user's call, not a silent choice
            rec.problem = f"two colour photos: {', '.join(p.name for p in cfs)} (keep one)"
        ffa_dirs = [p for p in case_dir.iterdir() if p.is_dir() and p.name.lower() == "ffa"]
        videos = _named(case_dir, "ffa", VIDEO_EXTS)
        if ffa_dirs:
            names = sorted((p for p in ffa_dirs[0].iterdir() if p.suffix.lower() in IMAGE_EXTS),
                           key=lambda p: _natural_key(p.name))
            times = rec.times if rec.times and len(rec.times) == len(names) else None
            rec.frames = [Frame(p, time=times[i] if times else float(i)) for i, p in enumerate(names)]
            if videos and not rec.problem:
                rec.problem = f"both {ffa_dirs[0].name}/ and {videos[0].name}: which is the angiogram? (keep one)"
        else:
            rec.video = videos[0] if videos else case_dir / "ffa.mp4"
            if len(videos) > 1 and not rec.problem:
                rec.problem = f"two angiogram videos: {', '.join(p.name for p in videos)} (keep one)"
        if not cfs and not rec.problem:
            others = sorted(p.name for p in case_dir.iterdir() if p.is_file())
            rec.problem = (f"missing file: {case_dir / 'cf.png'} (the colour photo: cf with one of "
                           f"{', '.join(IMAGE_EXTS)}; found {', '.join(others[:6]) or 'no files'})")
        records.append(rec)
    if not records:
        raise CaseError(f"{root}: no case folders found (expected <root>/<case>/cf.png with ffa.mp4 or ffa/)")
    return records


def manifest_records(csv_path: str | Path, columns: dict, drop_phases: list[str],
                     merge_phases: dict[str, str]) -> list[CaseRecord]:
    """Cases of a manifest CSV (one row per frame); `columns` maps our names to the CSV's:
    patient, eye, cf, frame, phase, time."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise CaseError(f"manifest not found: {csv_path}")
    rows = read_csv_rows(csv_path)
    if not rows:
        raise CaseError(f"{csv_path}: the manifest has no rows")
    missing = [f"{ours}='{theirs}'" for ours, theirs in columns.items() if theirs not in rows[0][1]]
    if missing:
        raise CaseError(f"{csv_path}: columns not found: {', '.join(missing)} "
                        f"(the CSV has: {', '.join(rows[0][1])}; set data.manifest.columns)")
    base = csv_path.parent
    cases: dict[str, CaseRecord] = {}
    seen_frames: dict[tuple[str, str], int] = {}
    dropped = 0
    for i, row in rows:
        phase = row[columns["phase"]].strip()
        if phase in drop_phases:
            dropped += 1
            continue
        phase = merge_phases.get(phase, phase)
        time = _number(row[columns["time"]].strip(), f"{csv_path}:{i}: time")
        patient, eye = row[columns["patient"]].strip(), row[columns["eye"]].strip()
        if not patient:
            raise CaseError(f"{csv_path}:{i}: empty patient id (column '{columns['patient']}')")
        key = (f"{patient}_{eye}", row[columns["frame"]].strip())
        if key in seen_frames:
            raise CaseError(f"{csv_path}:{i}: frame {key[1]} of {key[0]} is listed twice (also on line "
                            f"{seen_frames[key]})")
        seen_frames[key] = i
        case_id = f"{patient}_{eye}" if eye else patient
        rec = cases.setdefault(case_id, CaseRecord(case_id, patient, eye, base / row[columns["cf"]]))
        if rec.cf != base / row[columns["cf"]] and not rec.problem:
            rec.problem = (f"duplicate case id: manifest rows of {case_id} name two CF photos "
                           f"({rec.cf.name}, {row[columns['cf']]}; line {i})")
        rec.frames.append(Frame(base / row[columns["frame"]], time=time, phase=phase))
    if not cases:
        raise CaseError(f"{csv_path}: all {dropped} rows have a phase in data.manifest.drop_phases "
                        f"{list(drop_phases)}: no frames left")
    for rec in cases.values():
        rec.frames.sort(key=lambda fr: fr.time)
    return list(cases.values())


# ------------------------------------------------------------------ frame selection
def select_frames(frames: list[Frame], per_phase: int, n_frames: int,
                  rng: np.random.Generator | None) -> list[Frame]:
    """Frames to use, in time order.

    With phases (manifest): `per_phase` frames from each phase, drawn with replacement when
    `rng` is given (train; duplicates then dropped, as the release does), else evenly spaced.
    Without phases: `n_frames` evenly spaced, first and last included.
    """
    if not frames or frames[0].phase is None:
        return [frames[i] for i in evenly_spaced(len(frames), n_frames)]
    chosen: list[Frame] = []
    for phase in dict.fromkeys(f.phase for f in frames):  # phases in order of first appearance
        group = [f for f in frames if f.phase == phase]
        if rng is not None:
            picks = sorted(set(rng.integers(0, len(group), per_phase).tolist()))
        else:
            picks = evenly_spaced(len(group), per_phase)
        chosen += [group[i] for i in picks]
    return sorted(chosen, key=lambda f: f.time)


def load_case(rec: CaseRecord, per_phase: int, n_frames: int,
              rng: np.random.Generator | None = None) -> RawCase:
    """Read a case's CF, its selected frames and lesion mask; frames resized to the CF's size
    when they differ only in resolution. Raises CaseError naming the problem."""
    cf = read_cf(rec.cf, rec.colour_check)
    if rec.video is not None:
        frames, idx = read_video_frames(rec.video, None, n_frames)
        total = max(idx) + 1 if idx else 0  # the chosen frames always include the video's last
        if rec.times and len(rec.times) != total:
            raise CaseError(f"cases.csv: case {rec.case_id}: {len(rec.times)} times for the {total} frames of "
                            f"{rec.video} (expected one time per frame)")
        # cases.csv's times first; else the container's (a variable frame rate included); else frame numbers
        times = ([rec.times[i] for i in idx] if rec.times else video_times(rec.video, idx)
                 or [float(i) for i in idx])
        names, phases = [f"{rec.video.name}#{i}" for i in idx], [""] * len(idx)
    else:
        if not rec.frames:
            raise CaseError(f"case {rec.case_id}: no FFA frames found")
        if rec.times and len(rec.times) != len(rec.frames):
            raise CaseError(f"cases.csv: case {rec.case_id}: {len(rec.times)} times for the {len(rec.frames)} "
                            f"frames in {rec.frames[0].path.parent} (expected one time per frame)")
        chosen = select_frames(rec.frames, per_phase, n_frames, rng)
        frames = [read_frame(f.path) for f in chosen]
        shapes = {fr.shape for fr in frames}
        if len(shapes) > 1:
            raise CaseError(f"case {rec.case_id}: FFA frames differ in size {sorted(shapes)}")
        frames = np.stack(frames)
        times, phases = [f.time for f in chosen], [f.phase or "" for f in chosen]
        names = [f.path.name for f in chosen]
    frames = _match_size(cf, frames, rec)
    lesion = _read_mask(rec.lesion, cf) if rec.lesion is not None else None
    regions = {name: _read_mask(path, cf) for name, path in rec.regions.items()}
    return RawCase(cf, frames, np.asarray(times, np.float32), phases, lesion, names, regions)


def _named(folder: Path, stem: str, exts: tuple[str, ...]) -> list[Path]:
    """Files `<stem><ext>` in `folder`, the stem and extension in any case (CF.PNG, cf.jpeg)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.stem.lower() == stem and p.suffix.lower() in exts)


def region_files(case_dir: Path) -> dict[str, Path]:
    """Optional annotations used only for scoring: `lesion_<kind>.png` (one mask per lesion kind,
    e.g. lesion_leakage.png) and `vessels.png`."""
    found = {p.stem[len("lesion_"):]: p for p in sorted(case_dir.glob("lesion_*.png")) if len(p.stem) > 7}
    if (case_dir / "vessels.png").is_file():
        found["vessels"] = case_dir / "vessels.png"
    return found


def _read_mask(path: Path, cf: np.ndarray) -> np.ndarray:
    """A mask image at the CF's size, as bool (> 127)."""
    mask = read_frame(path)
    if mask.shape != cf.shape[:2]:
        (h, w), (mh, mw) = cf.shape[:2], mask.shape
        if abs(w / h - mw / mh) > 0.02 * (w / h):  # a mask of another picture: stretched, it would mark wrong pixels
            raise CaseError(f"{path}: the mask is {mw}x{mh} but the CF is {w}x{h} (a different aspect; expected a "
                            "mask drawn on this case's images)")
        mask = cv2.resize(mask, cf.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    return mask > 127


def _match_size(cf: np.ndarray, frames: np.ndarray, rec: CaseRecord) -> np.ndarray:
    (h, w), (fh, fw) = cf.shape[:2], frames.shape[1:3]
    if (h, w) == (fh, fw):
        return frames
    if abs(w / h - fw / fh) > 0.02 * (w / h):
        raise CaseError(f"case {rec.case_id}: CF is {w}x{h} but FFA frames are {fw}x{fh} "
                        f"(different aspect; CF and frames must be registered)")
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
