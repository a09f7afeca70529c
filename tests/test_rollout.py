import pytest
import torch

from fundus2video.rollout import cf_as_frames, previous_indices, real_share, rollout, target_indices


def test_window_indices_follow_the_release():
    # T = 5, K = 3: window n predicts n+1..n+3 clamped at 4; real "previous" frames n..n+2
    assert [target_indices(n, 5, 3) for n in range(4)] == [[1, 2, 3], [2, 3, 4], [3, 4, 4], [4, 4, 4]]
    assert previous_indices(2, 5, 3) == [2, 3, 4]
    assert previous_indices(3, 5, 3) == [3, 4, 4]


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
    out = rollout(generator, cf, n_frames=5, window=3)
    assert out.shape == (1, 4, 1, 4, 4)
    # frame f (1..4) is predicted by windows max(0, f-3) .. f-1 (clamped duplicates ignored)
    expected = [0.0, (0 + 1) / 2, (0 + 1 + 2) / 3, (1 + 2 + 3) / 3]
    assert out[0, :, 0, 0, 0].tolist() == pytest.approx(expected)
    assert torch.equal(calls[0], cf)  # first window conditioned on the CF
    assert all(torch.all(calls[n] == n - 1) for n in range(1, 4))  # then on its own output
