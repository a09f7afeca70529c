"""Hostile checkpoints and Hub folders: weights that are NaN or infinite, hyperparameters that ask
for a huge network, weights that do not fit their configuration. Each stops in one line naming the
file before any video is written or any large allocation is made."""

from __future__ import annotations

import json
import resource

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fundus2video.data_modules.phantom import make_case
from fundus2video.video_io import write_png
from tests.helpers.cli import run_cli

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def ckpt(trained_run):
    return trained_run("plain") / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "cf.png"
    write_png(path, make_case(0, size=64).cf)
    return path


def _edited(ckpt, tmp_path, name, edit):
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    edit(data)
    out = tmp_path / name
    torch.save(data, out)
    return out


def _first_weight(data):
    return next(k for k in data["state_dict"] if k.startswith("generator.") and k.endswith("weight"))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_write_no_video(ckpt, photo, tmp_path, value):
    def poison(data):
        data["state_dict"][_first_weight(data)].view(-1)[0] = value

    bad = _edited(ckpt, tmp_path, "bad.ckpt", poison)
    for runtime in ("torch", "auto"):
        r = run_cli("generate", "--ckpt", bad, "--cf", photo, "--out", tmp_path / "v.mp4", "--runtime", runtime)
        assert r.returncode == 2 and "NaN or infinite" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt"]  # no video, no ONNX cache folder


def test_huge_hyperparameters_are_refused_before_allocating(ckpt, photo, tmp_path):
    def grow(data):
        data["hyper_parameters"]["config"]["model"]["generator"].update(ngf=4096, n_blocks=64)

    bad = _edited(ckpt, tmp_path, "huge.ckpt", grow)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = run_cli("generate", "--ckpt", bad, "--cf", photo, "--out", tmp_path / "v.mp4", "--runtime", "torch")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.returncode == 2 and "do not fit its configuration" in r.stderr and "weight '" in r.stderr, r.stderr
    assert grown_mb < 500  # the networks of ngf 4096 would take gigabytes: they were only shaped on the meta device


def test_a_hub_folder_with_nan_weights_is_refused(ckpt, photo, tmp_path):
    folder = tmp_path / "hub"
    assert run_cli("export", "--ckpt", ckpt, "--format", "hub", "--out", folder).returncode == 0
    state = load_file(str(folder / "model.safetensors"))
    key = next(iter(state))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    r = run_cli("generate", "--ckpt", folder, "--cf", photo, "--out", tmp_path / "v.mp4")
    assert r.returncode == 2 and "NaN or infinite" in r.stderr and "model.safetensors" in r.stderr, r.stderr
    assert not (tmp_path / "v.mp4").exists()
    json.loads((folder / "config.json").read_text())  # the folder itself is left as it was
    assert np.isnan(load_file(str(folder / "model.safetensors"))[key].numpy()).all()


def test_evaluate_a_hub_folder_needs_data_and_then_scores_it(ckpt, tmp_path):
    """A Hub folder carries the generator, not its training data: without --data one line says so
    (it was a traceback); with --data the folder is scored like a checkpoint."""
    folder = tmp_path / "hub"
    assert run_cli("export", "--ckpt", ckpt, "--format", "hub", "--out", folder).returncode == 0
    r = run_cli("evaluate", "--ckpt", folder, "--split", "val", "--protocol", "standard", "--out", tmp_path / "e")
    assert r.returncode == 2 and "give --data" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("evaluate", "--ckpt", folder, "--data", "phantom", "--split", "val", "--protocol", "standard",
                "--out", tmp_path / "e")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["metrics"]["psnr"] > 0


@pytest.mark.parametrize("key, value, words", [
    ("data.size", -64, "data.size: -64 is out of range"),
    ("model.window", 0, "model.window"),
    ("loss.gv", float("nan"), "loss.gv: nan is out of range"),
])
def test_hyperparameters_no_experiment_could_hold_are_refused(ckpt, photo, tmp_path, key, value, words):
    section, name = key.split(".")

    def edit(data):
        data["hyper_parameters"]["config"][section][name] = value

    bad = _edited(ckpt, tmp_path, "odd.ckpt", edit)
    for command in (["generate", "--cf", photo, "--out", tmp_path / "v.mp4", "--runtime", "torch"],
                    ["evaluate", "--split", "val", "--out", tmp_path / "eval"]):
        r = run_cli(command[0], "--ckpt", bad, *command[1:])
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "odd.ckpt: its configuration is not valid" in r.stderr and words in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.ckpt"]


def _hub_config(folder, edit=None, text=None):
    path = folder / "config.json"
    if text is None:
        config = json.loads(path.read_text())
        edit(config)
        text = json.dumps(config)
    path.write_text(text)


@pytest.mark.parametrize("name, edit, text, words", [
    ("multiple", lambda c: c.update(size_multiple=2), None, "'size_multiple' 2 does not match the generator (4"),
    ("size", lambda c: c.update(size=30), None, "'size' 30 is not a multiple of 'size_multiple' 4"),
    ("video", lambda c: c.update(n_frames=1000, size=4096), None, "makes a video of 1.68e+10 pixels"),
    ("digits", None, '{"format_version": ' + "9" * 5000 + "}", "not valid JSON (ValueError: Exceeds the limit"),
    ("deep", None, "[" * 100_000 + "]" * 100_000, "not valid JSON (RecursionError: maximum recursion depth"),
    ("large", None, " " * 2_000_000 + "{}", "2000002 bytes (a fundus2video config is a few kB"),
])
def test_a_hub_config_no_export_writes_is_refused_in_one_line(ckpt, photo, tmp_path, name, edit, text, words):
    folder = tmp_path / "hub"
    assert run_cli("export", "--ckpt", ckpt, "--format", "hub", "--out", folder).returncode == 0
    _hub_config(folder, edit, text)
    r = run_cli("generate", "--ckpt", folder, "--cf", photo, "--out", tmp_path / "v.mp4", "--runtime", "torch")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "config.json: " in r.stderr and words in r.stderr, r.stderr
    assert not (tmp_path / "v.mp4").exists()
