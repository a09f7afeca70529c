"""Tests of the paired CF/FFA augmentation (data_modules/transforms.py)."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from fundus2video.data_modules.transforms import AugmentConfig, PairedTransform  # noqa: E402

NO_PHOTOMETRIC = {"photometric_p": 0.0, "blur": 0.0}


def blocks(h: int, w: int, block: int, seed: int = 0) -> np.ndarray:
    """Piecewise-constant image: block x block tiles, each with its own value in 20..170."""
    rng = np.random.default_rng(seed)
    ny, nx = -(-h // block), -(-w // block)
    values = (20 + 3 * rng.permutation(ny * nx)).astype(np.uint8).reshape(ny, nx)
    return np.kron(values, np.ones((block, block), np.uint8))[:h, :w]


def coordinates(h: int, w: int) -> np.ndarray:
    """CF whose red channel is the column index and green channel the row index (h, w <= 255)."""
    y, x = np.mgrid[:h, :w].astype(np.uint8)
    return np.stack([x, y, np.full_like(x, 255)], axis=-1)


def fov_case(h: int = 96, w: int = 128, n_frames: int = 3, seed: int = 0):
    """A textured CF and frames, zero outside an elliptic field of view, with roi/lesion masks."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    roi = ((y - h / 2) / (h / 2)) ** 2 + ((x - w / 2) / (w / 2)) ** 2 < 1
    cf = (cv2.GaussianBlur(rng.integers(40, 220, (h, w, 3), dtype=np.uint8), (5, 5), 0) * roi[..., None])
    frames = rng.integers(10, 250, (n_frames, h, w), dtype=np.uint8) * roi
    return cf, frames, {"roi": roi, "lesion": roi & (x > w / 2)}


def flat(image: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels whose (2 radius + 1)^2 neighbourhood is constant: away from any block edge."""
    kernel = np.ones((2 * radius + 1,) * 2, np.uint8)
    constant = cv2.dilate(image, kernel) == cv2.erode(image, kernel)
    r = radius  # the image's edge cuts those neighbourhoods short
    constant[:r], constant[-r:], constant[:, :r], constant[:, -r:] = False, False, False, False
    return constant


def test_one_geometric_draw_lands_on_cf_every_frame_and_masks():
    h, w, size, n_frames = 96, 128, 64, 5
    pattern = blocks(h, w, block=16)
    cf = np.stack([255 - pattern, pattern, np.full_like(pattern, 255)], axis=-1)  # blue: inside the image
    frames = np.stack([pattern + t for t in range(n_frames)])  # distinct, so frame order is checked
    masks = {"lesion": pattern > 110, "vessels": pattern < 60}
    cfg = AugmentConfig(vflip=0.5, affine_p=1.0, rotate=15.0, scale=0.1, translate=0.05, **NO_PHOTOMETRIC)
    for seed in range(30):
        out_cf, out_frames, out_masks = PairedTransform(size, True, cfg, seed=seed)(cf, frames, masks)
        green = out_cf[..., 1]
        # The CF green channel and frame 0 carry the same pattern: equal everywhere, borders included.
        np.testing.assert_array_equal(out_frames[0], green)
        # Compare away from block edges and from the affine's zero border (where frame t would be
        # green + t times the weight of the taps that fall inside the image).
        inside = flat(green) & flat(out_cf[..., 2]) & (out_cf[..., 2] == 255)
        assert len(np.unique(green[inside])) >= 4, f"seed {seed}: too few blocks left to compare"
        for t in range(1, n_frames):
            np.testing.assert_array_equal(out_frames[t][inside], green[inside] + t)
        np.testing.assert_array_equal(out_cf[..., 0][inside], 255 - green[inside])
        np.testing.assert_array_equal(out_masks["lesion"][inside], green[inside] > 110)
        np.testing.assert_array_equal(out_masks["vessels"][inside], green[inside] < 60)


def test_photometric_changes_the_cf_only():
    cf, frames, masks = fov_case()
    on = AugmentConfig(brightness=0.3, contrast=0.3, saturation=0.3, gamma=0.3, photometric_p=1.0, blur=1.0,
                       affine_p=1.0)
    off = AugmentConfig(affine_p=1.0, **NO_PHOTOMETRIC)
    changes = []
    for seed in range(10):
        cf_on, frames_on, masks_on = PairedTransform(64, True, on, seed=seed)(cf, frames, masks)
        cf_off, frames_off, masks_off = PairedTransform(64, True, off, seed=seed)(cf, frames, masks)
        np.testing.assert_array_equal(frames_on, frames_off)
        for name in masks:
            np.testing.assert_array_equal(masks_on[name], masks_off[name])
        assert not cf_on[~cf_off.any(axis=-1)].any(), "the black outside the field of view was lifted"
        changes.append(np.abs(cf_on.astype(int) - cf_off).mean())
    assert min(changes) > 0.5 and np.mean(changes) > 3.0


def test_val_is_a_deterministic_plain_resize():
    for (h, w), size, interpolation in (((96, 128), 64, cv2.INTER_AREA), ((40, 50), 64, cv2.INTER_LINEAR)):
        cf, frames, masks = fov_case(h, w)
        transform = PairedTransform(size, train=False)
        out_cf, out_frames, out_masks = transform(cf, frames, masks)
        again = transform(cf, frames, masks)
        np.testing.assert_array_equal(again[0], out_cf)
        np.testing.assert_array_equal(again[1], out_frames)
        np.testing.assert_array_equal(out_cf, cv2.resize(cf, (size, size), interpolation=interpolation))
        for t, frame in enumerate(frames):
            np.testing.assert_array_equal(out_frames[t],
                                          cv2.resize(frame, (size, size), interpolation=interpolation))
        for name, mask in masks.items():
            expected = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
            np.testing.assert_array_equal(out_masks[name], expected)


def test_crop_follows_the_release_bounds():
    h, w = 200, 240
    cf = coordinates(h, w)
    frames = cf[None, ..., 0].copy()
    # Enlarging (crop <= 240 < 256) with bilinear keeps the crop's first and last row/column exact.
    transform = PairedTransform(256, True, AugmentConfig(hflip=0.0, affine_p=0.0, **NO_PHOTOMETRIC), seed=0)
    areas = []
    for _ in range(200):
        out_cf, out_frames, _ = transform(cf, frames)
        np.testing.assert_array_equal(out_frames[0], out_cf[..., 0])
        x0, x1 = int(out_cf[..., 0].min()), int(out_cf[..., 0].max()) + 1
        y0, y1 = int(out_cf[..., 1].min()), int(out_cf[..., 1].max()) + 1
        assert x0 <= w // 1.5 and y0 <= h // 1.5
        assert x1 - x0 >= w // 3 and y1 - y0 >= h // 3
        areas.append((x1 - x0) * (y1 - y0) / (w * h))
    assert min(areas) >= 1 / 9 - 0.01 and max(areas) <= 1.0
    assert np.mean(np.array(areas) < 0.25) > 0.3, "the crop rarely cuts much: not the release's sampling"
    assert max(areas) > 0.5


def test_flips_are_drawn_independently():
    # Compose(seed=...) in albumentations 2.0.8 seeds every transform alike: hflip and vflip would tie.
    cf = coordinates(32, 32)
    cfg = AugmentConfig(crop=False, vflip=0.5, affine_p=0.0, **NO_PHOTOMETRIC)
    transform = PairedTransform(32, True, cfg, seed=1)
    seen = set()
    for _ in range(40):
        out_cf = transform(cf, cf[None, ..., 0].copy())[0]
        seen.add((out_cf[0, 0, 0] > 0, out_cf[0, 0, 1] > 0))  # (flipped horizontally, vertically)
    assert len(seen) == 4


def test_seed_makes_it_reproducible():
    cf, frames, masks = fov_case()
    a = PairedTransform(64, True, seed=3)(cf, frames, masks)
    b = PairedTransform(64, True, seed=3)(cf, frames, masks)
    c = PairedTransform(64, True, seed=4)(cf, frames, masks)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("n_frames", [1, 7])
@pytest.mark.parametrize("with_masks", [False, True])
def test_shapes_and_dtypes(train, n_frames, with_masks):
    cf, frames, masks = fov_case(90, 130, n_frames)
    transform = PairedTransform(48, train, seed=0)
    out_cf, out_frames, out_masks = transform(cf, frames, masks if with_masks else None)
    assert out_cf.shape == (48, 48, 3) and out_cf.dtype == np.uint8
    assert out_frames.shape == (n_frames, 48, 48) and out_frames.dtype == np.uint8
    assert set(out_masks) == (set(masks) if with_masks else set())
    for mask in out_masks.values():
        assert mask.shape == (48, 48) and mask.dtype == bool


def test_mismatched_shapes_are_rejected():
    cf, frames, masks = fov_case()
    with pytest.raises(ValueError):
        PairedTransform(32, True)(cf, frames[:, :-1])
    with pytest.raises(ValueError):
        PairedTransform(32, False)(cf, frames, {"roi": masks["roi"][:-1]})


class Repeat(Dataset):
    """The same case every time: any difference between samples comes from the augmentation."""

    def __init__(self):
        self.case = fov_case(48, 48, n_frames=1)
        self.transform = PairedTransform(32, True, AugmentConfig(**NO_PHOTOMETRIC))

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.from_numpy(self.transform(*self.case)[1])


def test_dataloader_workers_and_epochs_draw_differently():
    loader = DataLoader(Repeat(), batch_size=None, num_workers=2, multiprocessing_context="fork")
    samples = [sample.numpy().tobytes() for _ in range(2) for sample in loader]
    assert len(set(samples)) == len(samples)
