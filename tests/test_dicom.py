"""`data import-dicom`: Ophthalmic Photography DICOM written here with pydicom, imported into case
folders the package reads; every malformed file reported, patient data kept out of the output."""

import csv
import hashlib
import hmac
import re
import shutil
import time
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian

from fundus2video import dicom
from fundus2video.commands import cli
from fundus2video.data_modules.cases import folder_records, load_case
from fundus2video.data_modules.phantom import make_case
from fundus2video.data_modules.splits import split_by_patient
from fundus2video.dicom import write as dicom_write
from tests.helpers.cli import run_cli

OP8, OP16 = dicom.OP_8BIT, dicom.OP_16BIT
JPEG_LS, JPEG_2000 = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"
ALPHA, BRAVO, CHARLIE = "PID-ALPHA-001", "PID-BRAVO-002", "PID-CHARLIE-003"
NAMES = {ALPHA: "ALPHA^ANNA", BRAVO: "BRAVO^BEN", CHARLIE: "CHARLIE^CAT"}
BIRTH, ACCESSION, DAY = "19510203", "ACC778899", "20240301"
# the times each eye's frames were taken (s after the first); frame k of the phantom at TIMES[k]
TIMES = {(ALPHA, "OD"): [0, 3.5, 9, 20, 45], (ALPHA, "OS"): [0, 1.5, 4, 8, 20],
         (BRAVO, "OD"): [0, 2, 4, 6, 8], (BRAVO, "OS"): [0, 5, 10, 15, 30]}
_uid_count = iter(range(1, 10**6))


def _uid() -> str:
    return f"1.2.826.0.1.3680043.10.999.{next(_uid_count)}"


def _clock(seconds: float) -> str:
    """TM for 10:00:00 + seconds."""
    s = 36000 + seconds
    return f"{int(s // 3600):02d}{int(s % 3600 // 60):02d}{s % 60:09.6f}"


def write_dcm(path: Path, pixels: np.ndarray | None, *, patient=ALPHA, study="1.2.3.4.1", eye="R",
              photometric="MONOCHROME2", instance=1, when: float | None = 0.0, time_tags="adt",
              frame_time_vector=None, frame_time=None, sop=None, ts=ExplicitVRLittleEndian, encapsulated=None,
              laterality="ImageLaterality", sop_uid=None) -> Path:
    """One OP object as a camera writes it. `pixels`: (H, W) or (N, H, W) grey, (H, W, 3) RGB (stored
    as YBR_FULL when photometric says so), uint8 or uint16; `when`: seconds after 10:00 that day."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop or (OP16 if pixels is not None and pixels.dtype == np.uint16 else OP8)
    meta.MediaStorageSOPInstanceUID = sop_uid or _uid()
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName, ds.PatientBirthDate = patient, NAMES.get(patient, "X^Y"), BIRTH
    ds.AccessionNumber, ds.StudyInstanceUID, ds.SeriesInstanceUID = ACCESSION, study, study + ".1"
    ds.StudyDate, ds.StudyTime, ds.Modality = DAY, "095500", "OP"
    setattr(ds, laterality, eye)
    ds.InstanceNumber = instance
    if when is not None:
        if time_tags == "adt":
            ds.AcquisitionDateTime = DAY + _clock(when)
        elif time_tags == "acq":
            ds.AcquisitionDate, ds.AcquisitionTime = DAY, _clock(when)
        else:
            ds.ContentDate, ds.ContentTime = DAY, _clock(when)
    if frame_time_vector is not None:
        ds.FrameTimeVector = frame_time_vector
    if frame_time is not None:
        ds.FrameTime = frame_time
    if pixels is not None:
        colour = photometric in ("RGB", "YBR_FULL")
        frames = pixels.shape[0] if pixels.ndim == 3 and not colour else 1
        rows, columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
        bits = 16 if pixels.dtype == np.uint16 else 8
        ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 3 if colour else 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
        if colour:
            ds.PlanarConfiguration = 0
        if frames > 1:
            ds.NumberOfFrames = frames
        data = pixels
        if photometric == "YBR_FULL":
            data = convert_color_space(pixels, "RGB", "YBR_FULL")
        elif photometric == "MONOCHROME1":
            data = np.iinfo(pixels.dtype).max - pixels
        ds.PixelData = encapsulate([encapsulated]) if encapsulated is not None else data.tobytes()
        ds["PixelData"].VR = "OW" if bits == 16 and encapsulated is None else "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _images(index: int, n_frames: int = 5, size: int = 48):
    case = make_case(index, size=size, n_frames=n_frames)
    return case.cf, case.frames


def _write_clean(root: Path) -> dict:
    """Both eyes of two patients, each eye stored a different way; returns the truth."""
    truth = {}
    # ALPHA OD: one object per frame, InstanceNumber not in time order, RGB CF
    cf, frames = _images(0)
    truth[(ALPHA, "OD")] = (cf, frames)
    write_dcm(root / "alpha" / "cf_od.dcm", cf, photometric="RGB", when=-60)
    for k, inst in enumerate([5, 3, 1, 4, 2]):  # file names follow the instance numbers
        write_dcm(root / "alpha" / f"od_{inst:02d}.dcm", frames[k], instance=inst, when=60 + TIMES[(ALPHA, "OD")][k])
    # ALPHA OS: YBR_FULL CF; one 16-bit multi-frame angiogram with FrameTimeVector; Laterality only
    cf, frames = _images(1)
    truth[(ALPHA, "OS")] = (cf, frames.astype(np.uint16) * 257)
    write_dcm(root / "alpha" / "cf_os.dcm", cf, eye="L", photometric="YBR_FULL", laterality="Laterality")
    write_dcm(root / "alpha" / "os_cine.dcm", truth[(ALPHA, "OS")][1], eye="L", laterality="Laterality",
              frame_time_vector=[0, 1500, 2500, 4000, 12000], when=100)
    # BRAVO OD: 8-bit multi-frame MONOCHROME1 with FrameTime, AcquisitionDate + AcquisitionTime
    cf, frames = _images(2)
    truth[(BRAVO, "OD")] = (cf, frames)
    write_dcm(root / "bravo" / "a" / "cf.dcm", cf, patient=BRAVO, study="1.2.3.4.2", photometric="RGB",
              time_tags="acq")
    write_dcm(root / "bravo" / "a" / "ffa.dcm", frames, patient=BRAVO, study="1.2.3.4.2", photometric="MONOCHROME1",
              frame_time=2000, time_tags="acq", when=30)
    # BRAVO OS: two colour photos (the later one is the photo), 16-bit frames timed by ContentTime only
    cf, frames = _images(3)
    truth[(BRAVO, "OS")] = (cf, frames.astype(np.uint16) * 257)
    write_dcm(root / "bravo" / "b" / "cf_early.dcm", cf[::-1].copy(), patient=BRAVO, study="1.2.3.4.2", eye="L",
              photometric="RGB", instance=9, when=5)
    write_dcm(root / "bravo" / "b" / "cf_late.dcm", cf, patient=BRAVO, study="1.2.3.4.2", eye="L",
              photometric="RGB", instance=1, when=10)
    for k, t in enumerate(TIMES[(BRAVO, "OS")]):
        write_dcm(root / "bravo" / "b" / f"f{k}.dcm", truth[(BRAVO, "OS")][1][k], patient=BRAVO, study="1.2.3.4.2",
                  eye="L", instance=k + 1, when=200 + t, time_tags="content")
    return truth


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("clinic") / "dicom"
    return root, _write_clean(root)


@pytest.fixture(scope="module")
def messy(tmp_path_factory, clean):
    """The clean tree plus every kind of file an export drags along."""
    root = tmp_path_factory.mktemp("messy") / "dicom"
    shutil.copytree(clean[0], root)
    (root / "notes.txt").write_text("exported by the PACS\n")
    (root / "alpha" / "thumbs.db").write_bytes(b"\x00" * 300)
    write_dcm(root / "alpha" / "header_only.dcm", None, instance=7)
    f = _images(4)[1][0]
    cut = write_dcm(root / "alpha" / "od_late.dcm", f, instance=6, when=60 + 50)
    cut.write_bytes(cut.read_bytes()[:-500])  # a copy that stopped half-way through the pixels
    write_dcm(root / "alpha" / "od_jls.dcm", None, instance=8, ts=JPEG_LS, when=60 + 55)
    ds = pydicom.dcmread(root / "alpha" / "od_jls.dcm")  # the same with (junk) compressed pixels
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 48, 48, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"junk" * 40])
    ds["PixelData"].VR = "OB"
    ds.save_as(root / "alpha" / "od_jls.dcm", enforce_file_format=True)
    write_dcm(root / "bravo" / "b" / "f_j2k.dcm", f.astype(np.uint16), patient=BRAVO, study="1.2.3.4.2", eye="L",
              instance=20, when=200 + 40, time_tags="content", ts=JPEG_2000,
              encapsulated=b"\xff\x4f\xff\x51" + b"junk" * 40)
    write_dcm(root / "bravo" / "b" / "f_notime.dcm", f.astype(np.uint16), patient=BRAVO, study="1.2.3.4.2", eye="L",
              instance=21, when=None)
    write_dcm(root / "bravo" / "palette.dcm", f, patient=BRAVO, study="1.2.3.4.2", photometric="PALETTE COLOR")
    write_dcm(root / "bravo" / "ct.dcm", f, patient=BRAVO, study="1.2.3.4.2", sop="1.2.840.10008.5.1.4.1.1.2")
    write_dcm(root / "bravo" / "nolat.dcm", f, patient=BRAVO, study="1.2.3.4.2", eye="")
    shutil.copy(root / "alpha" / "od_01.dcm", root / "alpha" / "copy_of_od_01.dcm")
    for k in range(3):  # an angiogram whose colour photo is not in the export
        write_dcm(root / "charlie" / f"{k}.dcm", f, patient=CHARLIE, study="1.2.3.4.3", instance=k + 1, when=k)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = dicom.DICOMDIR_SOP_CLASS, _uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    index = Dataset()
    index.file_meta = meta
    record = Dataset()
    record.DirectoryRecordType, record.ReferencedFileID = "IMAGE", ["ALPHA", "GONE0001"]
    index.DirectoryRecordSequence = [record]
    index.save_as(root / "DICOMDIR", enforce_file_format=True)
    return root


def _rows(out: Path) -> dict:
    with open(out / "cases.csv", newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def _tree_hashes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ clean import
def test_clean_import_is_read_by_the_package_in_time_order(clean, tmp_path, capsys):
    src, truth = clean
    out = tmp_path / "work" / "cases"
    report = dicom.import_dicom(src, out)
    assert report.exit_code == 0, report.format()
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["cases"]  # nothing beside --out
    rows = _rows(out)
    assert list(next(iter(rows.values()))) == ["case_id", "patient_id", "eye", "times"]
    assert set(rows) == {f"{p}_{e}" for p in (ALPHA, BRAVO) for e in ("OD", "OS")}
    text = (out / "cases.csv").read_text()
    for private in (*NAMES.values(), BIRTH, ACCESSION, DAY):
        assert private not in text
    records = {r.case_id: r for r in folder_records(out)}
    for (patient, eye), (cf, frames) in truth.items():
        rec = records[f"{patient}_{eye}"]
        assert rec.patient_id == patient and rec.eye == eye
        assert [float(t) for t in rows[rec.case_id]["times"].split(";")] == TIMES[(patient, eye)]
        written = [cv2.imread(str(f.path), cv2.IMREAD_UNCHANGED) for f in rec.frames]
        assert all(w.dtype == frames.dtype for w in written)  # 16-bit angiograms stay 16-bit
        assert np.array_equal(np.stack(written), frames)  # in time order; MONOCHROME1 inverted back
        raw = load_case(rec, per_phase=4, n_frames=12)
        tol = 2 if (patient, eye) == (ALPHA, "OS") else 0  # YBR_FULL -> RGB rounds
        assert np.abs(raw.cf.astype(int) - cf).max() <= tol
        assert np.allclose(raw.times, TIMES[(patient, eye)])
    table = report.format()
    assert re.search(r"PID-ALPHA-001\s+OD\s+1\s+yes\s+5\s+AcquisitionDateTime\s+PID-ALPHA-001_OD\s+ok", table)
    for source in ("FrameTimeVector", "FrameTime", "ContentDate+ContentTime"):
        assert f" {source} " in table
    assert "cf_early.dcm: another colour photo of PID-BRAVO-002 OS (study 1): took bravo/b/cf_late.dcm " \
           "(later AcquisitionDateTime)" in table
    assert cli.main(["data", "check", str(out), "data.size=32"]) == 0
    assert "4 cases, 4 ok, 0 bad" in capsys.readouterr().out
    # and training reads them, as `make train ARGS="data.source=folders data.root=DIR"` does
    from fundus2video.config import load_config
    from fundus2video.training import train
    from tests.conftest import TINY

    cfg = load_config("experiments/smoke.yaml", [*TINY, "data.source=folders", f"data.root={out}",
                                                 "data.split.fractions=[0.5,0.25,0.25]", "optim.epochs_constant=1",
                                                 "optim.epochs_decay=0", f"logging.root={tmp_path / 'runs'}"])
    run_dir = train(cfg)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    split = (run_dir / "split.csv").read_text()
    assert split.count(",train") >= 1 and f"{ALPHA}_OD" in split


def test_dry_run_writes_nothing_and_prints_the_report(clean, tmp_path, capsys):
    out = tmp_path / "cases"
    assert cli.main(["data", "import-dicom", str(clean[0]), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "dry run: nothing written" in printed and "PID-BRAVO-002_OS" in printed
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ malformed input
def test_every_malformed_file_is_reported_without_a_traceback(messy, tmp_path):
    out = tmp_path / "cases"
    proc = run_cli("data", "import-dicom", messy, "--out", out)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr  # CHARLIE's eye is left out
    text = proc.stdout
    skipped = dict(re.findall(r"^SKIPPED (\S+): (.*)$", text, re.M))
    assert skipped["notes.txt"].startswith("not DICOM") and skipped["alpha/thumbs.db"].startswith("not DICOM")
    assert skipped["alpha/header_only.dcm"] == "no pixel data"
    assert skipped["alpha/od_late.dcm"].startswith("truncated file")
    assert "JPEG-LS" in skipped["alpha/od_jls.dcm"] and "pylibjpeg" in skipped["alpha/od_jls.dcm"]
    j2k = skipped["bravo/b/f_j2k.dcm"]  # decoded (pillow) and failing, or no decoder at all
    assert "JPEG 2000" in j2k and any(name in j2k for name in ("pillow", "pylibjpeg", "gdcm", "openjpeg")), j2k
    assert skipped["bravo/b/f_notime.dcm"].startswith("frame with no time: no ContentDate+ContentTime")
    assert "PALETTE COLOR" in skipped["bravo/palette.dcm"]
    assert "CT Image Storage" in skipped["bravo/ct.dcm"]
    assert skipped["bravo/nolat.dcm"].startswith("no laterality")
    assert skipped["alpha/od_01.dcm"].startswith("duplicate of alpha/copy_of_od_01.dcm")  # first name kept
    assert "LEFT OUT PID-CHARLIE-003 OD (study 1): angiogram with no colour photo of the same eye" in text
    assert "DICOMDIR lists 1 file(s)" in text and "ALPHA/GONE0001" in text
    rows = _rows(out)
    assert set(rows) == {f"{p}_{e}" for p in (ALPHA, BRAVO) for e in ("OD", "OS")}
    assert rows[f"{BRAVO}_OS"]["times"] == "0;5;10;15;30"  # the undecodable frame's gap is closed
    assert sorted(p.name for p in (out / f"{BRAVO}_OS" / "ffa").iterdir()) == [f"{i:03d}.png" for i in range(5)]
    assert all(rec.frames and len(rec.frames) == 5 for rec in folder_records(out))


def test_corrupted_headers_never_raise(tmp_path):
    """Truncations at every stage of the file and random bytes flipped in the header."""
    cf, frames = _images(5, n_frames=3, size=16)
    src = tmp_path / "src"
    write_dcm(src / "cf.dcm", cf, photometric="RGB")
    good = [write_dcm(src / f"good{k}.dcm", f, instance=k + 1, when=k) for k, f in enumerate(frames)]
    data = good[0].read_bytes()
    rng = np.random.default_rng(1)
    for n in np.linspace(0, len(data) - 1, 24).astype(int):
        (src / f"cut{n:05d}.dcm").write_bytes(data[:n])
    for k in range(40):
        mutant = bytearray(data)
        for pos in rng.integers(128, len(data) - 16 * 16, 3):
            mutant[pos] = int(rng.integers(0, 256))
        (src / f"flip{k:02d}.dcm").write_bytes(bytes(mutant))
    report = dicom.import_dicom(src, tmp_path / "cases")
    assert report.n_files == 68 and len(report.format().splitlines()) > 10
    assert all(reason for _, reason in report.skipped)


def test_usage_errors_exit_2_in_one_line(clean, tmp_path, capsys):
    src = str(clean[0])
    cases = [["--anonymize"], ["--key", "k"], ["--mapping", str(tmp_path / "m.csv")],
             ["--anonymize", "--key", "k", "--mapping", str(tmp_path / "cases" / "m.csv")]]
    for extra in cases:
        assert cli.main(["data", "import-dicom", src, "--out", str(tmp_path / "cases"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fundus2video: error: import-dicom:") and err.count("\n") == 1, err
    assert cli.main(["data", "import-dicom", str(tmp_path / "nowhere"), "--out", str(tmp_path / "cases")]) == 2
    assert "source not found" in capsys.readouterr().err
    # an output inside the source (the next import would read it), a path under a file
    for extra, message in ((["--out", str(clean[0] / "cases")], "is inside the source"),
                           (["--out", str(tmp_path / "cases"), "--anonymize", "--key", "k", "--mapping",
                             str(Path(src) / "alpha" / "cf_os.dcm" / "m.csv")], "cf_os.dcm is a file, not a folder")):
        assert cli.main(["data", "import-dicom", src, *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "cases").exists() and not (clean[0] / "cases").exists()
    # a source with no DICOM eye at all is not what the command takes: the report, then status 2
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x.txt").write_text("hello")
    assert cli.main(["data", "import-dicom", str(tmp_path / "notes"), "--out", str(tmp_path / "cases")]) == 2
    captured = capsys.readouterr()
    assert "no eye found" in captured.out and "SKIPPED x.txt: not DICOM" in captured.out
    assert captured.err.startswith("fundus2video: error: import-dicom: no eye found under") and \
        captured.err.count("\n") == 1
    assert not (tmp_path / "cases").exists()
    assert not (tmp_path / "cases").exists()


# ------------------------------------------------------------------ patient data
def test_anonymized_output_holds_no_patient_data(clean, tmp_path, capsys):
    out, mapping = tmp_path / "anon", tmp_path / "private" / "mapping.csv"
    args = ["data", "import-dicom", str(clean[0]), "--anonymize", "--key", "s3cret"]
    assert cli.main([*args, "--out", str(out), "--mapping", str(mapping)]) == 0
    printed = capsys.readouterr().out
    blob = b"".join(p.read_bytes() + str(p.relative_to(out)).encode() for p in out.rglob("*") if p.is_file())
    for private in (ALPHA, BRAVO, *NAMES.values(), "ALPHA", "BRAVO", BIRTH, ACCESSION, DAY, "1.2.3.4"):
        assert private.encode() not in blob, private
        assert private not in printed.split("SKIPPED")[0].replace(str(clean[0]), "")
    expected = {p: "P" + hmac.new(b"s3cret", p.encode(), hashlib.sha256).hexdigest()[:12] for p in (ALPHA, BRAVO)}
    assert dicom.pseudonym(ALPHA, "s3cret") == expected[ALPHA]
    rows = _rows(out)
    assert set(rows) == {f"{expected[p]}_{e}" for p in (ALPHA, BRAVO) for e in ("OD", "OS")}
    assert {r["patient_id"] for r in rows.values()} == set(expected.values())
    with open(mapping, newline="") as f:
        assert {r["pseudonym"]: r["patient_id"] for r in csv.DictReader(f)} == {v: k for k, v in expected.items()}
    assert cli.main([*args, "--out", str(tmp_path / "again")]) == 0  # same key, same pseudonyms
    assert set(_rows(tmp_path / "again")) == set(rows)
    assert cli.main([*args[:-1], "other", "--out", str(tmp_path / "other")]) == 0
    assert not set(_rows(tmp_path / "other")) & set(rows)


def test_split_keeps_both_eyes_of_a_patient_together(tmp_path):
    """Also: ~200 header-only reads stay fast, and pixels are read once per image written."""
    src = tmp_path / "many"
    rng = np.random.default_rng(0)
    for p in range(20):
        for eye in ("R", "L"):
            study = f"1.2.3.9.{p}"
            cf = rng.integers(20, 250, (16, 16, 3), dtype=np.uint8)
            write_dcm(src / f"p{p}" / f"{eye}_cf.dcm", cf, patient=f"PAT{p:03d}", study=study, eye=eye,
                      photometric="RGB")
            for k in range(4):
                write_dcm(src / f"p{p}" / f"{eye}_{k}.dcm", rng.integers(5, 250, (16, 16), dtype=np.uint8),
                          patient=f"PAT{p:03d}", study=study, eye=eye, instance=k + 1, when=10 * k)
    calls = {"headers": 0, "pixels": 0}
    real = pydicom.dcmread

    def counting(*a, **kw):
        calls["headers" if kw.get("stop_before_pixels") else "pixels"] += 1
        return real(*a, **kw)

    pydicom.dcmread = counting
    try:
        start = time.perf_counter()
        report = dicom.import_dicom(src, tmp_path / "cases")
        elapsed = time.perf_counter() - start
    finally:
        pydicom.dcmread = real
    assert report.exit_code == 0 and report.n_files == 200
    assert elapsed < 30
    assert calls == {"headers": 200, "pixels": 200} and report.pixel_reads == 200
    records = folder_records(tmp_path / "cases")
    assert len(records) == 40
    patients = {r.case_id: r.patient_id for r in records}
    split = split_by_patient(patients, (0.6, 0.2, 0.2), seed=7)
    by_patient = {}
    for case, patient in patients.items():
        by_patient.setdefault(patient, set()).add(split[case])
    assert len(by_patient) == 20 and all(len(s) == 1 for s in by_patient.values())
    assert {s for v in by_patient.values() for s in v} == {"train", "val", "test"}


# ------------------------------------------------------------------ the output folder
def test_existing_output_is_refused_unless_overwrite(clean, tmp_path, capsys):
    src, out = str(clean[0]), tmp_path / "cases"
    assert cli.main(["data", "import-dicom", src, "--out", str(out)]) == 0
    (out / f"{ALPHA}_OD" / "note.txt").write_text("the clinician's notes")
    before = _tree_hashes(out)
    capsys.readouterr()
    assert cli.main(["data", "import-dicom", src, "--out", str(out)]) == 2
    assert "already holds cases (add --overwrite" in capsys.readouterr().err
    assert cli.main(["data", "import-dicom", src, "--out", str(out), "--dry-run"]) == 0
    assert "a real run needs --overwrite" in capsys.readouterr().out
    assert _tree_hashes(out) == before
    assert cli.main(["data", "import-dicom", src, "--out", str(out), "--overwrite"]) == 0
    after = _tree_hashes(out)
    assert f"{ALPHA}_OD/note.txt" not in after and {k: before[k] for k in after} == after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases"]  # no temporary folders left
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("years of work")
    assert cli.main(["data", "import-dicom", src, "--out", str(tmp_path / "home"), "--overwrite"]) == 2
    assert "not case folders (thesis.tex)" in capsys.readouterr().err
    assert (tmp_path / "home" / "thesis.tex").read_text() == "years of work"


def test_an_interrupted_import_leaves_no_half_case(clean, tmp_path, monkeypatch):
    real, count = dicom_write._write_png, {"n": 0}

    def failing(path, image):
        count["n"] += 1
        if count["n"] == 7:
            raise KeyboardInterrupt
        real(path, image)

    monkeypatch.setattr(dicom_write, "_write_png", failing)
    with pytest.raises(KeyboardInterrupt):
        dicom.import_dicom(clean[0], tmp_path / "cases")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ pure parts
def test_dicom_times_and_the_choice_between_colour_photos():
    assert dicom.parse_dicom_datetime(dt="20240301101502.25+0100") == datetime(2024, 3, 1, 10, 15, 2, 250000)
    assert dicom.parse_dicom_datetime("2024-03-01", "10:15:02") == datetime(2024, 3, 1, 10, 15, 2)
    assert dicom.parse_dicom_datetime("", "101502") == datetime(2000, 1, 1, 10, 15, 2)
    assert dicom.parse_dicom_datetime(dt="garbage") is None and dicom.parse_dicom_datetime() is None

    def obj(rel, instance, when):
        times = {} if when is None else {"AcquisitionDateTime": datetime(2024, 1, 1, 10, 0, when)}
        return dicom.DicomObject(Path(rel), rel, "P", "S", (), "OD", "cf", rel, "RGB", 8, 8, 1, 8, 8, instance,
                                 ExplicitVRLittleEndian, times)

    assert dicom.choose_cf([obj("a", 1, 5), obj("b", 9, 3)]) == (obj("a", 1, 5), "later AcquisitionDateTime")
    assert dicom.choose_cf([obj("a", 1, 5), obj("b", 9, 5)])[1] == "higher InstanceNumber"
    assert dicom.choose_cf([obj("a", 1, None), obj("b", 2, 5)])[0].rel == "b"
    frames, source, left = dicom.order_frames([obj("x", 2, None), obj("y", 1, None)])
    assert [f.obj.rel for f in frames] == ["y", "x"] and source == "InstanceNumber (times unknown)" and not left
    assert dicom.safe_name("../A B/c") == "A_B_c" and dicom.safe_name("..") == "patient"


def test_sigterm_mid_import_leaves_no_patient_image_behind(clean, tmp_path, monkeypatch):
    """SIGTERM (a scheduler, `timeout`) ends the import as an exception: its hidden staging folder of
    patient images goes with it, exit 143; one a SIGKILL left is removed by the next import."""
    import os
    import signal

    from tests.helpers.cli import run_cli

    real, count = dicom_write._write_png, {"n": 0}

    def terminated(path, image):
        count["n"] += 1
        if count["n"] == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        real(path, image)

    monkeypatch.setattr(dicom_write, "_write_png", terminated)
    r = run_cli("data", "import-dicom", clean[0], "--out", tmp_path / "cases")
    assert r.returncode == 143 and "stopped by SIGTERM" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler was put back
    monkeypatch.setattr(dicom_write, "_write_png", real)
    (tmp_path / ".cases.import-left").mkdir()  # what a SIGKILL leaves
    (tmp_path / ".cases.import-left" / "cf.png").write_bytes(b"patient")
    assert run_cli("data", "import-dicom", clean[0], "--out", tmp_path / "cases").returncode in (0, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases"]


def test_a_zero_frame_count_is_named_and_a_long_patient_id_still_imports(tmp_path):
    long_id = "PID-" + "X" * 296  # 300 characters: a folder name of that length fails on most file systems
    cf, frames = _images(5, n_frames=3)
    write_dcm(tmp_path / "dicom" / "cf.dcm", cf, patient=long_id, photometric="RGB", when=-60)
    write_dcm(tmp_path / "dicom" / "ffa.dcm", frames, patient=long_id, frame_time=2000, when=30)
    zero = write_dcm(tmp_path / "dicom" / "zero.dcm", frames, patient=long_id, frame_time=2000, when=90)
    ds = pydicom.dcmread(zero)
    ds.NumberOfFrames = 0
    ds.save_as(zero, enforce_file_format=True)
    proc = run_cli("data", "import-dicom", tmp_path / "dicom", "--out", tmp_path / "cases")
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert re.search(r"^SKIPPED zero.dcm: NumberOfFrames 0 is not plausible", proc.stdout, re.M), proc.stdout
    (case,) = folder_records(tmp_path / "cases")
    assert len(case.case_id) < 120 and case.case_id.startswith("PID-XXX") and len(case.frames) == 3
