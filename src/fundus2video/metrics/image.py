"""Frame metrics over videos, optionally restricted to a mask, and the release's PSNR / SSIM.

Videos are ``(B, T, C, H, W)`` float tensors, ``fake`` (generated) and ``real``, in ``[0, data_range]``
(``data_range=1`` for ``[0, 1]`` frames). A mask is ``(B, 1, H, W)`` (the same for every frame) or
``(B, T, 1, H, W)``; pixels with mask > 0.5 are counted, in every channel. Build one metric instance
per region (whole frame: ``mask=None``; field of view; knowledge mask; lesion) and pass that region's mask.

Reduction (every frame metric here): each frame gets one score; the value is the mean over all frames
seen, across ``update`` calls and, once synchronised, across processes (states: ``total``, a sum of
per-frame scores, and ``count``, the frames scored; both summed under DDP). Frames whose mask is empty
are not scored: they are counted in the ``skipped`` state. With no frame scored the value is NaN.

The release's protocol (``paper_psnr``, ``paper_ssim``, ``PaperPSNR``, ``PaperSSIM``) is reproduced
separately, quirks included: see ``paper_psnr``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    structural_similarity_index_measure,
)

__all__ = [
    "PaperPSNR", "PaperSSIM", "TemporalError", "VideoMSSSIM", "VideoPSNR", "VideoSSIM",
    "msssim_min_side", "paper_psnr", "paper_ssim",
]

MSSSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, as in torchmetrics
_SSIM_KERNEL = 11  # gaussian window 11 x 11, sigma 1.5: torchmetrics' default and the release's


def _check_videos(fake: Tensor, real: Tensor) -> None:
    if fake.ndim != 5 or fake.shape != real.shape:
        raise ValueError(f"expected fake and real videos of one shape (B, T, C, H, W), "
                         f"got {tuple(fake.shape)} and {tuple(real.shape)}")


def _as_frames(fake: Tensor, real: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Videos (B, T, C, H, W) -> frames (B*T, C, H, W) in float32, mask -> bool (B*T, 1, H, W)."""
    _check_videos(fake, real)
    b, t, c, h, w = fake.shape
    fake, real = fake.reshape(b * t, c, h, w).float(), real.reshape(b * t, c, h, w).float()
    if mask is None:
        return fake, real, None
    if mask.shape == (b, 1, h, w):
        mask = mask[:, None].expand(b, t, 1, h, w)
    elif mask.shape != (b, t, 1, h, w):
        raise ValueError(f"expected a mask of shape (B, 1, H, W) = {(b, 1, h, w)} or (B, T, 1, H, W) = "
                         f"{(b, t, 1, h, w)}, got {tuple(mask.shape)}")
    return fake, real, mask.reshape(b * t, 1, h, w).float() > 0.5


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Per-frame mean of x (N, C, H, W) over the mask's pixels (N, 1, H, W) and all channels -> (N,)."""
    if mask is None:
        return x.mean((1, 2, 3))
    return (x * mask).sum((1, 2, 3)) / (mask.sum((1, 2, 3)) * x.shape[1])


class _FrameMean(Metric):
    """Mean over frames of a per-frame score; frames with an empty mask are skipped and counted."""

    full_state_update = False
    is_differentiable = False
    takes_mask = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("skipped", torch.tensor(0), dist_reduce_fx="sum")

    def _score(self, fake: Tensor, real: Tensor, mask: Tensor | None) -> Tensor:
        """Per-frame scores (N,) of frames (N, C, H, W), mask (N, 1, H, W) bool or None."""
        raise NotImplementedError

    def update(self, fake: Tensor, real: Tensor, mask: Tensor | None = None) -> None:
        """Score the frames of videos (B, T, C, H, W); mask (B, 1, H, W) or (B, T, 1, H, W), 1 = counted."""
        if mask is not None and not self.takes_mask:
            raise ValueError(f"{type(self).__name__} scores whole frames and takes no mask")
        self._accumulate(*_as_frames(fake, real, mask))

    def _accumulate(self, fake: Tensor, real: Tensor, mask: Tensor | None) -> None:
        if mask is not None:
            keep = mask.flatten(1).any(1)
            self.skipped += (~keep).sum()
            fake, real, mask = fake[keep], real[keep], mask[keep]
        if len(fake):
            self.total += self._score(fake, real, mask).sum().to(self.total.dtype)
            self.count += len(fake)

    def compute(self) -> Tensor:
        """Mean per-frame score (NaN when no frame was scored)."""
        return (self.total / self.count).float()


class VideoPSNR(_FrameMean):
    """PSNR per frame, 10 log10(data_range^2 / MSE), averaged over frames; higher is better.

    With a mask the MSE is the mean squared error over the mask's pixels only (all channels).
    Identical frames score +inf (as torchmetrics and skimage do), which makes the mean +inf.
    """

    higher_is_better = True

    def __init__(self, data_range: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_range = data_range

    def _score(self, fake: Tensor, real: Tensor, mask: Tensor | None) -> Tensor:
        return 10 * torch.log10(self.data_range**2 / _masked_mean((fake - real) ** 2, mask))


class VideoSSIM(_FrameMean):
    """SSIM per frame (gaussian window 11, sigma 1.5, k1 0.01, k2 0.03), averaged over frames; higher is better.

    The SSIM map is torchmetrics' (``structural_similarity_index_measure(..., return_full_image=True)``):
    frame-sized, computed on frames reflection-padded by 5 px, so values within 5 px of the border use
    mirrored neighbours; its mean over the whole frame equals torchmetrics' SSIM. (The release's SSIM
    instead averages only the "valid" map, 5 px away from the border: see ``paper_ssim``.) With a mask the
    score is the mean of the map over the mask's pixels (all channels); each map value still comes from an
    11 x 11 window that may reach outside the mask.
    """

    higher_is_better = True

    def __init__(self, data_range: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_range = data_range

    def _score(self, fake: Tensor, real: Tensor, mask: Tensor | None) -> Tensor:
        _, ssim_map = structural_similarity_index_measure(
            fake, real, data_range=self.data_range, reduction="none", return_full_image=True)
        return _masked_mean(ssim_map, mask)


def msssim_min_side(scales: int) -> int:
    """Smallest frame side that torchmetrics' MS-SSIM (gaussian kernel 11) accepts and can compute with `scales`.

    torchmetrics requires side >= 2**scales and side // max(1, scales - 1)**2 > 10 (its divisor is
    (scales-1)**2, which is 2**(scales-1) only for 5 scales: 176 px, not 161); the coarsest scale,
    side / 2**(scales-1), must also be >= 6 px for the 5-px reflection padding.
    """
    return max(2**scales, max(1, scales - 1) ** 2 * _SSIM_KERNEL, 6 * 2 ** (scales - 1))


class VideoMSSSIM(_FrameMean):
    """MS-SSIM per frame (torchmetrics, gaussian kernel 11, sigma 1.5, normalize='relu'), averaged over frames.

    The standard 5 scales need frames of at least ``msssim_min_side(5)`` = 176 px; for 64-128 px frames pass
    ``scales=3`` (44 px) or ``scales=4`` (99 px): the first `scales` standard betas are used, rescaled to the
    standard total so a perfect score stays 1. ``betas`` overrides them (and sets the number of scales).
    Whole frames only: MS-SSIM pools frames across scales, so it takes no mask. Higher is better.
    """

    higher_is_better = True
    takes_mask = False

    def __init__(self, data_range: float = 1.0, scales: int = 5, betas: tuple[float, ...] | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if betas is None:
            if not 1 <= scales <= len(MSSSIM_BETAS):
                raise ValueError(f"scales must be in 1..{len(MSSSIM_BETAS)}, got {scales}")
            first = MSSSIM_BETAS[:scales]
            betas = tuple(b * sum(MSSSIM_BETAS) / sum(first) for b in first)
        self.data_range = data_range
        self.betas = tuple(float(b) for b in betas)

    def _score(self, fake: Tensor, real: Tensor, mask: Tensor | None) -> Tensor:
        side, scales = min(fake.shape[-2:]), len(self.betas)
        if side < msssim_min_side(scales):
            fits = [n for n in range(1, len(MSSSIM_BETAS) + 1) if msssim_min_side(n) <= side]
            hint = f"; pass scales={fits[-1]} (needs {msssim_min_side(fits[-1])} px)" if fits else ""
            raise ValueError(f"VideoMSSSIM with {scales} scales needs frames of at least {msssim_min_side(scales)} px"
                             f" per side, got {tuple(fake.shape[-2:])}{hint}")
        return multiscale_structural_similarity_index_measure(
            fake, real, data_range=self.data_range, betas=self.betas, reduction="none")


class TemporalError(_FrameMean):
    """Error of the frame-to-frame changes: how far fake[t+1] - fake[t] is from real[t+1] - real[t]; lower is better.

    ``kind='mae'`` (default): per pair of consecutive frames, the mean absolute difference of the two changes
    over the mask's pixels (all channels); ``kind='rms'``: the root mean square instead (weights large
    misplaced changes more). Either is in the frames' units and averaged over pairs (``count`` counts pairs).
    A per-frame mask (B, T, 1, H, W) counts a pixel in pair (t, t+1) when it is in both frames' masks;
    pairs with an empty mask are skipped. Videos of one frame add nothing.
    """

    higher_is_better = False

    def __init__(self, kind: Literal["mae", "rms"] = "mae", **kwargs) -> None:
        super().__init__(**kwargs)
        if kind not in ("mae", "rms"):
            raise ValueError(f"kind must be 'mae' or 'rms', got {kind!r}")
        self.kind = kind

    def update(self, fake: Tensor, real: Tensor, mask: Tensor | None = None) -> None:
        """Score the T-1 consecutive pairs of videos (B, T, C, H, W); mask (B, 1, H, W) or (B, T, 1, H, W)."""
        _check_videos(fake, real)
        if mask is not None and mask.ndim == 5:
            mask = (mask[:, 1:] > 0.5) & (mask[:, :-1] > 0.5)
        self._accumulate(*_as_frames(fake.diff(dim=1), real.diff(dim=1), mask))

    def _score(self, fake: Tensor, real: Tensor, mask: Tensor | None) -> Tensor:
        if self.kind == "mae":
            return _masked_mean((fake - real).abs(), mask)
        return _masked_mean((fake - real) ** 2, mask).sqrt()


def _gaussian_window(size: int = _SSIM_KERNEL, sigma: float = 1.5) -> Tensor:
    """cv2.getGaussianKernel(size, sigma) outer itself, float64 (1, 1, size, size)."""
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)[None, None]


def paper_psnr(fake: Tensor, real: Tensor) -> Tensor:
    """The release's per-frame PSNR of frames (..., C, H, W) -> (...), for frames in [-1, 1] as the release feeds.

    Reproduces ``img_psnr`` of ``metrics/calculate_psnr.py``, which the release's ``train.py`` imports
    (``from metrics.calculate_psnr import calculate_psnr``) but does not ship: the file is from
    JunyaoHu/common_metrics_on_video_quality. Per frame, MSE = mean over channels and pixels of the squared
    difference; PSNR = 20 log10(1 / sqrt(MSE)), i.e. peak 1; MSE < 1e-10 gives 100. The code expects [0, 1]
    ("# [0,1]"), but the release passes its [-1, 1] tensors: differences double, MSE is 4x, so the score is
    10 log10(4) = 6.02 dB below the [0, 1] convention. Computed in float64 (the release: float32 numpy).
    """
    mse = ((fake.double() - real.double()) ** 2).mean((-3, -2, -1))
    return torch.where(mse < 1e-10, 100.0, 20 * torch.log10(1 / mse.sqrt()))


def paper_ssim(fake: Tensor, real: Tensor) -> Tensor:
    """The release's per-frame SSIM of frames (..., C, H, W) -> (...), for frames in [-1, 1] as the release feeds.

    Reproduces ``ssim`` / ``calculate_ssim_function`` of ``metrics/calculate_ssim.py`` (not shipped with the
    release; from JunyaoHu/common_metrics_on_video_quality): per channel, in float64, cv2.filter2D with an
    11 x 11 gaussian (sigma 1.5) window, keeping only the valid map ([5:-5, 5:-5], windows inside the frame),
    C1 = 0.01**2, C2 = 0.03**2 (data range 1, no clamping), mean of the map; the frame's score is the mean
    over channels (the release has 1 or 3; it returns None for other counts, this takes any).
    On [-1, 1] input the constants are 4x too small relative to the range: the contrast-structure term is
    that of [0, 1] SSIM with k2 = 0.015, and the luminance term compares means centred at mid-grey, so
    dark regions (-1) count like bright ones; it is not [0, 1] SSIM.
    """
    if fake.shape != real.shape or fake.ndim < 3 or min(fake.shape[-2:]) < _SSIM_KERNEL:
        raise ValueError(f"expected frames (..., C, H, W) of one shape with H, W >= {_SSIM_KERNEL}, "
                         f"got {tuple(fake.shape)} and {tuple(real.shape)}")
    lead, (h, w) = fake.shape[:-2], fake.shape[-2:]
    x, y = fake.reshape(-1, 1, h, w).double(), real.reshape(-1, 1, h, w).double()
    n = len(x)
    filtered = F.conv2d(torch.cat([x, y, x * x, y * y, x * y]), _gaussian_window().to(x.device))
    mu_x, mu_y, xx, yy, xy = filtered.split(n)
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * (xy - mu_x * mu_y) + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (xx - mu_x**2 + yy - mu_y**2 + c2))
    return ssim_map.mean((1, 2, 3)).reshape(lead).mean(-1)


class _PaperVideoMean(Metric):
    """Mean over videos of each video's nan-mean over frames of a release per-frame score.

    This is the release's averaging: ``train.py`` validates one video at a time and stores
    ``np.nanmean`` over the frames' values, then the epoch's figure is the mean of those per-video values
    (``groupby('ep').agg('mean')``), so every video weighs the same whatever its length.
    Input: videos (B, T, C, H, W) in [-1, 1]. States: ``total`` (sum of per-video means), ``count`` (videos).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    @staticmethod
    def _frame_score(fake: Tensor, real: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, fake: Tensor, real: Tensor) -> None:
        """Add videos (B, T, C, H, W) in [-1, 1]."""
        _check_videos(fake, real)
        self.total += self._frame_score(fake, real).nanmean(1).sum().to(self.total.dtype)
        self.count += len(fake)

    def compute(self) -> Tensor:
        """Mean over videos of the per-video mean score."""
        return (self.total / self.count).float()


class PaperPSNR(_PaperVideoMean):
    """The release's PSNR figure: ``paper_psnr`` per frame, averaged per video, then over videos."""

    _frame_score = staticmethod(paper_psnr)


class PaperSSIM(_PaperVideoMean):
    """The release's SSIM figure: ``paper_ssim`` per frame, averaged per video, then over videos."""

    _frame_score = staticmethod(paper_ssim)
