"""Frechet distance between Gaussians fitted to features (FID, FVD), in float64.

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

The trace of the square root needs no general (non-symmetric) matrix square root: with
R = S1^(1/2) (symmetric, from `eigh`), S1 S2 = R (R S2) and R S2 R = (R S2) R are products of
the same two matrices in both orders, so they share their eigenvalues, and R S2 R is symmetric
positive semi-definite. Hence tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(R S2 R)), from two
symmetric eigen-decompositions (TF-GAN's `trace_sqrt_product` does the same with SVDs).

Why this and not `scipy.linalg.sqrtm(S1 @ S2)` (StyleGAN-V, pytorch-fid): nothing is inverted,
so rank-deficient covariances, the usual case for FVD (fewer videos than the 400 feature
dimensions), are handled exactly, without the `eps * I` those codes add when sqrtm fails; the
only round-off guard is clipping eigenvalues that come out slightly negative to 0. On
well-conditioned inputs both give the same value (tested against scipy).
"""

from __future__ import annotations

import torch


def _sqrt_psd(mat: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    vals, vecs = torch.linalg.eigh(mat)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """tr((sigma1 @ sigma2)^(1/2)) for symmetric PSD matrices, via the eigenvalues of R sigma2 R."""
    root = _sqrt_psd(sigma1)
    inner = root @ sigma2 @ root
    inner = (inner + inner.T) / 2  # exactly symmetric, as eigh assumes
    return torch.linalg.eigvalsh(inner).clamp(min=0).sqrt().sum()


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor,
                     sigma2: torch.Tensor) -> torch.Tensor:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), a float64 scalar.

    mu: (D,), sigma: (D, D) symmetric PSD; any float dtype (computed in float64). Not clipped at
    0: identical statistics give 0 up to round-off (about 1e-10 of tr(sigma)).
    """
    d = mu1.shape[0]
    for name, t, shape in (("mu1", mu1, (d,)), ("mu2", mu2, (d,)), ("sigma1", sigma1, (d, d)),
                           ("sigma2", sigma2, (d, d))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
    mu1, mu2, sigma1, sigma2 = (t.to(torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    mean_term = (mu1 - mu2).square().sum()
    return mean_term + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt_product(sigma1, sigma2)


def stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and covariance (D, D) of (N, D) features, in float64.

    The covariance is the unbiased one (divides by N - 1), as `np.cov` in the FVD code the
    release uses and torchmetrics' FID (StyleGAN-V's own statistics divide by N). With a single
    sample it is taken as zero, so the distance reduces to the mean term: what that FVD code
    returns for one video per set.
    """
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"expected (N, D) features with N >= 1, got shape {tuple(features.shape)}")
    x = features.to(torch.float64)
    mu = x.mean(0)
    if x.shape[0] == 1:
        return mu, x.new_zeros(x.shape[1], x.shape[1])
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)
