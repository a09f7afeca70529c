"""Datasets that serve paired CF photos and FFA videos as training samples.

Every case, phantom or real, goes through the same steps: read (cases.py) -> field of view,
zero outside, crop to the ROI box (knowledge.py) -> paired transform to S x S (augmented at
train time, a plain resize otherwise; transforms.py) -> knowledge mask from the first and
last frame -> tensors. Every dataset returns the same sample dict (docs/DESIGN.md's batch layout):
  cf (3, S, S) float in [-1, 1] | frames (T, 1, S, S) float in [-1, 1] (FFA green channel)
  km (1, S, S) knowledge mask {0, 1} | roi (1, S, S) field of view {0, 1}
  lesion (1, S, S) lesion mask {0, 1} (all zeros when unknown) | times (T,) seconds
  phases (T,) phase names ("" when unknown)
  case_id, patient_id (str)
  regions {name: (1, S, S) {0, 1}}: only when the dataset's `with_regions` is set (for scoring):
          one mask per lesion kind and `vessels`, where the data has them
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from fundus2video.data_modules.cases import CaseRecord, RawCase, load_case, select_frames
from fundus2video.data_modules.phantom import Nuisances, make_case
from fundus2video.data_modules.transforms import PairedTransform
from fundus2video.knowledge import KM_THRESHOLD, crop_to_roi, knowledge_mask
from fundus2video.registration.estimate import decide, register_case, warp_to_reference

log = logging.getLogger("fundus2video")

# Phantom case indices of each split start far apart, so no patient (index // 2) is shared.
SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}


def to_sample(cf: np.ndarray, frames: np.ndarray, roi: np.ndarray, lesion: np.ndarray | None,
              times: np.ndarray, case_id: str, patient_id: str,
              km_threshold: float = KM_THRESHOLD, phases: list[str] | None = None) -> dict:
    """Prepared uint8 arrays (cf (S,S,3), frames (T,S,S), masks (S,S)) -> the sample dict."""
    cf_t = torch.from_numpy(np.ascontiguousarray(cf)).permute(2, 0, 1).float() / 127.5 - 1.0
    frames_t = torch.from_numpy(np.ascontiguousarray(frames)).float().unsqueeze(1) / 127.5 - 1.0
    km = knowledge_mask(frames_t[0] * 0.5 + 0.5, frames_t[-1] * 0.5 + 0.5, km_threshold).float()
    roi_t = torch.from_numpy(np.ascontiguousarray(roi)).float().unsqueeze(0)
    lesion_t = (torch.zeros_like(roi_t) if lesion is None
                else torch.from_numpy(np.ascontiguousarray(lesion)).float().unsqueeze(0))
    return {"cf": cf_t, "frames": frames_t, "km": km, "roi": roi_t, "lesion": lesion_t,
            "times": torch.as_tensor(times, dtype=torch.float32), "case_id": case_id,
            "patient_id": patient_id, "phases": list(phases) if phases else [""] * len(frames)}


def _torch_rng() -> np.random.Generator:
    """A numpy generator drawn from torch's RNG, so Lightning's worker seeding governs it."""
    return np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))


def _estimate(raw: RawCase, case_id: str, model: str) -> tuple[np.ndarray | None, list[np.ndarray | None]]:
    """The CF's and each frame's matrix onto frame 0 (None: use as read), with a warning for what failed."""
    names = raw.frame_names or [f"frame {k}" for k in range(len(raw.frames))]
    try:
        found = register_case(raw.cf, raw.frames, model)
    except (cv2.error, ValueError, ArithmeticError) as err:  # images no check foresaw: this case, not the run
        log.warning("case %s: not registered, used as read (registration failed: %s: %s)", case_id,
                    type(err).__name__, (str(err).strip().splitlines() or [""])[-1].strip())
        return None, [None] * len(raw.frames)
    reason, failed = decide(found.frames, found.cf, names)
    if reason:
        log.warning("case %s: not registered, used as read (%s)", case_id, reason)
        return None, [None] * len(raw.frames)
    if failed:
        log.warning("case %s: %d frame(s) used as read, their registration failed (%s)", case_id, len(failed),
                    "; ".join(f"{names[k]}: {found.frames[k].problem}" for k in failed))
    matrices = [None if k == 0 or k in failed else r.matrix for k, r in enumerate(found.frames)]
    return found.cf.matrix, matrices


class _CaseDataset(Dataset):
    """Shared pipeline: subclasses say how to read case i (`raw`)."""

    def __init__(self, size: int, train: bool, transform: PairedTransform,
                 km_threshold: float = KM_THRESHOLD):
        self.size, self.train, self.transform, self.km_threshold = size, train, transform, km_threshold
        self.with_regions = False  # scoring sets it; training samples stay collatable and lean
        self.register: str | None = None  # a motion model: each case registered as it is read (data.register)
        self._registrations: dict[tuple, tuple] = {}  # case and frames read -> (CF matrix, frame matrices)

    def raw(self, i: int, rng: np.random.Generator | None = None) -> tuple[RawCase, str, str]:
        raise NotImplementedError

    def _registered(self, raw: RawCase, case_id: str) -> RawCase:
        """`raw` with every frame and the CF moved onto frame 0 (registration/, as `data register` does;
        the masks are already in frame 0's coordinates). The transforms are estimated once per case and
        frame draw and kept (a few numbers), the images warped at each read. A case whose registration
        fails is used as read, a frame whose registration fails likewise, each said once."""
        key = (case_id, raw.frames.shape, tuple(np.round(np.asarray(raw.times, float), 3)))
        if key not in self._registrations:
            self._registrations[key] = _estimate(raw, case_id, self.register)
        cf_matrix, matrices = self._registrations[key]
        if cf_matrix is None:
            return raw
        h, w = raw.frames.shape[1:]
        frames = np.stack([f if m is None else warp_to_reference(f, m, (w, h)) for f, m in zip(raw.frames, matrices)])
        return dataclasses.replace(raw, cf=warp_to_reference(raw.cf, cf_matrix, (w, h)), frames=frames)

    @contextlib.contextmanager
    def as_scored(self) -> Iterator[_CaseDataset]:
        """This dataset read as scoring reads it, the training split too: no augmentation, no random
        frame draws (so no draw from the training's random streams), with the region masks."""
        saved = self.train, self.transform, self.with_regions
        self.train, self.transform, self.with_regions = False, PairedTransform(self.size, train=False), True
        try:
            yield self
        finally:
            self.train, self.transform, self.with_regions = saved

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        """`item`: an index, or (index, sample_seed) from `SeededSampler`: the sample's random draws
        (augmentation, frame selection) are then a function of the seed alone."""
        i, seed = item if isinstance(item, tuple) else (item, None)
        if not 0 <= i < len(self):
            raise IndexError(i)
        rng = None
        if seed is not None:
            self.transform.reseed(seed)
            rng = np.random.default_rng(seed)
        raw, case_id, patient_id = self.raw(i, rng)
        if self.register:
            raw = self._registered(raw, case_id)
        masks = {"lesion": raw.lesion} if raw.lesion is not None else {}
        if self.with_regions:
            masks.update({f"region:{name}": m for name, m in raw.regions.items()})
        crop = crop_to_roi(raw.cf, raw.frames, masks)
        cf, frames, out = self.transform(crop["cf"], crop["frames"],
                                         {k: v for k, v in crop.items() if k not in ("cf", "frames")})
        sample = to_sample(cf, frames, out["roi"], out.get("lesion"), raw.times, case_id, patient_id,
                           self.km_threshold, raw.phases)
        if self.with_regions:
            sample["regions"] = {k.split(":", 1)[1]: torch.from_numpy(np.ascontiguousarray(m)).float()[None]
                                 for k, m in out.items() if k.startswith("region:")}
        return sample


class PhantomVideoDataset(_CaseDataset):
    """The procedural phantom (phantom.py), drawn at `render_size` and then prepared exactly
    like real data."""

    def __init__(self, split: str, n_cases: int, size: int, n_frames: int, seed: int = 0,
                 render_size: int = 0, km_threshold: float = KM_THRESHOLD,
                 transform: PairedTransform | None = None, nuisances: Nuisances | None = None):
        super().__init__(size, False, transform or PairedTransform(size, train=False), km_threshold)
        if split not in SPLIT_OFFSET:
            raise ValueError(f"split '{split}' is not one of {list(SPLIT_OFFSET)}")
        self.split, self.n_cases, self.n_frames = split, n_cases, n_frames
        self.seed, self.render_size = seed, render_size or size
        self.nuisances = nuisances or Nuisances()
        self._cache: dict[int, tuple] = {}  # drawing a case costs more than a generator step

    def __len__(self) -> int:
        return self.n_cases

    def raw(self, i: int, rng: np.random.Generator | None = None) -> tuple[RawCase, str, str]:
        if i not in self._cache:
            c = make_case(SPLIT_OFFSET[self.split] + i, size=self.render_size, n_frames=self.n_frames,
                          seed=self.seed, nuisances=self.nuisances)
            regions = {**c.lesion_kinds, "vessels": c.vessels}
            self._cache[i] = (RawCase(c.cf, c.frames, c.times, c.phases, c.lesion, regions=regions),
                              c.case_id, c.patient_id)
        return self._cache[i]

    def windows_per_video(self) -> float:
        """Mean generator steps per video (one window per frame), for step-counted schedules."""
        return float(self.n_frames)


class FileVideoDataset(_CaseDataset):
    """Cases on disk (folders or manifest layout, see cases.py)."""

    def __init__(self, records: list[CaseRecord], size: int, n_frames: int, per_phase: int,
                 train: bool, transform: PairedTransform, km_threshold: float = KM_THRESHOLD):
        super().__init__(size, train, transform, km_threshold)
        self.records, self.n_frames, self.per_phase = records, n_frames, per_phase

    def __len__(self) -> int:
        return len(self.records)

    def raw(self, i: int, rng: np.random.Generator | None = None) -> tuple[RawCase, str, str]:
        rec = self.records[i]
        if self.train and rng is None:
            rng = _torch_rng()
        raw = load_case(rec, self.per_phase, self.n_frames, rng=rng if self.train else None)
        return raw, rec.case_id, rec.patient_id

    def windows_per_video(self) -> float:
        """Mean frames per case as validation selects them (videos: `n_frames`)."""
        counts = [len(select_frames(r.frames, self.per_phase, self.n_frames, None)) if r.frames
                  else self.n_frames for r in self.records]
        return float(np.mean(counts)) if counts else float(self.n_frames)
