"""Tests of the procedural CF/FFA phantom (data_modules/phantom.py)."""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

# Loaded from its file: the module only needs numpy and cv2, and this keeps the test independent
# of the package (and of torch, which importing fundus2video.data_modules pulls in).
_path = Path(__file__).resolve().parents[1] / "data_modules" / "phantom.py"
_spec = importlib.util.spec_from_file_location("fundus2video_phantom", _path)
phantom = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # for dataclasses
_spec.loader.exec_module(phantom)

make_case, frame_times, phase_of = phantom.make_case, phantom.frame_times, phantom.phase_of
KM_THRESHOLD = 45  # the project's knowledge mask: |first - last| > 45 on 0..255
KINDS = ("leakage", "staining", "pooling", "window_defect", "blocked", "nonperfusion")


@cache
def case(index: int, size: int = 128, n_frames: int = 12):
    return make_case(index, size=size, n_frames=n_frames)


def knowledge_mask(c) -> np.ndarray:
    return (np.abs(c.frames[0].astype(np.int16) - c.frames[-1]) > KM_THRESHOLD) & c.fov


def test_deterministic_and_index_dependent():
    a, b = make_case(3, size=64, n_frames=6), make_case(3, size=64, n_frames=6)
    for name in ("cf", "frames", "times", "fov", "lesion"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.phases == b.phases
    for kind in KINDS:
        np.testing.assert_array_equal(a.lesion_kinds[kind], b.lesion_kinds[kind])
    other = make_case(4, size=64, n_frames=6)
    assert not np.array_equal(a.cf, other.cf)
    assert not np.array_equal(a.frames, other.frames)
    assert not np.array_equal(a.cf, make_case(3, size=64, n_frames=6, seed=1).cf)


def test_shapes_dtypes_and_ids():
    c = make_case(5, size=96, n_frames=7)
    assert (c.case_id, c.patient_id, c.eye) == ("phantom0005", "P0002", "OS")
    assert c.cf.shape == (96, 96, 3) and c.cf.dtype == np.uint8
    assert c.frames.shape == (7, 96, 96) and c.frames.dtype == np.uint8
    assert c.times.shape == (7,) and c.times.dtype == np.float32
    assert len(c.phases) == 7
    for mask in (c.fov, c.lesion, *c.lesion_kinds.values()):
        assert mask.shape == (96, 96) and mask.dtype == bool
    assert set(c.lesion_kinds) == set(KINDS)
    dynamic = np.logical_or.reduce([c.lesion_kinds[k] for k in KINDS[:4]])
    np.testing.assert_array_equal(c.lesion, dynamic)
    assert make_case(4, size=32, n_frames=2).eye == "OD"


def test_times_and_phases():
    assert [phase_of(t) for t in (0.0, 9.9, 10.0, 19.9, 20.0, 59.9, 60.0, 600.0)] == [
        "early", "early", "arterial", "arterial", "venous", "venous", "late", "late"]
    for n in (1, 2, 3, 5, 12, 20):
        t = frame_times(n, np.random.default_rng(n))
        assert t.shape == (n,) and t.dtype == np.float32
        assert np.all(np.diff(t) >= 0) and 10.0 <= t[0] <= 11.0
        if n >= 2:
            assert t[-1] >= 300.0
    phases = [phase_of(float(t)) for t in frame_times(12, np.random.default_rng(0))]
    assert [phases.count(p) for p in ("arterial", "venous", "late")] == [4, 4, 4]
    c = case(0)
    assert np.all(np.diff(c.times) > 0) and c.times[0] >= 10.0
    assert c.phases == [phase_of(float(t)) for t in c.times]
    custom = make_case(0, size=48, times=np.array([400.0, 5.0, 30.0]))
    np.testing.assert_array_equal(custom.times, np.float32([5.0, 30.0, 400.0]))
    assert custom.phases == ["early", "venous", "late"] and custom.frames.shape[0] == 3


@pytest.mark.parametrize("index", [0, 1, 6])
def test_field_of_view(index):
    c = case(index)
    radius = np.sqrt(c.fov.mean() / np.pi)  # FOV radius as a fraction of the image size
    assert 0.44 < radius < 0.5
    assert c.cf[c.fov][:, 1].min() > 11  # the project's FOV detector: green > 11
    assert c.cf[~c.fov].max() == 0
    assert c.frames[:, c.fov].min() > 2
    assert c.frames[:, ~c.fov].max() == 0


def test_knowledge_mask_matches_dynamic_lesions():
    ious, inside = [], []
    for index in range(8):
        c = case(index)
        km = knowledge_mask(c)
        if c.lesion.any():
            ious.append((km & c.lesion).sum() / (km | c.lesion).sum())
        if km.any():  # ~3 px at size 256
            near = ndimage.binary_dilation(c.lesion, iterations=2)
            inside.append((km & near).sum() / km.sum())
    assert len(ious) >= 6
    assert np.mean(ious) >= 0.6 and np.median(ious) >= 0.6
    assert np.mean(inside) >= 0.8


def test_most_cases_have_a_dynamic_lesion():
    with_lesion = [case(i).lesion.any() for i in range(30)]
    assert np.mean(with_lesion) >= 0.8


def test_leakage_and_staining_brighten():
    checked = 0
    for index in range(16):
        c = case(index)
        for kind in ("leakage", "staining"):
            mask = c.lesion_kinds[kind]
            if mask.sum() >= 4:
                first, last = c.frames[0][mask].mean(), c.frames[-1][mask].mean()
                assert last > first + 60, (index, kind, first, last)
                checked += 1
    assert checked >= 4


def test_leakage_grows():
    growth = []
    for index in range(12):
        if case(index).lesion_kinds["leakage"].sum() < 20:
            continue
        c = make_case(index, size=128, times=np.array([40.0, 600.0]))
        mask = ndimage.binary_dilation(c.lesion_kinds["leakage"], iterations=2)
        ring = ndimage.binary_dilation(mask, iterations=4) & ~mask & c.fov
        # half-maximum area of the spot over its surroundings (median filter: without vessels)
        smooth = [ndimage.median_filter(f.astype(np.float32), 5) for f in c.frames]
        excess = [f[mask] - np.median(f[ring]) for f in smooth]
        area = [(e > 0.5 * e.max()).sum() for e in excess]
        growth.append(area[1] / max(area[0], 1))
    assert len(growth) >= 3
    assert np.median(growth) > 2.5, growth


def test_static_lesions_stay_dark():
    checked = 0
    for index in range(24):
        c = case(index)
        any_lesion = np.logical_or.reduce(list(c.lesion_kinds.values()))
        others = ndimage.binary_dilation(any_lesion, iterations=3)
        for kind in ("blocked", "nonperfusion"):
            mask = c.lesion_kinds[kind]
            if mask.sum() < 6:
                continue
            ring = (ndimage.binary_dilation(mask, iterations=8)
                    & ~ndimage.binary_dilation(mask, iterations=3) & ~others & c.fov)
            for frame, phase in zip(c.frames, c.phases):
                if phase == "venous":
                    assert frame[mask].mean() < 0.6 * frame[ring].mean(), (index, kind)
            checked += 1
    assert checked >= 4


def test_time_course_dark_bright_grey():
    c = make_case(2, size=96, times=np.array([5.0, 11.0, 13.0, 30.0, 500.0]))
    mean = [f[c.fov].mean() for f in c.frames]
    assert mean[0] < 20  # before the dye arrives
    assert mean[3] > 1.8 * mean[1] and mean[3] > 1.8 * mean[4]  # venous peak
    assert mean[4] > mean[0] + 20  # the late background greys out
    assert np.percentile(c.frames[2][c.fov], 99.5) > 150  # arteries bright at 13 s


def test_os_is_mirrored():
    for index in range(8):
        c = case(index)
        # the optic disc is the largest whitish (blue-reflecting) structure of the CF
        blue = ndimage.gaussian_filter(c.cf[..., 2].astype(np.float32), 3)
        x = np.unravel_index(np.argmax(blue), blue.shape)[1]
        assert (x > 64) == (c.eye == "OD"), (index, c.eye, x)


def test_same_eye_at_any_size():
    small, large = case(7, 64), case(7, 256)
    down = large.cf.reshape(64, 4, 64, 4, 3).mean((1, 3))
    both = small.fov & (down[..., 1] > 0)
    assert np.corrcoef(small.cf[both].ravel(), down[both].ravel())[0, 1] > 0.85
    lesion_down = large.lesion.reshape(64, 4, 64, 4).mean((1, 3)) > 0.5
    assert (lesion_down & small.lesion).sum() / (lesion_down | small.lesion).sum() > 0.5


def test_writing_the_phantom_over_a_folder(tmp_path, capsys):
    """An existing phantom is replaced only with --overwrite, and then entirely (no old frames are
    left to pair with new photos); a folder holding anything else is never replaced."""
    from fundus2video.commands.cli import main

    out = tmp_path / "ph"
    args = ["data", "phantom", "--out", str(out), "--size", "48", "--frames", "4", "--video", "png"]
    assert main([*args, "--cases", "2", "--seed", "1"]) == 0
    assert main([*args, "--cases", "2", "--seed", "2"]) == 2
    assert "add --overwrite" in capsys.readouterr().err
    old_frame = (out / "phantom0000" / "ffa" / "003.png").read_bytes()
    assert main([*args, "--cases", "1", "--seed", "2", "--overwrite", "--frames", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cases.csv", "phantom0000"]
    assert not (out / "phantom0000" / "ffa" / "003.png").exists() and old_frame
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--cases", "1", "--overwrite"]) == 2
    assert "never replaced" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"
    assert main(["data", "phantom", "--out", str(tmp_path / "neg"), "--cases", "-2"]) == 2
    assert "--cases: -2" in capsys.readouterr().err and not (tmp_path / "neg").exists()
    for flag, value, expected in (("--size", "0", "--size: 0 (expected 32 to 4096"),
                                  ("--size", "100000", "--size: 100000 (expected 32 to 4096"),
                                  ("--frames", "1", "--frames: 1 (expected at least 2)"),
                                  ("--seed", "-1", "--seed: -1 (expected a number >= 0)")):
        assert main(["data", "phantom", "--out", str(tmp_path / "bad"), flag, value]) == 2
        assert expected in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_overwrite_never_deletes_what_the_phantom_did_not_write(tmp_path, capsys):
    from fundus2video.commands.cli import main

    out = tmp_path / "ph"
    args = ["data", "phantom", "--out", str(out), "--size", "48", "--frames", "4", "--video", "png", "--cases", "1"]
    assert main(args) == 0
    (out / "phantom0000" / "my_notes.txt").write_text("mine")  # a user's file inside a case folder
    assert main([*args, "--overwrite"]) == 2 and "never replaced" in capsys.readouterr().err
    assert (out / "phantom0000" / "my_notes.txt").read_text() == "mine"
    (tmp_path / "cases.csv").write_text("precious")  # --out naming a file is never deleted either
    assert main(["data", "phantom", "--out", str(tmp_path / "cases.csv"), "--overwrite", "--cases", "1"]) == 2
    assert (tmp_path / "cases.csv").read_text() == "precious"
