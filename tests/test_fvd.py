"""FVD: Frechet distance against scipy, the I3D in both file formats, both protocols end to end.

The I3D files are random-weight stand-ins written by the tests in the two real formats: the full
InceptionI3d run at 16 x 16 (instead of 224) to stay fast, and a tiny network behind StyleGAN-V's
TorchScript detector interface for the metric logic.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from fundus2video.errors import UserError
from fundus2video.metrics.frechet import frechet_distance, stats
from fundus2video.metrics.fvd import FrechetVideoDistance, PaperFVD, resample_clip
from fundus2video.metrics.i3d import InceptionI3d, load_i3d, preprocess_videos

SIZE = 16  # I3D input side in the tests (224 in use)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these small 3D convolutions gain nothing from two, and on a loaded
    machine the second thread's spin-waiting makes them several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class DetectorInterface(nn.Module):
    """StyleGAN-V's `i3d_torchscript.pt` calling convention around any network giving (N, 400) logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x / 255 * 2 - 1
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        logits = self.net(x)
        return logits if return_features else logits.softmax(1)


class TinyNet(nn.Module):
    """(N, 3, T, H, W) -> (N, 400): one 3D conv, ReLU, global mean, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 16, 3, stride=(1, 2, 2))
        self.head = nn.Linear(16, 400)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(x)).mean(dim=(2, 3, 4)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Random-weight I3D files: the full InceptionI3d as a state dict (without the batch-norm
    counters, like pre-0.4 pytorch-i3d files) and as a TorchScript detector with the same
    weights, plus a tiny TorchScript detector."""
    root = tmp_path_factory.mktemp("i3d")
    torch.manual_seed(0)
    net = InceptionI3d().eval()
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, root / "i3d_pretrained_400.pt")
    torch.jit.save(torch.jit.script(DetectorInterface(net)), root / "i3d_torchscript.pt")
    torch.jit.save(torch.jit.script(DetectorInterface(TinyNet()).eval()), root / "tiny_torchscript.pt")
    return root


def videos(n: int, t: int = 12, c: int = 1, size: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, t, c, size, size, generator=g)


# ------------------------------------------------------------------ Frechet distance


def scipy_frechet(x1: np.ndarray, x2: np.ndarray) -> float:
    """pytorch-fid / StyleGAN-V's formula: |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))."""
    mu1, mu2 = x1.mean(0), x2.mean(0)
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


@pytest.mark.parametrize("n, d", [(300, 16), (12, 40), (3, 64)])  # full rank, rank-deficient, FVD-like
def test_frechet_matches_scipy(n, d):
    rng = np.random.default_rng(n)
    x1 = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    x2 = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 0.5
    ours = frechet_distance(*stats(torch.from_numpy(x1)), *stats(torch.from_numpy(x2)))
    assert ours.dtype == torch.float64
    assert float(ours) == pytest.approx(scipy_frechet(x1, x2), rel=1e-6)


def test_stats_and_identical_sets():
    x = torch.randn(20, 8, dtype=torch.float64)
    mu, sigma = stats(x.float())
    assert mu.dtype == sigma.dtype == torch.float64
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.float().double().numpy(), rowvar=False), atol=1e-12)
    assert abs(float(frechet_distance(mu, sigma, mu, sigma))) < 1e-9
    one_mu, one_sigma = stats(x[:1])  # one sample: zero covariance, so only the mean term is left
    assert torch.equal(one_sigma, torch.zeros(8, 8, dtype=torch.float64))
    assert float(frechet_distance(one_mu, one_sigma, mu, torch.zeros_like(sigma))) == pytest.approx(
        float((x[0] - x.mean(0)).square().sum()))


# ------------------------------------------------------------------ clips and I3D


def test_resample_clip_rule():
    frames = torch.arange(12.0).view(1, 12, 1, 1, 1)
    got = resample_clip(frames, 16).flatten().long().tolist()
    # round half up of k * 11 / 15, by hand: repeats spread evenly, first and last kept
    assert got == [0, 1, 1, 2, 3, 4, 4, 5, 6, 7, 7, 8, 9, 10, 10, 11]
    assert resample_clip(torch.arange(16.0).view(1, 16, 1, 1, 1), 16).flatten().tolist() == list(range(16))
    assert resample_clip(torch.arange(31.0).view(1, 31, 1, 1, 1), 16).flatten().tolist() == list(range(0, 31, 2))


def test_preprocessing_is_the_releases():
    video = videos(1, t=9, c=1, size=20)
    wide = torch.cat([video, video[..., :10]], dim=-1)  # 20 x 30 frames
    got = preprocess_videos(wide, 16)
    # shorter side 20 -> 16, longer 30 -> 24, centre crop 16 x 16 (columns 4..19), [0, 1] -> [-1, 1]
    frames = F.interpolate(wide[0], size=(16, 24), mode="bilinear", align_corners=False)[..., 4:20] * 2 - 1
    assert got.shape == (1, 3, 9, 16, 16)
    torch.testing.assert_close(got[0], frames.permute(1, 0, 2, 3).expand(3, -1, -1, -1))


def test_inception_uses_pytorch_i3d_names():
    state = InceptionI3d().state_dict()
    assert len(state) == 344 and sum(v.numel() for k, v in state.items() if "running" not in k
                                     and "num_batches" not in k) == 12_697_264
    for key in ("Conv3d_1a_7x7.conv3d.weight", "Conv3d_2c_3x3.bn.running_var", "Mixed_3b.b0.conv3d.weight",
                "Mixed_4f.b1b.bn.bias", "Mixed_5c.b3b.conv3d.weight", "logits.conv3d.bias"):
        assert key in state
    assert state["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    assert state["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1)


def test_both_formats_give_the_same_features(files):
    from_state = load_i3d(files / "i3d_pretrained_400.pt", size=SIZE)
    from_script = load_i3d(files / "i3d_torchscript.pt", size=SIZE)
    assert (from_state.fmt, from_script.fmt) == ("state_dict", "torchscript")
    clip = videos(1, t=10, c=1, size=40)
    a, b = from_state(clip), from_script(clip)
    assert a.shape == (1, 400) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="at least 9 frames"):
        from_state(clip[:, :8])


def test_missing_file_names_it_and_both_formats(tmp_path):
    with pytest.raises(UserError) as err:
        load_i3d(tmp_path / "i3d_torchscript.pt")
    msg = str(err.value)
    assert str(tmp_path / "i3d_torchscript.pt") in msg
    assert "TorchScript" in msg and "InceptionI3d state dict" in msg and "i3d_pretrained_400.pt" in msg


def test_wrong_files_are_explained(tmp_path):
    state = InceptionI3d().state_dict()
    state["extra.weight"] = state.pop("Mixed_3b.b0.conv3d.weight")
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=r"missing \(1\): Mixed_3b.b0.conv3d.weight; unexpected \(1\): extra.weight"):
        load_i3d(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="neither TorchScript nor a PyTorch state dict"):
        load_i3d(tmp_path / "junk.pt")
    torch.jit.save(torch.jit.script(TinyNet()), tmp_path / "other.pt")
    with pytest.raises(UserError, match="not StyleGAN-V's detector"):
        load_i3d(tmp_path / "other.pt")


# ------------------------------------------------------------------ standard protocol


def test_standard_fvd_end_to_end_with_the_inception_state_dict(files):
    i3d = load_i3d(files / "i3d_pretrained_400.pt", size=SIZE)
    real = videos(3, seed=1)
    same, shifted = FrechetVideoDistance(i3d, clip_len=9), FrechetVideoDistance(i3d, clip_len=9)
    same.update(real, real.clone())
    shifted.update((real * 0.5 + 0.5).flip(1), real)
    d_same, d_shifted = float(same.compute()), float(shifted.compute())
    assert abs(d_same) < 1e-6 * d_shifted and d_shifted > 0
    assert same.settings()["n_videos"] == 3 and same.settings()["feature_dim"] == 400


def test_standard_fvd_with_the_torchscript_detector(files):
    i3d = load_i3d(files / "tiny_torchscript.pt", size=SIZE)
    real, fake = videos(4, seed=2), videos(4, seed=3)
    one_batch, two_batches = FrechetVideoDistance(i3d), FrechetVideoDistance(i3d)
    one_batch.update(fake, real)
    two_batches.update(fake[:1], real[:1])
    two_batches.update(fake[1:], real[1:])
    torch.testing.assert_close(one_batch.compute(), two_batches.compute())  # batching does not matter

    def fvd(fake_set: torch.Tensor) -> float:
        metric = FrechetVideoDistance(i3d)
        metric.update(fake_set, real)
        return float(metric.compute())

    assert abs(fvd(real.clone())) < 1e-6 * fvd(fake)
    assert fvd((real + 0.1).clamp(0, 1)) < fvd((real + 0.4).clamp(0, 1))
    settings = one_batch.settings()
    assert settings["protocol"] == "standard" and settings["clip_len"] == 16 and settings["n_videos"] == 4
    assert settings["i3d_format"] == "torchscript" and settings["feature_dim"] == 400

    few = FrechetVideoDistance(i3d)
    few.update(fake[:1], real[:1])
    with pytest.raises(UserError, match="at least 2 videos"):
        few.compute()


def test_the_i3d_is_not_metric_state(files):
    i3d = load_i3d(files / "tiny_torchscript.pt", size=SIZE)
    metric = FrechetVideoDistance(i3d)
    assert metric.state_dict() == {} and list(metric.parameters()) == []
    metric.double()
    assert all(p.dtype == torch.float32 for p in i3d.parameters())
    metric.train()
    assert not i3d.training


# ------------------------------------------------------------------ paper protocol


def release_fvd_one_video(detector: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    """The release's value for one video, recomputed independently: (T, C, H, W) in [0, 1] made
    [-1, 1] as the release's tensors, then common_metrics' styleganv path per clip length."""
    @torch.no_grad()
    def features(video: torch.Tensor) -> torch.Tensor:
        x = (video * 2 - 1).repeat(1, 3, 1, 1).permute(1, 0, 2, 3)  # CTHW, 3 channels
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)  # square frames
        x = (x - 0.5) * 2
        return detector(x[None], rescale=False, resize=False, return_features=True)[0].double()

    values = [float((features(fake[:n]) - features(real[:n])).square().sum()) for n in range(10, real.shape[0] + 1)]
    return float(np.nanmean(values))


def test_paper_fvd_reproduces_the_release(files):
    path = files / "tiny_torchscript.pt"
    detector = torch.jit.load(str(path))
    real, fake = videos(2, t=12, seed=4), videos(2, t=12, seed=5)
    metric = PaperFVD(load_i3d(path, size=SIZE))
    metric.update(fake[:1], real[:1])
    assert float(metric.compute()) == pytest.approx(release_fvd_one_video(detector, real[0], fake[0]), rel=1e-5)

    metric.update(fake[1:], real[1:])
    metric.update(videos(1, t=9, seed=6), videos(1, t=9, seed=7))  # T < 10: NaN in the release, skipped
    expected = np.mean([release_fvd_one_video(detector, r, f) for r, f in zip(real, fake)])
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-5)
    settings = metric.settings()
    assert settings["protocol"] == "paper" and settings["n_videos"] == 3 and settings["n_videos_scored"] == 2

    short = PaperFVD(load_i3d(path, size=SIZE))
    short.update(videos(1, t=9), videos(1, t=9, seed=1))
    assert np.isnan(float(short.compute()))
