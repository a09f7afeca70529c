"""Datasets that serve paired CF photos and FFA videos as training samples.

Every dataset returns the same sample dict (the batch layout of DESIGN.md):
  cf (3, S, S) float in [-1, 1] | frames (T, 1, S, S) float in [-1, 1] (FFA green channel)
  km (1, S, S) knowledge mask {0, 1} | roi (1, S, S) field of view {0, 1}
  lesion (1, S, S) lesion mask {0, 1} (all zeros when unknown) | times (T,) seconds
  case_id, patient_id (str)
"""

from __future__ import annotations

import numpy as np
import torch
from fundus2video.data_modules.phantom import make_case
from torch.utils.data import Dataset

from fundus2video.knowledge import KM_THRESHOLD, knowledge_mask, prepare_case
from fundus2video.rollout import num_windows

# Phantom case indices of each split start far apart, so no patient (index // 2) is shared.
SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}


def to_sample(cf: np.ndarray, frames: np.ndarray, roi: np.ndarray, lesion: np.ndarray | None,
              times: np.ndarray, case_id: str, patient_id: str,
              km_threshold: float = KM_THRESHOLD, hflip: bool = False) -> dict:
    """Prepared uint8 arrays (cf (S,S,3), frames (T,S,S), masks (S,S)) -> the sample dict."""
    cf_t = torch.from_numpy(np.ascontiguousarray(cf)).permute(2, 0, 1).float() / 127.5 - 1.0
    frames_t = torch.from_numpy(np.ascontiguousarray(frames)).float().unsqueeze(1) / 127.5 - 1.0
    km = knowledge_mask(frames_t[0] * 0.5 + 0.5, frames_t[-1] * 0.5 + 0.5, km_threshold).float()
    roi_t = torch.from_numpy(np.ascontiguousarray(roi)).float().unsqueeze(0)
    lesion_t = (torch.zeros_like(roi_t) if lesion is None
                else torch.from_numpy(np.ascontiguousarray(lesion)).float().unsqueeze(0))
    sample = {"cf": cf_t, "frames": frames_t, "km": km, "roi": roi_t, "lesion": lesion_t}
    if hflip:
        sample = {k: v.flip(-1) for k, v in sample.items()}
    sample.update(times=torch.as_tensor(times, dtype=torch.float32), case_id=case_id,
                  patient_id=patient_id)
    return sample


class PhantomVideoDataset(Dataset):
    """The procedural phantom (data_modules/phantom.py), prepared exactly like real data.

    Each case is drawn at `render_size`, then goes through the release's preprocessing
    (field of view, zero outside, crop to the ROI box, resize to `size`).
    """

    def __init__(self, split: str, n_cases: int, size: int, n_frames: int, seed: int = 0,
                 render_size: int = 0, km_threshold: float = KM_THRESHOLD, hflip: bool = False):
        if split not in SPLIT_OFFSET:
            raise ValueError(f"split '{split}' is not one of {list(SPLIT_OFFSET)}")
        self.split, self.n_cases, self.size, self.n_frames = split, n_cases, size, n_frames
        self.seed, self.render_size = seed, render_size or size
        self.km_threshold, self.hflip = km_threshold, hflip
        self._cache: dict[int, tuple] = {}  # prepared cases: drawing one costs more than a G step

    def __len__(self) -> int:
        return self.n_cases

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n_cases:
            raise IndexError(i)
        if i not in self._cache:
            case = make_case(SPLIT_OFFSET[self.split] + i, size=self.render_size,
                             n_frames=self.n_frames, seed=self.seed)
            p = prepare_case(case.cf, case.frames, self.size, {"lesion": case.lesion})
            self._cache[i] = (p["cf"], p["frames"], p["roi"], p["lesion"], case.times,
                              case.case_id, case.patient_id)
        flip = self.hflip and bool(torch.rand(()) < 0.5)
        return to_sample(*self._cache[i], km_threshold=self.km_threshold, hflip=flip)

    def windows_per_video(self) -> float:
        """Mean generator steps per video (one window per frame), for step-counted schedules."""
        return float(num_windows(self.n_frames))
