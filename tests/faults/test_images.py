"""Hostile image files: a few kilobytes declaring billions of pixels are refused from their header,
in one line, before anything is decoded; a data check reports them per case and goes on."""

from __future__ import annotations

import resource
import struct
import time
import zlib

import pytest

from fundus2video.data_modules.cases import read_image
from fundus2video.data_modules.phantom_files import write_phantom
from fundus2video.errors import CaseError
from tests.helpers.cli import run_cli

pytestmark = pytest.mark.faults


def bomb_png(path, width: int, height: int) -> None:
    """A valid PNG signature and header declaring width x height RGB, with a tiny compressed body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\0" * (1 << 20), 9)  # decompresses into the first rows of zeros
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [30_000, 100_000])
def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, side):
    path = tmp_path / "cf.png"
    bomb_png(path, side, side)
    assert path.stat().st_size < 10_000
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
    with pytest.raises(CaseError, match=rf"declares {side}x{side} pixels \(expected at most"):
        read_image(path)
    assert time.monotonic() - start < 2
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 200  # MB: nothing decoded


def test_generate_and_data_check_say_it_in_one_line(tmp_path):
    photo = tmp_path / "big.png"
    bomb_png(photo, 100_000, 100_000)
    r = run_cli("generate", "--ckpt", tmp_path / "none.ckpt", "--cf", photo, "--out", tmp_path / "v.mp4")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    # a data check reads every case: the bomb is one bad case among good ones, not the end of the check
    root = write_phantom(tmp_path / "data", 3, size=64, n_frames=4, video="png", progress=False)
    bomb_png(root / "phantom0001" / "cf.png", 100_000, 100_000)
    r = run_cli("data", "check", root)
    assert "Traceback" not in r.stderr + r.stdout
    out = r.stdout + r.stderr
    assert "phantom0001" in out and "declares 100000x100000" in out and "2 ok" in out, out


def test_data_check_finds_what_training_would_trip_on_later(tmp_path):
    """A frame of another size among the listed ones (training draws any of them), a lesion mask of
    another aspect (it would be stretched onto wrong pixels), a frame of one grey level: each case is
    named bad with its reason; the good one stays ok."""
    import cv2
    import numpy as np

    root = write_phantom(tmp_path / "data", 4, size=64, n_frames=6, video="png", progress=False)
    frame = root / "phantom0001" / "ffa" / "003.png"
    cv2.imwrite(str(frame), cv2.resize(cv2.imread(str(frame), cv2.IMREAD_GRAYSCALE), (48, 48)))
    cv2.imwrite(str(root / "phantom0002" / "lesion.png"), np.zeros((32, 64), np.uint8))
    cv2.imwrite(str(root / "phantom0003" / "ffa" / "002.png"), np.full((64, 64), 128, np.uint8))
    r = run_cli("data", "check", root)
    out = r.stdout + r.stderr
    assert "BAD phantom0001: frames differ in size: 003.png not 64x64" in out, out
    assert "BAD phantom0002:" in out and "the mask is 64x32 but the CF is 64x64" in out, out
    assert "BAD phantom0003: uniform frame(s), one grey level: 002.png" in out, out
    assert "4 cases, 1 ok, 3 bad" in out


@pytest.mark.parametrize("peak", [1023, 4095])
def test_10_and_12_bit_samples_in_a_16_bit_file_are_named_not_called_black(tmp_path, peak):
    import cv2
    import numpy as np

    path = tmp_path / "cf.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, peak + 1, (64, 64, 3)).astype(np.uint16))
    with pytest.raises(CaseError, match=rf"cf.png: a 16-bit image whose values stop at {peak} \(a 10- or 12-bit"):
        read_image(path)
    full = tmp_path / "full.png"  # the 16-bit range proper reads as before
    cv2.imwrite(str(full), np.full((8, 8, 3), 65535, np.uint16))
    assert read_image(full).max() == 255
