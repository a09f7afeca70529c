import pytest
import torch

from fundus2video.rollout import (
    cf_as_frames,
    num_windows,
    real_share,
    rollout,
)


# the release's schedule written as index lists, the specification `frames_from` and
# `scheduled_previous` are checked against
def target_indices(n: int, n_frames: int, window: int) -> list[int]:
    """Frames predicted by window n: n .. n+K-1, clamped at T-1."""
    return [min(n + k, n_frames - 1) for k in range(window)]


def previous_indices(n: int, n_frames: int, window: int) -> list[int]:
    """Real frames standing in for window n's previous frames (n > 0): n-1 .. n+K-2, clamped."""
    return target_indices(n - 1, n_frames, window)


def test_window_indices_follow_the_release():
    # The release's sequence is [CF, f0..f3] (T = 4): window n predicts f_n..f_{n+2} clamped at
    # f_3, and its real "previous" frames are what window n-1 predicted
    assert num_windows(4) == 4
    assert [target_indices(n, 4, 3) for n in range(4)] == [[0, 1, 2], [1, 2, 3], [2, 3, 3], [3, 3, 3]]
    assert [previous_indices(n, 4, 3) for n in range(1, 4)] == [[0, 1, 2], [1, 2, 3], [2, 3, 3]]


def test_cf_as_frames():
    cf = torch.arange(3.0).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.equal(cf_as_frames(cf, 3), cf)
    assert cf_as_frames(cf, 4)[0, :, 0, 0].tolist() == [0, 1, 2, 0]


def test_scheduled_sampling_share():
    assert real_share(0, 1000, 100) == pytest.approx(1 / 2)
    assert real_share(250, 1000, 100) == pytest.approx(1 / 4)
    assert real_share(999, 1000, 100) == pytest.approx(1 / 11)
    assert real_share(1000, 1000, 100) == 0.0


def test_rollout_averages_overlapping_windows_and_feeds_outputs_back():
    calls = []

    def generator(x):  # window n outputs the constant n in every channel
        n = len(calls)
        calls.append(x[:, 3:].clone())
        return torch.full((x.shape[0], 3, *x.shape[2:]), float(n))

    cf = torch.randn(1, 3, 4, 4)
    out = rollout(generator, cf, n_frames=4, window=3)
    assert out.shape == (1, 4, 1, 4, 4)
    # frame f is predicted by windows max(0, f-2) .. f (clamped duplicates ignored)
    expected = [0.0, (0 + 1) / 2, (0 + 1 + 2) / 3, (1 + 2 + 3) / 3]
    assert out[0, :, 0, 0, 0].tolist() == pytest.approx(expected)
    assert torch.equal(calls[0], cf)  # first window conditioned on the CF
    assert all(torch.all(calls[n] == n - 1) for n in range(1, 4))  # then on its own output


def test_frames_from_slices_what_the_index_schedule_names():
    from fundus2video.rollout import cycle_channels, frames_from

    video = torch.arange(2 * 5 * 2 * 2, dtype=torch.float32).view(2, 5, 2, 2)
    for n in range(5):
        assert torch.equal(frames_from(video, n, 3), video[:, target_indices(n, 5, 3)])
        if n > 0:
            assert torch.equal(frames_from(video, n - 1, 3), video[:, previous_indices(n, 5, 3)])
    cf = torch.rand(1, 3, 2, 2)
    assert torch.equal(cycle_channels(cf, 7), cf[:, [i % 3 for i in range(7)]])
