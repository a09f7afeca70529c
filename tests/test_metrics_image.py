"""Frame metrics against independent numpy / scipy / cv2 computations, and the release's formulas."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import correlate
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    structural_similarity_index_measure,
)

from fundus2video.metrics.image import (
    MSSSIM_BETAS,
    PaperPSNR,
    PaperSSIM,
    TemporalError,
    VideoMSSSIM,
    VideoPSNR,
    VideoSSIM,
    msssim_min_side,
    paper_psnr,
    paper_ssim,
)


def videos(b=2, t=3, c=1, h=24, w=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(b, t, c, h, w, generator=g)
    fake = (real + 0.2 * torch.randn(b, t, c, h, w, generator=g)).clamp(0, 1)
    return fake, real


def frame_mask(b=2, t=3, h=24, w=20, seed=1):
    return torch.rand(b, t, 1, h, w, generator=torch.Generator().manual_seed(seed)) > 0.4


def np_frames(fake, real, mask):
    """numpy float64 frames (N, C, H, W) and a bool mask (N, C, H, W) broadcast over channels."""
    b, t, c, h, w = fake.shape
    f, r = fake.double().numpy().reshape(b * t, c, h, w), real.double().numpy().reshape(b * t, c, h, w)
    if mask is None:
        m = np.ones_like(f, dtype=bool)
    else:
        m = np.broadcast_to(mask.numpy().reshape(b, -1, 1, h, w), (b, t, c, h, w)).reshape(b * t, c, h, w)
    return f, r, m


def ssim_map_np(x, y, data_range=1.0):
    """SSIM map of 2-D arrays, same size: gaussian 11 / 1.5 on mirror-extended images (torch 'reflect')."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    filt = lambda z: correlate(z, win, mode="mirror")  # noqa: E731
    mx, my = filt(x), filt(y)
    vx, vy = np.maximum(filt(x * x) - mx**2, 0), np.maximum(filt(y * y) - my**2, 0)
    cxy = filt(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_psnr_whole_frame_matches_numpy(data_range):
    fake, real = videos(c=3)
    f, r, _ = np_frames(fake, real, None)
    want = np.mean([10 * np.log10(data_range**2 / np.mean((a - b) ** 2)) for a, b in zip(f, r)])
    metric = VideoPSNR(data_range=data_range)
    metric.update(fake, real)
    assert metric.compute().item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("per_frame", [False, True])
def test_masked_psnr_is_mse_over_mask_pixels(per_frame):
    fake, real = videos(c=3)
    mask = frame_mask() if per_frame else frame_mask(t=1)[:, 0]
    f, r, m = np_frames(fake, real, mask)
    want = np.mean([10 * np.log10(1 / np.mean((a[k] - b[k]) ** 2)) for a, b, k in zip(f, r, m)])
    metric = VideoPSNR()
    metric.update(fake, real, mask)
    assert metric.compute().item() == pytest.approx(want, rel=1e-5)
    assert metric.skipped.item() == 0 and metric.count.item() == 6


def test_ssim_whole_frame_equals_torchmetrics():
    fake, real = videos(c=3)
    metric = VideoSSIM()
    metric.update(fake, real)
    want = structural_similarity_index_measure(fake.flatten(0, 1), real.flatten(0, 1), data_range=1.0)
    assert metric.compute().item() == pytest.approx(want.item(), abs=1e-6)


def test_masked_ssim_is_mean_of_map_over_mask():
    fake, real = videos(c=1)
    mask = frame_mask()
    f, r, m = np_frames(fake, real, mask)
    want = np.mean([ssim_map_np(a[0], b[0])[k[0]].mean() for a, b, k in zip(f, r, m)])
    metric = VideoSSIM()
    metric.update(fake, real, mask)
    assert metric.compute().item() == pytest.approx(want, abs=1e-5)
    whole = VideoSSIM()
    whole.update(fake, real, torch.ones(2, 1, 24, 20))
    assert whole.compute().item() == pytest.approx(np.mean([ssim_map_np(a[0], b[0]).mean() for a, b in zip(f, r)]),
                                                   abs=1e-5)


def test_msssim_default_and_fewer_scales_match_torchmetrics():
    fake, real = videos(b=1, t=1, h=176, w=176)
    metric = VideoMSSSIM()
    metric.update(fake, real)
    want = multiscale_structural_similarity_index_measure(fake[0], real[0], data_range=1.0)
    assert metric.compute().item() == pytest.approx(want.item(), abs=1e-5)

    fake, real = videos(b=1, t=2, h=64, w=64)
    metric = VideoMSSSIM(scales=3)
    metric.update(fake, real)
    betas = tuple(b / sum(MSSSIM_BETAS[:3]) * sum(MSSSIM_BETAS) for b in MSSSIM_BETAS[:3])
    want = multiscale_structural_similarity_index_measure(fake[0], real[0], data_range=1.0, betas=betas)
    assert metric.compute().item() == pytest.approx(want.item(), abs=1e-5)
    assert VideoMSSSIM(scales=3).betas == pytest.approx(betas)


def test_msssim_size_error_names_the_size_and_refuses_masks():
    fake, real = videos(b=1, t=1, h=128, w=128)
    with pytest.raises(ValueError, match=r"5 scales needs frames of at least 176 px.*scales=4 \(needs 99 px\)"):
        VideoMSSSIM().update(fake, real)
    with pytest.raises(ValueError, match="takes no mask"):
        VideoMSSSIM(scales=3).update(fake, real, torch.ones(1, 1, 128, 128))
    for scales in range(1, 6):  # the size it names is one torchmetrics accepts and computes
        side = msssim_min_side(scales)
        x = torch.rand(1, 1, side, side)
        multiscale_structural_similarity_index_measure(x, x, data_range=1.0, betas=MSSSIM_BETAS[:scales])


@pytest.mark.parametrize("kind", ["mae", "rms"])
@pytest.mark.parametrize("per_frame", [False, True])
def test_temporal_error_matches_numpy(kind, per_frame):
    fake, real = videos(c=3, t=4)
    mask = frame_mask(t=4) if per_frame else frame_mask(t=1)[:, 0]
    f, r = fake.double().numpy(), real.double().numpy()
    m = mask.numpy() if per_frame else np.repeat(mask.numpy()[:, None], 4, axis=1)
    errors = []
    for v in range(2):
        for t in range(3):
            both = np.broadcast_to(m[v, t] & m[v, t + 1], f[v, t].shape)
            d = ((f[v, t + 1] - f[v, t]) - (r[v, t + 1] - r[v, t]))[both]
            errors.append(np.abs(d).mean() if kind == "mae" else np.sqrt((d**2).mean()))
    metric = TemporalError(kind=kind)
    metric.update(fake, real, mask)
    assert metric.compute().item() == pytest.approx(np.mean(errors), rel=1e-5)
    assert metric.count.item() == 6
    assert metric.higher_is_better is False


def test_temporal_error_is_zero_for_a_constant_offset():
    _, real = videos(t=5)
    metric = TemporalError()
    metric.update((real + 0.25).clamp(max=2), real)
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("make", [VideoPSNR, VideoSSIM, TemporalError])
def test_several_updates_equal_one_update_on_the_concatenation(make):
    fake, real = videos(b=4, t=3)
    mask = frame_mask(b=4)
    parts, whole = make(), make()
    for i in range(0, 4, 2):
        parts.update(fake[i:i + 2], real[i:i + 2], mask[i:i + 2])
    whole.update(fake, real, mask)
    assert parts.compute().item() == pytest.approx(whole.compute().item(), rel=1e-6)
    assert parts.count.item() == whole.count.item()


def test_frames_with_an_empty_mask_are_skipped_and_counted():
    fake, real = videos(b=2, t=3)
    mask = frame_mask()
    mask[0, 1] = False
    mask[1, 2] = False
    metric, kept = VideoPSNR(), VideoPSNR()
    metric.update(fake, real, mask)
    for v, t in [(0, 0), (0, 2), (1, 0), (1, 1)]:
        kept.update(fake[v:v + 1, t:t + 1], real[v:v + 1, t:t + 1], mask[v:v + 1, t:t + 1])
    assert metric.skipped.item() == 2 and metric.count.item() == 4
    assert metric.compute().item() == pytest.approx(kept.compute().item(), rel=1e-6)
    nothing = VideoSSIM()
    nothing.update(fake, real, torch.zeros(2, 1, 24, 20))
    assert nothing.skipped.item() == 6 and math.isnan(nothing.compute().item())


def test_bad_shapes_are_clear_errors():
    fake, real = videos()
    with pytest.raises(ValueError, match=r"one shape \(B, T, C, H, W\)"):
        VideoPSNR().update(fake[0], real[0])
    with pytest.raises(ValueError, match=r"mask of shape \(B, 1, H, W\) = \(2, 1, 24, 20\)"):
        VideoPSNR().update(fake, real, torch.ones(2, 24, 20))


# --- the release's formulas, written here the release's way (numpy / cv2, one frame at a time) ---

def release_img_psnr(img1, img2):
    mse = np.mean((img1 / 1.0 - img2 / 1.0) ** 2)
    if mse < 1e-10:
        return 100
    return 20 * math.log10(1 / math.sqrt(mse))


def release_ssim(img1, img2):
    img1, img2 = img1.astype(np.float64), img2.astype(np.float64)
    kernel = cv2.getGaussianKernel(11, 1.5)
    window = np.outer(kernel, kernel.transpose())
    mu1, mu2 = cv2.filter2D(img1, -1, window)[5:-5, 5:-5], cv2.filter2D(img2, -1, window)[5:-5, 5:-5]
    s1 = cv2.filter2D(img1**2, -1, window)[5:-5, 5:-5] - mu1**2
    s2 = cv2.filter2D(img2**2, -1, window)[5:-5, 5:-5] - mu2**2
    s12 = cv2.filter2D(img1 * img2, -1, window)[5:-5, 5:-5] - mu1 * mu2
    c1, c2 = 0.01**2, 0.03**2
    return (((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))).mean()


def release_ssim_frame(img1, img2):
    if img1.shape[0] == 3:
        return np.array([release_ssim(img1[i], img2[i]) for i in range(3)]).mean()
    return release_ssim(np.squeeze(img1), np.squeeze(img2))


def release_video_score(frame_fn, videos1, videos2):
    """What train.py stores per validation video: nanmean over frames of the per-frame value."""
    return np.nanmean([frame_fn(videos1[0, t].numpy(), videos2[0, t].numpy()) for t in range(videos1.shape[1])])


@pytest.mark.parametrize("c", [1, 3])
def test_paper_formulas_match_the_release(c):
    fake, real = videos(b=1, t=3, c=c, h=32, w=28)
    fake, real = fake * 2 - 1, real * 2 - 1
    for t in range(3):
        img1, img2 = real[0, t].numpy(), fake[0, t].numpy()
        assert paper_psnr(fake[0, t], real[0, t]).item() == pytest.approx(release_img_psnr(img1, img2), abs=1e-4)
        assert paper_ssim(fake[0, t], real[0, t]).item() == pytest.approx(release_ssim_frame(img1, img2), abs=1e-9)
    assert paper_psnr(real, real).tolist() == [[100.0] * 3]


def test_paper_psnr_is_6_02_db_below_the_unit_range_convention():
    fake, real = videos()
    unit = 10 * torch.log10(1 / ((fake.double() - real.double()) ** 2).mean((2, 3, 4)))
    assert torch.allclose(paper_psnr(fake * 2 - 1, real * 2 - 1), unit - 10 * math.log10(4), atol=1e-4)


@pytest.mark.parametrize("metric_cls, frame_fn", [(PaperPSNR, release_img_psnr), (PaperSSIM, release_ssim_frame)])
def test_paper_metrics_average_per_video_then_over_videos(metric_cls, frame_fn):
    short, short_real = (v * 2 - 1 for v in videos(b=1, t=2, h=16, w=16, seed=3))
    long, long_real = (v * 2 - 1 for v in videos(b=1, t=5, h=16, w=16, seed=4))
    metric = metric_cls()
    metric.update(short, short_real)
    metric.update(long, long_real)
    want = np.mean([release_video_score(frame_fn, short, short_real), release_video_score(frame_fn, long, long_real)])
    assert metric.compute().item() == pytest.approx(want, abs=1e-4)
    batched = metric_cls()
    batched.update(torch.cat([long, long]), torch.cat([long_real, long_real]))
    assert batched.compute().item() == pytest.approx(release_video_score(frame_fn, long, long_real), abs=1e-4)
