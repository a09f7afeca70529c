"""Video and image files: read with decord, write mp4 (H.264) and gif; every write is atomic.

Writes go to a temporary file in the target folder and are renamed into place, so a crash
never leaves a half-written file under the final name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import imageio.v2 as imageio
import numpy as np

from fundus2video.io import atomic_path


def _even(frames: np.ndarray) -> np.ndarray:
    """Pad (T, H, W, 3) to even H and W (H.264 with yuv420p needs them)."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected frames (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")


def write_mp4(path: str | Path, frames: np.ndarray, fps: float = 4) -> Path:
    """Write RGB frames (T, H, W, 3) uint8 as an H.264 mp4 that common players open."""
    _check_frames(frames)
    with atomic_path(path) as tmp:
        writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8,
                                    pixelformat="yuv420p", macro_block_size=1)
        try:
            for frame in _even(frames):
                writer.append_data(frame)
        finally:
            writer.close()
    return Path(path)


def write_gif(path: str | Path, frames: np.ndarray, fps: float = 4) -> Path:
    """Write RGB frames (T, H, W, 3) uint8 as a looping gif."""
    _check_frames(frames)
    with atomic_path(path) as tmp:
        imageio.mimsave(tmp, list(frames), format="GIF", duration=1000.0 / fps, loop=0)
    return Path(path)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an RGB (H, W, 3) or grayscale (H, W) uint8 image as PNG."""
    ok, data = cv2.imencode(".png", image[..., ::-1] if image.ndim == 3 else image)
    if not ok:
        raise ValueError(f"could not encode {path} as PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())
    return Path(path)


def read_video(path: str | Path, indices: list[int] | None = None) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of a video file, decoding only `indices` if given."""
    import decord  # imported here: decord is only needed when videos are read

    try:
        # one decoding thread, as the data loader's reads: decord's decoder threads beside torch's gain
        # nothing on the short clips read here
        reader = decord.VideoReader(str(path), num_threads=1)
    except Exception as err:  # decord raises its own DECORDError types
        raise ValueError(f"{path}: not a readable video ({str(err).splitlines()[0]})") from None
    indices = list(range(len(reader))) if indices is None else indices
    return reader.get_batch(indices).asnumpy()


def write_all(stem: str | Path, frames: np.ndarray, fps: float = 4,
              formats: tuple[str, ...] = ("mp4", "gif")) -> list[Path]:
    """Write `frames` as `<stem>.mp4` and/or `<stem>.gif`."""
    writers: dict[str, Callable[..., Path]] = {"mp4": write_mp4, "gif": write_gif}
    return [writers[fmt](Path(f"{stem}.{fmt}"), frames, fps) for fmt in formats]
