"""What the importer knows of a DICOM object, an eye and the import: the header facts, the planned
frames, the report; and the constants of the formats it reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fundus2video.errors import UserError

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
