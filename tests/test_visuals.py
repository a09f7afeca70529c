import numpy as np
import torch

from fundus2video.visuals import enlarge, mask_overlay, mask_panel, side_by_side, to_uint8


def test_to_uint8_range_and_gray_to_rgb():
    img = to_uint8(torch.tensor([[[-1.0, 0.0, 1.0]]]))
    assert img.shape == (1, 3, 3) and img[0, :, 0].tolist() == [0, 128, 255]


def test_side_by_side_layout():
    cf = torch.zeros(3, 32, 32)
    real, fake = -torch.ones(4, 1, 32, 32), torch.ones(4, 1, 32, 32)
    video = side_by_side(cf, real, fake)
    h = enlarge(np.zeros((32, 32, 3), np.uint8)).shape[0]
    assert video.shape == (4, 18 + h, 3 * h, 3)
    assert video[0, 18:, h:2 * h].max() == 0 and video[0, 18:, 2 * h:].min() == 255  # real | fake


def test_mask_overlay_tints_only_the_mask():
    cf = torch.zeros(3, 16, 16)
    km = torch.zeros(1, 16, 16)
    km[0, 4:8, 4:8] = 1
    roi = torch.zeros(1, 16, 16)
    roi[0, 2:14, 2:14] = 1
    img = mask_overlay(cf, km, roi)
    assert img[5, 5, 0] > img[5, 5, 1]  # magenta inside the mask
    assert img[10, 10].tolist() == to_uint8(cf)[10, 10].tolist()  # untouched elsewhere
    assert img[2, 8].tolist() != img[10, 10].tolist()  # field-of-view outline drawn
    assert mask_panel(cf, km, roi).ndim == 3
