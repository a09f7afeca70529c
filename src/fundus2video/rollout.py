"""The autoregressive window schedule, shared by training and inference.

The authors' release treats a case as the sequence [CF, f_0, ..., f_{T-1}] and runs T windows:
window n = 0 .. T-1 predicts the K frames f_n .. f_{n+K-1} (indices clamped at T-1) from the
CF and "previous frames": for n = 0 the CF itself, for n > 0 the previous window's output,
which predicted f_{n-1} .. f_{n+K-2} (during scheduled sampling, those real frames instead).
Every frame is generated, and each is the mean of every window that predicted it (clamped
duplicates are not counted), as the release does at validation time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def num_windows(n_frames: int) -> int:
    """Windows (generator steps) per video of T frames: one per frame."""
    return n_frames


def target_indices(n: int, n_frames: int, window: int) -> list[int]:
    """Frames predicted by window n: n .. n+K-1, clamped at T-1."""
    return [min(n + k, n_frames - 1) for k in range(window)]


def previous_indices(n: int, n_frames: int, window: int) -> list[int]:
    """Real frames standing in for window n's previous frames (n > 0): n-1 .. n+K-2, clamped."""
    return target_indices(n - 1, n_frames, window)


def cf_as_frames(cf: torch.Tensor, window: int) -> torch.Tensor:
    """The first window's "previous frames": the CF's channels, cycled to K channels.

    (B, 3, H, W) -> (B, K, H, W); for K = 3 this is the CF itself, as in the release.
    """
    return cf[:, [k % cf.shape[1] for k in range(window)]]


def real_share(video_step: int, ss_steps: int, ss_interval: int) -> float:
    """Probability that window n > 0 is conditioned on real frames (scheduled sampling).

    The release draws uniformly from [real, generated] + [generated] * (step // interval)
    while step < ss_steps, then always uses generated frames: P(real) = 1 / (2 + step // interval).
    """
    if video_step >= ss_steps:
        return 0.0
    return 1.0 / (2 + video_step // ss_interval)


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
