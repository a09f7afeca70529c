"""The full method at test size, shared by the tests of its parts."""

import torch

from fundus2video.config import to_plain
from fundus2video.module import Fundus2VideoModule

# the full method (the smoke experiment the tiny configs start from is the backbone only)
FULL = ["model.generator.kba_stages=[bottleneck]", "loss.att=1", "loss.kad=1", "loss.nce=1", "loss.gv=5",
        "model.init=normal", "loss.nce_layers=[0,4,8,12,16]"]


def full_module(full, *overrides) -> Fundus2VideoModule:
    """The module of `full(*overrides)` (the conftest fixture)."""
    return Fundus2VideoModule(to_plain(full(*overrides)))


def window_batch(seed: int = 0, s: int = 32):
    """(cf, prev, target, km) of one window: random images in [-1, 1], a box as the mask."""
    g = torch.Generator().manual_seed(seed)
    cf, prev, target = (torch.rand(1, c, s, s, generator=g) * 2 - 1 for c in (3, 3, 3))
    km = torch.zeros(1, 1, s, s)
    km[..., 8:20, 10:24] = 1
    return cf, prev, target, km
