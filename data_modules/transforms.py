"""Paired augmentation of one case: the CF photo, every FFA frame and the masks move together.

What the release does (data/aligned_dataset_fundus2video_tempo.py, data/base_dataset.py):
each image is cropped to the field-of-view box, then, when augmenting, cropped once more at random
(x0 ~ randint(0, w // 1.5), x1 ~ randint(x0 + w // 3, w), the same for y, independently; the box is
drawn for the CF and reused for every frame), then resized with cv2.resize (bilinear). In the
released file that crop sits behind `aug = 0`, so it never runs, and the random horizontal flip is
in the CF's torchvision transform only: half of the time the CF is mirrored against its own frames.

Here one draw of the geometry (release crop, resize, flips, a small affine) is applied to the CF,
every frame and every mask, because the generator learns a pixel-wise mapping from CF to FFA: any
misalignment between the input and its targets teaches it to blur. Photometric changes touch the
CF only, since the frames' intensities are the signal the model must predict.
"""

from __future__ import annotations

import os
import random

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # otherwise importing it calls the network

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.core.transforms_interface import DualTransform  # noqa: E402

from fundus2video.config import AugmentConfig  # noqa: E402  (the schema: one source of truth)


def interpolation(shape: tuple[int, ...], size: int) -> int:
    """Area averaging when shrinking (no aliasing of thin vessels), bilinear otherwise."""
    return cv2.INTER_AREA if shape[0] >= size and shape[1] >= size else cv2.INTER_LINEAR


def resize(image: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(image, (size, size), interpolation=interpolation(image.shape, size))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)


def release_span(n: int, rng: random.Random) -> tuple[int, int]:
    """[start, stop) of one side of the release's crop, drawn like the release (inclusive randint)."""
    start = rng.randint(0, int(n // 1.5))
    # max(.., 1): the release drew an empty crop for sides under 3 pixels (and then skipped the crop).
    return start, rng.randint(start + max(n // 3, 1), n)


class ReleaseCropResize(DualTransform):
    """The release's random crop followed by the resize to size x size.

    One transform rather than Crop + Resize: the interpolation depends on the crop's size, and
    resizing the crop view directly saves a copy of every frame.
    """

    def __init__(self, size: int, crop: bool = True, p: float = 1.0):
        super().__init__(p=p)
        self.size, self.crop = size, crop

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        h, w = params["shape"][:2]
        if not self.crop:
            return {"box": (0, 0, w, h)}
        x0, x1 = release_span(w, self.py_random)  # x before y, as the release draws them
        y0, y1 = release_span(h, self.py_random)
        return {"box": (x0, y0, x1, y1)}

    def apply(self, img: np.ndarray, box: tuple[int, int, int, int], **params) -> np.ndarray:
        x0, y0, x1, y1 = box
        return resize(img[y0:y1, x0:x1], self.size)

    def apply_to_mask(self, mask: np.ndarray, box: tuple[int, int, int, int], **params) -> np.ndarray:
        x0, y0, x1, y1 = box
        return resize_mask(mask[y0:y1, x0:x1], self.size)


def geometric_pipeline(size: int, cfg: AugmentConfig) -> A.Compose:
    return A.Compose([
        ReleaseCropResize(size, crop=cfg.crop),
        A.HorizontalFlip(p=cfg.hflip),
        A.VerticalFlip(p=cfg.vflip),
        A.Affine(rotate=(-cfg.rotate, cfg.rotate), scale=(1 - cfg.scale, 1 + cfg.scale),
                 translate_percent=(-cfg.translate, cfg.translate), keep_ratio=True,
                 interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=cfg.affine_p),
    ])


def photometric_pipeline(cfg: AugmentConfig) -> A.Compose:
    return A.Compose([
        A.Sequential([
            A.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast, saturation=cfg.saturation,
                          hue=cfg.hue, p=1.0),
            A.RandomGamma(gamma_limit=(100 * (1 - cfg.gamma), 100 * (1 + cfg.gamma)), p=1.0),
        ], p=cfg.photometric_p),
        A.GaussianBlur(sigma_limit=(0.3, 1.0), p=cfg.blur),
    ])


def _check_shapes(cf: np.ndarray, frames: np.ndarray, masks: dict[str, np.ndarray]) -> None:
    hw = cf.shape[:2]
    if cf.ndim != 3 or cf.shape[2] != 3 or frames.ndim != 3 or frames.shape[1:] != hw:
        raise ValueError(f"expected cf (H, W, 3) and frames (T, H, W); got {cf.shape} and {frames.shape}")
    for name, mask in masks.items():
        if mask.shape != hw:
            raise ValueError(f"mask '{name}' has shape {mask.shape}, the CF {hw}")


class PairedTransform:
    """(cf (H, W, 3), frames (T, H, W), masks {name: (H, W)}) -> the same at size x size.

    train=False: a deterministic resize. train=True: one draw of the geometry for all targets,
    then photometric changes on the CF. With `seed`, the sequence of draws is fixed (tests,
    reproducible previews; every DataLoader worker would replay it). Without, each process seeds
    itself at its first call from torch.initial_seed(), which the DataLoader sets per worker and per
    epoch and Lightning's seed_everything makes reproducible.
    """

    def __init__(self, size: int, train: bool, cfg: AugmentConfig | None = None, seed: int | None = None):
        self.size, self.train, self.cfg, self.seed = size, train, cfg or AugmentConfig(), seed
        self._geometric = geometric_pipeline(size, self.cfg)
        self._photometric = photometric_pipeline(self.cfg)
        self._n_frame_targets = 0
        self._pid = None  # the process the pipelines were seeded in (seed=None only)
        if seed is not None:
            self._reseed(seed)

    def __call__(self, cf: np.ndarray, frames: np.ndarray, masks: dict[str, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        masks = masks or {}
        _check_shapes(cf, frames, masks)
        masks = {name: np.asarray(mask, np.uint8) for name, mask in masks.items()}  # cv2 has no bool
        if not self.train:
            return (resize(cf, self.size), np.stack([resize(f, self.size) for f in frames]),
                    {name: resize_mask(m, self.size) > 0 for name, m in masks.items()})
        return self._augment(cf, frames, masks)

    def _augment(self, cf: np.ndarray, frames: np.ndarray, masks: dict[str, np.ndarray]):
        self._seed_process()
        keys = self._frame_keys(len(frames))
        data = {"image": cf, **dict(zip(keys, frames))}
        if masks:
            data["masks"] = np.stack(list(masks.values()))
        out = self._geometric(**data)
        out_masks = {name: m > 0 for name, m in zip(masks, out.get("masks", ()))}
        return self._jitter(out["image"]), np.stack([out[k] for k in keys]), out_masks

    def _jitter(self, cf: np.ndarray) -> np.ndarray:
        # Contrast and blur would lift the black outside the field of view, which real inputs never
        # show: keep those pixels at 0.
        inside = cf[..., 0] | cf[..., 1] | cf[..., 2]  # nonzero in the field of view
        jittered = self._photometric(image=cf)["image"]
        return cv2.bitwise_and(jittered, jittered, mask=inside)

    def _frame_keys(self, n: int) -> list[str]:
        """Each frame is an extra 2-D `image` target of the geometric pipeline.

        Not the `images` target: albumentations 2.0.8 warps a (T, H, W) stack by moving T to the
        channel axis, splitting it in chunks of 4 and stacking them back, which costs more than the
        warps themselves (whole pipeline with the affine, T=12 at 512: ~50 ms against ~28 ms).
        """
        if n > self._n_frame_targets:
            self._geometric.add_targets({f"frame{i}": "image" for i in range(self._n_frame_targets, n)})
            self._n_frame_targets = n
        return [f"frame{i}" for i in range(n)]

    def _seed_process(self) -> None:
        # A forked or spawned DataLoader worker starts with a copy of the parent's generators: without
        # this every worker, and every epoch of non-persistent workers, would replay the same draws.
        if self.seed is None and self._pid != os.getpid():
            self._reseed(torch.initial_seed())
            self._pid = os.getpid()

    def reseed(self, seed: int) -> None:
        """Fix the next draws to a function of `seed` (per-sample seeding, see sampling.py)."""
        self._reseed(seed)
        self._pid = os.getpid()

    def _reseed(self, seed: int) -> None:
        # One shared generator per pipeline: Compose(seed=...) gives every transform its own generator
        # seeded alike, so e.g. the horizontal and vertical flips would always be drawn together.
        geometric, photometric = np.random.SeedSequence(seed).generate_state(2)
        for pipeline, s in ((self._geometric, int(geometric)), (self._photometric, int(photometric))):
            pipeline.set_random_state(np.random.default_rng(s), random.Random(s))
