"""Hub folders (`export --format hub`): the same video as the checkpoint, loading without Lightning,
one-line errors for folders whose parts disagree, URLs and hf:// (offline, huggingface_hub patched)."""

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fundus2video import hub
from fundus2video.commands.cli import main
from fundus2video.data_modules.phantom import make_case
from fundus2video.errors import UserError
from fundus2video.hub import load_module
from fundus2video.inference import generate_videos, prepare_photo
from fundus2video.module import Fundus2VideoModule
from fundus2video.video_io import read_video
from tests.helpers.cli import run_cli

KBA_KEY = "global_net.attention.bottleneck.weight"  # the KBA head: must travel with the weights
METRICS = {"psnr": 12.5, "ssim": 0.25}

# a fresh interpreter: the folder loads and rolls out with torch, safetensors and the networks only
NO_LIGHTNING = textwrap.dedent("""
    import sys, torch
    from fundus2video import load_generator
    gen = load_generator(sys.argv[1])
    cf, expected = torch.load(sys.argv[2])
    video = gen(cf, expected.shape[1])
    assert gen.window == 3 and gen.size == 32 and gen.n_frames == 4, (gen.window, gen.size, gen.n_frames)
    assert torch.equal(video, expected), (video - expected).abs().max()
    heavy = sorted({m.split(".")[0] for m in sys.modules} & {"lightning", "pytorch_lightning", "torchmetrics"})
    assert not heavy, heavy
    print("ok")
""")


@pytest.fixture(scope="module")
def ckpt(trained_run):
    """A tiny trained checkpoint with the local enhancer and a KBA head, whose run has an
    evaluation for the card."""
    run_dir = trained_run("local_kba")
    # what `fundus2video evaluate` writes (running it would cost the test budget for no more coverage)
    (run_dir / "eval" / "test-own").mkdir(parents=True)
    (run_dir / "eval" / "test-own" / "metrics.json").write_text(json.dumps(
        {"split": "test", "data": "checkpoint's own (phantom)", "n_cases": 1, "size": 32, "metrics": METRICS}))
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def folder(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "f2v"
    assert main(["export", "--format", "hub", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "eye.png"
    cv2.imwrite(str(path), make_case(5, size=96, n_frames=2).cf[..., ::-1])
    return path


def _cli(*args):
    return run_cli(*args)


def _one_line_error(proc, expected: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_folder_holds_weights_config_and_model_card(ckpt, folder):
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    module = load_module(ckpt)
    state = load_file(folder / "model.safetensors")
    assert KBA_KEY in state
    expected = module.generator.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)

    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == hub.FORMAT_VERSION and config["fundus2video_version"]
    assert config["generator"]["netg"] == "local" and config["generator"]["class"].endswith("LocalEnhancer")
    assert config["generator"]["args"] == {"input_nc": 6, "output_nc": 3, "ngf": 8, "n_downsample": 2,
                                           "n_blocks": 1, "n_blocks_local": 3, "padding": "reflect",
                                           "kba_stages": ["bottleneck"]}
    assert (config["window"], config["input_channels"], config["size"], config["n_frames"]) == (3, 6, 32, 4)
    assert config["value_range"] == [-1.0, 1.0]
    assert {"field_of_view", "crop", "resize"} <= config["preprocessing"].keys()

    card = (folder / "README.md").read_text()
    front = card.split("---\n")[1]
    assert "library_name: fundus2video" in front and "license: mit" in front and "- fundus2video" in front
    assert "`phantom`" in card and "2 train, 1 val, 1 test" in card  # the training data of the run's config.yaml
    assert "| psnr | 12.5 |" in card and "test-own" in card  # the run's evaluation
    assert "Not for diagnosis" in card and "## Limitations" in card
    assert str(ckpt.parent.parent) not in card  # a card for publishing names no local paths


def test_the_folder_gives_the_checkpoints_video(ckpt, folder, photo, tmp_path):
    loaded = load_module(folder)
    assert isinstance(loaded, hub.LoadedGenerator) and isinstance(load_module(ckpt), Fundus2VideoModule)
    runs = {name: list(generate_videos(load_module(src), [photo], tmp_path / name, n_frames=5, strip=True))
            for name, src in (("ckpt", ckpt), ("hub", folder))}
    torch.testing.assert_close(runs["hub"][0].frames, runs["ckpt"][0].frames, atol=1e-6, rtol=0)
    # the CLI: `generate --ckpt DIR` writes what `generate --ckpt last.ckpt` writes
    for name, src in (("ckpt", ckpt), ("hub", folder)):
        assert main(["generate", "--ckpt", str(src), "--cf", str(photo), "--out", str(tmp_path / f"cli_{name}.mp4"),
                     "--frames", "5", "--strip"]) == 0
    assert np.array_equal(read_video(tmp_path / "cli_hub.mp4"), read_video(tmp_path / "cli_ckpt.mp4"))
    cli_strip = cv2.imread(str(tmp_path / "cli_hub_strip.png"))
    assert np.array_equal(cli_strip, cv2.imread(str(tmp_path / "cli_ckpt_strip.png")))
    # and what `generate_videos` writes with the CLI's runtime. `generate` defaults to --runtime auto (ONNX
    # Runtime when the [export] extra is installed, as `make install` does), `generate_videos` to torch: the
    # two runtimes agree within onnx_runtime.TOLERANCE, not bit for bit, so a frame value near a grey level's
    # rounding edge may land one level apart (which pixels depends on the weights and the CPU's kernels)
    (same,) = generate_videos(load_module(folder), [photo], tmp_path / "hub_auto", n_frames=5, strip=True,
                              runtime="auto", checkpoint=folder)
    assert np.array_equal(cli_strip, cv2.imread(str(same.paths[-1])))
    # across the runtimes, every pixel within one grey level (|ORT - torch| <= 1e-4 on [-1, 1] is 0.0064 of one)
    torch_strip = cv2.imread(str(tmp_path / "hub" / "eye_strip.png"))
    assert np.abs(cli_strip.astype(int) - torch_strip.astype(int)).max() <= 1


def test_load_generator_in_a_fresh_process_never_imports_lightning(ckpt, folder, photo, tmp_path):
    cf = prepare_photo(photo, 32)[None]
    torch.save((cf, load_module(ckpt)(cf, 4)), tmp_path / "io.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", NO_LIGHTNING, str(folder), "io.pt"], capture_output=True,
                          text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    # and `import fundus2video` alone stays light
    proc = subprocess.run([sys.executable, "-c", "import sys, fundus2video; assert 'torch' not in sys.modules"],
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0


def test_top_level_imports(ckpt, folder):
    from fundus2video import Fundus2VideoDataModule, Fundus2VideoModule, generate_video, load_generator

    assert Fundus2VideoModule.__name__ == "Fundus2VideoModule" and Fundus2VideoDataModule.__name__ == \
        "Fundus2VideoDataModule"
    assert callable(generate_video) and load_generator is hub.load_generator
    # load_generator also wraps a .ckpt, into the same interface as a folder
    cf = torch.rand(2, 3, 32, 32) * 2 - 1
    from_ckpt, from_folder = load_generator(ckpt), load_generator(folder / "config.json")
    assert (from_ckpt.window, from_ckpt.size, from_ckpt.n_frames) == (from_folder.window, 32, 4)
    assert torch.equal(from_ckpt(cf), from_folder(cf)) and from_folder(cf).shape == (2, 4, 1, 32, 32)
    assert from_ckpt.source == str(ckpt)
    for source in (ckpt, folder):  # a device this machine lacks is named, not blamed on the checkpoint
        with pytest.raises(UserError, match="device tpu: not a device"):
            load_generator(source, "tpu")


def _tamper(folder, tmp_path, how: str):
    bad = tmp_path / f"bad_{how}"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "config.json").read_text())
    if how == "ngf":
        config["generator"]["args"]["ngf"] = 16
    elif how == "version":
        config["format_version"] = hub.FORMAT_VERSION + 1
    elif how == "netg":
        config["generator"] = {"netg": "os.system", "args": {}}
    elif how == "huge":  # built, even on the meta device, this would not finish
        config["generator"]["args"]["n_blocks"] = 10**9
    (bad / "config.json").write_text(json.dumps(config))
    if how in ("missing", "extra"):
        state = load_file(bad / "model.safetensors")
        if how == "missing":
            del state[KBA_KEY]
        else:
            state["backdoor"] = torch.zeros(1)
        save_file(state, bad / "model.safetensors")
    elif how == "garbage":
        (bad / "model.safetensors").write_bytes(b"\x00" * 64)
    return bad


def test_a_tampered_folder_fails_in_one_line(folder, photo, tmp_path, capsys):
    # config.json's ngf changed: the whole CLI in its own process, exit status and stderr as a user sees them
    bad = _tamper(folder, tmp_path, "ngf")
    _one_line_error(_cli("generate", "--ckpt", bad, "--cf", photo, "--out", tmp_path / "x.mp4"),
                    f"{bad}: config.json and model.safetensors disagree: weight 'global_net.model.1.weight' has "
                    "shape (16, 6, 7, 7), the config's generator (32, 6, 7, 7)")
    # a weight removed from model.safetensors: the same command in this process (a second interpreter costs seconds)
    bad = _tamper(folder, tmp_path, "missing")
    assert main(["generate", "--ckpt", str(bad), "--cf", str(photo), "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert err == f"fundus2video: error: {bad}: config.json and model.safetensors disagree: weight '{KBA_KEY}' is " \
                  "missing\n"
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize(("how", "expected"), [
    ("extra", "unexpected weight 'backdoor'"),
    ("garbage", "model.safetensors: not a readable safetensors file"),
    ("version", "is newer than this fundus2video reads"),
    ("netg", "'generator' must give netg (one of global, local)"),
    ("huge", "generator args: bad n_blocks 1000000000 (at most 64)"),
])
def test_other_bad_folders_fail_with_a_user_error(folder, tmp_path, how, expected):
    with pytest.raises(UserError, match=None) as err:
        hub.load_generator(_tamper(folder, tmp_path, how))
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.fixture
def server(ckpt, folder, tmp_path, monkeypatch):
    """A loopback HTTP server of the .ckpt and the folder's files; TORCH_HOME (the download cache) in
    tmp_path. Yields (base URL, the paths requested)."""
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(ckpt, root / "last.ckpt")
    shutil.copytree(folder, root / "f2v")
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep the test output clean
            pass

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in hub.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_urls_of_a_checkpoint_and_of_a_folder(server, ckpt, photo, tmp_path, monkeypatch):
    base, requests = server
    cf = prepare_photo(photo, 32)[None]
    expected = load_module(ckpt)(cf, 4)

    from_ckpt = load_module(f"{base}/last.ckpt")
    assert isinstance(from_ckpt, Fundus2VideoModule) and torch.equal(from_ckpt(cf, 4), expected)
    cached = hub.download_folder(f"{base}/last.ckpt") / "last.ckpt"
    assert cached.is_file() and str(cached).startswith(str(tmp_path / "torch" / "hub" / "fundus2video"))

    from_folder = load_module(f"{base}/f2v/model.safetensors")  # fetches config.json too
    assert isinstance(from_folder, hub.LoadedGenerator) and torch.equal(from_folder(cf, 4), expected)
    assert sorted(requests) == ["/f2v/config.json", "/f2v/model.safetensors", "/last.ckpt"]
    # the config.json URL names the same folder: served from the cache, nothing downloaded again
    assert main(["generate", "--ckpt", f"{base}/f2v/config.json", "--cf", str(photo), "--out",
                 str(tmp_path / "url.mp4"), "--frames", "4"]) == 0
    assert len(requests) == 3 and (tmp_path / "url.mp4").is_file()
    # offline: a cached URL still loads, an uncached one fails in one line without a connection
    monkeypatch.setenv("FUNDUS2VIDEO_OFFLINE", "1")
    assert isinstance(hub.load_generator(f"{base}/f2v/config.json"), hub.LoadedGenerator)
    with pytest.raises(UserError, match="not in the cache"):
        hub.load_generator(f"{base}/other/model.safetensors")
    monkeypatch.delenv("FUNDUS2VIDEO_OFFLINE")
    with pytest.raises(UserError, match=r"download failed \(HTTP 404") as err:
        load_module(f"{base}/nothing/model.safetensors")
    assert "\n" not in str(err.value) and len(requests) == 4
    with pytest.raises(UserError, match="expected the URL of a .ckpt"):
        load_module(f"{base}/f2v/README.md")


def test_push_and_pull_through_huggingface_hub(ckpt, photo, tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    remote = tmp_path / "remote"  # stands in for the Hub: no network in tests
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls.append(("upload_folder", repo_id, folder_path, kwargs))
        shutil.copytree(folder_path, remote / repo_id)

    def snapshot_download(repo_id, **kwargs):
        calls.append(("snapshot_download", repo_id, kwargs))
        return str(remote / repo_id)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    out = tmp_path / "push"
    assert main(["export", "--format", "hub", "--ckpt", str(ckpt), "--out", str(out), "--push", "me/f2v",
                 "--private"]) == 0
    (_, repo, create_kwargs), (_, repo2, folder_path, upload_kwargs) = calls
    assert repo == repo2 == "me/f2v" and create_kwargs["private"] is True and create_kwargs["exist_ok"] is True
    assert folder_path == str(out) and upload_kwargs["repo_type"] == "model"
    assert sorted(p.name for p in (remote / "me/f2v").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "--ckpt hf://me/f2v" in (out / "README.md").read_text()

    loaded = load_module("hf://me/f2v@v1")
    _, repo, kwargs = calls[2]
    assert repo == "me/f2v" and kwargs["revision"] == "v1" and "model.safetensors" in kwargs["allow_patterns"]
    cf = prepare_photo(photo, 32)[None]
    assert isinstance(loaded, hub.LoadedGenerator) and torch.equal(loaded(cf, 4), load_module(ckpt)(cf, 4))


def test_a_push_without_a_connection_is_one_line(ckpt, tmp_path, monkeypatch, capsys):
    """The HTTP client's own error types (not OSErrors) end as one line too; the folder is kept."""
    huggingface_hub = pytest.importorskip("huggingface_hub")

    class ConnectError(Exception):  # as httpx raises when the name does not resolve
        pass

    def create_repo(self, repo_id, **kwargs):
        raise ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    out = tmp_path / "push"
    assert main(["export", "--format", "hub", "--ckpt", str(ckpt), "--out", str(out), "--push", "me/f2v"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("fundus2video: error: push to me/f2v failed: ") and "Name or service not known" in line
    assert (out / "model.safetensors").is_file()


def test_without_huggingface_hub_the_hub_commands_name_the_extra(ckpt, photo, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes `import huggingface_hub` fail
    assert main(["generate", "--ckpt", "hf://me/f2v", "--cf", str(photo), "--out", str(tmp_path / "x.mp4")]) == 2
    assert main(["export", "--format", "hub", "--ckpt", str(ckpt), "--out", str(tmp_path / "o"), "--push",
                 "me/f2v"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"fundus2video: error: {hub.HUB_MISSING}"] * 2 and "fundus2video[hub]" in hub.HUB_MISSING
    assert not (tmp_path / "o").exists()


def test_export_never_writes_over_its_input(ckpt, folder, tmp_path, capsys):
    before = ckpt.read_bytes()
    # what is beside the checkpoint already (generate's ONNX graph cache, when an earlier test made one)
    beside = sorted(p.name for p in ckpt.parent.iterdir())
    run_dir = ckpt.parent.parent
    for out, extra in ((ckpt, []), (ckpt, ["--overwrite"]), (run_dir, ["--overwrite"]), (ckpt.parent, [])):
        assert main(["export", "--format", "hub", "--ckpt", str(ckpt), "--out", str(out), *extra]) == 2
    assert main(["export", "--format", "hub", "--ckpt", str(folder), "--out", str(folder), "--overwrite"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 5 and "would write over the input" in errors[0] and "not empty" in errors[3], errors
    assert ckpt.read_bytes() == before and sorted(p.name for p in ckpt.parent.iterdir()) == beside
    # an existing non-empty folder needs --overwrite; a re-export of a folder gives the same weights
    out = tmp_path / "again"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", "--format", "hub", "--ckpt", str(folder), "--out", str(out)]) == 2
    assert main(["export", "--format", "hub", "--ckpt", str(folder), "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    again, first = load_file(out / "model.safetensors"), load_file(folder / "model.safetensors")
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    assert main(["export", "--format", "hub", "--ckpt", str(ckpt), "--out", str(tmp_path / "s"), "--size", "64"]) == 2
    assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "g.pt"), "--push", "me/f2v"]) == 2
