"""Reading DICOM headers (never the pixels): one object's facts, or the reason it is left aside, and
the times, eye and names taken from them."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import os
import re
import struct
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom

from fundus2video.dicom.objects import (
    COLOUR,
    DICOMDIR,
    DICOMDIR_SOP_CLASS,
    EYES,
    IMAGE_SOP_CLASSES,
    LONG_VRS,
    MAX_DICOM_FRAMES,
    MAX_NAME,
    MONOCHROME,
    PIXEL_TAGS,
    DicomObject,
)


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
        with quiet_pydicom():  # values are converted (and warned about) when first read, so all of it
            return _read_header(path, rel)
    except Exception as err:  # a header odd enough to trip the checks still gets its one line
        return f"unreadable DICOM header ({type(err).__name__}: {one_line(err)})"


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
        return f"unreadable file ({type(err).__name__}: {one_line(err)})"
    except Exception as err:  # pydicom raises many kinds for malformed headers
        return f"unreadable DICOM header ({type(err).__name__}: {one_line(err)})"
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
def quiet_pydicom():
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


def printable(text: str) -> str:
    """Header values and file names as one printable line (odd bytes shown as '?')."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def _shown(text: str, limit: int = 64) -> str:
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(err: BaseException, limit: int = 240) -> str:
    text = re.sub(r" ?<[^<>]* at 0x[0-9a-fA-F]+>", "", str(err))  # object addresses say nothing
    parts = [part.strip() for part in text.splitlines() if part.strip()]
    text = "".join(p + ("" if i == len(parts) - 1 else " " if p.endswith(":") else "; ")
                   for i, p in enumerate(parts)) or type(err).__name__
    return _shown(text, limit)
