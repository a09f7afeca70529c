"""Frechet video distance (FVD) as torchmetrics `Metric`s, in two protocols.

- "standard", `FrechetVideoDistance`: the usual set-level FVD. One clip of `clip_len` (16)
  frames per video (`resample_clip`), I3D features (`fundus2video.metrics.i3d`), a Gaussian
  fitted to each set, the Frechet distance between the two (`fundus2video.metrics.frechet`).
- "paper", `PaperFVD`: the authors' release, quirks included, for comparison with the published
  figures (FVD 1503.21). Per video, not per set, so it reduces to a mean-feature distance.

Both take videos (B, T, C, H, W) in [0, 1], C = 1 (grey, repeated to RGB) or 3, and call the
I3D under `torch.no_grad`. FVD depends on the number and length of the videos and on the
protocol: report `settings()` next to the value.

The I3D is fixed third-party weights, not metric state: it is kept out of `state_dict` (so out
of Lightning checkpoints), `parameters()` and DDP, and follows the metric's device (never its
dtype: it runs in float32). Use `update()`/`compute()`; torchmetrics' `forward` computes a
per-batch value, which for the standard protocol needs two videos per batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from fundus2video.errors import UserError
from fundus2video.metrics.frechet import frechet_distance, stats
from fundus2video.metrics.i3d import MIN_FRAMES, I3DFeatures

CLIP_LEN = 16
PAPER_MIN_CLIP = 10  # common_metrics_on_video_quality skips clip lengths below 10
CLIP_RULE = ("frames round(linspace(0, T - 1, clip_len)) (halves up): shorter videos repeat frames evenly, "
             "longer ones are subsampled evenly; the first and last frames are always kept")
PAPER_SOURCE = ("Michi-3000/Fundus2Video train.py (validation: calculate_fvd(real, fake, method='styleganv') per "
                "video, np.nanmean over clip lengths, pandas mean over videos) with JunyaoHu/"
                "common_metrics_on_video_quality calculate_fvd.py and fvd/styleganv/fvd.py")


def resample_clip(videos: torch.Tensor, clip_len: int = CLIP_LEN) -> torch.Tensor:
    """(B, T, C, H, W) -> (B, clip_len, C, H, W), frames at round(k (T - 1) / (clip_len - 1)).

    Why evenly over the whole video rather than the first `clip_len` frames: an FFA video's
    frames run through the angiographic phases, so the clip should span early to late phase
    whatever T is. T < clip_len (the data's T <= 12 against I3D's usual 16) repeats frames
    evenly; T > clip_len subsamples evenly. Integer arithmetic, so ties round up exactly.
    """
    t = videos.shape[1]
    k = torch.arange(clip_len, device=videos.device)
    return videos[:, (2 * k * (t - 1) + clip_len - 1) // (2 * (clip_len - 1))]


def _check_pair(fake: torch.Tensor, real: torch.Tensor) -> None:
    if fake.shape != real.shape or fake.dim() != 5 or fake.shape[2] not in (1, 3):
        raise ValueError(f"expected fake and real videos of one shape (B, T, C, H, W), C = 1 or 3; "
                         f"got {tuple(fake.shape)} and {tuple(real.shape)}")


def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """A list state as one tensor (after DDP sync torchmetrics has already concatenated it)."""
    return dim_zero_cat(state) if isinstance(state, torch.Tensor) or state else torch.zeros(0, 0)


class _VideoFeatureMetric(Metric):
    """A Metric that runs a hidden I3D (see the module docstring)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, i3d: I3DFeatures, **kwargs: Any):
        super().__init__(**kwargs)
        # object.__setattr__ skips nn.Module registration: no I3D weights in state_dict/parameters
        object.__setattr__(self, "i3d", i3d)
        self.n_videos = 0  # reported by settings()
        self.feature_dim = 0

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.i3d.to(self.device)  # the device only: the I3D stays float32
        return out

    def _i3d_settings(self) -> dict[str, Any]:
        return {"n_videos": self.n_videos, "feature_dim": self.feature_dim, "i3d_format": self.i3d.fmt,
                "i3d_file": self.i3d.source, "i3d_input_size": self.i3d.size}


class FrechetVideoDistance(_VideoFeatureMetric):
    """Set-level FVD ("standard" protocol) between all fake and all real videos seen.

    update(fake_videos, real_videos): (B, T, C, H, W) in [0, 1]; each video becomes one clip of
    `clip_len` frames (`resample_clip`), whose I3D features are kept as list states (gathered
    by concatenation under DDP). compute(): the Frechet distance (float64) between Gaussians
    fitted to the two feature sets; needs at least 2 videos.
    """

    def __init__(self, i3d: I3DFeatures, clip_len: int = CLIP_LEN, **kwargs: Any):
        super().__init__(i3d, **kwargs)
        if clip_len < MIN_FRAMES:
            raise ValueError(f"clip_len must be at least {MIN_FRAMES} (I3D's minimum), got {clip_len}")
        self.clip_len = clip_len
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")
        self.add_state("real_features", default=[], dist_reduce_fx="cat")

    def update(self, fake_videos: torch.Tensor, real_videos: torch.Tensor) -> None:
        _check_pair(fake_videos, real_videos)
        self.fake_features.append(self.i3d(resample_clip(fake_videos, self.clip_len)).double())
        self.real_features.append(self.i3d(resample_clip(real_videos, self.clip_len)).double())

    def compute(self) -> torch.Tensor:
        fake, real = _cat(self.fake_features), _cat(self.real_features)
        if fake.shape[0] < 2:
            raise UserError(f"standard FVD needs at least 2 videos per set (a covariance), got {fake.shape[0]}")
        self.n_videos, self.feature_dim = fake.shape[0], fake.shape[1]
        return frechet_distance(*stats(fake), *stats(real))

    def settings(self) -> dict[str, Any]:
        """What the last compute() measured, to report beside its value."""
        return {"protocol": "standard", "clip_len": self.clip_len, "clip_rule": CLIP_RULE, "input_range": "[0, 1]",
                **self._i3d_settings()}


class PaperFVD(_VideoFeatureMetric):
    """The release's FVD ("paper" protocol), reproduced exactly.

    What the release does (PAPER_SOURCE): each validation video on its own, real and fake as
    (1, T, 3, 512, 512) tensors in the model's [-1, 1] range, given to code written for [0, 1]:
    for every clip length L = 10 .. T, the first L frames of each go through `preprocess_single`
    (shorter side to 224, bilinear, centre crop, (x - 0.5) * 2, so [-1, 1] becomes [-3, 1]) and
    the TorchScript I3D (rescale=False, resize=False, return_features=True); `frechet_distance`
    with one sample per set returns only the mean term |f_fake - f_real|^2. The per-video value
    is `np.nanmean` over L: NaN for T < 10 (no length), and the pandas mean over videos skips
    NaN. Here: videos in [0, 1] are mapped to [-1, 1] first, then through the same
    preprocessing (`I3DFeatures`), which reproduces the [-3, 1] input exactly.

    compute(): the mean over videos with T >= 10 of the per-video means; NaN (as the release)
    when no video has 10 frames; settings() reports how many counted.
    """

    def __init__(self, i3d: I3DFeatures, **kwargs: Any):
        super().__init__(i3d, **kwargs)
        self.n_scored = 0  # reported by settings()
        self.add_state("video_values", default=[], dist_reduce_fx="cat")

    def update(self, fake_videos: torch.Tensor, real_videos: torch.Tensor) -> None:
        _check_pair(fake_videos, real_videos)
        b, t = fake_videos.shape[:2]
        fake, real = fake_videos * 2 - 1, real_videos * 2 - 1  # the release's [-1, 1] tensors
        per_length = []
        for length in range(PAPER_MIN_CLIP, t + 1):
            f, r = self.i3d(fake[:, :length]).double(), self.i3d(real[:, :length]).double()
            per_length.append((f - r).square().sum(1))  # Frechet distance of one sample per set
            self.feature_dim = f.shape[1]
        values = torch.stack(per_length, 1).mean(1) if per_length else torch.full((b,), math.nan, dtype=torch.float64)
        self.video_values.append(values.to(self.device))

    def compute(self) -> torch.Tensor:
        values = _cat(self.video_values).flatten()
        scored = values[~values.isnan()]
        self.n_videos, self.n_scored = values.numel(), scored.numel()
        return scored.mean() if scored.numel() else torch.tensor(math.nan, dtype=torch.float64)

    def settings(self) -> dict[str, Any]:
        """What the last compute() measured, to report beside its value."""
        return {"protocol": "paper", "clip_lens": f"{PAPER_MIN_CLIP}..T (first L frames), averaged per video",
                "n_videos_scored": self.n_scored,
                "input_range": "[0, 1], fed as [-1, 1] to [0, 1] code (release quirk)",
                "source": PAPER_SOURCE, **self._i3d_settings()}
