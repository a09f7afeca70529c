"""The gradient-variance loss (losses/gradient_variance.py), checked against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from fundus2video.losses.gradient_variance import GradientVarianceLoss, gradient_variance_loss


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
