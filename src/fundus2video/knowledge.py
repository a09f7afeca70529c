"""Field-of-view (ROI) mask, ROI crop and the unsupervised knowledge mask.

Pure functions on numpy arrays (data loading, inference) and torch tensors (training), shared
by every code path so that training and inference see identically prepared images.
Method facts (docs/METHOD.md, "Data" and "Knowledge mask"), read from the authors' release:
- ROI = (CF green > 11) AND (every FFA frame > 2), largest connected component, dilated with an
  11 x 11 cross, holes filled. Outside is zeroed; everything is cropped to the ROI's bounding
  box and resized to S x S (the resize, plain or augmented, is data_modules/transforms.py).
- KM = 1[|early - late| > 45/255] on the green channel of the first and last frame.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

CF_GREEN_MIN = 11  # CF green channel above this (0..255) counts as inside the camera's field
FRAME_MIN = 2  # FFA frames above this (0..255) count as inside
DILATE_SIZE = 11  # cross kernel of the ROI dilation
KM_THRESHOLD = 45.0 / 255.0  # default knowledge-mask threshold on the 0..1 scale


def _largest_component(mask: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill regions not reachable from the border (flood fill from a padded corner)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = flood == 0
    return (padded.astype(bool) | holes)[1:-1, 1:-1]


def fov_mask(cf: np.ndarray, frames: np.ndarray | None = None) -> np.ndarray:
    """Field-of-view mask (H, W) bool of a CF (H, W, 3) uint8 RGB and FFA frames (T, H, W) uint8.

    Scaled inputs (e.g. 16-bit) must be converted to 8-bit first: the thresholds are 0..255.
    """
    if cf.ndim != 3 or cf.shape[2] != 3:
        raise ValueError(f"fov_mask: expected a CF of shape (H, W, 3), got {cf.shape}")
    mask = cf[..., 1] > CF_GREEN_MIN
    if frames is not None:
        if frames.shape[1:3] != cf.shape[:2]:
            raise ValueError(f"fov_mask: frames {frames.shape[1:3]} and CF {cf.shape[:2]} differ in size")
        mask &= (frames > FRAME_MIN).all(axis=0)
    mask = _largest_component(mask)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (DILATE_SIZE, DILATE_SIZE))
    mask = cv2.dilate(mask.astype(np.uint8), cross).astype(bool)
    return _fill_holes(mask)


def roi_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (y0, y1, x0, x1), end-exclusive, of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("roi_box: the field-of-view mask is empty (no fundus found)")
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def crop_to_roi(cf: np.ndarray, frames: np.ndarray,
                masks: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The release's field-of-view step: ROI mask, zero outside, crop to the ROI box.

    cf: (H, W, 3) uint8 RGB; frames: (T, H, W) uint8; masks: (H, W) masks cropped alike.
    Returns cf (h, w, 3), frames (T, h, w), roi (h, w) bool and the masks, not resized.
    Raises ValueError when no field of view is found.
    """
    roi = fov_mask(cf, frames)
    y0, y1, x0, x1 = roi_box(roi)
    out = {"cf": (cf * roi[..., None])[y0:y1, x0:x1], "frames": (frames * roi)[:, y0:y1, x0:x1],
           "roi": roi[y0:y1, x0:x1]}
    for name, mask in (masks or {}).items():
        out[name] = mask[y0:y1, x0:x1].astype(bool)
    return out


def knowledge_mask(early: np.ndarray | torch.Tensor, late: np.ndarray | torch.Tensor,
                   threshold: float = KM_THRESHOLD) -> np.ndarray | torch.Tensor:
    """KM = |early - late| > threshold, both on a 0..1 scale (numpy or torch; same shape out)."""
    diff = early - late
    return (diff.abs() if isinstance(diff, torch.Tensor) else np.abs(diff)) > threshold
