"""Registration (`fundus2video data register`, `fundus2video.registration`): known transforms recovered on
the realistic phantom, registered folders that the loader reads, failures flagged instead of written,
and one-line errors for bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil

import cv2
import numpy as np
import pytest

from fundus2video.commands.cli import build_parser, main
from fundus2video.data_modules.cases import folder_records
from fundus2video.data_modules.check import check_records, format_table
from fundus2video.data_modules.phantom import Nuisances, make_case
from fundus2video.data_modules.phantom_files import write_phantom
from fundus2video.registration.estimate import (
    IDENTITY,
    MODELS,
    compose,
    composite,
    invert,
    mean_distance,
    register_cf,
    register_frames,
    transform_size,
)
from fundus2video.registration.folders import read_registration

SIZE, T = 192, 4
REALISTIC = Nuisances.preset("realistic")


@pytest.mark.parametrize("index", [0, 1])  # a right eye and a left (mirrored) one
def test_known_motion_and_camera_are_recovered(index):
    """Frames onto frame 0 and the CF onto frame 0, against the phantom's true transforms, with every
    nuisance on (exposure, lesion kinetics, late frames whose vessels fade, the CF from another camera)."""
    case = make_case(index, size=SIZE, n_frames=T, nuisances=REALISTIC)
    frames = register_frames(case.frames)
    assert np.array_equal(frames[0].matrix, IDENTITY)
    for k in range(1, T):
        error = mean_distance(frames[k].matrix, case.frame_to_ref[k], SIZE, SIZE)
        moved = mean_distance(IDENTITY, case.frame_to_ref[k], SIZE, SIZE)
        assert frames[k].ok, frames[k].problem
        assert error < 1.0 and error < moved / 3, (k, error, moved)
        assert frames[k].ncc_after > frames[k].ncc_before
    cf = register_cf(case.cf, composite(case.frames, frames))
    error = mean_distance(cf.matrix, case.cf_to_ref, SIZE, SIZE)
    assert cf.ok, cf.problem
    assert error < 1.5 and error < mean_distance(IDENTITY, case.cf_to_ref, SIZE, SIZE) / 3
    true = transform_size(case.cf_to_ref, SIZE, SIZE)
    assert cf.extent.scale == pytest.approx(true.scale, abs=0.01)
    assert cf.extent.rotation_deg == pytest.approx(true.rotation_deg, abs=0.5)


def test_models_differ_as_they_should():
    """rigid keeps the scale at 1; affine finds the similarity too; an unknown model is refused."""
    case = make_case(0, size=SIZE, n_frames=2, nuisances=REALISTIC)
    rigid = register_frames(case.frames, "rigid")[1]
    assert transform_size(rigid.matrix, SIZE, SIZE).scale == pytest.approx(1.0, abs=1e-9)
    affine = register_frames(case.frames, "affine")[1]
    assert mean_distance(affine.matrix, case.frame_to_ref[1], SIZE, SIZE) < 1.0
    with pytest.raises(ValueError, match="homography"):
        register_frames(case.frames, "homography")
    for model in MODELS:  # the command line offers every model the library has
        assert build_parser().parse_args(["data", "register", "s", "--out", "o", "--model", model]).model == model


def test_what_cannot_be_registered_is_flagged():
    case = make_case(1, size=SIZE, n_frames=3, nuisances=REALISTIC)
    rng = np.random.default_rng(0)
    frames = case.frames.copy()
    frames[1] = rng.integers(0, 256, frames[1].shape, dtype=np.uint8)  # a blink: nothing of the eye
    results = register_frames(frames)
    assert not results[1].ok and results[2].ok
    blank = np.zeros_like(case.cf)
    assert not register_cf(blank, case.frames[0]).ok
    noise = (rng.random(case.cf.shape) * [200, 90, 40]).astype(np.uint8)  # orange, but no fundus
    flagged = register_cf(noise, case.frames[0])
    assert not flagged.ok and flagged.problem


# ------------------------------------------------------------------ wide ranges
# Beyond the realistic preset's: the eye moves up to 5 % of the image side per axis and 5 degrees between
# frames, the CF's camera differs by a scale of 0.8-1.25, 10 degrees and 5 % of the side.
WIDE_FRAME = {"shift": 0.05, "rotation": 5.0, "scale": (0.97, 1.03)}
WIDE_CF = {"shift": 0.05, "rotation": 10.0, "scale": (0.8, 1.25)}
WIDE_SIZE = 256


def _similarity(rng, size, shift, rotation, scale):
    """A similarity about the image centre (as the phantom's), drawn uniformly in the ranges given (the scale
    log-uniformly)."""
    c = (size - 1) / 2
    m = cv2.getRotationMatrix2D((c, c), rng.uniform(-rotation, rotation),
                                math.exp(rng.uniform(math.log(scale[0]), math.log(scale[1]))))
    m[:, 2] += rng.uniform(-shift, shift, 2) * size
    return m


def _misaligned(frames, cf, seed):
    """Frames 1.. and the CF of an aligned case moved by known transforms in the wide ranges; returns them with
    the true frame -> frame 0 and CF -> frame 0 matrices (the phantom's convention)."""
    rng = np.random.default_rng(seed)
    size = frames.shape[1]
    moved, truth = frames.copy(), [IDENTITY]
    for k in range(1, len(frames)):
        m = _similarity(rng, size, **WIDE_FRAME)
        moved[k] = cv2.warpAffine(frames[k], m, (size, size), flags=cv2.INTER_LINEAR)
        truth.append(invert(m))
    m = _similarity(rng, size, **WIDE_CF)
    return moved, cv2.warpAffine(cf, m, (size, size), flags=cv2.INTER_LINEAR), truth, invert(m)


def _register_and_measure(frames, cf, truth, cf_truth):
    """Grid-point errors of the frames and of the CF against the truth, and without registration. Every
    estimate counts, flagged or not; one more than 3 px off must be flagged (never written as registered)."""
    size = frames.shape[1]
    results = register_frames(frames)
    cf_result = register_cf(cf, composite(frames, results))
    pairs = list(zip(results[1:], truth[1:])) + [(cf_result, cf_truth)]
    errors = [mean_distance(r.matrix, t, size, size) for r, t in pairs]
    silent = [(k, round(e, 2)) for k, ((r, _), e) in enumerate(zip(pairs, errors)) if e > 3 and r.ok]
    assert not silent, silent
    return errors[:-1], errors[-1], [mean_distance(IDENTITY, t, size, size) for _, t in pairs]


def _within_bounds(errors, what):
    """The owner's bounds at 256 px: median under 1 px, 95th percentile under 3."""
    assert np.median(errors) < 1.0 and np.percentile(errors, 95) < 3.0, (what, np.round(errors, 2))


def test_wide_ranges_of_motion_and_camera_are_recovered():
    """A dozen aligned phantom cases (whose first frame is taken as the dye arrives: little to register
    against) moved by known transforms in the wide ranges."""
    frame_errors, cf_errors, unregistered = [], [], []
    for index in range(12):
        case = make_case(index, size=WIDE_SIZE, n_frames=6)
        frames, cf, truth, cf_truth = _misaligned(case.frames, case.cf, seed=index)
        errors, cf_error, before = _register_and_measure(frames, cf, truth, cf_truth)
        frame_errors += errors
        cf_errors.append(cf_error)
        unregistered += before
    assert np.median(unregistered) > 8  # the motion is there to be found
    _within_bounds(frame_errors, "frames")
    _within_bounds(cf_errors, "CF")


def test_exposure_changes_and_a_filling_lesion_do_not_move_the_estimate():
    """Frames at 20-600 s, in which leakage and pooling fill against a darkening background, each with its own
    camera gain (0.7-1.3) and offset, moved in the wide ranges."""
    times = np.array([20.0, 40.0, 80.0, 160.0, 320.0, 600.0])
    rng = np.random.default_rng(7)
    frame_errors = []
    for index in (0, 1, 5, 7):  # cases with a leakage or pooling lesion
        case = make_case(index, size=WIDE_SIZE, times=times)
        inside = case.fov & ~case.lesion
        contrast = [float(f[case.lesion].mean() - f[inside].mean()) for f in case.frames]
        assert contrast[-1] - contrast[0] > 50, contrast  # the lesion fills between the frames
        gain, offset = rng.uniform(0.7, 1.3, len(times)), rng.uniform(-15.0, 15.0, len(times))
        exposed = np.stack([np.clip(f * g + o * case.fov, 0, 255) for f, g, o in zip(case.frames, gain, offset)])
        frames, cf, truth, cf_truth = _misaligned(exposed.astype(np.uint8), case.cf, seed=100 + index)
        errors, _, _ = _register_and_measure(frames, cf, truth, cf_truth)
        frame_errors += errors
    _within_bounds(frame_errors, "frames")


# ------------------------------------------------------------------ the command
def _snapshot(root):
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("register") / "src"
    write_phantom(root, 2, size=SIZE, n_frames=T, video="png", progress=False, preset="realistic")
    return root


def _register(src, out, *extra):
    return main(["data", "register", str(src), "--out", str(out), *extra])


def test_the_command_writes_registered_case_folders(source, tmp_path, capsys):
    before = _snapshot(source)
    out = tmp_path / "registered"
    assert _register(source, out) == 0, capsys.readouterr()
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"registered 2 of 2 case(s) into {out} (similarity)")
    assert _snapshot(source) == before  # SRC is only read
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temporary folder left
    reports = check_records(folder_records(out), size=64, min_frames=T, per_phase=4, n_frames=T,
                            km_threshold=45 / 255, progress=False)
    assert all(r.ok for r in reports), [r.problem for r in reports]
    rows = list(csv.DictReader(open(out / "registration.csv")))
    assert len(rows) == 2 * (T + 1) and {r["status"] for r in rows} == {"ok", "reference"}
    assert (out / "registration_sheet.png").is_file()
    for case_id in ("phantom0000", "phantom0001"):
        case, src = out / case_id, source / case_id
        truth = json.loads((src / "truth.json").read_text())
        doc = read_registration(case / "registration.json")
        assert (case / "registration.png").is_file()
        for name in [p.name for p in src.glob("*.png") if p.name != "cf.png"]:  # masks: frame 0's coordinates
            assert (case / name).read_bytes() == (src / name).read_bytes()
        for entry in doc["frames"]:
            k = entry["index"]
            assert entry["source"] == f"{k:03d}.png" and entry["output"] == f"ffa/{k:03d}.png"
            assert mean_distance(entry["matrix"], np.array(truth["frame_to_ref"][k]), SIZE, SIZE) < 1.0
            # the matrix is what moved the frame: warpAffine(source, matrix) gives the written frame
            moved = cv2.warpAffine(cv2.imread(str(src / "ffa" / entry["source"]), cv2.IMREAD_GRAYSCALE),
                                   entry["matrix"], (SIZE, SIZE), flags=cv2.INTER_LINEAR)
            written = cv2.imread(str(case / entry["output"]), cv2.IMREAD_GRAYSCALE)
            assert np.abs(moved.astype(int) - written).max() <= 1
        assert mean_distance(doc["cf"]["matrix"], np.array(truth["cf_to_ref"]), SIZE, SIZE) < 1.5
        # registration.json round-trips: the report's numbers are the JSON's
        rows_case = {r["image"]: r for r in rows if r["case_id"] == case_id}
        for entry in [doc["cf"], *doc["frames"]]:
            row = rows_case["cf" if entry is doc["cf"] else entry["source"]]
            m = np.array([[float(row[f"m{i}{j}"]) for j in range(3)] for i in range(2)])
            assert np.allclose(m, entry["matrix"], atol=1e-6)
            assert float(row["ncc_after"]) == entry["ncc_after"]
        again = json.loads(json.dumps({**doc, "cf": {**doc["cf"], "matrix": doc["cf"]["matrix"].tolist()},
                                       "frames": [{**f, "matrix": f["matrix"].tolist()} for f in doc["frames"]]}))
        assert again == json.loads((case / "registration.json").read_text())
    times = {r["case_id"]: r["times"] for r in csv.DictReader(open(out / "cases.csv"))}
    source_times = {r["case_id"]: r["times"] for r in csv.DictReader(open(source / "cases.csv"))}
    for case_id, text in times.items():
        assert np.allclose([float(t) for t in text.split(";")], [float(t) for t in source_times[case_id].split(";")],
                           atol=1e-3)


def test_data_check_reports_the_misalignment_and_its_absence_after(source, tmp_path, capsys):
    out = tmp_path / "registered"
    assert _register(source, out) == 0
    capsys.readouterr()
    motion = {}
    for name, root in (("before", source), ("after", out)):
        assert main(["data", "check", str(root), "--registration", f"data.n_frames={T}"]) == 0
        table = capsys.readouterr().out
        header = table.splitlines()[0].split()
        assert "motion_px" in header
        motion[name] = [float(line.split()[header.index("motion_px")]) for line in table.splitlines()[2:4]]
        assert "frame motion against the first frame: median" in table
    assert min(motion["before"]) > 1.0 and max(motion["after"]) < 0.3, motion
    assert main(["data", "check", str(source), f"data.n_frames={T}"]) == 0  # without it: no column, no cost
    assert "motion_px" not in capsys.readouterr().out


def test_failed_frames_and_cases_are_never_written_as_registered(source, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(source, src)
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    cv2.imwrite(str(src / "phantom0000" / "ffa" / "002.png"), noise)  # a middle frame: dropped
    cv2.imwrite(str(src / "phantom0001" / "ffa" / f"{T - 1:03d}.png"), noise)  # the last: the case skipped
    out = tmp_path / "registered"
    assert _register(src, out) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"SKIPPED phantom0001: last frame {T - 1:03d}.png: ")
    assert lines[1].startswith("DROPPED phantom0000 002.png: ")
    assert "1 case(s) skipped" in lines[-1] and "1 frame(s) dropped in 1 case(s)" in lines[-1]
    assert not (out / "phantom0001").exists()
    written = sorted(p.name for p in (out / "phantom0000" / "ffa").iterdir())
    assert written == [f"{i:03d}.png" for i in range(T - 1)]
    doc = read_registration(out / "phantom0000" / "registration.json")
    assert [f["status"] for f in doc["frames"]] == ["reference", "ok", "dropped", "ok"]
    assert doc["frames"][2]["output"] is None and doc["frames"][3]["output"] == "ffa/002.png"
    cases = list(csv.DictReader(open(out / "cases.csv")))
    assert [r["case_id"] for r in cases] == ["phantom0000"] and len(cases[0]["times"].split(";")) == T - 1
    rows = list(csv.DictReader(open(out / "registration.csv")))
    assert {r["status"] for r in rows if r["case_id"] == "phantom0001"} == {"skipped", "failed"}
    reports = check_records(folder_records(out), size=64, min_frames=2, per_phase=4, n_frames=T,
                            km_threshold=45 / 255, progress=False)
    assert all(r.ok for r in reports), format_table(reports)


def test_bad_input_gives_one_line(source, tmp_path, capsys):
    def error(*args) -> str:
        try:
            assert main(["data", "register", *args]) == 2
        except SystemExit as stop:  # argparse's own checks (--model's choices) exit from the parser
            assert stop.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    assert f"SRC {tmp_path / 'nowhere'} not found" in error(str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert "inside SRC" in error(str(source), "--out", str(source / "registered"))
    assert not (source / "registered").exists()
    assert "holds SRC" in error(str(source), "--out", str(source.parent))
    assert "invalid choice: 'homography'" in error(str(source), "--out", str(tmp_path / "o"), "--model", "homography")
    assert not (tmp_path / "o").exists()
    out = tmp_path / "registered"
    assert _register(source, out, "--model", "rigid") == 0
    assert "add --overwrite" in error(str(source), "--out", str(out))
    assert json.loads((out / "phantom0000" / "registration.json").read_text())["model"] == "rigid"
    assert _register(source, out, "--overwrite") == 0
    assert json.loads((out / "phantom0000" / "registration.json").read_text())["model"] == "similarity"
    (out / "phantom0000" / "notes.txt").write_text("mine")  # a user's file: the folder is never replaced
    assert "never replaced" in error(str(source), "--out", str(out), "--overwrite")
    assert (out / "phantom0000" / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    assert "is a file" in error(str(tmp_path / "file"), "--out", str(tmp_path / "o"))


def test_bad_cases_get_one_line_each_and_src_is_untouched(tmp_path, capsys):
    """One frame, a blank frame (between others, and as frame 0), a CF with no vessels, frames of different
    sizes: each case's reason on one line of the summary and of registration.csv, no traceback; the
    cases that can be written are; SRC is only read."""
    src = tmp_path / "src"
    write_phantom(src, 6, size=SIZE, n_frames=3, video="png", progress=False, preset="realistic")
    table = (src / "cases.csv").read_text().splitlines()  # phantom0000 is left as it is
    for p in sorted((src / "phantom0005" / "ffa").iterdir())[1:]:  # one frame, one time
        p.unlink()
    table[6] = table[6].rsplit(",", 1)[0] + "," + table[6].rsplit(",", 1)[1].split(";")[0]
    (src / "cases.csv").write_text("\n".join(table) + "\n")
    black = np.zeros((SIZE, SIZE), np.uint8)
    cv2.imwrite(str(src / "phantom0001" / "ffa" / "001.png"), black)  # a blank frame between others: dropped
    cv2.imwrite(str(src / "phantom0002" / "ffa" / "000.png"), black)  # a blank frame 0: nothing to register onto
    disc = np.zeros((SIZE, SIZE, 3), np.uint8)
    cv2.circle(disc, (SIZE // 2, SIZE // 2), SIZE // 2 - 4, (40, 90, 200), -1)  # BGR: a uniform orange disc
    cv2.imwrite(str(src / "phantom0003" / "cf.png"), disc)
    small = cv2.imread(str(src / "phantom0004" / "ffa" / "001.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(src / "phantom0004" / "ffa" / "001.png"), cv2.resize(small, (SIZE - 32, SIZE - 32)))
    before = _snapshot(src)
    out = tmp_path / "registered"
    assert _register(src, out) == 1
    captured = capsys.readouterr()
    assert captured.err == "", captured.err
    lines = captured.out.strip().splitlines()
    expected = {"phantom0005": "only 1 frame (a series to register needs at least 2)",
                "phantom0002": "frame 0 000.png: no field of view",
                "phantom0003": "CF: no vessels or other structure in the field of view",
                "phantom0004": "FFA frames differ in size"}
    skipped = {line.split()[1].rstrip(":"): line for line in lines if line.startswith("SKIPPED ")}
    assert sorted(skipped) == sorted(expected), lines
    for case_id, reason in expected.items():
        assert reason in skipped[case_id], skipped[case_id]
    assert [line for line in lines if line.startswith("DROPPED ")] == [
        "DROPPED phantom0001 001.png: no field of view (a blank or black image?)"]
    assert lines[-1].startswith("registered 2 of 6 case(s)") and len(lines) == 6, lines
    rows = list(csv.DictReader(open(out / "registration.csv")))
    for case_id, reason in expected.items():
        problems = {r["problem"] for r in rows if r["case_id"] == case_id}
        assert all("\n" not in p for p in problems), problems
        assert any(reason.split(": ")[-1] in p for p in problems), problems  # the image's own problem
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["phantom0000", "phantom0001"]
    assert sorted(p.name for p in (out / "phantom0001" / "ffa").iterdir()) == ["000.png", "001.png"]
    assert _snapshot(src) == before


def test_an_error_on_unforeseen_images_skips_the_case_not_the_run(source, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise cv2.error("OpenCV(5.1.0) imgwarp.cpp:1454: error: (-215:Assertion failed)\n  in function 'remap'")

    monkeypatch.setattr("fundus2video.registration.folders.register_frames", broken)
    assert _register(source, tmp_path / "registered") == 1
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.splitlines()[0] == "SKIPPED phantom0000: registration failed (error: in function 'remap')"


def test_matrices_follow_the_phantom_convention():
    """M is used as the phantom's truth is: cv2.warpAffine(frame, M) puts the frame where the true transform
    puts it (and M composed with its inverse is the identity)."""
    case = make_case(0, size=SIZE, n_frames=2, nuisances=Nuisances(eye_motion=True, release_sampling=True))
    m = register_frames(case.frames)[1].matrix
    assert np.allclose(compose(m, invert(m)), IDENTITY, atol=1e-9)
    frame = case.frames[1].astype(np.float32)
    true = cv2.warpAffine(frame, case.frame_to_ref[1], (SIZE, SIZE))
    inside = cv2.erode(case.fov.astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
    before = np.abs(frame - true)[inside].mean()
    after = np.abs(cv2.warpAffine(frame, m, (SIZE, SIZE)) - true)[inside].mean()
    assert after < 0.2 * before, (after, before)


# ------------------------------------------------------------------ data.register: cases registered as they are read
def _phantom_dataset(n: int = 4, size: int = 128):
    from fundus2video.data_modules.datasets import PhantomVideoDataset

    return PhantomVideoDataset("test", n, 64, 8, 0, size, nuisances=REALISTIC)


def test_cases_read_registered_match_the_phantoms_truth():
    data = _phantom_dataset()
    data.register = "similarity"
    errors, before, after = [], 0.0, 0.0
    for i in range(len(data)):
        raw, case_id, _ = data.raw(i)
        truth = make_case(2_000_000 + i, size=128, n_frames=8, seed=0, nuisances=REALISTIC)
        h, w = raw.frames.shape[1:]
        registered = data._registered(raw, case_id)
        cf_matrix, matrices = next(v for k, v in data._registrations.items() if k[0] == case_id)
        errors += [mean_distance(m, truth.frame_to_ref[k], w, h) for k, m in enumerate(matrices) if m is not None]
        errors.append(mean_distance(cf_matrix, truth.cf_to_ref, w, h))
        inner = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))  # away from the moved field's edge
        for k in range(1, len(raw.frames)):
            want = cv2.warpAffine(raw.frames[k], truth.frame_to_ref[k], (w, h)).astype(float)[inner]
            before += np.abs(raw.frames[k].astype(float)[inner] - want).mean()
            after += np.abs(registered.frames[k].astype(float)[inner] - want).mean()
        assert data._registered(raw, case_id).frames.tobytes() == registered.frames.tobytes()  # estimated once
    assert len(errors) >= 4 * 7  # every case registered, at most a frame or two used as read
    assert np.median(errors) < 0.6 and max(errors) < 2.0, np.round(errors, 2)  # pixels, at 128 px
    assert after < 0.6 * before, (before, after)


def test_a_case_that_cannot_be_registered_is_used_as_read_and_said(monkeypatch, caplog):
    import fundus2video.data_modules.datasets as datasets

    def broken(*args, **kwargs):
        raise cv2.error("OpenCV(4.x) error: (-215:Assertion failed) in warpAffine")

    monkeypatch.setattr(datasets, "register_case", broken)
    data = _phantom_dataset(1)
    data.register = "similarity"
    raw, case_id, _ = data.raw(0)
    with caplog.at_level("WARNING", logger="fundus2video"):
        assert data._registered(raw, case_id) is raw
    assert f"case {case_id}: not registered, used as read (registration failed: error: " in caplog.text


@pytest.mark.slow
def test_training_and_evaluation_read_registered_cases(tiny, tmp_path):
    from fundus2video.evaluation import evaluate
    from fundus2video.training import train

    run = train(tiny("data.phantom.preset=realistic", "data.register=true", "data.phantom.render_size=96",
                     "trainer.max_epochs=1"))
    assert "register: true" in (run / "config.yaml").read_text()
    out = evaluate(run / "checkpoints" / "last.ckpt", split="test", protocol="standard", out=tmp_path / "eval")
    assert json.loads((out / "metrics.json").read_text())["metrics"]["psnr"] > 0
