"""The network as an attacker or a broken server makes it, on a loopback server: every download
(generate --ckpt URL, weights fetch) ends in one line within its timeout, keeps nothing it should
not, and never prints the URL's credentials."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time

import pytest

from fundus2video.download import download, json_file, safetensors_file, shown, zip_file
from fundus2video.errors import UserError
from tests.helpers.cli import run_cli

pytestmark = pytest.mark.faults


class Hostile:
    """A loopback HTTP server whose paths misbehave in named ways."""

    def __init__(self):
        self.stop = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?")[0]
                if path.startswith("/stall"):  # headers, then silence
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"PK\x03\x04")
                    self.wfile.flush()
                    outer.stop.wait(30)
                elif path.startswith("/endless"):
                    self.send_response(200)
                    self.end_headers()
                    chunk = b"PK\x03\x04" + b"\0" * (1 << 16)
                    try:
                        while not outer.stop.is_set():
                            self.wfile.write(chunk)
                    except OSError:
                        pass
                elif path.startswith("/huge"):
                    self.send_response(200)
                    self.send_header("Content-Length", str(1 << 40))
                    self.end_headers()
                elif path.startswith("/html"):
                    body = b"<!DOCTYPE html><html><body>Please sign in</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", "/ok.json")
                    self.end_headers()
                elif path.startswith("/ok"):
                    body = b'{"ok": true}'
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.setenv("FUNDUS2VIDEO_NET_TIMEOUT", "2")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    s = Hostile()
    yield s
    s.close()


@pytest.fixture
def silent_port():
    """A port that accepts connections (the backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def litter(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize("path, words", [
    ("/stall.ckpt", "no answer for 2 s"),
    ("/endless.ckpt", "more than the 1000000 bytes allowed"),
    ("/huge.ckpt", "announces 1099511627776 bytes"),
    ("/html.ckpt", "answered with a web page"),
    ("/ok.ckpt", "not a zip-format torch file"),
    ("/missing.ckpt", "HTTP 404"),
])
def test_a_bad_answer_is_one_line_within_the_timeout_and_leaves_nothing(server, tmp_path, path, words):
    dst = tmp_path / "cache" / "model.ckpt"
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        download(server.url + path, dst, what="model.ckpt", check=zip_file, max_bytes=1_000_000)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert words in message and "\n" not in message
    assert litter(tmp_path / "cache") == []


def test_a_server_that_never_answers_is_given_up(silent_port, monkeypatch, tmp_path):
    monkeypatch.setenv("FUNDUS2VIDEO_NET_TIMEOUT", "1")
    start = time.monotonic()
    with pytest.raises(UserError, match="no answer for 1 s"):
        download(f"http://127.0.0.1:{silent_port}/x.json", tmp_path / "x.json", what="x.json", check=json_file)
    assert time.monotonic() - start < 8 and litter(tmp_path) == []


def test_a_redirect_to_a_good_file_is_followed(server, tmp_path):
    dst = download(server.url + "/redirect.json", tmp_path / "config.json", what="config.json", check=json_file)
    assert dst.read_text() == '{"ok": true}'


def test_format_checks():
    assert zip_file(b"PK\x03\x04rest") is None and zip_file(b"<html>") is not None
    header = b'{"x": {}}'
    assert safetensors_file(len(header).to_bytes(8, "little") + header) is None
    assert safetensors_file(b"\xff" * 16) is not None
    assert json_file(b'  {"a": 1}') is None and json_file(b"[1]") is not None


def test_credentials_and_tokens_are_never_shown():
    url = "https://alice:s3cret@example.org:8443/path/model.ckpt?token=abc&sig=xyz#frag"
    assert shown(url) == "https://example.org:8443/path/model.ckpt?..."


def test_generate_from_a_hostile_url_is_one_line_and_echoes_no_secret(server, tmp_path):
    photo = tmp_path / "cf.png"
    photo.write_bytes(b"not read before the checkpoint")
    for path in ("/stall.ckpt", "/html.ckpt"):
        url = server.url.replace("http://", "http://bob:hunter2@") + path + "?token=sekrit"
        start = time.monotonic()
        r = run_cli("generate", "--ckpt", url, "--cf", photo, "--out", tmp_path / "v.mp4")
        assert r.returncode == 2 and time.monotonic() - start < 15
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "hunter2" not in r.stderr + r.stdout and "sekrit" not in r.stderr + r.stdout
        assert not (tmp_path / "v.mp4").exists()
    # nothing half-downloaded in the cache: a rerun asks the server again rather than reuse a bad file
    cache = tmp_path / "torch"
    assert [p for p in litter(cache) if not p.endswith(".lock")] == []


def test_weights_fetch_from_a_stalling_server(server, tmp_path):
    start = time.monotonic()
    r = run_cli("weights", "fetch", "vgg19", "--url", server.url + "/stall.pth")
    assert r.returncode == 2 and time.monotonic() - start < 15, r.stderr
    lines = r.stderr.strip().splitlines()  # the "downloading ..." line, then the error
    assert "no answer for 2 s" in lines[-1] and "error" in lines[-1] and "Traceback" not in r.stderr
    assert [p for p in litter(tmp_path / "torch") if not p.endswith(".lock")] == []


def test_the_timeout_setting_is_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("FUNDUS2VIDEO_NET_TIMEOUT", "soon")
    with pytest.raises(UserError, match="FUNDUS2VIDEO_NET_TIMEOUT: 'soon' is not a number"):
        download("http://127.0.0.1:9/x", tmp_path / "x", what="x")
    assert not os.listdir(tmp_path)
