"""`fundus2video generate`: a playable video from a photo the test writes; clear errors."""

import subprocess
import sys

import cv2
import numpy as np
import pytest
from fundus2video.data_modules.phantom import make_case

import fundus2video
from fundus2video.generate import load_module
from fundus2video.train import train
from fundus2video.video_io import read_video


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from fundus2video.config import load_config
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("gen")
    cfg = load_config("experiments/smoke.yaml", [*TINY, "trainer.max_epochs=1", f"logging.root={root}"])
    return train(cfg) / "checkpoints" / "last.ckpt"


def _photo(path, size=96, index=5):
    cv2.imwrite(str(path), make_case(index, size=size, n_frames=2).cf[..., ::-1])
    return path


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fundus2video", "generate", *map(str, args)],
                          capture_output=True, text=True)


def test_generate_writes_a_playable_video_with_the_requested_frames(tmp_path, ckpt):
    photo = _photo(tmp_path / "eye.jpg")
    proc = _cli("--ckpt", ckpt, "--cf", photo, "--out", tmp_path / "out" / "eye.mp4", "--frames", 6, "--gif",
                "--strip", "--side-by-side")
    assert proc.returncode == 0, proc.stderr
    video = read_video(tmp_path / "out" / "eye.mp4")
    assert video.shape[0] == 6 and video.shape[1:3] == (32, 32)
    assert read_video(tmp_path / "out" / "eye_sbs.mp4").shape[0] == 6
    assert (tmp_path / "out" / "eye.gif").is_file() and (tmp_path / "out" / "eye_strip.png").is_file()


def test_python_api_and_a_folder_of_photos(tmp_path, ckpt):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        _photo(folder / f"p{i}.png", index=i)
    assert _cli("--ckpt", ckpt, "--cf", folder, "--out", tmp_path / "videos").returncode == 0
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["p0.mp4", "p1.mp4"]
    result = fundus2video.generate_video(load_module(ckpt), folder / "p0.png", tmp_path / "api.mp4", n_frames=3)
    assert result.frames.shape == (3, 1, 32, 32) and result.paths[0].is_file()
    # the same weights and photo give the same video as the CLI wrote (up to H.264)
    cli_video = read_video(tmp_path / "videos" / "p0.mp4").astype(int)
    api_video = read_video(tmp_path / "api.mp4").astype(int)
    assert np.abs(cli_video[:3] - api_video).mean() < 3


@pytest.mark.parametrize("kind, expected", [
    ("unreadable", "unreadable image"),
    ("black", "no field of view found"),
    ("tiny", "at least 64 pixels a side"),
    ("missing", "photo not found"),
])
def test_bad_photos_fail_with_one_line(tmp_path, ckpt, kind, expected):
    path = tmp_path / "bad.png"
    if kind == "unreadable":
        path.write_bytes(b"not an image")
    elif kind == "black":
        cv2.imwrite(str(path), np.zeros((128, 128, 3), np.uint8))
    elif kind == "tiny":
        _photo(path, size=32)
    proc = _cli("--ckpt", ckpt, "--cf", path, "--out", tmp_path / "x.mp4")
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
