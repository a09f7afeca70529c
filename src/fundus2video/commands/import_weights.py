"""`fundus2video import-weights`: the release's (or pix2pixHD's) weights into a checkpoint
(`fundus2video.release_weights`)."""

from __future__ import annotations

import argparse

from fundus2video.config import load_config, resolve_experiment
from fundus2video.release_weights import import_weights


def cmd_import_weights(args: argparse.Namespace) -> int:
    cfg = load_config(resolve_experiment(args.config), args.overrides)
    out = import_weights(cfg, args.netG, args.out, args.netD)
    print(f"wrote {out} (generator from {args.netG}" + (f", discriminator from {args.netD})" if args.netD else ")"))
    return 0
