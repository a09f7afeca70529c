"""`fundus2video demo`: the page answers through gradio's client and plays its video in a real browser.

One tiny checkpoint with a KBA head (so the attention map exists) and one server serve every test of
the module. The browser test drives Debian's chromium with selenium (`make browser-deps` installs them;
CI runs it first) and checks that the page asks nothing of any other host: the demo must work offline.
FUNDUS2VIDEO_SCREENSHOT=1 also writes its screenshot to docs/demo.png (the README's picture), and
FUNDUS2VIDEO_DEMO_CKPT=path serves that checkpoint instead of the tiny one (a trained one looks better).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import cv2
import numpy as np
import pytest

from fundus2video import demo as demo_mod
from fundus2video.commands.cli import main
from fundus2video.data_modules.phantom import make_case
from fundus2video.errors import UserError
from fundus2video.video_io import read_video, write_png

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FRAMES = 6
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def _phantom_photo(path: Path, index: int = 5, size: int = 96) -> Path:
    return write_png(path, make_case(index, size=size, n_frames=2).cf)


# ------------------------------------------------------------------ without gradio
def test_a_missing_extra_names_its_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # what `import gradio` sees when it is not installed
    with pytest.raises(UserError, match=r"pip install 'fundus2video\[demo\]'"):
        demo_mod.gradio_module()


def _command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fundus2video.commands.demo", *args], capture_output=True, text=True)


def test_the_module_runs_as_a_command(tmp_path):
    proc = _command("--help")
    assert proc.returncode == 0 and "--ckpt" in proc.stdout and "--port" in proc.stdout, proc.stderr
    proc = _command("--ckpt", str(tmp_path / "missing.ckpt"))
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("flag, value, expected", [
    ("--port", "70000", "--port 70000: expected 0 to 65535"),
    ("--port", "-1", "--port -1: expected 0 to 65535"),
    ("--max-queue", "0", "--max-queue 0: expected at least 1"),  # gradio would serve, refusing every request
])
def test_bad_serving_flags_stop_before_serving(tmp_path, capsys, flag, value, expected):
    assert main(["demo", "--ckpt", str(tmp_path / "any.ckpt"), flag, value]) == 2
    assert capsys.readouterr().err.strip() == f"fundus2video: error: {expected}" + (
        " (0: any free port)" if flag == "--port" else " (requests that may wait)")


def test_non_fundus_pictures_are_told_apart(tmp_path):
    demo_mod.check_fundus_like(make_case(3, size=96, n_frames=2).cf)  # the phantom passes
    with pytest.raises(UserError, match="uniform"):
        demo_mod.check_fundus_like(np.full((96, 96, 3), 255, np.uint8))
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    with pytest.raises(UserError, match="not orange-red"):
        demo_mod.check_fundus_like(noise)


# ------------------------------------------------------------------ the served page
@pytest.fixture(scope="module")
def ckpt(request):
    if os.environ.get("FUNDUS2VIDEO_DEMO_CKPT"):
        return Path(os.environ["FUNDUS2VIDEO_DEMO_CKPT"])
    return request.getfixturevalue("trained_run")("local_kba") / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("where", ["host", "port"])
def test_an_address_it_cannot_serve_on_is_named_and_leaves_nothing(ckpt, where, tmp_path, capsys, monkeypatch):
    """An unknown host stops before the checkpoint loads; a taken port after it, with the outputs'
    temp folder removed again."""
    pytest.importorskip("gradio", reason="the [demo] extra is not installed (make browser-deps)")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        host, port = ("no.such.host.invalid", 7860) if where == "host" else ("127.0.0.1", taken.getsockname()[1])
        assert main(["demo", "--ckpt", str(ckpt), "--host", host, "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    expected = (f"--host {host}: not an address of this machine" if where == "host"
                else f"cannot serve on {host}:{port}")
    assert err.startswith(f"fundus2video: error: {expected}"), err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("fundus2video-demo-")] == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(request):
    pytest.importorskip("gradio", reason="the [demo] extra is not installed (make browser-deps)")
    ckpt = request.getfixturevalue("ckpt")  # trained only once gradio is known to be there
    port = _free_port()
    app = demo_mod.build_app(ckpt, "cpu")
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
               **demo_mod.launch_options())
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", model=app.model)
    app.close()


@pytest.fixture(scope="module")
def client(server):
    gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is not installed (make browser-deps)")
    return gradio_client.Client(server.url, verbose=False)


def _predict(client, photo: Path, frames: int = FRAMES):
    from gradio_client import handle_file

    return client.predict(handle_file(str(photo)), frames, 4, api_name="/generate")


def _video_path(value) -> str:
    return value["video"] if isinstance(value, dict) else value  # gr.Video's output: {"video": path, ...}


def test_the_client_gets_a_video_of_the_chosen_length_and_the_pictures(server, client, tmp_path):
    video, sbs, strip, fov, attention, message = _predict(client, _phantom_photo(tmp_path / "eye.png"))
    assert message.startswith(f"Generated {FRAMES} frames"), message
    size = server.model.size
    frames = read_video(_video_path(video))
    assert frames.shape[0] == FRAMES and frames.shape[1:3] == (size, size)
    assert read_video(_video_path(sbs)).shape[0] == FRAMES
    height, width = cv2.imread(strip).shape[:2]
    assert width == height * (1 + FRAMES)  # the photo, then every frame (enlarged alike when small)
    assert cv2.imread(fov) is not None
    assert server.model.has_attention == ("KBA attention:" in message) == (attention is not None)
    assert server.model.has_attention or os.environ.get("FUNDUS2VIDEO_DEMO_CKPT")  # the tiny one has a head
    if attention is not None:
        assert cv2.imread(attention) is not None


@pytest.mark.parametrize("kind, expected", [
    ("white", "uniform"),
    ("noise", "not orange-red"),
    ("unreadable", "unreadable image: bad.png"),
    ("black", "no field of view found"),
])
def test_a_photo_it_cannot_use_gets_a_message_not_a_traceback(client, tmp_path, kind, expected):
    path = tmp_path / "bad.png"
    if kind == "unreadable":
        path.write_bytes(b"not an image")
    elif kind == "noise":
        write_png(path, np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    else:
        write_png(path, np.full((128, 128, 3), 255 if kind == "white" else 0, np.uint8))
    *files, message = _predict(client, path)
    assert files == [None] * 5
    assert message.startswith("**This photo cannot be used:**") and expected in message, message
    assert "/tmp" not in message  # the server's path of the upload is no use to the user


def test_settings_out_of_range_and_no_photo_get_a_message(server, tmp_path):
    photo = _phantom_photo(tmp_path / "eye.png")
    for args, expected in (((photo, 0), "frames must be between 1 and"), ((photo, 4, 0), "frames per second"),
                           ((None, 4), "upload a colour fundus photo first")):
        result = server.model.run(*args)
        assert result.video is None and result.message.startswith("**Nothing generated:**")
        assert expected in result.message, result.message


# ------------------------------------------------------------------ in a real browser
def _chromium(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (make browser-deps)")
    from selenium.webdriver.chrome.service import Service

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (make browser-deps: Debian's chromium, chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,1500", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def _requested_hosts(driver) -> set[str]:
    hosts = set()
    for entry in driver.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        if event["method"] == "Network.requestWillBeSent":
            url = urlparse(event["params"]["request"]["url"])
            if url.scheme in ("http", "https", "ws", "wss"):
                hosts.add(url.hostname)
    return hosts


def test_the_page_plays_the_generated_video_in_chromium(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = _phantom_photo(tmp_path / "eye.png", size=128)
    driver = _chromium(tmp_path)
    try:
        driver.get(server.url)
        wait = WebDriverWait(driver, 120, poll_frequency=0.5)
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#photo input[type=file]"))
        upload.send_keys(str(photo))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo img"))  # the upload's preview
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        playable = ("const v = document.querySelector('#ffa video');"
                    "return v !== null && (v.readyState >= 2 || v.duration > 0);")
        wait.until(lambda d: d.execute_script(playable))
        wait.until(lambda d: "Generated" in d.find_element(By.CSS_SELECTOR, "#status").text)
        time.sleep(1.0)  # let the pictures below the videos finish drawing before the screenshot
        shot = tmp_path / "demo.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("FUNDUS2VIDEO_SCREENSHOT") == "1":
            docs = Path(__file__).resolve().parents[1] / "docs"
            docs.mkdir(exist_ok=True)
            shutil.copyfile(shot, docs / "demo.png")
        duration = driver.execute_script("return document.querySelector('#ffa video').duration")
        assert duration > 0
        # offline: the page, its scripts, fonts and the queue's events all come from the demo's host
        hosts = _requested_hosts(driver)
        assert "127.0.0.1" in hosts and hosts <= LOCAL_HOSTS, hosts  # (the first: the log did record the page)
    finally:
        driver.quit()
