"""The autoregressive window schedule, shared by training and inference.

The authors' release treats a case as the sequence [CF, f_0, ..., f_{T-1}] and runs T windows:
window n = 0 .. T-1 predicts the K frames f_n .. f_{n+K-1} (indices clamped at T-1) from the
CF and "previous frames": for n = 0 the CF itself, for n > 0 the previous window's output,
which predicted f_{n-1} .. f_{n+K-2} (during scheduled sampling, those real frames instead).
Every frame is generated, and each is the mean of every window that predicted it (clamped
duplicates are not counted), as the release does at validation time.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch


def num_windows(n_frames: int) -> int:
    """Windows (generator steps) per video of T frames: one per frame."""
    return n_frames


def frames_from(video: torch.Tensor, start: int, window: int) -> torch.Tensor:
    """video[:, start .. start+K-1] with indices clamped at T-1, as (B, K, H, W) from (B, T, H, W).
    Slices and an expand, never an index list: indexing a GPU tensor with a Python list copies the
    list to the device and waits for it, once per window."""
    n_frames = video.shape[1]
    inside = video[:, start:min(start + window, n_frames)]
    if inside.shape[1] == window:
        return inside
    last = video[:, n_frames - 1:n_frames]
    return torch.cat([inside, last.expand(-1, window - inside.shape[1], *last.shape[2:])], dim=1)


def cycle_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """x's channels cycled up to `channels`: output channel i = x[:, i % C]. How the CF stands in
    for the first window's previous frames, and how any image enters the generator's encoder for
    PatchNCE (the release's cat(x, x) for C = 3 and 6 channels)."""
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    repeats = -(-channels // x.shape[1])
    return (x.repeat(1, repeats, 1, 1) if repeats > 1 else x)[:, :channels]


def cf_as_frames(cf: torch.Tensor, window: int) -> torch.Tensor:
    """The first window's "previous frames": the CF's channels, cycled to K channels.

    (B, 3, H, W) -> (B, K, H, W); for K = 3 this is the CF itself, as in the release.
    """
    return cycle_channels(cf, window)


def real_share(video_step: int, ss_steps: int, ss_interval: int) -> float:
    """Probability that window n > 0 is conditioned on real frames (scheduled sampling).

    The release draws uniformly from [real, generated] + [generated] * (step // interval)
    while step < ss_steps, then always uses generated frames: P(real) = 1 / (2 + step // interval).
    """
    if video_step >= ss_steps:
        return 0.0
    return 1.0 / (2 + video_step // ss_interval)


def scheduled_previous(n: int, generated: torch.Tensor, video: torch.Tensor, p_real: float,
                       rng: random.Random) -> torch.Tensor:
    """Scheduled sampling: window n's previous frames during training. The first window has the
    CF's (`generated` is then `cf_as_frames`); a later one has the real frames n-1 .. n+K-2 with
    probability `p_real` (`real_share`), else the previous window's output. One draw of `rng` per
    window n > 0, so a run's draws depend on its own generator alone."""
    if n > 0 and rng.random() < p_real:
        return frames_from(video, n - 1, generated.shape[1])
    return generated


@torch.no_grad()
def rollout(generator: Callable[[torch.Tensor], torch.Tensor], cf: torch.Tensor, n_frames: int,
            window: int) -> torch.Tensor:
    """Generate a video of T frames from the CF alone, averaging overlapping windows.

    cf: (B, 3, H, W) in [-1, 1]. Returns (B, T, 1, H, W) in [-1, 1].
    """
    b, _, h, w = cf.shape
    total = cf.new_zeros(b, n_frames, h, w, dtype=torch.float32)
    count = cf.new_zeros(n_frames, dtype=torch.float32)
    prev = cf_as_frames(cf, window)
    for n in range(num_windows(n_frames)):
        out = generator(torch.cat([cf, prev], dim=1))  # (B, K, H, W): frames n .. n+K-1
        for k in range(min(window, n_frames - n)):  # clamped duplicates are not averaged
            total[:, n + k] += out[:, k].float()
            count[n + k] += 1
        prev = out
    return (total / count.view(1, -1, 1, 1)).unsqueeze(2)  # (B, T, 1, H, W)
