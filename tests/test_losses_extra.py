"""Gradient-variance and VGG perceptual losses, each checked against an independent computation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from fundus2video.errors import UserError
from fundus2video.losses.gradient_variance import GradientVarianceLoss, gradient_variance_loss
from fundus2video.losses.perceptual import VGG19Features, VGGLoss, load_vgg19, vgg_perceptual_loss

# ------------------------------------------------------------------ gradient variance


def reference_gradient_variance(fake: np.ndarray, real: np.ndarray, p: int) -> float:
    """The release's formula in numpy/scipy: luma mix, zero-padded Sobel correlation, top-left
    p x p tiles (remainder dropped), unbiased variance, mean squared difference, x + y."""
    sobel = {"x": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float),
             "y": np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)}

    def patch_vars(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        gray = 0.2989 * img[0] + 0.5870 * img[1] + 0.1140 * img[2]
        g = ndimage.correlate(gray, kernel, mode="constant", cval=0.0)
        nh, nw = g.shape[0] // p, g.shape[1] // p
        tiles = g[:nh * p, :nw * p].reshape(nh, p, nw, p).transpose(0, 2, 1, 3).reshape(nh * nw, p * p)
        return tiles.var(axis=1, ddof=1)

    total = 0.0
    for kernel in sobel.values():
        diffs = [patch_vars(f, kernel) - patch_vars(r, kernel) for f, r in zip(fake, real)]
        total += float(np.mean(np.concatenate(diffs) ** 2))
    return total


@pytest.mark.parametrize("h, w, p", [(30, 40, 12), (24, 24, 12), (17, 23, 5)])
def test_gradient_variance_matches_numpy_reference(h, w, p):
    g = torch.Generator().manual_seed(h * w + p)
    fake = torch.rand(2, 3, h, w, generator=g, dtype=torch.float64) * 2 - 1
    real = torch.rand(2, 3, h, w, generator=g, dtype=torch.float64) * 2 - 1
    expected = reference_gradient_variance(fake.numpy(), real.numpy(), p)
    assert gradient_variance_loss(fake, real, p).item() == pytest.approx(expected, rel=1e-10)
    module = GradientVarianceLoss(p).to(torch.float64)
    assert module(fake, real).item() == pytest.approx(expected, rel=1e-10)


def test_gradient_variance_zero_for_identical_and_symmetric():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 3, 36, 36, generator=g)
    assert gradient_variance_loss(a, a.clone()).item() == 0.0
    ab, ba = gradient_variance_loss(a, b), gradient_variance_loss(b, a)
    assert ab.item() > 0
    assert ab.item() == pytest.approx(ba.item(), rel=1e-6)
    # flat image vs textured image: a clearly positive loss
    assert gradient_variance_loss(torch.zeros_like(a), a).item() > 0.1


def test_gradient_variance_ignores_rows_and_columns_outside_the_patches():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(1, 3, 26, 27, generator=g)
    b = a.clone()
    b[..., 25:, :] = 5.0  # rows 24, 25 are the remainder (26 = 2 * 12 + 2); Sobel reaches row 24 from 25
    b[..., :, 25:] = -5.0
    assert gradient_variance_loss(a, b).item() == 0.0
    b[..., 23, 0] += 1.0  # inside the last full patch
    assert gradient_variance_loss(a, b).item() > 0


def test_gradient_variance_gradient_flows_to_fake():
    g = torch.Generator().manual_seed(2)
    fake = torch.rand(1, 3, 24, 24, generator=g, requires_grad=True)
    real = torch.rand(1, 3, 24, 24, generator=g)
    GradientVarianceLoss()(fake, real).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_gradient_variance_module_state_and_bad_input():
    module = GradientVarianceLoss(4)
    assert module.state_dict() == {}  # kernels are non-persistent buffers
    assert module.to(torch.float64).kernels.dtype == torch.float64
    with pytest.raises(ValueError, match="3"):
        module(torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8, 8))
    with pytest.raises(ValueError, match="smaller"):
        module(torch.rand(1, 3, 3, 8), torch.rand(1, 3, 3, 8))


# ------------------------------------------------------------------ VGG perceptual loss

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


def test_gradient_variance_is_computed_in_float32_under_autocast():
    """Under a bf16 autocast (as in bf16-mixed training) the loss is the float32 one, not bf16's rounding."""
    g = torch.Generator().manual_seed(5)
    fake = (torch.rand(2, 3, 24, 24, generator=g) * 2 - 1).requires_grad_()
    real = torch.rand(2, 3, 24, 24, generator=g) * 2 - 1
    exact = gradient_variance_loss(fake, real, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = gradient_variance_loss(fake, real, 12)
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(exact.item(), rel=1e-6)
    mixed.backward()
    assert fake.grad is not None and torch.isfinite(fake.grad).all()
