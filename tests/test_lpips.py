"""LPIPS with a torchvision-format backbone file, against a direct re-computation from the formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fundus2video.metrics.lpips import HEADS_DIR, LPIPSBackbone, VideoLPIPS

# torchvision's layers up to LPIPS' last tap: cN = conv features.N (+ ReLU), * = tapped, pK = max-pool K, stride 2
OPS = {
    "vgg": "c0 c2* p2 c5 c7* p2 c10 c12 c14* p2 c17 c19 c21* p2 c24 c26 c28*".split(),
    "alex": "c0* p3 c3* p3 c6* c8* c10*".split(),
}
STRIDE_PAD = {"vgg": {}, "alex": {0: (4, 2), 3: (1, 2)}}  # default (1, 1)


@pytest.fixture(scope="module")
def backbone_files(tmp_path_factory):
    """Random-weight torchvision-format state dicts (with a classifier key, as the real files have)."""
    files = {}
    for net in ("vgg", "alex"):
        torch.manual_seed(0)
        state = LPIPSBackbone(net).state_dict()
        state["classifier.6.weight"] = torch.zeros(10, 4)
        files[net] = tmp_path_factory.mktemp(net) / f"{net}.pth"
        torch.save(state, files[net])
    return files


def reference_lpips(x0, x1, net, state, heads):
    """LPIPS written from the paper's formula with F.conv2d on the loaded weights; x (N, 3, H, W) in [0, 1]."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def features(x):
        x, out = ((2 * x - 1) - shift) / scale, []
        for op in OPS[net]:
            if op[0] == "p":
                x = F.max_pool2d(x, int(op[1]), 2)
                continue
            i = int(op[1:].rstrip("*"))
            stride, pad = STRIDE_PAD[net].get(i, (1, 1))
            x = F.relu(F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], stride, pad))
            if op.endswith("*"):
                out.append(x / (x.norm(dim=1, keepdim=True) + 1e-10))
        return out

    return sum(F.conv2d((a - b) ** 2, heads[f"lin{k}.model.1.weight"]).mean((1, 2, 3))
               for k, (a, b) in enumerate(zip(features(x0), features(x1))))


@pytest.mark.parametrize("net, size", [("vgg", 16), ("alex", 64)])
def test_lpips_matches_the_formula(backbone_files, net, size):
    g = torch.Generator().manual_seed(1)
    fake, real = torch.rand(1, 2, 1, size, size, generator=g), torch.rand(1, 2, 1, size, size, generator=g)
    metric = VideoLPIPS(backbone_files[net], net=net, chunk=1)
    metric.update(fake, real)
    state, heads = torch.load(backbone_files[net]), torch.load(HEADS_DIR / f"{net}.pth", map_location="cpu")
    want = reference_lpips(fake.flatten(0, 1).repeat(1, 3, 1, 1), real.flatten(0, 1).repeat(1, 3, 1, 1),
                           net, state, heads)
    assert want.min() > 0
    assert metric.compute().item() == pytest.approx(want.mean().item(), rel=1e-5)
    assert metric.count.item() == 2


def test_identical_frames_give_zero_and_grey_equals_repeated_rgb(backbone_files):
    video = torch.rand(1, 2, 1, 16, 16)
    other = torch.rand(1, 2, 1, 16, 16)
    metric = VideoLPIPS(backbone_files["vgg"])
    metric.update(video, video)
    assert metric.compute().item() == 0.0
    metric.reset()
    metric.update(video, other)
    grey = metric.compute().item()
    metric.reset()
    metric.update(video.repeat(1, 1, 3, 1, 1), other.repeat(1, 1, 3, 1, 1))
    assert grey > 0 and metric.compute().item() == pytest.approx(grey, rel=1e-6)


def test_backbone_weights_stay_out_of_checkpoints_and_optimisers(backbone_files):
    metric = VideoLPIPS(backbone_files["alex"], net="alex")
    assert list(metric.parameters()) == [] and metric.state_dict() == {}
    assert metric.lpips.backbone.features[0].weight.shape == (64, 3, 11, 11)


def test_missing_or_wrong_backbone_file_is_named(backbone_files, tmp_path):
    missing = tmp_path / "vgg16-397923af.pth"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*torchvision vgg16 state dict"):
        VideoLPIPS(missing)
    with pytest.raises(ValueError, match=rf"{backbone_files['alex']}: features.0.weight has shape \(64, 3, 11, 11\)"):
        VideoLPIPS(backbone_files["alex"], net="vgg")
    junk = tmp_path / "junk.pth"
    torch.save({"conv.weight": torch.zeros(1)}, junk)
    with pytest.raises(ValueError, match=f"{junk} has no key features.0.weight"):
        VideoLPIPS(junk, net="alex")
    with pytest.raises(ValueError, match="net must be one of"):
        VideoLPIPS(junk, net="squeeze")


def test_frames_outside_unit_range_are_refused(backbone_files):
    video = torch.rand(1, 2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"expects frames in \[0, 1\]"):
        VideoLPIPS(backbone_files["vgg"]).update(video * 2 - 1, video)


def test_evaluation_loads_lpips_once_and_scores_each_case_alone(backbone_files, monkeypatch):
    """The per-case LPIPS is that case's alone although one network serves every case (its backbone
    file is read once, not once per case)."""
    from fundus2video import scoring as ev
    from fundus2video.metrics import lpips as lp

    loads = []
    real_init = lp.VideoLPIPS.__init__

    def counting(self, *args, **kwargs):
        loads.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(lp.VideoLPIPS, "__init__", counting)
    scores = ev.Scores("standard", 32, lpips=str(backbone_files["alex"]), lpips_net="alex")
    g = torch.Generator().manual_seed(2)
    sample = {"roi": torch.ones(1, 32, 32), "km": torch.ones(1, 32, 32), "lesion": torch.zeros(1, 32, 32),
              "phases": [""] * 2, "case_id": "c", "patient_id": "p"}
    values = []
    for _ in range(3):
        fake, real = torch.rand(1, 2, 1, 32, 32, generator=g), torch.rand(1, 2, 1, 32, 32, generator=g)
        values.append(scores.case(fake, real, sample)["lpips"])
        alone = VideoLPIPS(backbone_files["alex"], net="alex")
        alone.update(fake, real)
        assert values[-1] == pytest.approx(alone.compute().item(), rel=1e-6)
    assert len(loads) == 1 + 3  # the evaluation's one network, and the three checks' own
