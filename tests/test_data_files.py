"""Real data layouts on disk: every format read, every bad-case kind reported, splits by patient."""

import csv
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fundus2video.config import to_plain
from fundus2video.data_modules.cases import folder_records, load_case, manifest_records, select_frames
from fundus2video.data_modules.check import check_records, format_table
from fundus2video.data_modules.datamodule import Fundus2VideoDataModule
from fundus2video.data_modules.phantom import make_case
from fundus2video.data_modules.phantom_files import write_phantom
from fundus2video.data_modules.splits import check_disjoint, read_split, split_by_patient, write_split
from fundus2video.errors import CaseError, DataError
from tests.helpers.cli import run_cli

K = 3


def _check(records, **kw):
    return check_records(records, size=32, min_frames=K + 1, per_phase=4, n_frames=kw.get("n_frames", 6),
                         km_threshold=45 / 255, progress=False)


@pytest.fixture(scope="module")
def mp4_root(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("mp4"), 6, size=64, n_frames=6, video="mp4", progress=False)


@pytest.fixture(scope="module")
def png_root(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("png"), 6, size=64, n_frames=6, video="png", progress=False)


@pytest.mark.parametrize("layout", ["mp4", "png"])
def test_folder_layouts_load_like_the_phantom(layout, mp4_root, png_root):
    root = mp4_root if layout == "mp4" else png_root
    records = folder_records(root)
    assert [r.case_id for r in records] == [f"phantom{i:04d}" for i in range(6)]
    assert records[1].patient_id == "P0000" and records[1].eye == "OS"  # from cases.csv
    raw = load_case(records[0], per_phase=4, n_frames=6)
    truth = make_case(0, size=64, n_frames=6)
    assert raw.frames.shape == (6, 64, 64) and raw.cf.shape == (64, 64, 3)
    tol = 0 if layout == "png" else 12  # H.264 is lossy
    assert np.abs(raw.frames.astype(int) - truth.frames).mean() <= max(tol / 4, 0)
    assert np.array_equal(raw.cf, truth.cf)
    assert np.allclose(raw.times, truth.times, atol=0.01)
    assert np.array_equal(raw.lesion, truth.lesion)
    assert all(r.ok for r in _check(records))


def test_video_decodes_only_the_frames_asked_for(tmp_path):
    write_phantom(tmp_path, 1, size=32, n_frames=40, video="mp4", progress=False)
    raw = load_case(folder_records(tmp_path)[0], per_phase=4, n_frames=5)
    assert raw.frame_names == [f"ffa.mp4#{i}" for i in (0, 10, 20, 29, 39)]  # evenly spaced, ends kept


def test_a_variable_frame_rate_video_gives_its_own_frame_times(tmp_path):
    """Without times in cases.csv, a video's frames are timed by its container: a variable-frame-rate
    recording (here frames 0.5, 2, 7.5 and 1 s apart) is not read as evenly spaced."""
    import subprocess

    import imageio_ffmpeg

    case = make_case(2, size=64, n_frames=5)
    d = tmp_path / "vfr"
    d.mkdir()
    cv2.imwrite(str(d / "cf.png"), case.cf[..., ::-1])
    for t, f in enumerate(case.frames):
        cv2.imwrite(str(tmp_path / f"{t}.png"), np.repeat(f[..., None], 3, axis=2))
    gaps = [0.5, 2.0, 7.5, 1.0]
    lines = "".join(f"file '{tmp_path / f'{t}.png'}'\nduration {gap}\n" for t, gap in enumerate(gaps))
    (tmp_path / "list.txt").write_text(f"ffconcat version 1.0\n{lines}file '{tmp_path / '4.png'}'\n")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "concat", "-safe", "0",
                    "-i", str(tmp_path / "list.txt"), "-fps_mode", "vfr", "-pix_fmt", "yuv420p", "-c:v", "libx264",
                    str(d / "ffa.mp4")], check=True)
    raw = load_case(folder_records(tmp_path)[0], per_phase=4, n_frames=5)
    assert np.allclose(raw.times, [0.0, 0.5, 2.5, 10.0, 11.0], atol=0.05), raw.times
    # a video whose container says nothing better: frame numbers, as before
    from fundus2video.data_modules import cases

    assert cases.video_times(d / "missing.mp4", [0, 1]) is None


def test_16_bit_images_and_rgb_stored_frames(tmp_path):
    case = make_case(3, size=48, n_frames=4)
    d = tmp_path / "c16"
    (d / "ffa").mkdir(parents=True)
    cv2.imwrite(str(d / "cf.tif"), (case.cf[..., ::-1].astype(np.uint16) * 257))
    for t, f in enumerate(case.frames):
        rgb = np.stack([f // 2, f, f // 3], axis=2)  # green channel carries the frame
        cv2.imwrite(str(d / "ffa" / f"{t}.png"), rgb[..., ::-1])
    raw = load_case(folder_records(tmp_path)[0], per_phase=4, n_frames=12)
    assert np.array_equal(raw.cf, case.cf)
    assert np.array_equal(raw.frames, case.frames)


def _write_manifest(root, rows, header=("patient_id", "eye", "cf_path", "frame_path", "phase", "time")):
    path = root / "manifest.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _manifest_case(root, patient="P1", eye="OD", phases=("A", "AV", "V", "V", "V", "L", "L", "C"), index=0):
    case = make_case(index, size=48, n_frames=len(phases))
    (root / "img").mkdir(exist_ok=True)
    cf = f"img/{patient}_{eye}_cf.png"
    cv2.imwrite(str(root / cf), case.cf[..., ::-1])
    rows = []
    for t, (f, phase) in enumerate(zip(case.frames, phases, strict=True)):
        name = f"img/{patient}_{eye}_{t}.png"
        cv2.imwrite(str(root / name), f)
        rows.append([patient, eye, cf, name, phase, t])
    return rows


def test_manifest_phases_dropped_merged_and_drawn(tmp_path):
    path = _write_manifest(tmp_path, _manifest_case(tmp_path))
    (rec,) = manifest_records(path, to_plain_columns(), ["A", "C"], {"AV": "V"})
    assert rec.case_id == "P1_OD" and [f.phase for f in rec.frames] == ["V", "V", "V", "V", "L", "L"]
    evaluation = select_frames(rec.frames, 2, 12, rng=None)
    assert [f.time for f in evaluation] == [1, 4, 5, 6]  # evenly spaced per phase, deterministic
    assert select_frames(rec.frames, 2, 12, None) == evaluation
    rng = np.random.default_rng(0)
    for _ in range(20):  # with replacement, then de-duplicated and sorted by time
        times = [f.time for f in select_frames(rec.frames, 4, 12, rng)]
        assert times == sorted(set(times)) and len(times) <= 6


def to_plain_columns():
    from fundus2video.config import load_config

    return to_plain(load_config(None).data.manifest.columns)


def test_manifest_with_renamed_columns_and_a_missing_column(tmp_path):
    rows = _manifest_case(tmp_path)
    path = _write_manifest(tmp_path, rows, header=("pid", "eye", "co", "fa", "Phase", "order"))
    cols = {"patient": "pid", "eye": "eye", "cf": "co", "frame": "fa", "phase": "Phase", "time": "order"}
    assert len(manifest_records(path, cols, ["A", "C"], {})[0].frames) == 6
    with pytest.raises(DataError, match=r"columns not found: patient='patient_id'"):
        manifest_records(path, to_plain_columns(), [], {})


def _bad_case_root(tmp_path):
    """Six cases, each broken in its own way, plus one good case."""
    root = write_phantom(tmp_path / "data", 8, size=48, n_frames=6, video="png", progress=False)
    (root / "phantom0000" / "cf.png").unlink()  # missing file
    (root / "phantom0001" / "ffa" / "002.png").write_bytes(b"not a png")  # unreadable
    for f in sorted((root / "phantom0002" / "ffa").iterdir())[2:]:  # fewer than K + 1 frames
        f.unlink()
    stretched = cv2.resize(cv2.imread(str(root / "phantom0003" / "cf.png")), (96, 48))
    cv2.imwrite(str(root / "phantom0003" / "cf.png"), stretched)  # a fundus photo of another aspect than its frames
    cv2.imwrite(str(root / "phantom0004" / "cf.png"), np.zeros((48, 48, 3), np.uint8))  # empty ROI
    cv2.imwrite(str(root / "phantom0005" / "ffa" / "003.png"), np.zeros((48, 48), np.uint8))  # black
    return root


def test_every_bad_case_kind_is_reported_with_its_reason(tmp_path):
    root = _bad_case_root(tmp_path)
    mp4 = write_phantom(tmp_path / "mp4", 1, size=48, n_frames=6, video="mp4", progress=False, start=8)
    video = mp4 / "phantom0008" / "ffa.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])  # truncated video
    shutil.move(str(mp4 / "phantom0008"), root / "phantom0008")
    white = write_phantom(tmp_path / "white", 1, size=48, n_frames=6, video="png", progress=False, start=9)
    cv2.imwrite(str(white / "phantom0009" / "ffa" / "004.png"), np.full((48, 48), 255, np.uint8))  # blank white
    shutil.move(str(white / "phantom0009"), root / "phantom0009")
    reports = {r.case_id: r for r in _check(folder_records(root))}
    expected = {
        "phantom0000": "missing file",
        "phantom0001": "unreadable image",
        "phantom0002": "only 2 frame(s), need at least 4",
        "phantom0003": "different aspect",
        "phantom0004": "empty field of view",
        "phantom0005": "all-black frame(s): 003.png",
        "phantom0008": "video",
        "phantom0009": "all-white frame(s): 004.png",
    }
    for case, reason in expected.items():
        assert reason in reports[case].problem, (case, reports[case].problem)
    assert reports["phantom0006"].ok and reports["phantom0007"].ok
    table = format_table(list(reports.values()))
    assert "10 cases, 2 ok, 8 bad" in table and "BAD phantom0003" in table


def test_duplicate_case_ids_in_a_manifest(tmp_path):
    rows = _manifest_case(tmp_path) + _manifest_case(tmp_path, patient="P2", index=1)
    rows += [["P1", "OD", "img/P2_OD_cf.png", "img/P2_OD_3.png", "V", 9]]  # same case, other CF
    path = _write_manifest(tmp_path, rows)
    reports = {r.case_id: r for r in _check(manifest_records(path, to_plain_columns(), ["A", "C"], {"AV": "V"}))}
    assert "duplicate case id" in reports["P1_OD"].problem and reports["P2_OD"].ok


def test_split_by_patient_is_disjoint_and_reproducible(tmp_path):
    patients = {f"c{i}": f"p{i // 3}" for i in range(60)}  # 3 cases (visits/eyes) per patient
    split = split_by_patient(patients, (0.8, 0.1, 0.1), seed=7)
    for p in set(patients.values()):
        assert len({split[c] for c in patients if patients[c] == p}) == 1
    assert {s: sum(v == s for v in split.values()) for s in ("train", "val", "test")} == \
        {"train": 48, "val": 6, "test": 6}
    assert split_by_patient(patients, (0.8, 0.1, 0.1), seed=7) == split
    assert split_by_patient(patients, (0.8, 0.1, 0.1), seed=8) != split
    path = write_split(tmp_path / "split.csv", patients, split)
    assert read_split(path, patients) == split
    with pytest.raises(ValueError, match="not in the split file"):
        read_split(path, {**patients, "new": "pX"})


def _data_cfg(root, *extra):
    from fundus2video.config import load_config

    cfg = load_config("experiments/smoke.yaml", ["data.source=folders", f"data.root={root}", "data.size=32",
                                                 "data.n_frames=6", "data.split.fractions=[0.5,0.25,0.25]",
                                                 *extra])
    return to_plain(cfg.data)


def test_datamodule_fails_fast_on_bad_cases_or_skips_them(tmp_path):
    root = _bad_case_root(tmp_path)
    with pytest.raises(DataError) as info:
        Fundus2VideoDataModule(_data_cfg(root), min_frames=K + 1).setup()
    message = str(info.value)  # one line: the first cases, a count, and where the whole list is
    assert "\n" not in message and "6 bad case(s): phantom0000: missing file" in message, message
    assert "; and 3 more (`fundus2video data check" in message and "data.skip_bad_cases=true" in message
    dm = Fundus2VideoDataModule(_data_cfg(root, "data.skip_bad_cases=true"), min_frames=K + 1, run_dir=tmp_path)
    dm.setup()
    assert sum(len(d) for d in dm.datasets.values()) == 2
    rows = list(csv.DictReader(open(tmp_path / "split.csv")))
    assert {r["case_id"] for r in rows} == {"phantom0006", "phantom0007"}


def test_datamodule_serves_batches_from_disk_and_reuses_a_split(tmp_path, mp4_root):
    dm = Fundus2VideoDataModule(_data_cfg(mp4_root), min_frames=K + 1, run_dir=tmp_path)
    batch = next(iter(dm.train_dataloader()))
    assert batch["cf"].shape == (1, 3, 32, 32) and batch["frames"].shape == (1, 6, 1, 32, 32)
    assert batch["cf"].min() >= -1 and batch["cf"].max() <= 1
    saved = {r["case_id"]: r["split"] for r in csv.DictReader(open(tmp_path / "split.csv"))}
    dm2 = Fundus2VideoDataModule(_data_cfg(mp4_root, f"data.split.file={tmp_path / 'split.csv'}",
                                           "data.split.seed=99"), min_frames=K + 1)
    dm2.setup()
    again = {r.case_id: s for s, d in dm2.datasets.items() for r in d.records}
    assert again == saved


def test_data_check_cli_names_the_broken_case(tmp_path):
    root = write_phantom(tmp_path / "demo", 4, size=48, n_frames=6, video="png", progress=False)
    (root / "phantom0002" / "cf.png").write_bytes(b"broken")
    proc = run_cli("data", "check", root, "data.size=32")
    assert proc.returncode == 1, proc.stderr
    assert "case" in proc.stdout.splitlines()[0] and "roi" in proc.stdout.splitlines()[0]
    assert "BAD phantom0002: unreadable image" in proc.stdout
    assert "4 cases, 3 ok, 1 bad" in proc.stdout


def _manifest(tmp_path, rows: list[str], header: str = "patient_id,eye,cf_path,frame_path,phase,time",
              encoding: str = "utf-8") -> Path:
    path = tmp_path / "m.csv"
    path.write_bytes("\n".join([header, *rows]).encode(encoding) + b"\n")
    return path


@pytest.mark.parametrize("rows, header, encoding, message", [
    (["Müller,OD,cf.png,f1.png,E,1"], None, "latin-1", "m.csv:2: byte 0xfc is not UTF-8"),
    (["P1,OD,cf.png,f1.png,E"], None, "utf-8", "m.csv:2: 5 fields, the header has 6"),
    (["P1,OD,cf.png,f1.png,E,1,extra"], None, "utf-8", "m.csv:2: 7 fields, the header has 6"),
    (["P1,OD,cf.png,f1.png,E,1", "P1,OD,cf.png,f1.png,E,1"], None, "utf-8", "m.csv:3: frame f1.png of P1_OD is "
     "listed twice (also on line 2)"),
    ([",OD,cf.png,f1.png,E,1"], None, "utf-8", "m.csv:2: empty patient id"),
    (["P1,OD,cf.png,f1.png,E,nan"], None, "utf-8", "m.csv:2: time: 'nan' is not a finite number"),
    (["P1,OD,cf.png,f1.png,A,1", "P1,OD,cf.png,f2.png,C,2"], None, "utf-8", "all 2 rows have a phase in "
     "data.manifest.drop_phases"),
])
def test_manifest_csvs_from_the_real_world(tmp_path, rows, header, encoding, message):
    from fundus2video.data_modules.cases import manifest_records

    path = _manifest(tmp_path, rows, header or "patient_id,eye,cf_path,frame_path,phase,time", encoding)
    columns = {"patient": "patient_id", "eye": "eye", "cf": "cf_path", "frame": "frame_path", "phase": "phase",
               "time": "time"}
    with pytest.raises(CaseError) as err:
        manifest_records(path, columns, ["A", "C"], {"AV": "V"})
    assert message in str(err.value)


def test_an_excel_bom_is_read_and_a_cases_csv_row_listed_twice_is_refused(tmp_path):
    from fundus2video.data_modules.cases import _read_cases_csv, manifest_records

    path = _manifest(tmp_path, ["P1,OD,cf.png,f1.png,E,1"], encoding="utf-8-sig")  # Excel's "CSV UTF-8"
    columns = {"patient": "patient_id", "eye": "eye", "cf": "cf_path", "frame": "frame_path", "phase": "phase",
               "time": "time"}
    assert [r.case_id for r in manifest_records(path, columns, [], {})] == ["P1_OD"]
    (tmp_path / "cases.csv").write_text("case_id,patient_id,eye,times\nc1,P1,OD,\nc1,P2,OD,\n")
    with pytest.raises(CaseError, match=r"cases.csv:3: case c1 is listed twice \(also on line 2\)"):
        _read_cases_csv(tmp_path)
    (tmp_path / "cases.csv").write_text("case_id,patient_id,eye,times\nc1,,OD,\n")
    with pytest.raises(CaseError, match="c1: empty patient_id"):
        _read_cases_csv(tmp_path)
    (tmp_path / "cases.csv").write_text("case_id,patient_id,eye,times\nc1,P1,OD,1;30;20\n")
    with pytest.raises(CaseError, match="cases.csv:2: case c1: times must increase frame by frame, found 20 after 30"):
        _read_cases_csv(tmp_path)


def test_cases_csv_ids_must_name_the_folders_exactly(tmp_path, caplog):
    for name in ("phantom0000", "phantom0001"):
        (tmp_path / name).mkdir()
    (tmp_path / "cases.csv").write_text("case_id,patient_id\nPhantom0000,P1\nphantom0001,P1\n")
    with pytest.raises(CaseError, match=r"case Phantom0000 has no folder; the folder phantom0000 differs from it "
                                        r"in letter case only"):
        folder_records(tmp_path)
    (tmp_path / "cases.csv").write_text("case_id,patient_id\nphantom0000,P1\nphantom0001,P1\n"
                                        + "".join(f"gone{i},P{i}\n" for i in range(5)))
    with caplog.at_level("WARNING", logger="fundus2video"):
        records = folder_records(tmp_path)
    assert [r.patient_id for r in records] == ["P1", "P1"]  # the two eyes stay one patient
    assert "cases.csv: 5 row(s) name no case folder and are not used (gone0, gone1, gone2, ...)" in caplog.text


def test_a_cases_csv_of_a_million_rows_is_refused_before_parsing(tmp_path):
    import resource

    (tmp_path / "c0").mkdir()
    with open(tmp_path / "cases.csv", "w") as f:
        f.write("case_id,patient_id\n")
        f.writelines(f"x{i},P{i}\n" for i in range(1_000_000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CaseError, match=r"cases.csv: 1000001 lines \(at most 100000 cases"):
        folder_records(tmp_path)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 100  # MB: not parsed


@pytest.mark.parametrize("picture, message", [
    (np.full((256, 256, 3), 255, np.uint8), "uniform"),
    (np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8), "not orange-red"),
    (np.full((1, 1, 3), (40, 60, 200), np.uint8), "1x1 (expected at least 16 pixels a side)"),
])
def test_pictures_that_are_no_fundus_photo_are_refused(tmp_path, picture, message, capsys):
    """In data check (and so in training) and in generate alike: the photo is read in one place."""
    from fundus2video.commands.cli import main

    root = write_phantom(tmp_path / "data", 1, size=48, n_frames=4, video="png", progress=False)
    cv2.imwrite(str(root / "phantom0000" / "cf.png"), picture)
    report = _check(folder_records(root))[0]
    assert not report.ok and message in report.problem
    assert main(["data", "check", str(root), "data.size=32"]) == 1
    assert message in capsys.readouterr().out


def test_a_split_file_that_does_not_fit_is_named(tmp_path):
    root = write_phantom(tmp_path / "data", 4, size=48, n_frames=4, video="png", progress=False)
    records = folder_records(root)
    patients = {r.case_id: r.patient_id for r in records}
    (tmp_path / "garbage.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    (tmp_path / "half.csv").write_text("case_id,patient_id,split\nphantom0000,P0000,train\n")
    (tmp_path / "cols.csv").write_text("a,b\n1,2\n")
    for name, message in (("nope.csv", "data.split.file: not found"), ("garbage.csv", "is not UTF-8"),
                          ("half.csv", "3 case(s) of the data are not in the split file"),
                          ("cols.csv", "expected columns case_id, patient_id, split (found a, b)")):
        with pytest.raises(DataError, match=re.escape(message)):
            read_split(tmp_path / name, patients)
    split = {c: "train" for c in patients} | {"phantom0001": "test"}  # phantom0000 and 0001: patient P0000
    with pytest.raises(DataError, match="patient P0000 is in both"):
        check_disjoint(patients, split)


def test_the_colour_test_can_be_turned_off_for_pseudo_colour_cameras(tmp_path):
    root = write_phantom(tmp_path / "data", 1, size=48, n_frames=4, video="png", progress=False)
    cf = cv2.imread(str(root / "phantom0000" / "cf.png"))
    cv2.imwrite(str(root / "phantom0000" / "cf.png"), cf[..., [0, 2, 1]])  # red and green swapped: green-dominant
    rec = folder_records(root)[0]
    assert "not orange-red" in _check([rec])[0].problem
    rec.colour_check = False  # data.fundus_check=false
    assert _check([rec])[0].ok


def test_case_folder_names_in_any_case_and_extension(tmp_path):
    from PIL import Image

    root = write_phantom(tmp_path / "data", 3, size=64, n_frames=4, video="mp4", progress=False)
    a, b, c = sorted(p for p in root.iterdir() if p.is_dir())
    (a / "cf.png").rename(a / "CF.PNG")
    (a / "ffa.mp4").rename(a / "FFA.MP4")
    Image.open(b / "cf.png").save(b / "cf.webp", lossless=True)
    (b / "cf.png").unlink()
    Image.open(c / "cf.png").save(c / "cf.jpg", quality=95)  # a second photo beside cf.png
    records = {r.case_id: r for r in folder_records(root)}
    reports = {r.case_id: r for r in _check(list(records.values()), n_frames=4)}
    assert reports[a.name].ok and records[a.name].cf.name == "CF.PNG" and records[a.name].video.name == "FFA.MP4"
    assert reports[b.name].ok and records[b.name].cf.name == "cf.webp"
    assert "two colour photos: cf.jpg, cf.png" in reports[c.name].problem


def test_jpeg_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    from fundus2video.data_modules.cases import read_cf

    cf = make_case(3, size=64, n_frames=2).cf
    wide = np.ascontiguousarray(cf[:, 8:56])  # 64 x 48: the rotation shows in the shape
    image = Image.fromarray(wide)
    exif = image.getexif()
    exif[0x0112] = 6  # the camera was turned: show the picture rotated 90 degrees clockwise
    image.save(tmp_path / "turned.jpg", quality=95, exif=exif)
    assert read_cf(tmp_path / "turned.jpg").shape[:2] == (48, 64)


@pytest.mark.parametrize("layout", ["mp4", "png"])
def test_cases_csv_times_that_do_not_fit_the_frames_are_refused(layout, mp4_root, png_root, tmp_path):
    """Two times for six frames: the case is bad, named with both counts (not its times silently replaced)."""
    import shutil

    root = shutil.copytree(mp4_root if layout == "mp4" else png_root, tmp_path / "data")
    lines = (root / "cases.csv").read_text().splitlines()
    lines[1] = ",".join(lines[1].split(",")[:3] + ["10;20"])
    (root / "cases.csv").write_text("\n".join(lines) + "\n")
    bad = [r for r in _check(folder_records(root)) if not r.ok]
    assert [r.case_id for r in bad] == ["phantom0000"]
    assert "case phantom0000: 2 times for" in bad[0].problem and "6 frames" in bad[0].problem
    assert "expected one time per frame" in bad[0].problem


def test_training_on_bad_data_stops_before_making_a_run_directory(png_root, tmp_path, capsys):
    """A cases.csv that cannot be read: one line, and no run directory (nor `latest`) left behind."""
    import shutil

    from fundus2video.commands.cli import main
    from tests.conftest import TINY

    root = shutil.copytree(png_root, tmp_path / "data")
    (root / "cases.csv").write_bytes((root / "cases.csv").read_bytes() + b"phantom0099,P\xfc,OD,\n")
    runs = tmp_path / "runs"
    assert main(["train", "smoke", *TINY, "data.source=folders", f"data.root={root}", f"logging.root={runs}"]) == 2
    assert "byte 0xfc is not UTF-8" in capsys.readouterr().err
    assert not runs.exists() or not any(runs.rglob("*"))


def test_data_check_names_cases_shorter_than_asked_and_takes_experiment_after_the_path(png_root, tmp_path):
    # 6-frame cases, 100 asked: used with all their frames, and the check says so
    proc = run_cli("data", "check", png_root, "--experiment", "smoke", "data.size=32", "data.n_frames=100")
    assert proc.returncode == 0, proc.stderr
    assert "NOTE 6 case(s) have fewer frames than data.n_frames=100 and are used with all they have (6..6)" \
        in proc.stdout
    assert "NOTE" not in run_cli("data", "check", png_root, "data.size=32", "data.n_frames=6").stdout
    # an --experiment after the path is the option, not an override (an unknown one is named)
    proc = run_cli("data", "check", png_root, "--experiment", "nosuch")
    assert proc.returncode == 2 and "experiment not found: experiments/nosuch.yaml" in proc.stderr, proc.stderr


def test_lesion_guidance_without_lesion_masks_and_a_split_without_validation_are_told(png_root, tmp_path,
                                                                                     capsys, caplog):
    import shutil

    from fundus2video.commands.cli import main
    from tests.conftest import TINY

    root = shutil.copytree(png_root, tmp_path / "data")
    for mask in root.glob("*/lesion*.png"):
        mask.unlink()
    runs = tmp_path / "runs"
    data = ["data.source=folders", f"data.root={root}", f"logging.root={runs}", "data.n_frames=6"]
    assert main(["train", "smoke", *TINY, *data, "model.mask_source=lesion"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("fundus2video: error: model.mask_source=lesion: none of the 2 training cases has a lesion mask "
                   "(lesion.png in a case folder); use model.mask_source=knowledge"), err
    assert not runs.exists() or not any(runs.rglob("*"))
    # a split file with no validation case: training runs, and says what it will not produce
    patients = {r.case_id: r.patient_id for r in folder_records(root)}
    write_split(tmp_path / "split.csv", patients, dict.fromkeys(patients, "train"))
    dm = Fundus2VideoDataModule(_data_cfg(root, f"data.split.file={tmp_path / 'split.csv'}"))
    with caplog.at_level("WARNING", logger="fundus2video"):
        dm.setup()
    assert "no validation cases after the split {'train': 6, 'val': 0, 'test': 0} (data.split.file" in caplog.text


def test_a_file_given_as_the_data_folder_is_named_as_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    proc = run_cli("data", "check", tmp_path / "notes.txt")
    assert proc.returncode == 2 and proc.stderr.strip() == (f"fundus2video: error: {tmp_path / 'notes.txt'}: a file, "
                                                            "not a folder of case folders (a manifest is a .csv file)")


def test_an_output_under_a_file_is_named_as_such(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    proc = run_cli("data", "phantom", "--out", tmp_path / "notes.txt" / "ph", "--cases", 2, "--size", 32,
                   "--frames", 3)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        f"fundus2video: error: {tmp_path / 'notes.txt'} is a file, not a folder (needed for"), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_batch_of_videos_of_different_lengths_is_refused_before_training(tmp_path):
    """data.batch_size=2 over cases of 8 and 5 frames: one line before training (the batch could not be
    stacked mid-epoch), naming the lengths; batch 1 trains on them."""
    from fundus2video.data_modules.phantom_files import write_phantom
    from tests.helpers.cli import run_cli

    root = write_phantom(tmp_path / "data", 4, size=64, n_frames=8, video="png", progress=False)
    for t in range(5, 8):
        (root / "phantom0001" / "ffa" / f"{t:03d}.png").unlink()
    rows = (root / "cases.csv").read_text().splitlines()
    (root / "cases.csv").write_text("\n".join(
        ",".join([*r.split(",")[:3], ";".join(r.split(",")[3].split(";")[:5])]) if r.startswith("phantom0001") else r
        for r in rows) + "\n")
    r = run_cli("train", "smoke", "data.source=folders", f"data.root={root}", "data.n_frames=8", "data.batch_size=2",
                "data.size=32", f"logging.root={tmp_path / 'runs'}")
    assert r.returncode == 2 and "data.batch_size=2 needs videos of one length" in r.stderr, r.stderr
    assert "5 to 8 frames" in r.stderr and not (tmp_path / "runs").exists()
