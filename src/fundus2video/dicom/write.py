"""The import itself: walking SRC, decoding only what is written, and writing the case folders into a
staging folder that replaces OUT only when every case is written (`fundus2video data import-dicom`)."""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pydicom
from tqdm import tqdm

from fundus2video.dicom.headers import one_line, printable, quiet_pydicom, read_header
from fundus2video.dicom.objects import DICOMDIR, DicomImportError, DicomObject, Eye, PlannedFrame, Report
from fundus2video.dicom.plan import plan
from fundus2video.errors import UserError
from fundus2video.io import atomic_path, file_in_the_way, refuse_special, swap_folder_into_place


def _pixels(obj: DicomObject) -> tuple[object, object]:
    """The second read of an object, with its pixel data; returns (dataset, decoder)."""
    from pydicom.pixels import get_decoder

    with quiet_pydicom():
        ds = pydicom.dcmread(obj.path)
    return ds, get_decoder(ds.file_meta.TransferSyntaxUID)


def _frame_array(obj: DicomObject, ds, decoder, index: int | None) -> np.ndarray:
    """One frame (index) or the whole object as written: colour as RGB, MONOCHROME1 inverted,
    values spread over the full 8- or 16-bit range when fewer bits are stored."""
    with quiet_pydicom():
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
    return f"pixel data could not be decoded{what}: {one_line(err)}"


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
        errors.append((printable(os.path.relpath(str(err.filename), src)), f"unreadable folder ({err.strerror})"))

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
        with quiet_pydicom():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            listed = [rec.ReferencedFileID for rec in ds.get("DirectoryRecordSequence", [])
                      if "ReferencedFileID" in rec]
            names = [Path(*([v] if isinstance(v, str) else [str(part) for part in v])) for v in listed]
            missing = [str(n) for n in names if not (path.parent / n).exists()]
    except Exception as err:
        return f"{rel} unreadable ({one_line(err, 120)}); the files were found by walking the folders"
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
        rel = printable(path.relative_to(base).as_posix())
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
