"""Pictures a person looks at: side-by-side videos and knowledge-mask overlays (uint8 RGB)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

KM_COLOUR = np.array([255, 40, 200], np.float32)  # magenta: the knowledge mask
ROI_COLOUR = (60, 220, 255)  # cyan: the field-of-view border
MIN_PANEL = 160  # small images (CPU demos) are enlarged to at least this many pixels a side


def enlarge(img: np.ndarray, min_size: int = MIN_PANEL) -> np.ndarray:
    """Scale (H, W, 3) up by a whole factor (nearest pixel: no invented detail) to >= min_size."""
    factor = -(-min_size // min(img.shape[:2]))
    return img if factor <= 1 else cv2.resize(img, None, fx=factor, fy=factor,
                                              interpolation=cv2.INTER_NEAREST)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] tensor (C, H, W) or (H, W) -> uint8 (H, W, 3) RGB (grayscale repeated)."""
    x = x.detach().float().cpu()
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    img = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img.transpose(1, 2, 0).copy()


def label_band(width: int, labels: list[str], height: int = 18) -> np.ndarray:
    """A black band with one label centred over each of len(labels) equal panels."""
    band = np.zeros((height, width, 3), np.uint8)
    panel = width // len(labels)
    for i, text in enumerate(labels):
        scale = min(0.5, panel / (9.0 * max(len(text), 1)) / 2.2)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        org = (i * panel + max(0, (panel - tw) // 2), (height + th) // 2)
        cv2.putText(band, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return band


def side_by_side(cf: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> np.ndarray:
    """One case as a video: CF | real FFA | generated FFA.

    cf (3, H, W), real and fake (T, 1, H, W), all in [-1, 1] -> (T, 18 + h, 3w, 3) uint8,
    where h, w are H, W enlarged for small images (`enlarge`).
    """
    cf_img = enlarge(to_uint8(cf))
    rows = [np.hstack([cf_img, enlarge(to_uint8(r)), enlarge(to_uint8(f))])
            for r, f in zip(real, fake, strict=True)]
    band = label_band(rows[0].shape[1], ["CF", "real FFA", "generated"])
    return np.stack([np.vstack([band, row]) for row in rows])


def mask_overlay(cf: torch.Tensor, km: torch.Tensor, roi: torch.Tensor, alpha: float = 0.55) -> np.ndarray:
    """CF (3, H, W) with the knowledge mask (1, H, W) tinted and the field of view outlined."""
    img = to_uint8(cf).astype(np.float32)
    m = km.detach().float().cpu().reshape(img.shape[:2]).numpy()[..., None] * alpha
    img = (img * (1 - m) + KM_COLOUR * m).round().astype(np.uint8)
    roi_u8 = (roi.detach().cpu().reshape(img.shape[:2]).numpy() > 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(roi_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(img, contours, -1, ROI_COLOUR, 1)
    return img


def mask_panel(cf: torch.Tensor, km: torch.Tensor, roi: torch.Tensor) -> np.ndarray:
    """CF | CF with mask overlay | the mask alone, with a header: (18 + h, 3w, 3) uint8."""
    km_img = to_uint8(km.float() * 2 - 1)
    row = np.hstack([enlarge(to_uint8(cf)), enlarge(mask_overlay(cf, km, roi)), enlarge(km_img)])
    return np.vstack([label_band(row.shape[1], ["CF", "KM + field of view", "knowledge mask"]), row])
