"""Weights of the authors' release (and of pix2pixHD) in and out of fundus2video checkpoints.

pix2pixHD saves plain state dicts (`<epoch>_net_G.pth`, `<epoch>_net_D.pth`). Their names map
one-to-one onto ours:
- G (global): identical (`model.<i>...`); our KBA heads (`attention.*`) have no counterpart and
  keep their initialisation. G (local enhancer): pix2pixHD's `model.*` is our
  `global_net.model.*`; `model1_1.*`, `model1_2.*` are identical.
- D: pix2pixHD's `scale{s}_layer{j}.*` is our `scales.{num_D-1-s}.{j}.*` (see discriminator.py).
Files are read with `weights_only` loading (no code runs from a checkpoint).
"""

from __future__ import annotations

import io
from pathlib import Path

import lightning
import torch

from fundus2video.config import to_plain
from fundus2video.errors import UserError
from fundus2video.io import atomic_path, read_state_dict, refuse_input_as_output
from fundus2video.module import Fundus2VideoModule
from fundus2video.networks.discriminator import pix2pixhd_key


def _load_mapped(net: torch.nn.Module, theirs: dict[str, torch.Tensor], to_theirs, source: Path,
                 optional_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Copy `theirs` into `net` through the name map; every non-optional parameter must be
    present with the right shape. Returns our names left at their initialisation."""
    ours = net.state_dict()
    missing, wrong, kept = [], [], []
    for name, value in ours.items():
        if name.startswith(optional_prefixes):
            kept.append(name)
            continue
        key = to_theirs(name)
        if key not in theirs:
            missing.append(key)
        elif theirs[key].shape != value.shape:
            wrong.append(f"{key} {tuple(theirs[key].shape)} (expected {tuple(value.shape)})")
    unexpected = sorted(set(theirs) - {to_theirs(n) for n in ours})
    if missing or wrong or unexpected:
        parts = [f"missing {missing[:4]}" if missing else "", f"wrong shape {wrong[:4]}" if wrong else "",
                 f"unexpected {unexpected[:4]}" if unexpected else ""]
        raise UserError(f"{source}: does not match the configured network: "
                        + "; ".join(p for p in parts if p)
                        + " (check model.generator / model.discriminator settings against the release's)")
    net.load_state_dict({n: theirs[to_theirs(n)] for n in ours if n not in kept}, strict=False)
    return kept


def generator_key(name: str) -> str:
    """Our generator parameter name -> pix2pixHD's."""
    return name.removeprefix("global_net.")


def import_weights(cfg, net_g: str | Path, out: str | Path, net_d: str | Path | None = None) -> Path:
    """Build a fundus2video checkpoint (`out`) from release/pix2pixHD weight files.

    The checkpoint holds the config as plain data, so `Fundus2VideoModule.load_from_checkpoint`
    restores it anywhere; D keeps its initialisation when `net_d` is not given.
    """
    refuse_input_as_output("--out", [out], [net_g, net_d])
    module = Fundus2VideoModule(to_plain(cfg))
    kept = _load_mapped(module.generator, read_state_dict(net_g), generator_key, Path(net_g),
                        optional_prefixes=("attention.", "global_net.attention."))
    if net_d is not None:
        num_d = cfg.model.discriminator.num_d
        _load_mapped(module.discriminator, read_state_dict(net_d), lambda n: pix2pixhd_key(n, num_d), Path(net_d))
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": {"config": to_plain(cfg)},
                  "pytorch-lightning_version": lightning.__version__, "epoch": 0, "global_step": 0,
                  "fundus2video": {"video_step": 0, "g_step": 0, "imported_from": str(net_g),
                                   "initialised_not_imported": kept}}
    buffer = io.BytesIO()  # serialised in memory, written by Python: a full disk is an OSError, not a C++ abort
    torch.save(checkpoint, buffer)
    with atomic_path(out) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(out)
