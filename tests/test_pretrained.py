"""Pretrained weights fetched into torch.hub's cache, verified by SHA-256, from a loopback HTTP server.

The served files are small: either random bytes (fetch, verify and cache logic) or state dicts of the
real key names and shapes whose tensors are stride-0 views of one number, which torch.save stores in
a few kilobytes and load_vgg19 / LPIPS load like the real files. The table entries are monkeypatched
to point at the server with the served files' real hashes; nothing goes to the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fundus2video import pretrained
from fundus2video.commands.cli import main
from fundus2video.config import to_plain
from fundus2video.errors import ConfigError, UserError
from fundus2video.pretrained import WEIGHTS, fetch, list_weights, weights_dir, weights_file


class Server:
    """Serves `files` (URL path -> bytes) on 127.0.0.1; paths in `truncate` get the full Content-Length
    but half the bytes before the connection closes. `requests` lists the paths asked for."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append(self.path)
                data = owner.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if self.path in owner.truncate else data)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    s = Server()
    yield s
    if s.thread.is_alive():
        s.stop()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """An empty torch.hub cache in tmp_path, online, and no hashes remembered from other tests."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in pretrained.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(pretrained, "_hashed", {})
    return tmp_path / "torch" / "hub" / "checkpoints"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serve(server, monkeypatch, name: str, data: bytes, digest: str | None = "real", prefix_only: bool = False,
          stem: str | None = None) -> str:
    """Serve `data` as torchvision names its files (<stem>-<sha256[:8]>.pth) and point the table entry
    `name` at it, with the data's hash (or `digest`); returns the URL."""
    h = sha(data) if digest == "real" else digest
    file = f"{stem or name}-{h[:8]}.pth" if h else WEIGHTS[name].file
    server.files[f"/{file}"] = data
    url = f"{server.url}/{file}"
    entry = replace(WEIGHTS[name], file=file, url=url, sha256=None if prefix_only else h, prefix=h[:8] if h else None)
    monkeypatch.setitem(WEIGHTS, name, entry)
    return url


def stride0_state(make, value: float = 0.05) -> dict[str, torch.Tensor]:
    """The state dict keys and shapes of the module `make()` builds, every tensor one number seen
    through stride 0 (the module is built on the meta device: no memory, no random init)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in make().state_dict().items()}
    return {k: torch.full((1,), value).expand(shape) for k, shape in shapes.items()}


def saved(state: dict, path: Path) -> bytes:
    torch.save(state, path)
    return path.read_bytes()


def test_fetch_caches_verified_file_and_reuses_it_with_the_server_stopped(server, monkeypatch, cache):
    data = os.urandom(50_000)
    serve(server, monkeypatch, "vgg19", data)
    path = fetch("vgg19")
    assert path == cache / WEIGHTS["vgg19"].file and path.read_bytes() == data
    assert sorted(os.listdir(cache)) == [path.name]  # no temporary file left
    server.stop()
    assert fetch("vgg19") == path
    assert weights_file("auto", "loss.vgg_weights") == path == weights_file("vgg19", "loss.vgg_weights")
    assert ("vgg19", path.name, str(path)) in list_weights()
    assert ("vgg16", "vgg16-397923af.pth", "not cached") in list_weights()


def test_prefix_only_entry_verifies_the_prefix_as_torchvision_does(server, monkeypatch, cache):
    data = os.urandom(20_000)
    serve(server, monkeypatch, "alexnet", data, prefix_only=True)
    assert WEIGHTS["alexnet"].sha256 is None
    assert fetch("alexnet").read_bytes() == data


def test_wrong_hash_is_refused_and_leaves_nothing(server, monkeypatch, cache):
    url = serve(server, monkeypatch, "vgg19", os.urandom(30_000), digest="0" * 64)
    with pytest.raises(UserError) as info:
        fetch("vgg19")
    message = str(info.value)
    assert "refused" in message and url in message and str(cache / WEIGHTS["vgg19"].file) in message
    assert "\n" not in message
    assert os.listdir(cache) == []


def test_truncated_download_is_refused_and_leaves_nothing(server, monkeypatch, cache):
    url = serve(server, monkeypatch, "vgg19", os.urandom(200_000))
    server.truncate.add(url[len(server.url):])
    with pytest.raises(UserError, match="vgg19"):
        weights_file("auto", "loss.vgg_weights")
    assert server.requests and os.listdir(cache) == []


def test_server_down_names_the_url_and_the_place_for_the_file(monkeypatch, cache):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/vgg16-12345678.pth"
    monkeypatch.setitem(WEIGHTS, "vgg16", replace(WEIGHTS["vgg16"], url=url))
    with pytest.raises(UserError) as info:
        weights_file("auto", "--lpips")
    message = str(info.value)
    assert url in message and str(cache / "vgg16-397923af.pth") in message and "\n" not in message
    assert not cache.exists() or os.listdir(cache) == []


def test_offline_uses_the_cache_only(server, monkeypatch, cache):
    data = os.urandom(1000)
    url = serve(server, monkeypatch, "vgg19", data)
    monkeypatch.setenv("FUNDUS2VIDEO_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        weights_file("auto", "loss.vgg_weights")
    assert "FUNDUS2VIDEO_OFFLINE" in str(info.value) and url in str(info.value)
    assert server.requests == []
    cache.mkdir(parents=True)
    (cache / WEIGHTS["vgg19"].file).write_bytes(data)  # placed by hand: found, verified, no network
    assert weights_file("auto", "loss.vgg_weights") == cache / WEIGHTS["vgg19"].file
    (cache / WEIGHTS["vgg19"].file).write_bytes(data[:-1])
    with pytest.raises(UserError, match="does not match"):
        weights_file("vgg19", "loss.vgg_weights")
    assert server.requests == []


def test_unknown_hash_is_never_downloaded_automatically(server, monkeypatch, cache, tmp_path):
    data = os.urandom(4000)
    server.files["/i3d_torchscript.pt"] = data
    monkeypatch.setitem(WEIGHTS, "i3d", replace(WEIGHTS["i3d"], url=f"{server.url}/i3d_torchscript.pt"))
    for call in (lambda: weights_file("auto", "--i3d"), lambda: fetch("i3d")):
        with pytest.raises(UserError) as info:
            call()
        assert f"{server.url}/i3d_torchscript.pt" in str(info.value)
        assert str(cache / "i3d_torchscript.pt") in str(info.value)
    assert server.requests == []
    with pytest.raises(UserError, match="does not match"):  # a user-given hash is checked
        fetch("i3d", sha256="f" * 64)
    assert os.listdir(cache) == []
    assert fetch("i3d", sha256=sha(data)).read_bytes() == data
    assert weights_file("auto", "--i3d") == cache / "i3d_torchscript.pt"
    explicit = tmp_path / "mine.pt"  # an explicit path is used as it is
    explicit.write_bytes(b"x")
    assert weights_file(str(explicit), "--i3d") == explicit
    with pytest.raises(UserError, match="file not found"):
        weights_file(str(tmp_path / "missing.pt"), "--i3d")


def test_auto_in_training_fetches_before_the_run_and_loads_in_setup(server, monkeypatch, cache, tmp_path, tiny):
    from fundus2video.losses.perceptual import VGG19Features, load_vgg19
    from fundus2video.module import Fundus2VideoModule
    from fundus2video.training import check_resources

    data = saved(stride0_state(VGG19Features), tmp_path / "vgg19.pth")
    serve(server, monkeypatch, "vgg19", data)
    monkeypatch.setenv("FUNDUS2VIDEO_OFFLINE", "1")
    with pytest.raises(ConfigError) as info:  # the default, auto, offline with an empty cache
        check_resources(tiny("loss.vgg=10"))
    assert "loss.vgg=0" in str(info.value) and server.requests == []
    check_resources(tiny("loss.vgg=0"))  # no VGG term: no file needed, nothing fetched
    monkeypatch.delenv("FUNDUS2VIDEO_OFFLINE")
    cfg = tiny("loss.vgg=10")
    assert cfg.loss.vgg_weights == "auto"
    check_resources(cfg)
    assert (cache / WEIGHTS["vgg19"].file).read_bytes() == data and len(server.requests) == 1
    server.stop()
    check_resources(tiny("loss.vgg=10", "loss.vgg_weights=''"))  # "" (unset) means auto as well
    module = Fundus2VideoModule(to_plain(cfg))
    module.setup("fit")
    assert module.vgg_loss is not None and torch.all(module.vgg_loss.vgg.features[0].weight == 0.05)
    assert torch.all(load_vgg19("vgg19").features[34].bias == 0.05)


class Detector(nn.Module):
    """StyleGAN-V's i3d_torchscript.pt calling convention around a tiny random network."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3)
        self.head = nn.Linear(4, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        logits = self.head(F.relu(self.conv(x)).mean(dim=(2, 3, 4)))
        return logits if return_features else logits.softmax(1)


def test_auto_in_evaluate_resolves_lpips_and_i3d_or_skips_with_the_reason(server, monkeypatch, cache, tmp_path):
    from fundus2video.metrics.lpips import LPIPSBackbone
    from fundus2video.scoring import Scores

    monkeypatch.setenv("FUNDUS2VIDEO_OFFLINE", "1")
    scores = Scores("standard", 32, i3d="auto", lpips="auto")  # nothing cached, offline: both skipped
    assert scores.i3d is None and scores.lpips_path is None and "lpips" not in scores.aggregate
    assert WEIGHTS["vgg16"].url in scores.skipped["lpips"] and WEIGHTS["i3d"].url in scores.skipped["fvd"]
    monkeypatch.delenv("FUNDUS2VIDEO_OFFLINE")

    data = saved(stride0_state(lambda: LPIPSBackbone("alex")), tmp_path / "alex.pth")
    serve(server, monkeypatch, "alexnet", data, stem="alexnet-owt")
    torch.jit.save(torch.jit.script(Detector()), tmp_path / "i3d.pt")
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "i3d_pretrained_400.pt").write_bytes((tmp_path / "i3d.pt").read_bytes())  # the second choice, by hand
    scores = Scores("standard", 32, i3d="auto", lpips="auto", lpips_net="alex", i3d_size=16)
    assert scores.skipped.keys() <= {"ms_ssim"}
    assert scores.lpips_path == str(cache / WEIGHTS["alexnet"].file) and scores.i3d.fmt == "torchscript"
    video = torch.rand(1, 3, 1, 64, 64)
    metric = scores.make()["lpips"]
    metric.update(video, video)
    assert metric.compute().item() == 0.0


def test_weights_cli_lists_and_fetches_with_one_line_errors(server, monkeypatch, cache, capsys):
    data = os.urandom(10_000)
    h = sha(data)
    file = f"vgg19-{h[:8]}.pth"
    server.files[f"/{file}"] = data
    # the table's own URL leads nowhere: the file comes from --url, checked against the table's hash
    monkeypatch.setitem(WEIGHTS, "vgg19", replace(WEIGHTS["vgg19"], file=file, url=f"{server.url}/nowhere.pth",
                                                  sha256=h, prefix=h[:8]))
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert file in out and "not cached" in out and str(cache) in out and WEIGHTS["i3d"].url in out

    assert main(["weights", "fetch", "vgg19", "--url", f"{server.url}/{file}"]) == 0
    captured = capsys.readouterr()
    assert str(cache / file) in captured.out and "Traceback" not in captured.err
    assert (cache / file).read_bytes() == data
    assert main(["weights", "list"]) == 0
    assert str(cache / file) in capsys.readouterr().out

    for argv in (["weights", "fetch", "i3d"], ["weights", "fetch", "nosuch"],
                 ["weights", "fetch", "vgg16", "--url", f"{server.url}/missing.pth"],
                 ["weights", "fetch", "all", "--url", f"{server.url}/{file}"],
                 ["weights", "fetch", "i3d", "--sha256", "xyz"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("fundus2video: error: ") and err.count("\n") == 1 and "Traceback" not in err, argv

    for name in ("vgg16", "alexnet"):  # nothing of the table may reach the internet
        monkeypatch.setitem(WEIGHTS, name, replace(WEIGHTS[name], url=f"{server.url}/missing.pth"))
    assert main(["weights", "fetch", "all"]) == 2  # vgg19 cached; the others fail, each on its line
    captured = capsys.readouterr()
    assert f"vgg19: {cache / file}" in captured.out and "vgg16: not fetched: " in captured.out
    assert "i3d: not fetched: " in captured.out and "Traceback" not in captured.err


def test_weights_cli_in_a_fresh_process_prints_no_traceback(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "NO_ALBUMENTATIONS_UPDATE": "1"}
    result = subprocess.run([sys.executable, "-m", "fundus2video", "weights", "fetch", "vgg19", "--url",
                             f"http://127.0.0.1:{port}/vgg19-dcbb9e9d.pth"], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"http://127.0.0.1:{port}/vgg19-dcbb9e9d.pth" in result.stderr
    assert str(cache_dir_of(tmp_path) / "vgg19-dcbb9e9d.pth") in result.stderr


def cache_dir_of(root: Path) -> Path:
    return root / "torch" / "hub" / "checkpoints"


def test_cache_dir_follows_torch_home(cache):
    assert weights_dir() == cache
