"""The VGG19 perceptual loss (losses/perceptual.py), checked against an independent computation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fundus2video.errors import UserError
from fundus2video.losses.perceptual import VGG19Features, VGGLoss, load_vgg19, vgg_perceptual_loss

# torchvision's vgg19 "features", written out independently of the module under test:
# (index, in, out) of every conv; a 2x2 max-pool sits at indices 4, 9, 18, 27, 36
CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
         (14, 256, 256), (16, 256, 256), (19, 256, 512), (21, 512, 512), (23, 512, 512),
         (25, 512, 512), (28, 512, 512), (30, 512, 512), (32, 512, 512), (34, 512, 512)]
POOLS_BEFORE = {5, 10, 19, 28}  # convs that follow a max-pool (among those up to relu5_1)
TAPS = [0, 5, 10, 19, 28]  # relu1_1 ... relu5_1 follow these convs


def torchvision_format_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, c_in, c_out in CONVS:
        # He-scaled so activations neither vanish nor explode over 13 layers
        state[f"features.{i}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=g) * (2 / (9 * c_in)) ** 0.5
        state[f"features.{i}.bias"] = torch.randn(c_out, generator=g) * 0.01
    # the classifier with its real shapes; expanded zeros keep the file small (one element each)
    for i, shape in [(0, (4096, 512 * 7 * 7)), (3, (4096, 4096)), (6, (1000, 4096))]:
        state[f"classifier.{i}.weight"] = torch.zeros(1).expand(*shape)
        state[f"classifier.{i}.bias"] = torch.zeros(1).expand(shape[0])
    return state


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    state = torchvision_format_state_dict()
    path = tmp_path_factory.mktemp("vgg") / "vgg19-random.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def vgg(vgg_file):
    return load_vgg19(vgg_file[0])


def manual_features(state: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    taps = []
    for i, _, _ in CONVS:
        if i > TAPS[-1]:
            break
        if i in POOLS_BEFORE:
            x = F.max_pool2d(x, 2, 2)
        w, b = state[f"features.{i}.weight"], state[f"features.{i}.bias"]
        x = F.relu(F.conv2d(x, w.to(x.dtype), b.to(x.dtype), padding=1))
        if i in TAPS:
            taps.append(x)
    return taps


def test_vgg_layout_and_output_shapes(vgg, vgg_file):
    expected = {k: v.shape for k, v in vgg_file[1].items() if k.startswith("features.")}
    assert {k: v.shape for k, v in VGG19Features().state_dict().items()} == expected
    assert len(vgg.features) == 37
    assert all(isinstance(vgg.features[i], nn.MaxPool2d) for i in (4, 9, 18, 27, 36))
    assert all(not p.requires_grad for p in vgg.parameters())
    assert not vgg.training
    feats = vgg(torch.rand(2, 3, 32, 48))
    assert [tuple(f.shape) for f in feats] == [(2, 64, 32, 48), (2, 128, 16, 24), (2, 256, 8, 12),
                                               (2, 512, 4, 6), (2, 512, 2, 3)]
    with pytest.raises(ValueError, match="3"):
        vgg(torch.rand(1, 1, 32, 32))


def test_vgg_loss_matches_manual_computation(vgg, vgg_file):
    state = vgg_file[1]
    g = torch.Generator().manual_seed(3)
    fake = torch.rand(1, 3, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
    real = torch.rand(1, 3, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
    weights = [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0]
    expected = sum(w * (f - r).abs().mean() for w, f, r in
                   zip(weights, manual_features(state, fake), manual_features(state, real)))
    assert expected.item() > 0
    vgg64 = copy.deepcopy(vgg).to(torch.float64)
    assert vgg_perceptual_loss(vgg64, fake, real).item() == pytest.approx(expected.item(), rel=1e-9)
    assert VGGLoss(vgg64)(fake, real).item() == pytest.approx(expected.item(), rel=1e-9)
    assert vgg_perceptual_loss(vgg64, fake, fake.clone()).item() == 0.0


def test_vgg_loss_gradient_reaches_fake_only(vgg):
    g = torch.Generator().manual_seed(4)
    fake = torch.rand(1, 3, 32, 32, generator=g, requires_grad=True)
    real = torch.rand(1, 3, 32, 32, generator=g, requires_grad=True)
    VGGLoss(vgg)(fake, real).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert real.grad is None  # real features are detached, as in pix2pixHD
    assert all(p.grad is None for p in vgg.parameters())


def test_vgg_loss_keeps_vgg_out_of_state_dict_but_moves_it(vgg):
    loss = VGGLoss(copy.deepcopy(vgg))
    assert loss.state_dict() == {}
    owner = nn.Module()
    owner.net = nn.Linear(2, 2)
    owner.vgg_loss = loss
    assert set(owner.state_dict()) == {"net.weight", "net.bias"}
    assert len(list(owner.parameters())) == 2
    owner.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in loss.vgg.parameters())
    owner.to("meta")  # a device other than the CPU, available everywhere
    assert all(p.device.type == "meta" for p in loss.vgg.parameters())


def test_load_vgg19_accepts_nested_state_dict(vgg_file, tmp_path):
    path, state = vgg_file
    nested = tmp_path / "nested.pth"
    torch.save({"state_dict": state, "epoch": 3}, nested)
    w = load_vgg19(nested).features[30].weight
    assert torch.equal(w, state["features.30.weight"])


def test_load_vgg19_missing_file_names_path_and_expected_file(tmp_path):
    path = tmp_path / "nowhere" / "vgg.pth"
    with pytest.raises(UserError) as info:
        load_vgg19(path)
    message = str(info.value)
    assert str(path) in message and "vgg19-dcbb9e9d.pth" in message and "loss.vgg_weights" in message


def test_load_vgg19_wrong_shape_or_missing_key_names_the_key(vgg_file, tmp_path):
    state = dict(vgg_file[1])
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    del state["features.30.bias"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(UserError) as info:
        load_vgg19(path)
    message = str(info.value)
    assert "features.0.weight" in message and "(64, 3, 3, 3)" in message
    assert "features.30.bias" in message and "(512,)" in message
    assert "classifier" not in message
