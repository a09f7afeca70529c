"""Every download of the package goes through `download`: weights (pretrained.py) and checkpoints or
Hub folders given by URL (hub/sources.py).

What it guarantees, whatever the server does:
- a server that accepts and never answers, or stops sending, is given up after `timeout()` seconds
  of silence (each connect and each read); `FUNDUS2VIDEO_NET_TIMEOUT` sets it (default 30 s);
- a body larger than `max_bytes` (declared or sent) is refused before it fills the disk;
- the first bytes are checked before anything is kept: a web page (a login or error page answered
  with 200) or a file of the wrong format is refused, so no rerun reuses it;
- the file appears whole at `dst` or not at all (a hidden temporary beside it, renamed at the end,
  removed on any failure);
- a URL is never printed with its user name, password or query (tokens and signatures live there).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit, urlunsplit
from urllib.request import Request, urlopen

from fundus2video.errors import UserError
from fundus2video.io import atomic_path


class DownloadFailed(UserError):
    """The server or the network did not deliver the file (unreachable, silent, too large, a web page)."""


DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_BYTES = 4 << 30  # the largest weights the project uses (VGG19, 548 MB) fit many times
CHUNK = 1 << 20
HEAD = 64  # bytes kept for the format check


def timeout() -> float:
    """Seconds of silence after which a connection is given up (FUNDUS2VIDEO_NET_TIMEOUT)."""
    text = os.environ.get("FUNDUS2VIDEO_NET_TIMEOUT", "")
    try:
        value = float(text) if text.strip() else DEFAULT_TIMEOUT_S
    except ValueError:
        raise UserError(f"FUNDUS2VIDEO_NET_TIMEOUT: {text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise UserError(f"FUNDUS2VIDEO_NET_TIMEOUT: {value} (expected seconds in (0, 3600])")
    return value


def shown(url: str) -> str:
    """`url` as it may be printed: no user name or password, no query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = "?..." if parts.query else ""
    return urlunsplit(parts._replace(netloc=host, query="", fragment="")) + query


def looks_like_html(head: bytes) -> bool:
    text = head.lstrip().lower()
    return text.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<?xml", b"<!--"))


def zip_file(head: bytes) -> str | None:
    """Checks a torch file saved in the zip format (.ckpt, .pth, TorchScript)."""
    return None if head.startswith(b"PK\x03\x04") else "not a zip-format torch file"


def torch_file(head: bytes) -> str | None:
    """Checks a torch file: the zip format, or the legacy pickle (protocol 2 opens with 0x80 0x02)."""
    return None if head.startswith((b"PK\x03\x04", b"\x80\x02")) else "not a torch file"


def safetensors_file(head: bytes) -> str | None:
    if len(head) < 9:
        return "too short for a safetensors file"
    size = int.from_bytes(head[:8], "little")
    return None if 0 < size < (100 << 20) and head[8:9] == b"{" else "not a safetensors file"


def json_file(head: bytes) -> str | None:
    return None if head.lstrip()[:1] == b"{" else "not a JSON object"


def download(url: str, dst: str | Path, *, what: str, check: Callable[[bytes], str | None] | None = None,
             max_bytes: int = DEFAULT_MAX_BYTES, after: Callable[[Path], None] | None = None) -> Path:
    """`url` to `dst`, whole or not at all. `what` names the file in messages; `check(first bytes)`
    returns why the content is wrong (None: fine); `after(temporary path)` may refuse the finished
    file (e.g. a hash) by raising, before it is renamed onto `dst`. Raises UserError in one line."""
    dst = Path(dst)
    where = shown(url)
    seconds = timeout()
    try:
        request = Request(url, headers={"User-Agent": "fundus2video"})
        with urlopen(request, timeout=seconds) as answer, atomic_path(dst) as tmp:
            declared = answer.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise DownloadFailed(f"{what}: {where} announces {int(declared)} bytes, more than the "
                                f"{max_bytes} allowed; nothing kept")
            kind = (answer.headers.get("Content-Type") or "").lower()
            total, head = 0, b""
            progress = _progress(what, int(declared) if declared and declared.isdigit() else None)
            with open(tmp, "wb") as out:
                while chunk := answer.read(CHUNK):
                    if len(head) < HEAD:
                        head += chunk[:HEAD - len(head)]
                        if len(head) >= HEAD or total == 0:
                            _check_head(what, where, head, kind, check)
                    total += len(chunk)
                    if total > max_bytes:
                        raise DownloadFailed(f"{what}: {where} sent more than the {max_bytes} bytes allowed; "
                                        "nothing kept")
                    out.write(chunk)
                    progress.update(len(chunk))
            progress.close()
            if total == 0:
                raise DownloadFailed(f"{what}: {where} answered with an empty body; nothing kept")
            _check_head(what, where, head, kind, check)
            if declared and declared.isdigit() and total != int(declared):
                raise DownloadFailed(f"{what}: {where} sent {total} of {int(declared)} bytes (cut off); nothing kept")
            if after is not None:
                after(tmp)
    except HTTPError as err:
        raise DownloadFailed(f"{what}: {where}: download failed (HTTP {err.code} {err.reason})") from None
    except TimeoutError:
        raise DownloadFailed(f"{what}: {where}: no answer for {seconds:g} s (FUNDUS2VIDEO_NET_TIMEOUT); nothing "
                        "kept") from None
    except URLError as err:
        reason = err.reason
        if isinstance(reason, TimeoutError):
            raise DownloadFailed(f"{what}: {where}: no answer for {seconds:g} s (FUNDUS2VIDEO_NET_TIMEOUT); nothing "
                            "kept") from None
        raise DownloadFailed(f"{what}: {where}: download failed ({reason})") from None
    except (ConnectionError, OSError) as err:
        if isinstance(err, OSError) and err.filename and str(dst.parent) in str(err.filename):
            raise UserError(f"{what}: cannot write {dst} ({err.strerror})") from None
        detail = " ".join(str(err).split()) or type(err).__name__
        raise DownloadFailed(f"{what}: {where}: download failed ({detail})") from None
    return dst


def _check_head(what: str, where: str, head: bytes, content_type: str, check) -> None:
    if "text/html" in content_type or looks_like_html(head):
        raise DownloadFailed(f"{what}: {where} answered with a web page, not the file (a login or error page?); "
                        "nothing kept")
    if check is not None and len(head) >= min(HEAD, 9) and (why := check(head)):
        raise DownloadFailed(f"{what}: {where} sent {why}; nothing kept")


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(what: str, total: int | None):
    if not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=what, leave=False)
