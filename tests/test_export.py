"""`fundus2video export`: standalone TorchScript / ONNX files that reproduce the eager generator in a
process that never imports fundus2video; the JSON sidecar; clear errors."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from fundus2video.errors import UserError
from fundus2video.export import ONNX_MISSING, export_generator
from fundus2video.hub import load_module
from tests.helpers.cli import run_cli

# runs in a fresh interpreter outside the repository: torch (and onnxruntime) only
RUN_EXPORTED = textwrap.dedent("""
    import sys, torch
    results = {}
    for path, x in torch.load(sys.argv[1]).items():
        if path.endswith(".onnx"):
            import onnxruntime
            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            results[path] = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        else:
            results[path] = torch.jit.load(path)(x)
    assert not any(name.startswith("fundus2video") for name in sys.modules), "fundus2video was imported"
    torch.save(results, sys.argv[2])
""")


@pytest.fixture(scope="module")
def ckpt(trained_run):
    """A tiny checkpoint whose generator has every branch an export must trace: the local
    enhancer and a KBA head."""
    return trained_run("local_kba") / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def module(ckpt):
    return load_module(ckpt)


def _cli(*args):
    return run_cli("export", *args)


def _check_without_fundus2video(module, tmp_path, exports: dict, size: int) -> None:
    """Run each exported file {path: frames} on a batch size the export never saw, in one fresh
    process, and compare with the eager generator (frames None) or rollout (frames T)."""
    inputs = {str(path): torch.rand(3, 6 if frames is None else 3, size, size) * 2 - 1
              for path, frames in exports.items()}
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", RUN_EXPORTED, "inputs.pt", "outputs.pt"], check=True, cwd=tmp_path, env=env)
    outputs = torch.load(tmp_path / "outputs.pt")
    for path, frames in exports.items():
        x = inputs[str(path)]
        with torch.no_grad():
            expected = module.generator(x) if frames is None else module(x, frames)
        assert outputs[str(path)].shape == expected.shape, path
        assert (outputs[str(path)] - expected).abs().max() <= 1e-4, path


def test_cli_writes_torchscript_and_its_sidecar(ckpt, module, tmp_path):
    out = tmp_path / "gen" / "generator.pt"
    proc = _cli("--ckpt", ckpt, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    x = torch.rand(2, 6, 32, 32) * 2 - 1  # CF + K = 3 previous frames
    with torch.no_grad():
        assert (torch.jit.load(out)(x) - module.generator(x)).abs().max() <= 1e-5

    side = json.loads((tmp_path / "gen" / "generator.pt.json").read_text())
    assert side["format"] == "torchscript" and side["kind"] == "window" and side["file"] == "generator.pt"
    assert side["input"]["shape"] == ["B", 6, 32, 32] and side["output"]["shape"] == ["B", 3, 32, 32]
    assert side["window"] == 3 and side["size"] == 32 and side["frames"] is None
    assert side["value_range"] == [-1.0, 1.0] and side["max_abs_diff_vs_eager"] <= 1e-4
    assert side["checkpoint"] == str(ckpt.resolve()) and side["fundus2video_version"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["generator.pt", "generator.pt.json"]  # no temp files


def test_torchscript_window_and_video_run_without_fundus2video(ckpt, module, tmp_path):
    window = export_generator(ckpt, tmp_path / "window.pt", size=64)
    video = export_generator(ckpt, tmp_path / "video.pt", frames=3, size=64)
    side = json.loads(video.sidecar.read_text())
    assert side["kind"] == "video" and side["input"]["shape"] == ["B", 3, 64, 64]
    assert side["output"]["shape"] == ["B", 3, 1, 64, 64]
    _check_without_fundus2video(module, tmp_path, {window.path: None, video.path: 3}, 64)


def test_onnx_video_runs_without_fundus2video(ckpt, module, tmp_path):
    """The rollout (the window generator unrolled T times, with the frame averaging) in ONNX."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    video = export_generator(ckpt, tmp_path / "video.onnx", "onnx", frames=2)
    side = json.loads(video.sidecar.read_text())
    assert side["format"] == "onnx" and side["input"]["name"] == "cf" and "onnxruntime" in side["call"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.onnx", "video.onnx.json"]  # no external .data
    _check_without_fundus2video(module, tmp_path, {video.path: 2}, 32)


def test_onnx_without_its_packages_names_the_extra(ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # its import fails as if not installed
    with pytest.raises(UserError) as err:
        export_generator(ckpt, tmp_path / "g.onnx", "onnx")
    assert str(err.value) == ONNX_MISSING and "pip install 'fundus2video[export]'" in ONNX_MISSING
    assert not list(tmp_path.iterdir())


def test_missing_checkpoint_is_one_line_naming_it(tmp_path):
    proc = _cli("--ckpt", tmp_path / "nosuch.ckpt", "--out", tmp_path / "g.pt")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"fundus2video: error: checkpoint not found: {tmp_path / 'nosuch.ckpt'}"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, expected", [
    ({"size": 36}, "--size 36: expected a multiple of 8 (this generator's) from 8 to 4096"),
    ({"size": 1048576}, "--size 1048576: expected a multiple of 8 (this generator's) from 8 to 4096"),
    ({"frames": 0}, "--frames 0: expected 1 to 1000"),
    ({"frames": 1000000}, "--frames 1000000: expected 1 to 1000"),
    ({"format": "tflite"}, "format 'tflite' is not one of torchscript, onnx"),
    ({"private": True}, "--private needs --format hub"),
    ({"out": ""}, "--out: empty (expected a .pt file, or .onnx with --format onnx)"),
    ({"format": "onnx"}, "--out {tmp}/g.pt: --format onnx writes a .onnx file"),
    ({"out": "{tmp}/g.onnx"}, "--format torchscript writes a TorchScript file (.pt, .pth or .ts); for .onnx"),
    ({"out": "{tmp}/g.txt"}, "--out {tmp}/g.txt: --format torchscript writes a TorchScript file"),
])
def test_bad_arguments(ckpt, tmp_path, kwargs, expected):
    out = kwargs.pop("out", "{tmp}/g.pt").format(tmp=tmp_path)
    with pytest.raises(UserError, match=re.escape(expected.format(tmp=tmp_path))):
        export_generator(ckpt, out, **kwargs)
    assert not list(tmp_path.iterdir())


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    junk = tmp_path / "weights.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=re.escape(f"{junk}: not a fundus2video checkpoint (UnpicklingError")):
        export_generator(junk, tmp_path / "g.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.ckpt"]


def test_export_never_writes_over_its_checkpoint(ckpt, tmp_path):
    before = ckpt.read_bytes()
    link = tmp_path / "same.ckpt"
    link.symlink_to(ckpt)  # another name for the same file
    proc = _cli("--ckpt", ckpt, "--out", link)
    assert proc.returncode == 2 and "writing it would replace the input" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and ckpt.read_bytes() == before


def test_an_existing_out_is_replaced_only_with_overwrite(ckpt, tmp_path):
    out = tmp_path / "g.pt"
    out.write_bytes(b"an earlier export")
    with pytest.raises(UserError, match=re.escape(f"--out {out}: exists (--overwrite replaces it and its .json")):
        export_generator(ckpt, out)
    assert out.read_bytes() == b"an earlier export"
    export_generator(ckpt, out, overwrite=True)
    assert torch.jit.load(str(out)) is not None and out.with_name("g.pt.json").is_file()


def test_a_long_video_export_is_checked_against_the_float64_rollout(ckpt, tmp_path, monkeypatch):
    """A 12-frame rollout amplifies float32 rounding beyond 1e-4 between two correct implementations:
    the video export passes when it is as close to the float64 rollout as the eager one is, and fails
    when it is not."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import fundus2video.export as export
    import fundus2video.onnx_runtime as onnx_runtime

    proc = _cli("--ckpt", ckpt, "--out", tmp_path / "v12.onnx", "--format", "onnx", "--frames", 12)
    assert proc.returncode == 0, proc.stderr
    monkeypatch.setattr(export, "TOLERANCE", 1e-12)  # as if the rollout had drifted: the float64 check decides
    result = export_generator(ckpt, tmp_path / "v.onnx", "onnx", frames=12)
    exact = json.loads(result.sidecar.read_text())["max_abs_diff_vs_float64"]
    assert exact == result.float64_check and 0 < exact["exported"] <= export.VIDEO_SLACK * exact["eager_float32"]
    real = onnx_runtime.run_onnx
    monkeypatch.setattr(onnx_runtime, "run_onnx", lambda path, x: real(path, x) + 1e-3)  # a wrong graph
    with pytest.raises(UserError, match=r"bad.onnx: export check failed: the exported onnx's 12-frame video is "
                                        r"0.001\d* from the float64 rollout, more than 4 times"):
        export_generator(ckpt, tmp_path / "bad.onnx", "onnx", frames=12)
    assert not (tmp_path / "bad.onnx").exists() and not list(tmp_path.glob(".bad*"))
