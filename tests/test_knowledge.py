import cv2
import numpy as np
import torch

from fundus2video.data_modules.transforms import PairedTransform
from fundus2video.knowledge import crop_to_roi, fov_mask, knowledge_mask, roi_box


def _disc(size=64, radius=24):
    cf = np.zeros((size, size, 3), np.uint8)
    cv2.circle(cf, (size // 2, size // 2), radius, (150, 80, 40), -1)
    return cf


def test_fov_keeps_largest_component_and_fills_holes():
    cf = _disc()
    cf[30:34, 30:34, 1] = 0  # a dark hole inside (e.g. a haemorrhage): filled
    cf[2:4, 2:4, 1] = 200  # a bright speck outside: not the largest component, dropped
    mask = fov_mask(cf)
    assert mask[32, 32] and not mask[3, 3]
    assert not mask[0, 32]


def test_fov_requires_frames_above_two():
    cf = _disc()
    frames = np.full((2, 64, 64), 50, np.uint8)
    frames[1, :, :32] = 1  # left half dark in one frame: outside (before dilation)
    mask = fov_mask(cf, frames)
    assert mask[32, 40] and not mask[32, 15]


def test_crop_to_roi_then_resize_zeroes_outside():
    cf = _disc(64, 20)
    frames = np.full((3, 64, 64), 80, np.uint8)
    crop = crop_to_roi(cf, frames)
    cf_s, frames_s, masks = PairedTransform(32, train=False)(crop["cf"], crop["frames"], {"roi": crop["roi"]})
    out = {"cf": cf_s, "frames": frames_s, "roi": masks["roi"]}
    assert out["cf"].shape == (32, 32, 3) and out["frames"].shape == (3, 32, 32)
    y0, y1, x0, x1 = roi_box(fov_mask(cf, frames))
    assert y1 - y0 < 64  # cropped to the disc (dilated by the cross kernel)
    assert out["frames"][:, 0, 0].max() == 0 and out["frames"][:, 16, 16].min() == 80
    assert out["roi"][16, 16] and not out["roi"][0, 0]


def test_knowledge_mask_threshold_numpy_and_torch():
    early = np.array([0.0, 0.5, 0.5])
    late = np.array([0.2, 0.5 + 45 / 255 + 1e-3, 0.5 + 45 / 255 - 1e-3])
    assert knowledge_mask(early, late).tolist() == [True, True, False]
    assert knowledge_mask(torch.tensor(early), torch.tensor(late), 0.25).tolist() == [False, False, False]
