"""Mask-enhanced PatchNCE (Fundus2Video), built on CUT's PatchNCE loss (Park et al. 2020).

PatchNCE. Queries q_i and keys k_i are unit vectors (rows of `PatchProjector` outputs) taken at
the same positions of two feature sets; the key at the query's own position is its positive,
the keys at the other sampled positions of the same image are its negatives:

    l_i = -log( exp(q_i.k_i / T) / (exp(q_i.k_i / T) + sum_{j in G(i)} exp(s_ij / T)) )
    s_ij = q_i.k_j for j != i,  s_ii = -10

G(i) is the set of rows of the image of row i (or of the whole minibatch, with
`all_negatives_from_minibatch`). As in CUT, the slot j = i of the negatives is kept but set to
-10, so it adds exp(-10 / T), about 0, to the denominator. Keys are detached: only the query side
(and the projector, through the queries) learns.

Why negatives from the same image: the loss asks each generated patch to be identified with the
input patch at its own position among the other patches of that image, which carry different
anatomy; that is what preserves content, and needs no memory bank. CUT found that negatives from
other images of the minibatch do not help (they are the single-image setting's choice).

Mask-enhanced (Fundus2Video release, `pix2pixHD_model_tempo.py`): every image is multiplied by the
knowledge mask km before it enters the generator's encoder, so only the regions where the
angiogram changes are compared:

    F(x) = encode(cycle(x * km)),  cycle = `generator_input` (the release's cat(x, x))
    NCE     = multilayer_nce(keys F(cf),   queries F(fake))
    NCE_idt = multilayer_nce(keys F(real), queries F(fake))     (CUT mode, nce_idt)
    loss    = (NCE + NCE_idt) / 2   (NCE alone without identity)

multilayer_nce = mean over layers of the mean over patches of l_i. Unlike CUT, whose identity
term compares G(real) with real, the release's identity term reuses the generated frames as
queries against the real frames. The weight lambda_NCE is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

from fundus2video.losses.terms import Window, generator_term
from fundus2video.networks.projector import PatchProjector
from fundus2video.rollout import cycle_channels


def patch_nce_loss(feat_q: torch.Tensor, feat_k: torch.Tensor, batch_size: int, temperature: float = 0.07,
                   all_negatives_from_minibatch: bool = False) -> torch.Tensor:
    """Per-patch PatchNCE loss (N,) of queries (N, C) against keys (N, C) (keys detached).

    Rows are image-major, N = batch_size * P (as `PatchProjector` returns them): the negatives of
    row i are the other rows of its image, or of all N rows with `all_negatives_from_minibatch`.
    """
    n, dim = feat_q.shape
    if feat_k.shape != feat_q.shape:
        raise ValueError(f"queries {tuple(feat_q.shape)} and keys {tuple(feat_k.shape)} differ in shape")
    if batch_size < 1 or n % batch_size:
        raise ValueError(f"{n} patches cannot be split into a batch of {batch_size} images")
    # fp32 even under autocast: logits are cosines / 0.07, coarse in fp16 and bf16
    with torch.autocast(device_type=feat_q.device.type, enabled=False):
        q, k = feat_q.float(), feat_k.detach().float()
        l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
        groups = 1 if all_negatives_from_minibatch else batch_size
        q, k = q.view(groups, -1, dim), k.view(groups, -1, dim)
        l_neg = torch.bmm(q, k.transpose(1, 2))  # (groups, P', P'): every query against every key of its group
        # a query against its own key is the positive, already in l_pos: push it out of the negatives
        own = torch.eye(l_neg.shape[1], dtype=torch.bool, device=l_neg.device)
        l_neg = l_neg.masked_fill(own, -10.0).flatten(0, 1)  # (N, P')
        logits = torch.cat([l_pos, l_neg], dim=1) / temperature
        # the positive sits in column 0
        return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=logits.device), reduction="none")


def multilayer_nce(projector: PatchProjector, feat_src: Sequence[torch.Tensor], feat_tgt: Sequence[torch.Tensor],
                   num_patches: int = 256, temperature: float = 0.07,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """CUT's `calculate_NCE_loss` on precomputed features: keys from `feat_src` (positions sampled
    here), queries from `feat_tgt` at the same positions; the mean per-patch loss, averaged over
    layers (a scalar). `generator` drives the sampling (reproducible runs)."""
    if len(feat_src) != len(feat_tgt):
        raise ValueError(f"{len(feat_src)} source and {len(feat_tgt)} target feature maps")
    batch_size = feat_src[0].shape[0]
    # the loss detaches the keys, so their projection needs no graph
    with torch.no_grad():
        keys, ids = projector(feat_src, num_patches, generator=generator)
    queries, _ = projector(feat_tgt, num_patches, patch_ids=ids)
    losses = [patch_nce_loss(q, k, batch_size, temperature).mean() for q, k in zip(queries, keys)]
    return torch.stack(losses).mean()


def generator_input(x: torch.Tensor, in_channels: int) -> torch.Tensor:
    """How an image enters the generator's encoder for PatchNCE: its channels cycled up to
    `in_channels` (`rollout.cycle_channels`). The release's generator takes the CF plus the 3
    previous frames (6 channels) and is fed cat(x, x); this is the same for c = 3."""
    return cycle_channels(x, in_channels)


def mask_enhanced_nce(encode: Callable[[torch.Tensor, list[int]], list[torch.Tensor]], projector: PatchProjector,
                      cf: torch.Tensor, fake: torch.Tensor, real: torch.Tensor, km: torch.Tensor,
                      layer_ids: list[int], num_patches: int = 256, temperature: float = 0.07,
                      identity: bool = True, *, in_channels: int = 6,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Fundus2Video's mask-enhanced PatchNCE (formula in the module docstring).

    encode: the generator's feature path, `encode(x, layer_ids)` (e.g. `GlobalGenerator.encode`).
    cf (B, 3, H, W), fake and real (B, K, H, W) (K frames as channels), km (B, 1, H, W) in [0, 1],
    broadcast over channels. in_channels: the generator's input channels (3 + K), which every
    image is cycled up to. generator: drives the patch sampling (reproducible runs).
    Returns the loss (mean of both terms with `identity`, else NCE alone) and its terms
    {"nce", "nce_idt"} ("nce_idt" only with `identity`).
    """
    def feats(x: torch.Tensor) -> list[torch.Tensor]:
        return encode(generator_input(x * km, in_channels), layer_ids)

    # Key features get no gradient in any case (the loss detaches the keys), so encoding the CF
    # and the real frames without a graph gives the same gradients as the release, which keeps
    # one, at the cost of two fewer encoder graphs held in memory.
    with torch.no_grad():
        feat_cf = feats(cf)
        feat_real = feats(real) if identity else None
    feat_fake = feats(fake)  # queries: gradients reach `fake`, the encoder weights and the projector
    nce = multilayer_nce(projector, feat_cf, feat_fake, num_patches, temperature, generator)
    if not identity:
        return nce, {"nce": nce}
    nce_idt = multilayer_nce(projector, feat_real, feat_fake, num_patches, temperature, generator)
    return (nce + nce_idt) / 2, {"nce": nce, "nce_idt": nce_idt}


@generator_term("nce")
def _nce_term(window: Window) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mask-enhanced PatchNCE (plain PatchNCE with loss.nce_masked=false); logs its CF -> fake and
    identity (real -> fake) parts."""
    w, cf, fake = window.loss, window.cf, window.fake
    mask = window.mask if w.nce_masked else torch.ones_like(window.mask)
    term, parts = mask_enhanced_nce(window.module.generator.encode, window.module.projector, cf, fake, window.target,
                                    mask, list(w.nce_layers), w.nce_patches, w.nce_temperature,
                                    identity=w.nce_identity, in_channels=cf.shape[1] + fake.shape[1],
                                    generator=window.nce_rng)
    return term, {{"nce": "g_nce_cf", "nce_idt": "g_nce_idt"}[k]: v for k, v in parts.items()}
