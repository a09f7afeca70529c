"""PatchNCE projector: samples feature-map positions and embeds them on the unit sphere.

CUT's `PatchSampleF` with `use_mlp=True` (Park et al. 2020), as the Fundus2Video release uses it
(`netF`, width 256), with one difference of construction: CUT creates its MLPs lazily on the
first forward call, from the shapes it sees; here they are built in `__init__` from the channel
counts of the compared layers (`probe_channels` finds them for a given encoder), so the
parameters exist before any forward pass and an optimiser or checkpoint can see them.

Per compared layer l with C_l channels:
  1. flatten the (B, C_l, H, W) map to B x HW vectors;
  2. keep `num_patches` positions, the first entries of a random permutation of the HW
     positions, the same positions for every image of the batch (or positions passed in, so
     the query sample is taken where the key sample was);
  3. z = Linear(nc, nc)(ReLU(Linear(C_l, nc)(v))), then z / (||z||_2 + 1e-7).
Rows come out image-major, (B * num_patches, nc): rows b*P .. b*P + P - 1 belong to image b,
which is the layout `patch_nce_loss` relies on to group patches by image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def l2_normalize(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """x / (||x||_2 + eps) over dim 1: CUT's `Normalize(2)`, same values.

    CUT computes the norm as sum(x^2)^0.5, whose derivative is infinite at 0, so a row that is
    exactly zero gets NaN gradients. Masked inputs make such rows common here (layer 0 is the
    padded input itself, zero outside the mask, and the MLP maps 0 to 0 while its biases are 0),
    so the norm comes from `vector_norm`, whose backward is finite at 0.
    """
    return x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps)


class PatchProjector(nn.Module):
    """One 2-layer MLP (C_l -> nc -> nc) per compared layer, plus random patch sampling."""

    def __init__(self, in_channels: Sequence[int], nc: int = 256, init_gain: float = 0.02):
        super().__init__()
        if len(in_channels) == 0:
            raise ValueError("in_channels is empty: the projector needs one channel count per compared layer")
        self.in_channels = [int(c) for c in in_channels]
        self.nc = nc
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(c, nc), nn.ReLU(), nn.Linear(nc, nc)) for c in self.in_channels)
        # CUT's init_net(init_type="normal"): weights ~ N(0, gain), biases 0
        for m in self.mlps.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, init_gain)
                nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[torch.Tensor], num_patches: int = 256,
                patch_ids: Sequence[torch.Tensor] | None = None,
                generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Embed sampled positions of each feature map.

        feats: one (B, C_l, H_l, W_l) map per layer, in the order of `in_channels`.
        num_patches: positions kept per layer; <= 0 or >= H_l * W_l keeps all of them (like CUT,
            a shuffled order when sampled, the natural order when <= 0; CUT returns a map for 0,
            here it is always rows).
        patch_ids: the ids returned by an earlier call (the key sample), to embed the same
            positions of other features (the queries); `num_patches` is then ignored.
        generator: source of the random permutation, for reproducible sampling.
        Returns per layer the (B * P, nc) unit rows, image-major, and the (P,) position ids used.
        """
        if len(feats) != len(self.mlps):
            raise ValueError(f"got {len(feats)} feature maps for a projector built for {len(self.mlps)} layers")
        if patch_ids is not None and len(patch_ids) != len(feats):
            raise ValueError(f"got {len(patch_ids)} patch id tensors for {len(feats)} feature maps")
        out, ids_used = [], []
        for layer, (feat, mlp) in enumerate(zip(feats, self.mlps)):
            if feat.shape[1] != self.in_channels[layer]:
                raise ValueError(f"layer {layer}: features have {feat.shape[1]} channels, "
                                 f"the projector was built for {self.in_channels[layer]}")
            n_pos = feat.shape[2] * feat.shape[3]
            if patch_ids is not None:
                ids = patch_ids[layer].to(feat.device)
            elif num_patches <= 0:
                ids = torch.arange(n_pos, device=feat.device)
            else:
                # a CPU generator cannot drive a CUDA randperm: draw on the generator's device
                device = generator.device if generator is not None else feat.device
                ids = torch.randperm(n_pos, generator=generator, device=device)[:num_patches].to(feat.device)
            rows = feat.flatten(2)[:, :, ids].transpose(1, 2).flatten(0, 1)  # (B * P, C), image-major
            # fp32 even under autocast: a unit vector in fp16/bf16 is coarse once divided by the
            # temperature, and zero rows have 1/eps gradients that overflow fp16
            with torch.autocast(device_type=feat.device.type, enabled=False):
                out.append(l2_normalize(mlp(rows.float())))
            ids_used.append(ids)
        return out, ids_used


def probe_channels(encode: Callable[[torch.Tensor, list[int]], list[torch.Tensor]], in_channels: int,
                   layer_ids: list[int], size: int = 64, device: torch.device | str = "cpu") -> list[int]:
    """Channel counts of the features `encode(x, layer_ids)` returns, found by running it once
    on zeros (1, in_channels, size, size) without gradients: the `in_channels` argument of
    `PatchProjector` for that encoder (e.g. `GlobalGenerator.encode`). `size` must suit the
    encoder (divisible by its total downsampling); `device` is where the encoder's weights are."""
    with torch.no_grad():
        feats = encode(torch.zeros(1, in_channels, size, size, device=device), layer_ids)
    return [f.shape[1] for f in feats]
