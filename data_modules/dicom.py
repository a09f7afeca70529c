"""Clinical DICOM in, case folders out: `fundus2video data import-dicom SRC --out DIR`.

Colour fundus photos (CF) and fluorescein angiograms leave the cameras as Ophthalmic
Photography objects (8 or 16 bit). This module walks a folder of them, reads headers only,
groups the objects by patient (PatientID), study (StudyInstanceUID) and eye (ImageLaterality,
else Laterality), tells the colour photo (RGB / YBR_*) from the angiogram frames (MONOCHROME1/2),
orders the frames by acquisition time and writes the folders layout `cases.py` reads:

    DIR/<case>/cf.png, DIR/<case>/ffa/000.png ..., DIR/cases.csv (case_id, patient_id, eye, times)

Pixel data is decoded only for what is written, one read per object. Nothing is dropped
silently: the `Report` lists every eye found and every file left aside with its reason.
Patient data: cases.csv never holds names, birth dates, accession numbers or dates; with
`anonymize` the patient ids become keyed pseudonyms (HMAC-SHA256), and the mapping back is
written only to a file the user names, outside the output folder.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import hmac
import logging
import math
import os
import re
import shutil
import struct
import tempfile
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pydicom
from tqdm import tqdm

from fundus2video.errors import UserError
from fundus2video.io import atomic_path, file_in_the_way, refuse_special, swap_folder_into_place

OP_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # Ophthalmic Photography 8 Bit Image Storage
OP_16BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.2"  # Ophthalmic Photography 16 Bit Image Storage
IMAGE_SOP_CLASSES = {OP_8BIT: "Ophthalmic Photography 8 Bit", OP_16BIT: "Ophthalmic Photography 16 Bit"}
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
DICOMDIR = "DICOMDIR"  # read_header's answer for an index file
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT")
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
EYES = {"R": "OD", "L": "OS"}
# Whole-object acquisition times, best first. The time-of-day-only sources are still usable:
# every frame of one angiogram is taken in one sitting, so differences between them hold.
TIME_SOURCES = ("AcquisitionDateTime", "AcquisitionDate+AcquisitionTime", "ContentDate+ContentTime",
                "AcquisitionTime", "ContentTime")
PIXEL_TAGS = {(0x7FE0, 0x0010): "PixelData", (0x7FE0, 0x0008): "FloatPixelData",
              (0x7FE0, 0x0009): "DoubleFloatPixelData"}
# frames of one DICOM file: past this, NumberOfFrames is corrupt (a file is read whole; a video's frames
# for training are fewer, limits.MAX_FRAMES, and are selected from it)
MAX_DICOM_FRAMES = 10_000
MAX_NAME = 96  # characters of a folder name made from a PatientID (the case folder adds eye and study)
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


class DicomImportError(UserError):
    """A usage problem with `import-dicom` (options, source or output folder); exit status 2."""


# ------------------------------------------------------------------ header facts
@dataclass
class DicomObject:
    """What the header of one DICOM image object says (no pixel data read)."""

    path: Path
    rel: str  # path relative to SRC, as reported
    patient_id: str
    study_uid: str
    study_order: tuple  # (StudyDate, StudyTime, StudyInstanceUID): orders a patient's visits
    eye: str  # OD / OS
    kind: str  # "cf" (colour photo) or "ffa" (angiogram frame(s))
    sop_uid: str
    photometric: str
    rows: int
    columns: int
    n_frames: int
    bits_allocated: int
    bits_stored: int
    instance: int | None
    transfer_syntax: str
    times: dict[str, datetime] = field(default_factory=dict)  # TIME_SOURCES -> object time
    frame_offsets: list[float] | None = None  # seconds of each frame from the object's first
    frame_source: str = ""  # FrameTimeVector / FrameTime, for multi-frame objects
    note: str = ""  # e.g. a FrameTimeVector that was ignored


@dataclass
class PlannedFrame:
    obj: DicomObject
    index: int  # frame number inside the object
    time: float | None  # seconds since the eye's first frame


@dataclass
class Eye:
    """One patient's eye in one study: the table row of the report."""

    patient_id: str  # original PatientID
    study_uid: str
    study_no: int  # 1, 2 ... per patient, in study date order
    eye: str
    cfs: list[DicomObject] = field(default_factory=list)
    objects: list[DicomObject] = field(default_factory=list)  # angiogram objects
    cf: DicomObject | None = None  # the colour photo used
    frames: list[PlannedFrame] = field(default_factory=list)
    time_source: str = ""
    case_id: str = ""
    label: str = ""  # the patient as shown and written: PatientID or its pseudonym
    problem: str = ""  # why the eye was left out; empty when written (or writable)
    written_frames: int = 0

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def times_known(self) -> bool:
        return bool(self.frames) and all(f.time is not None for f in self.frames)


@dataclass
class Report:
    src: Path
    out: Path
    eyes: list[Eye] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    notes: list[str] = field(default_factory=list)
    n_files: int = 0
    dry_run: bool = False
    written: bool = False
    pixel_reads: int = 0  # dcmread calls with pixel data (one per object written)
    anonymized: bool = False

    @property
    def exit_code(self) -> int:
        """2 when nothing importable was found (the source is not what the command takes), 1 when any eye
        found was left out, else 0."""
        if not self.eyes:
            return 2
        return 1 if any(not e.ok for e in self.eyes) else 0

    def format(self) -> str:
        return format_report(self)


# ------------------------------------------------------------------ pure helpers
def pseudonym(patient_id: str, key: str) -> str:
    """A stable pseudonym: `P` + the first 12 hex digits of HMAC-SHA256(key, PatientID)."""
    digest = hmac.new(key.encode("utf-8"), patient_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return "P" + digest[:12]


def safe_name(text: str) -> str:
    """A folder name from a patient id: letters, digits, '.', '_' and '-' only, never hidden."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    if len(name) > MAX_NAME:  # a file system's names stop at 255 bytes: keep it short, and still unique
        name = f"{name[:MAX_NAME - 13]}_{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"
    return name or "patient"


def _text(ds, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # a value pydicom cannot convert counts as absent
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else ""
    return str(value).replace("\x00", "").strip()


def _int(ds, keyword: str) -> int | None:
    text = _text(ds, keyword)
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None


def parse_dicom_datetime(date: str = "", time: str = "", dt: str = "") -> datetime | None:
    """A DT value, or a DA + TM pair (DA may be empty: time of day on a fixed date); None when
    missing or unreadable. Old ACR-NEMA separators (1999-01-31, 10:30:00) are accepted; a
    timezone offset is dropped (all frames of one sitting share it)."""
    from pydicom.valuerep import DA, DT, TM

    try:
        if dt:
            value = DT(dt.strip())
            return value.replace(tzinfo=None)
        if not time:
            return None
        day = DA(date.strip().replace("-", "").replace(".", "")) if date else None
        clock = TM(time.strip().replace(":", ""))
        return datetime.combine(day or datetime(2000, 1, 1).date(), clock)
    except (ValueError, TypeError, OverflowError):
        return None


def object_times(ds) -> dict[str, datetime]:
    """The object's acquisition time under each source of TIME_SOURCES that its header has."""
    found = {}
    adt = parse_dicom_datetime(dt=_text(ds, "AcquisitionDateTime"))
    if adt is not None:
        found["AcquisitionDateTime"] = adt
    for prefix in ("Acquisition", "Content"):
        date, time = _text(ds, f"{prefix}Date"), _text(ds, f"{prefix}Time")
        if date and time:
            value = parse_dicom_datetime(date, time)
            if value is not None:
                found[f"{prefix}Date+{prefix}Time"] = value
        if time:
            value = parse_dicom_datetime("", time)
            if value is not None:
                found[f"{prefix}Time"] = value
    return found


def frame_offsets(ds, n_frames: int) -> tuple[list[float] | None, str, str]:
    """Seconds of each frame of a multi-frame object from its first frame, the element used
    (FrameTimeVector, else FrameTime) and a note when an element had to be ignored."""
    note = ""
    try:
        raw = ds.get("FrameTimeVector")
        if raw is None or raw == "":
            vector = []
        elif isinstance(raw, (str, bytes, int, float)):
            vector = [float(raw)]
        else:
            vector = [float(v) for v in raw]
    except (TypeError, ValueError):
        vector, note = [], "FrameTimeVector unreadable (ignored)"
    if vector:
        if len(vector) == n_frames and all(math.isfinite(v) and v >= 0 for v in vector):
            # DICOM: the increments (ms) between frames, the first one 0
            return [float(t) / 1000.0 for t in np.cumsum(vector)], "FrameTimeVector", note
        note = f"FrameTimeVector has {len(vector)} values for {n_frames} frames (ignored)"
    try:
        frame_time = float(ds.get("FrameTime")) if ds.get("FrameTime") not in (None, "") else None
    except (TypeError, ValueError):
        frame_time = None
    if frame_time is not None and math.isfinite(frame_time) and frame_time > 0:
        return [i * frame_time / 1000.0 for i in range(n_frames)], "FrameTime", note
    return None, "", note


def eye_of(ds) -> str:
    """OD / OS from ImageLaterality, else Laterality; '' when neither says R or L."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = _text(ds, keyword).upper()
        if value:
            return EYES.get(value, "")
    return ""


def _decoder_problem(transfer_syntax: str) -> str:
    """Why pixel data of this transfer syntax cannot be decoded here ('' when it can)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(transfer_syntax)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"transfer syntax {_shown(uid)} has no pixel data decoder in pydicom"
    if decoder.is_available:
        return ""
    missing = "; ".join(decoder.missing_dependencies) or "no plugin"
    return (f"compressed ({uid.name}, {uid}) and no decoder is installed ({missing}); "
            f"`pip install 'fundus2video[dicom]'` adds pylibjpeg")


def _pixel_data_problem(fp, size: int, implicit: bool, little: bool, expected: int | None) -> str:
    """Look at the pixel data element that `dcmread(stop_before_pixels=True)` stopped in front of:
    '' when complete, else 'no pixel data' or why it is truncated. Reads a few bytes per frame."""
    pos = fp.tell()
    if pos >= size:
        return "no pixel data"
    end = "<" if little else ">"
    head = fp.read(8)
    if len(head) < 8:
        return "truncated file (inside the pixel data element's header)"
    tag = struct.unpack(end + "HH", head[:4])
    if tag not in PIXEL_TAGS:
        return ""  # not where pydicom stops; let the pixel read decide
    if tag != (0x7FE0, 0x0010):
        return f"{PIXEL_TAGS[tag]} (floating point pixels) is not supported"
    if implicit:
        length, start = struct.unpack(end + "L", head[4:8])[0], pos + 8
    elif head[4:6] in LONG_VRS:
        extra = fp.read(4)
        if len(extra) < 4:
            return "truncated file (inside the pixel data element's header)"
        length, start = struct.unpack(end + "L", extra)[0], pos + 12
    else:
        length, start = struct.unpack(end + "H", head[6:8])[0], pos + 8
    if length != 0xFFFFFFFF:  # native pixel data
        if start + length > size:
            return f"truncated file (pixel data has {max(0, size - start)} of {length} bytes)"
        if expected is not None and length < expected:
            return f"pixel data is {length} bytes, the header's image size needs {expected}"
        return ""
    fp.seek(start)  # encapsulated: items until the sequence delimiter, always little endian
    while True:
        item = fp.read(8)
        if len(item) < 8:
            return "truncated file (encapsulated pixel data ends without its delimiter)"
        group, elem, item_len = struct.unpack("<HHL", item)
        if (group, elem) == (0xFFFE, 0xE0DD):
            return ""
        if (group, elem) != (0xFFFE, 0xE000) or item_len == 0xFFFFFFFF:
            return "corrupt encapsulated pixel data (unexpected element inside)"
        if fp.tell() + item_len > size:
            return "truncated file (inside an encapsulated pixel data fragment)"
        fp.seek(item_len, os.SEEK_CUR)


def read_header(path: Path, rel: str) -> DicomObject | str:
    """The header of one file (pixel data not read), or why the file is left aside."""
    try:
        with _quiet():  # values are converted (and warned about) when first read, so all of it
            return _read_header(path, rel)
    except Exception as err:  # a header odd enough to trip the checks still gets its one line
        return f"unreadable DICOM header ({type(err).__name__}: {_one_line(err)})"


def _read_header(path: Path, rel: str) -> DicomObject | str:
    try:
        size = path.stat().st_size
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            sop_class = _text(ds, "SOPClassUID") or _text(ds.file_meta, "MediaStorageSOPClassUID")
            if sop_class == DICOMDIR_SOP_CLASS:
                return DICOMDIR
            if sop_class not in IMAGE_SOP_CLASSES:
                from pydicom.uid import UID

                name = UID(sop_class).name if sop_class else "none"
                return (f"SOP class {name} ({sop_class or '-'}) is not Ophthalmic Photography (8 or 16 bit)"
                        if name != sop_class else f"unknown SOP class {_shown(sop_class) or '(none)'}")
            transfer_syntax = _text(ds.file_meta, "TransferSyntaxUID") or "1.2.840.10008.1.2"
            rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
            n_frames = _int(ds, "NumberOfFrames")
            n_frames = 1 if n_frames is None else n_frames  # absent: one frame; 0 is said as found
            bits, samples = _int(ds, "BitsAllocated"), _int(ds, "SamplesPerPixel") or 1
            expected = rows * columns * samples * (bits // 8) * n_frames if rows and columns and bits else None
            implicit, little = ds.original_encoding if ds.original_encoding[0] is not None else (False, True)
            pixel = "" if transfer_syntax == "1.2.840.10008.1.2.1.99" else _pixel_data_problem(
                fp, size, bool(implicit), bool(little), expected)  # deflated: no byte positions
    except pydicom.errors.InvalidDicomError:
        return "not DICOM (no 'DICM' file header)"
    except (OSError, EOFError, struct.error) as err:
        return f"unreadable file ({type(err).__name__}: {_one_line(err)})"
    except Exception as err:  # pydicom raises many kinds for malformed headers
        return f"unreadable DICOM header ({type(err).__name__}: {_one_line(err)})"
    if pixel:
        return pixel
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if photometric in COLOUR:
        kind = "cf"
    elif photometric in MONOCHROME:
        kind = "ffa"
    else:
        return (f"unknown photometric interpretation '{_shown(photometric) or '(none)'}' "
                f"(expected RGB, YBR_* or MONOCHROME*)")
    patient_id = _text(ds, "PatientID")
    if not patient_id:
        return "no PatientID"
    eye = eye_of(ds)
    if not eye:
        said = _text(ds, "ImageLaterality") or _text(ds, "Laterality")
        return (f"laterality '{_shown(said)}' is neither R nor L" if said
                else "no laterality (ImageLaterality / Laterality)")
    if not rows or not columns:
        return "no image size (Rows / Columns)"
    if not 1 <= n_frames <= MAX_DICOM_FRAMES:
        return f"NumberOfFrames {n_frames} is not plausible (1..{MAX_DICOM_FRAMES})"
    if bits not in (8, 16):
        return f"BitsAllocated {bits} is not supported (8 or 16)"
    if _int(ds, "PixelRepresentation") == 1:
        return "signed pixel data is not supported"
    problem = _decoder_problem(transfer_syntax)
    if problem:
        return problem
    offsets, frame_source, note = frame_offsets(ds, n_frames) if n_frames > 1 else (None, "", "")
    study_uid = _text(ds, "StudyInstanceUID")
    return DicomObject(
        path=path, rel=rel, patient_id=patient_id, study_uid=study_uid,
        study_order=(_text(ds, "StudyDate"), _text(ds, "StudyTime"), study_uid), eye=eye, kind=kind,
        sop_uid=_text(ds, "SOPInstanceUID"), photometric=photometric, rows=rows, columns=columns,
        n_frames=n_frames, bits_allocated=bits, bits_stored=min(_int(ds, "BitsStored") or bits, bits),
        instance=_int(ds, "InstanceNumber"), transfer_syntax=transfer_syntax, times=object_times(ds),
        frame_offsets=offsets, frame_source=frame_source, note=note)


@contextlib.contextmanager
def _quiet():
    """pydicom warns about every odd value it reads and logs decoder failures with their
    tracebacks; the report says what went wrong in one line instead."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _printable(text: str) -> str:
    """Header values and file names as one printable line (odd bytes shown as '?')."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def _shown(text: str, limit: int = 64) -> str:
    text = _printable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(err: BaseException, limit: int = 240) -> str:
    text = re.sub(r" ?<[^<>]* at 0x[0-9a-fA-F]+>", "", str(err))  # object addresses say nothing
    parts = [part.strip() for part in text.splitlines() if part.strip()]
    text = "".join(p + ("" if i == len(parts) - 1 else " " if p.endswith(":") else "; ")
                   for i, p in enumerate(parts)) or type(err).__name__
    return _shown(text, limit)


# ------------------------------------------------------------------ planning (pure)
def choose_cf(cfs: list[DicomObject]) -> tuple[DicomObject, str]:
    """The colour photo of an eye when there are several: the latest acquisition time, then the
    highest InstanceNumber, then the last file name. Returns it and why it won."""
    source = next((s for s in TIME_SOURCES if all(s in c.times for c in cfs)), None)

    def key(c: DicomObject):
        return (c.times[source] if source else datetime.min, c.instance if c.instance is not None else -1, c.rel)

    ranked = sorted(cfs, key=key, reverse=True)
    best, second = ranked[0], ranked[1]
    if source and best.times[source] != second.times[source]:
        why = f"later {source}"
    elif best.instance is not None and best.instance != second.instance:
        why = "higher InstanceNumber" + ("" if source else " (no acquisition time on all of them)")
    else:
        why = "last file name (same acquisition time and InstanceNumber)"
    return best, why


def order_frames(objects: list[DicomObject]) -> tuple[list[PlannedFrame], str, list[tuple[DicomObject, str]]]:
    """Every angiogram frame of one eye in acquisition order, with seconds since the first.

    The object time comes from the best source of TIME_SOURCES that all objects have; when no
    source covers them all, the one covering most (more than half) is used and objects without
    it are left aside; failing that, InstanceNumber orders the objects and times stay unknown.
    Frames inside a multi-frame object follow FrameTimeVector or FrameTime.
    Returns (frames, the time source in words, [(object left aside, reason)]).
    """
    left: list[tuple[DicomObject, str]] = []
    source = next((s for s in TIME_SOURCES if all(s in o.times for o in objects)), None)
    if source is None and len(objects) > 1:
        counts = {s: sum(s in o.times for o in objects) for s in TIME_SOURCES}
        best = max(TIME_SOURCES, key=lambda s: (counts[s], -TIME_SOURCES.index(s)))
        if counts[best] * 2 > len(objects):
            source = best
            left = [(o, f"frame with no time: no {best}, which the other frames of this eye have")
                    for o in objects if best not in o.times]
            objects = [o for o in objects if best in o.times]
    if len(objects) == 1:
        o = objects[0]
        if o.n_frames == 1:
            return [PlannedFrame(o, 0, 0.0)], source or "single frame", left
        if o.frame_offsets is not None:
            return [PlannedFrame(o, i, t) for i, t in enumerate(o.frame_offsets)], o.frame_source, left
        return [PlannedFrame(o, i, None) for i in range(o.n_frames)], "stored frame order (no FrameTime)", left

    def instance(o: DicomObject) -> tuple:
        return (o.instance is None, o.instance or 0, o.rel)

    multi = sorted({o.frame_source for o in objects if o.n_frames > 1})
    untimed = [o for o in objects if o.n_frames > 1 and o.frame_offsets is None]
    if source is not None and not untimed:
        start = min(o.times[source] for o in objects)
        frames = [PlannedFrame(o, i, (o.times[source] - start).total_seconds() + (o.frame_offsets or [0.0])[i])
                  for o in objects for i in range(o.n_frames)]
        frames.sort(key=lambda f: (f.time, instance(f.obj), f.index))
        t0 = frames[0].time
        frames = [PlannedFrame(f.obj, f.index, round(f.time - t0, 6)) for f in frames]
        return frames, " + ".join([source, *multi]), left
    if source is not None:  # objects in time order, but one multi-frame object has no frame times
        ordered = sorted(objects, key=lambda o: (o.times[source], instance(o)))
        words = f"{source}, object order only ({untimed[0].rel} has no FrameTime; times unknown)"
    else:
        ordered = sorted(objects, key=instance)
        words = "InstanceNumber (times unknown)" if all(o.instance is not None for o in objects) else \
            "InstanceNumber, then file name (times unknown)"
    return [PlannedFrame(o, i, None) for o in ordered for i in range(o.n_frames)], words, left


def plan(objects: list[DicomObject], key: str | None = None,
         min_frames: int = 2) -> tuple[list[Eye], list[tuple[str, str]]]:
    """Group header facts into eyes, pick each eye's colour photo, order its frames and name
    the cases. Returns the eyes (in patient, study, eye order) and the files left aside."""
    skipped: list[tuple[str, str]] = []
    seen: dict[str, DicomObject] = {}
    unique = []
    for o in sorted(objects, key=lambda o: o.rel):
        if o.sop_uid and o.sop_uid in seen:
            skipped.append((o.rel, f"duplicate of {seen[o.sop_uid].rel} (same SOPInstanceUID)"))
            continue
        seen.setdefault(o.sop_uid, o)
        unique.append(o)
    studies: dict[str, dict[str, tuple]] = defaultdict(dict)
    groups: dict[tuple[str, str, str], Eye] = {}
    for o in unique:
        order = studies[o.patient_id].get(o.study_uid)
        studies[o.patient_id][o.study_uid] = min(order, o.study_order) if order else o.study_order
    study_no = {(p, uid): i + 1 for p, found in studies.items()
                for i, (uid, _) in enumerate(sorted(found.items(), key=lambda kv: kv[1]))}
    for o in unique:
        eye = groups.setdefault((o.patient_id, o.study_uid, o.eye),
                                Eye(o.patient_id, o.study_uid, study_no[(o.patient_id, o.study_uid)], o.eye))
        (eye.cfs if o.kind == "cf" else eye.objects).append(o)
    eyes = sorted(groups.values(), key=lambda e: (e.patient_id, e.study_no, e.eye))
    cf_elsewhere = {(e.patient_id, e.eye) for e in eyes if e.cfs}
    for eye in eyes:
        eye.label = pseudonym(eye.patient_id, key) if key is not None else _printable(eye.patient_id)
        if eye.cfs:
            eye.cf, why = (eye.cfs[0], "") if len(eye.cfs) == 1 else choose_cf(eye.cfs)
            for other in eye.cfs:
                if other is not eye.cf:
                    skipped.append((other.rel, f"another colour photo of {eye.label} {eye.eye} "
                                               f"(study {eye.study_no}): took {eye.cf.rel} ({why})"))
        if eye.objects:
            sizes = Counter((o.columns, o.rows) for o in eye.objects)
            size = max(sizes, key=lambda s: (sizes[s], s))
            for o in eye.objects:
                if (o.columns, o.rows) != size:
                    skipped.append((o.rel, f"frame size {o.columns}x{o.rows} differs from the rest of the "
                                           f"angiogram of {eye.label} {eye.eye} ({size[0]}x{size[1]})"))
            kept = [o for o in eye.objects if (o.columns, o.rows) == size]
            eye.frames, eye.time_source, left = order_frames(kept)
            skipped += [(o.rel, reason) for o, reason in left]
        if not eye.cfs:
            hint = (" (one is in another study of this patient; CF and angiogram are paired within a study)"
                    if (eye.patient_id, eye.eye) in cf_elsewhere else "")
            eye.problem = f"angiogram with no colour photo of the same eye{hint}"
        elif not eye.objects:
            eye.problem = "colour photo with no angiogram"
        elif len(eye.frames) < min_frames:
            eye.problem = f"only {len(eye.frames)} angiogram frame(s), need at least {min_frames}"
    _name_cases(eyes)
    return eyes, skipped


def _name_cases(eyes: list[Eye]) -> None:
    """`<patient>_<eye>`, with `_<study number>` when the patient's eye is in several studies;
    names made unique after cleaning (two ids may clean to the same folder name)."""
    per_eye = Counter((e.patient_id, e.eye) for e in eyes)
    taken: set[str] = set()
    for e in eyes:
        base = f"{safe_name(e.label)}_{e.eye}" + (f"_{e.study_no}" if per_eye[(e.patient_id, e.eye)] > 1 else "")
        name, n = base, 2
        while name.lower() in taken:
            name, n = f"{base}-{n}", n + 1
        taken.add(name.lower())
        e.case_id = name


# ------------------------------------------------------------------ pixels
def _pixels(obj: DicomObject) -> tuple[object, object]:
    """The second read of an object, with its pixel data; returns (dataset, decoder)."""
    from pydicom.pixels import get_decoder

    with _quiet():
        ds = pydicom.dcmread(obj.path)
    return ds, get_decoder(ds.file_meta.TransferSyntaxUID)


def _frame_array(obj: DicomObject, ds, decoder, index: int | None) -> np.ndarray:
    """One frame (index) or the whole object as written: colour as RGB, MONOCHROME1 inverted,
    values spread over the full 8- or 16-bit range when fewer bits are stored."""
    with _quiet():
        arr, meta = decoder.as_array(ds, index=index, raw=False)
    photometric = str(meta.get("photometric_interpretation", obj.photometric))
    if obj.kind == "cf":
        if arr.ndim == 4:  # a multi-frame colour object: its first frame is the photo
            arr = arr[0]
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"colour photo decoded to shape {arr.shape}, expected (rows, columns, 3)")
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
    elif arr.ndim != 2:
        raise ValueError(f"angiogram frame decoded to shape {arr.shape}, expected (rows, columns)")
    dtype = np.uint8 if obj.bits_allocated == 8 else np.uint16
    full = (1 << obj.bits_allocated) - 1
    top = (1 << obj.bits_stored) - 1
    arr = np.clip(arr.astype(np.int64), 0, top)
    if obj.photometric == "MONOCHROME1":  # 0 is white: invert so that dye is bright
        arr = top - arr
    if top != full:
        arr = arr * full // top
    return arr.astype(dtype)


def _decode_failure(obj: DicomObject, err: BaseException) -> str:
    from pydicom.uid import UID

    uid = UID(obj.transfer_syntax)
    what = f" (compressed: {uid.name}, {uid})" if uid.is_compressed else ""
    return f"pixel data could not be decoded{what}: {_one_line(err)}"


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", image[..., ::-1] if image.ndim == 3 else image)
    if not ok:
        raise OSError(f"could not encode {path.name} as PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def _write_eye(eye: Eye, case_dir: Path, report: Report, min_frames: int) -> None:
    """Decode and write one eye's CF and frames; frames whose object cannot be decoded are left
    aside (and reported), and the eye is left out when too few remain."""
    try:
        ds, decoder = _pixels(eye.cf)
        report.pixel_reads += 1
        cf = _frame_array(eye.cf, ds, decoder, 0 if eye.cf.n_frames > 1 else None)
        del ds
    except Exception as err:  # decoders and truncated files raise many kinds
        reason = _decode_failure(eye.cf, err)
        report.skipped.append((eye.cf.rel, reason))
        eye.problem = f"colour photo {eye.cf.rel}: {reason}"
        return
    ffa = case_dir / "ffa"
    width = max(3, len(str(len(eye.frames) - 1)))
    slots: dict[int, PlannedFrame] = {}
    by_object: dict[int, list[tuple[int, PlannedFrame]]] = defaultdict(list)
    for pos, frame in enumerate(eye.frames):
        by_object[id(frame.obj)].append((pos, frame))
    for members in by_object.values():
        obj, done, writing = members[0][1].obj, [], False
        try:
            ds, decoder = _pixels(obj)
            report.pixel_reads += 1
            for pos, frame in members:  # one decoded frame in memory at a time
                image = _frame_array(obj, ds, decoder, frame.index if obj.n_frames > 1 else None)
                writing = True
                _write_png(ffa / f"{pos:0{width}d}.png", image)
                writing = False
                done.append(pos)
            del ds
        except Exception as err:
            if writing:
                raise  # the output folder's problem (e.g. a full disk), not the file's
            report.skipped.append((obj.rel, _decode_failure(obj, err)))
            for pos in done:  # an object counts whole or not at all
                (ffa / f"{pos:0{width}d}.png").unlink()
            continue
        slots.update((pos, frame) for pos, frame in members)
    kept = [slots[pos] for pos in sorted(slots)]
    if len(kept) < len(eye.frames):  # close the gaps left by objects that could not be decoded
        for new, old in enumerate(sorted(slots)):
            if new != old:
                os.replace(ffa / f"{old:0{width}d}.png", ffa / f"{new:0{width}d}.png")
        if kept and kept[0].time is not None:
            t0 = kept[0].time
            kept = [PlannedFrame(f.obj, f.index, round(f.time - t0, 6)) for f in kept]
        eye.frames = kept
    eye.written_frames = len(kept)
    if len(kept) < min_frames:
        eye.problem = f"only {len(kept)} angiogram frame(s) could be decoded, need at least {min_frames}"
        return
    _write_png(case_dir / "cf.png", cf)


def _times_text(eye: Eye) -> str:
    if not eye.times_known:
        return ""
    return ";".join(f"{f.time:.3f}".rstrip("0").rstrip(".") or "0" for f in eye.frames)


# ------------------------------------------------------------------ the import
def _walk(src: Path, exclude: list[Path], errors: list[tuple[str, str]]) -> list[Path]:
    """Every file under `src` (not following links to folders), in name order; folders that
    cannot be listed go into `errors`."""
    if src.is_file():
        return [src]
    found = []

    def unreadable(err: OSError) -> None:
        errors.append((_printable(os.path.relpath(str(err.filename), src)), f"unreadable folder ({err.strerror})"))

    for root, dirs, files in os.walk(src, onerror=unreadable):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not any(_same(here / d, x) for x in exclude))
        found += [here / f for f in sorted(files)]
    return found


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _is_inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _holds_cases(out: Path) -> bool:
    return (out / "cases.csv").exists() or any(p.is_dir() and not p.name.startswith(".") for p in out.iterdir())


def _dicomdir_hint(path: Path, rel: str) -> str:
    """A DICOMDIR is an index only (files are found by walking); name the files it lists that
    are missing, the usual sign of a partial copy."""
    try:
        with _quiet():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            listed = [rec.ReferencedFileID for rec in ds.get("DirectoryRecordSequence", [])
                      if "ReferencedFileID" in rec]
            names = [Path(*([v] if isinstance(v, str) else [str(part) for part in v])) for v in listed]
            missing = [str(n) for n in names if not (path.parent / n).exists()]
    except Exception as err:
        return f"{rel} unreadable ({_one_line(err, 120)}); the files were found by walking the folders"
    text = f"{rel} lists {len(names)} file(s); files were found by walking the folders"
    if missing:
        text += f"; {len(missing)} listed file(s) are missing, e.g. {', '.join(missing[:3])}"
    return text


def _check_options(src: Path, out: Path, anonymize: bool, key: str | None, mapping: Path | None,
                   dry_run: bool, overwrite: bool) -> list[str]:
    notes = []
    if not src.exists():
        raise DicomImportError(f"import-dicom: source not found: {src}")
    if anonymize and not key:
        raise DicomImportError("import-dicom: --anonymize needs --key KEY (the secret that makes the pseudonyms; "
                           "keep it to get the same pseudonyms next time)")
    if key and not anonymize:
        raise DicomImportError("import-dicom: --key is used only with --anonymize")
    if mapping is not None:
        if not anonymize:
            raise DicomImportError("import-dicom: --mapping writes pseudonym -> PatientID, so it needs --anonymize")
        if _is_inside(mapping, out):
            raise DicomImportError(f"import-dicom: --mapping {mapping} is inside --out; the mapping re-identifies "
                               f"patients, keep it apart from the anonymized data")
        try:
            refuse_special(mapping)
        except UserError as err:
            raise DicomImportError(f"import-dicom: --mapping {err}") from None
        if mapping.exists() and not overwrite and not dry_run:
            raise DicomImportError(f"import-dicom: --mapping {mapping} exists (add --overwrite to replace it)")
        blocking = file_in_the_way(mapping, itself=False)
        if blocking is not None:  # written last: found out before the import, not after
            raise DicomImportError(f"import-dicom: --mapping {mapping}: {blocking} is a file, not a folder")
    if _same(src, out) or _is_inside(src, out):
        raise DicomImportError(f"import-dicom: --out {out} holds the source {src}; choose another output folder")
    if src.is_dir() and _is_inside(out, src):  # a later import would walk its own output
        raise DicomImportError(f"import-dicom: --out {out} is inside the source {src}; choose a folder outside it")
    blocking = file_in_the_way(out, itself=False)
    if blocking is not None:
        raise DicomImportError(f"import-dicom: --out {out}: {blocking} is a file, not a folder")
    if out.exists() and not out.is_dir():
        raise DicomImportError(f"import-dicom: --out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        others = sorted(p.name for p in out.iterdir() if not (p.is_dir() or p.name == "cases.csv"))
        if others:
            raise DicomImportError(f"import-dicom: --out {out} holds files that are not case folders "
                               f"({', '.join(others[:3])}); choose a new or empty folder")
        if _holds_cases(out) and not overwrite:
            if dry_run:
                notes.append(f"--out {out} already holds cases: a real run needs --overwrite")
            else:
                raise DicomImportError(f"import-dicom: --out {out} already holds cases (add --overwrite to replace "
                                   f"them)")
    return notes


def import_dicom(src: str | Path, out: str | Path, anonymize: bool = False, key: str | None = None,
                 mapping: str | Path | None = None, dry_run: bool = False, overwrite: bool = False,
                 min_frames: int = 2, progress: bool = False) -> Report:
    """Import the DICOM files under `src` into case folders under `out` (see the module doc).

    Usage problems raise DicomImportError (a UserError); problems with files and eyes go into the
    returned Report. Writes go to a temporary sibling of `out` renamed into place at the end,
    so an interrupted import leaves no half case folder; `dry_run` writes nothing.
    """
    src, out = Path(src), Path(out)
    mapping = Path(mapping) if mapping else None
    report = Report(src, out, dry_run=dry_run, anonymized=anonymize)
    report.notes += _check_options(src, out, anonymize, key, mapping, dry_run, overwrite)
    objects = []
    files = _walk(src, [out], report.skipped)
    report.n_files = len(files)
    base = src if src.is_dir() else src.parent
    for path in tqdm(files, desc="reading DICOM headers", unit="file", disable=not progress, leave=False):
        rel = _printable(path.relative_to(base).as_posix())
        found = read_header(path, rel)
        if found == DICOMDIR:
            report.notes.append(_dicomdir_hint(path, rel))
        elif isinstance(found, str):
            report.skipped.append((rel, found))
        else:
            objects.append(found)
            if found.note:
                report.notes.append(f"{rel}: {found.note}")
    report.eyes, skipped = plan(objects, key if anonymize else None, min_frames)
    report.skipped += skipped
    if dry_run:
        return report
    todo = [e for e in report.eyes if e.ok]
    if not todo:
        return report
    try:
        _write_all(report, todo, out, overwrite, min_frames, progress)
        if mapping is not None:
            pairs = sorted({(e.label, e.patient_id) for e in report.eyes if e.ok})
            with atomic_path(mapping) as tmp, open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["pseudonym", "patient_id"])
                writer.writerows(pairs)
    except OSError as err:
        raise DicomImportError(f"import-dicom: could not write {err.filename or out}: {err.strerror or err}") from None
    return report


def _write_all(report: Report, todo: list[Eye], out: Path, overwrite: bool, min_frames: int, progress: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # what a killed import left (patient images in a hidden folder nobody knows of): gone first
    for stale in (*out.parent.glob(f".{out.name}.import-*"), *out.parent.glob(f".{out.name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        for eye in tqdm(todo, desc="writing cases", unit="eye", disable=not progress, leave=False):
            _write_eye(eye, tmp / eye.case_id, report, min_frames)
            if not eye.ok:
                shutil.rmtree(tmp / eye.case_id, ignore_errors=True)
        written = [e for e in todo if e.ok]
        if not written:
            return
        with atomic_path(tmp / "cases.csv") as path, open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["case_id", "patient_id", "eye", "times"])
            writer.writerows([e.case_id, e.label, e.eye, _times_text(e)] for e in written)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the usual mode
        _swap_into_place(tmp, out, overwrite)
        report.written = True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _swap_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """The finished folder onto `out` (an old one kept until the new one is in place), unless cases
    appeared in `out` while importing and --overwrite was not given."""
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DicomImportError(f"import-dicom: --out {out} already holds cases (add --overwrite to replace them)")
    swap_folder_into_place(tmp, out)


# ------------------------------------------------------------------ the report
def format_report(report: Report) -> str:
    """A table per patient and eye, then every eye left out and every file left aside."""
    header = ["patient", "eye", "study", "cf", "frames", "time source", "case", "status"]
    rows = []
    for e in report.eyes:
        n = e.written_frames if report.written and e.ok else len(e.frames)
        cf = "no" if not e.cfs else "yes" if len(e.cfs) == 1 else f"yes ({len(e.cfs)})"
        status = "LEFT OUT" if not e.ok else "dry run" if report.dry_run else "ok" if report.written else "-"
        rows.append([e.label, e.eye, str(e.study_no), cf, str(n) if e.objects else "-", e.time_source or "-",
                     e.case_id if e.ok else "-", status])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    out = [f"DICOM import {report.src} -> {report.out}" + (" (dry run: nothing written)" if report.dry_run else ""),
           line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    left = [e for e in report.eyes if not e.ok]
    out.append("")
    out.append(f"{len(report.eyes)} eye(s), {len(report.eyes) - len(left)} "
               f"{'to write' if report.dry_run else 'written' if report.written else 'writable'}, "
               f"{len(left)} left out; {report.n_files} file(s) read, {len(report.skipped)} skipped")
    if not report.eyes:
        out.append("no eye found: no Ophthalmic Photography image with PatientID and laterality")
    out += [f"LEFT OUT {e.label} {e.eye} (study {e.study_no}): {e.problem}" for e in left]
    out += [f"SKIPPED {rel}: {reason}" for rel, reason in sorted(report.skipped)]
    out += [f"NOTE {note}" for note in report.notes]
    if report.dry_run:
        out.append("dry run: pixel data not decoded (decoding problems show in a real run)")
    elif report.written:
        n = sum(e.ok for e in report.eyes)
        out.append(f"wrote {n} case folder(s) and cases.csv to {report.out}"
                   + (" (patient ids pseudonymized)" if report.anonymized else ""))
    else:
        out.append("nothing written")
    return "\n".join(out)
