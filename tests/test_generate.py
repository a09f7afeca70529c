"""`fundus2video generate`: a playable video from a photo the test writes; clear errors."""

import cv2
import numpy as np
import pytest
import torch

import fundus2video
from fundus2video.data_modules.phantom import make_case
from fundus2video.errors import UserError
from fundus2video.hub import load_module
from fundus2video.inference import generate_videos, prepare_photo
from fundus2video.video_io import read_video
from tests.helpers.cli import run_cli


@pytest.fixture(scope="module")
def ckpt(trained_run):
    return trained_run("plain") / "checkpoints" / "last.ckpt"


def _photo(path, size=96, index=5):
    cv2.imwrite(str(path), make_case(index, size=size, n_frames=2).cf[..., ::-1])
    return path


def _cli(*args):
    return run_cli("generate", *args)


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


@pytest.mark.parametrize("content", ["junk", "foreign", "tensor", "list"])
def test_a_file_that_is_not_a_checkpoint_fails_with_one_line(tmp_path, content):
    ckpt = tmp_path / "model.ckpt"
    if content == "junk":
        ckpt.write_bytes(b"not a checkpoint")
    else:  # a real torch file, but not a Lightning checkpoint of this module
        torch.save({"foreign": {"weight": torch.zeros(2)}, "tensor": torch.zeros(2), "list": [1, 2]}[content], ckpt)
    photo = _photo(tmp_path / "eye.png")
    proc = _cli("--ckpt", ckpt, "--cf", photo, "--out", tmp_path / "x.mp4")
    assert proc.returncode == 2 and f"{ckpt}: not a fundus2video checkpoint" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.mp4").exists()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three different phantom photos (different eyes and sizes), in a folder of their own."""
    folder = tmp_path_factory.mktemp("photos")
    return [_photo(folder / f"p{i}.png", size=size, index=index)
            for i, (size, index) in enumerate([(96, 0), (128, 3), (80, 6)])]


@pytest.fixture(scope="module")
def kba_module():
    """A tiny random module with KBA at the bottleneck and after the first upsampling, as the
    method's experiment has it (the trained smoke checkpoint has none)."""
    from fundus2video.config import load_config, to_plain
    from fundus2video.module import Fundus2VideoModule
    from tests.conftest import TINY

    torch.manual_seed(0)
    cfg = load_config("experiments/smoke.yaml", [*TINY, "model.generator.kba_stages=[bottleneck,up1]"])
    return Fundus2VideoModule(to_plain(cfg)).eval()


def _frames(module, photos, out, **kwargs) -> list[torch.Tensor]:
    return [r.frames for r in generate_videos(module, photos, out, n_frames=4, **kwargs)]


@pytest.mark.parametrize("which", ["checkpoint", "kba"])
def test_batched_generation_equals_one_photo_at_a_time(tmp_path, ckpt, kba_module, photos, which):
    module = load_module(ckpt) if which == "checkpoint" else kba_module
    single = _frames(module, photos, tmp_path / "single")
    batched = _frames(module, photos, tmp_path / "batched", batch=2)  # a batch of 2, then a batch of 1
    assert len(batched) == 3
    for b, s in zip(batched, single, strict=True):
        assert b.shape == (4, 1, 32, 32) and b.dtype == torch.float32
        torch.testing.assert_close(b, s, atol=1e-5, rtol=0)


def test_batching_keeps_each_photo_with_its_own_video(tmp_path, kba_module, photos):
    """Each photo's file holds its own video: the photos give clearly different videos, and every
    batched output (returned and written) is nearest to its own photo's single run."""
    single = [_frames(kba_module, [p], tmp_path / "single")[0] for p in photos]
    gaps = [(single[i] - single[j]).abs().mean().item() for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 0.01, gaps  # otherwise a mix-up could not show
    # the order reversed: photo 2 and photo 1 share a batch
    results = list(generate_videos(kba_module, photos[::-1], tmp_path / "batched", n_frames=4, batch=2))
    for result, photo in zip(results, photos[::-1], strict=True):
        distances = [(result.frames - s).abs().mean().item() for s in single]
        assert distances.index(min(distances)) == photos.index(photo) and min(distances) < 1e-5
        assert result.paths == [tmp_path / "batched" / f"{photo.stem}.mp4"]
        written = torch.from_numpy(read_video(result.paths[0])[..., 0].astype(np.float32)) / 127.5 - 1
        errors = [(written - s[:, 0]).abs().mean().item() for s in single]
        assert errors.index(min(errors)) == photos.index(photo), errors  # up to H.264
        torch.testing.assert_close(result.cf, prepare_photo(photo, 32))


def test_cli_batch_writes_one_video_per_photo(tmp_path, ckpt, photos):
    proc = _cli("--ckpt", ckpt, "--cf", photos[0].parent, "--out", tmp_path / "videos", "--frames", 5,
                "--batch", 2)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 3
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["p0.mp4", "p1.mp4", "p2.mp4"]
    for p in photos:
        video = read_video(tmp_path / "videos" / f"{p.stem}.mp4")
        assert video.shape[0] == 5 and video.shape[1:3] == (32, 32)


def test_cli_batch_a_bad_photo_fails_after_the_photos_before_it(tmp_path, ckpt):
    """As one photo at a time: the photos before the bad one are written, then one error line names it."""
    folder = tmp_path / "photos"
    folder.mkdir()
    _photo(folder / "a.png", index=1)
    cv2.imwrite(str(folder / "b.png"), np.zeros((128, 128, 3), np.uint8))  # no field of view
    _photo(folder / "c.png", index=2)
    proc = _cli("--ckpt", ckpt, "--cf", folder, "--out", tmp_path / "videos", "--batch", 2)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fundus2video: error:")]
    assert len(errors) == 1 and "b.png: no field of view found" in errors[0], proc.stderr  # (and tqdm's bar)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["a.mp4"]


def test_batch_and_frames_are_checked_before_any_work(tmp_path, kba_module, photos):
    for kwargs, message in (({"batch": 0}, "--batch must be at least 1"), ({"n_frames": -1}, "--frames must be")):
        with pytest.raises(UserError, match=message):
            generate_videos(kba_module, photos, tmp_path, **kwargs)  # raises on the call, not when iterated
    assert not list(tmp_path.iterdir())


def test_bf16_generation_is_close_to_fp32_and_finite(tmp_path, kba_module, photos):
    fp32 = _frames(kba_module, photos[:2], tmp_path / "fp32", batch=2)
    bf16 = _frames(kba_module, photos[:2], tmp_path / "bf16", batch=2, bf16=True)
    for b, f in zip(bf16, fp32, strict=True):
        assert b.dtype == torch.float32 and torch.isfinite(b).all()
        assert 0 < (b - f).abs().mean() < 0.05  # > 0: autocast did act
    assert read_video(tmp_path / "bf16" / "p1.mp4").shape[0] == 4


def test_outputs_never_replace_an_input_or_each_other(tmp_path, ckpt, capsys):
    from fundus2video.commands.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    _photo(folder / "a.png", index=1)
    _photo(folder / "a.jpg", index=2)  # the same stem: two videos, not one
    assert main(["generate", "--ckpt", str(ckpt), "--cf", str(folder), "--out", str(tmp_path / "v"),
                 "--frames", "4"]) == 0
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["a_jpg.mp4", "a_png.mp4"]
    capsys.readouterr()
    photo = _photo(tmp_path / "eye_strip.png")
    before = photo.read_bytes()
    bad = [
        (["--cf", str(photo), "--out", str(tmp_path / "eye.mp4"), "--strip"], "would overwrite the input photo"),
        (["--cf", str(folder), "--out", str(tmp_path / "x.mp4")], "2 photos need a folder, not a file name"),
        (["--cf", str(photo), "--out", str(tmp_path / "x.gif")], "expected a .mp4 file name"),
        (["--cf", str(photo), "--out", str(tmp_path / "x.avi")], "expected a .mp4 file name"),
        (["--cf", str(photo), "--out", str(tmp_path / "x.mp4"), "--frames", "0"], "--frames 0: expected 1 to 1000"),
        (["--cf", str(photo), "--out", str(tmp_path / "x.mp4"), "--frames", "100000000"], "--frames 100000000: "
         "expected 1 to 1000"),
        (["--cf", str(photo), "--out", str(tmp_path / "x.mp4"), "--fps", "0"], "--fps 0: expected 1 to 240"),
        (["--cf", str(photo), "--out", str(tmp_path / "x.mp4"), "--fps", "-3"], "--fps -3: expected 1 to 240"),
        (["--cf", str(photo), "--out", str(tmp_path / "x.mp4"), "--fps", "100000000"], "--fps 100000000: expected"),
        (["--cf", str(photo), "--out", ""], "--out: empty (expected video.mp4 for one photo, or a folder)"),
    ]
    if not torch.cuda.is_available():
        bad.append((["--cf", str(photo), "--out", str(tmp_path / "x.mp4"), "--device", "cuda"], "has no CUDA GPU"))
    for args, message in bad:
        assert main(["generate", "--ckpt", str(ckpt), *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert photo.read_bytes() == before
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "x.gif").exists()
    assert not (tmp_path / "eye.mp4").exists()


def test_folder_names_stay_unique():
    from pathlib import Path

    from fundus2video.inference import folder_targets

    photos = [Path(n) for n in ("a.png", "a.PNG", "a.jpg", "a_png.jpg", "b.png")]
    names = [t.name for t in folder_targets(photos, Path("out"))]
    assert len({n.lower() for n in names}) == len(names) and names[-1] == "b.mp4"


def test_an_output_path_the_system_refuses_is_one_line(tmp_path, ckpt, capsys):
    """--out inside a file (its folder cannot be made): the system's reason and the path, exit 2."""
    from fundus2video.commands.cli import main

    photo = _photo(tmp_path / "eye.png")
    before = photo.read_bytes()
    code = main(["generate", "--ckpt", str(ckpt), "--cf", str(photo), "--out", str(photo / "v.mp4"),
                 "--runtime", "torch"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("fundus2video: error: ") and str(photo) in err[-1], err
    assert "Traceback" not in "\n".join(err) and photo.read_bytes() == before


def test_the_output_name_is_kept_as_given(tmp_path, ckpt):
    """--out V.MP4 writes V.MP4 (not a renamed V.mp4); --gif goes beside it."""
    proc = _cli("--ckpt", ckpt, "--cf", _photo(tmp_path / "eye.png"), "--out", tmp_path / "V.MP4", "--gif",
                "--frames", 3, "--runtime", "torch")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["V.MP4", "V.gif", "eye.png"]
    assert read_video(tmp_path / "V.MP4").shape[0] == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command, device, expected", [
    ("generate", "tpu", "--device tpu: not a device (expected cpu, cuda, cuda:N or mps)"),
    ("generate", "cuda:1", "--device cuda:1: this machine has no CUDA GPU"),
    ("evaluate", "cuda", "--device cuda: this machine has no CUDA GPU"),
])
def test_a_device_the_machine_lacks_is_named_not_blamed_on_the_checkpoint(ckpt, tmp_path, command, device,
                                                                         expected):
    args = ["--cf", _photo(tmp_path / "eye.png"), "--out", tmp_path / "v.mp4"] if command == "generate" else []
    proc = run_cli(command, "--ckpt", ckpt, *args, "--device", device)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"fundus2video: error: {expected}"), lines
    with pytest.raises(UserError, match="device tpu: not a device"):
        load_module(ckpt, "tpu")


def test_cpu_with_an_index_is_the_cpu(ckpt, tmp_path):
    proc = _cli("--ckpt", ckpt, "--cf", _photo(tmp_path / "eye.png"), "--out", tmp_path / "v.mp4", "--device",
                "cpu:0", "--frames", 2, "--runtime", "torch")
    assert proc.returncode == 0, proc.stderr
    assert read_video(tmp_path / "v.mp4").shape[0] == 2


def test_an_existing_output_is_kept_unless_overwrite_is_given(ckpt, tmp_path):
    photo = _photo(tmp_path / "eye.png")
    (tmp_path / "v.gif").write_bytes(b"an earlier gif")
    args = ["--ckpt", ckpt, "--cf", photo, "--out", tmp_path / "v.mp4", "--gif", "--frames", 2, "--runtime", "torch"]
    proc = _cli(*args)
    assert proc.returncode == 2 and proc.stderr.strip() == (f"fundus2video: error: {tmp_path / 'v.gif'}: exists "
                                                            "(--overwrite replaces it, or choose another --out)")
    assert (tmp_path / "v.gif").read_bytes() == b"an earlier gif" and not (tmp_path / "v.mp4").exists()
    assert _cli(*args, "--overwrite").returncode == 0
    assert (tmp_path / "v.gif").read_bytes() != b"an earlier gif" and (tmp_path / "v.mp4").is_file()
