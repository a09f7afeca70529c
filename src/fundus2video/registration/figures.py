"""Pictures of a registration for a person to judge: vessel maps overlaid before and after.

Overlays show two line maps (`estimate.line_map`, polarity-free, so a late frame's dark vessels and an
early frame's bright ones both show) in red and green: where they coincide they add up to yellow, a
misregistration leaves red and green lines side by side.
"""

from __future__ import annotations

import cv2
import numpy as np

from fundus2video.registration.estimate import CF_GREEN_MIN, FRAME_MIN, field_of_view, line_map

PANELS = ("CF (registered)", "FFA first/last: before", "after", "CF/FFA vessels: before", "after")
FLAG_RED = (255, 70, 70)


def _map(gray: np.ndarray, threshold: float) -> np.ndarray:
    lines, _ = line_map(gray.astype(np.float32), field_of_view(gray, threshold))
    # the weaker half of the responses (capillary texture, noise) left out: vessels stand out
    return np.clip((lines - 0.7) / 1.3, 0.0, 1.0)


def overlay(red: np.ndarray, green: np.ndarray) -> np.ndarray:
    """Two maps in 0..1 as an RGB uint8 picture: red, green, yellow where both are."""
    out = np.zeros(red.shape + (3,), np.float32)
    out[..., 0], out[..., 1] = red, green
    return (out * 255).round().astype(np.uint8)


def _fit(img: np.ndarray, side: int) -> np.ndarray:
    """`img` scaled (aspect kept) and padded with black into a side x side RGB square."""
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    h, w = img.shape[:2]
    f = side / max(h, w)
    small = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))),
                       interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    out = np.zeros((side, side, 3), np.uint8)
    y, x = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
    out[y:y + small.shape[0], x:x + small.shape[1]] = small
    return out


def case_panels(cf_before: np.ndarray, cf_after: np.ndarray, first: np.ndarray, last_before: np.ndarray,
                last_after: np.ndarray, side: int) -> list[np.ndarray]:
    """The five panels of PANELS. cf_before: the CF as the loader pairs it with the frames (resized to
    the frames' size); cf_after: registered; first: frame 0; last_before / last_after: the last frame
    kept, as read and registered."""
    ref = _map(first, FRAME_MIN)
    return [_fit(cf_after, side),
            _fit(overlay(ref, _map(last_before, FRAME_MIN)), side),
            _fit(overlay(ref, _map(last_after, FRAME_MIN)), side),
            _fit(overlay(_map(cf_before[..., 1], CF_GREEN_MIN), ref), side),
            _fit(overlay(_map(cf_after[..., 1], CF_GREEN_MIN), ref), side)]


def _text(img: np.ndarray, text: str, org: tuple[int, int], colour=(255, 255, 255), scale: float = 0.45) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def row(label: str, note: str, panels: list[np.ndarray] | None, side: int, flagged: bool) -> np.ndarray:
    """One case: a band with its name and status over its panels (or over a black strip when the case
    could not be read)."""
    width = side * len(PANELS)
    band = np.zeros((22, width, 3), np.uint8)
    _text(band, label, (4, 15))
    (tw, _), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    limit = max(10, (width - tw - 16) // 7)  # about 7 pixels a character at this scale
    _text(band, note if len(note) <= limit else note[:limit - 3] + "...", (tw + 12, 15),
          FLAG_RED if flagged else (150, 220, 150))
    body = np.hstack(panels) if panels else np.zeros((side // 3, width, 3), np.uint8)
    return np.vstack([band, body])


def header(side: int) -> np.ndarray:
    band = np.zeros((22, side * len(PANELS), 3), np.uint8)
    for i, name in enumerate(PANELS):
        _text(band, name, (i * side + 4, 15), (200, 200, 255))
    return band


def sheet(rows: list[np.ndarray], side: int) -> np.ndarray:
    """Rows under the panel names, a thin line between cases."""
    parts = [header(side)]
    for r in rows:
        parts += [np.full((2, r.shape[1], 3), 60, np.uint8), r]
    return np.vstack(parts)
