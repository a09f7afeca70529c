"""`fundus2video weights list|fetch`: the pretrained weights the metrics and losses use."""

from __future__ import annotations

import argparse

from fundus2video.errors import UserError


def cmd_weights(args: argparse.Namespace) -> int:
    from fundus2video.pretrained import WEIGHTS, fetch, list_weights, weights_dir

    if args.weights_command == "list":
        rows = [("NAME", "FILE", "CHECKED BY", "CACHED"),
                *((name, file, f"sha256 {WEIGHTS[name].expected}" + ("" if WEIGHTS[name].sha256 else "...")
                   if WEIGHTS[name].expected else "none (place by hand)", cached)
                  for name, file, cached in list_weights())]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + "  " + row[3])
        print(f"cache: {weights_dir()} ($TORCH_HOME/hub/checkpoints); a file put there by hand under its FILE name "
              "is used when it matches; sources:")
        for w in WEIGHTS.values():
            print(f"  {w.name:<{widths[0]}}  {w.url}")
        return 0
    names = list(WEIGHTS) if args.name == "all" else [args.name]
    if len(names) > 1 and (args.url or args.sha256):
        raise UserError("weights fetch all: --url and --sha256 apply to one NAME")
    failed = []
    for name in names:
        try:
            print(f"{name}: {fetch(name, args.url, args.sha256)}")
        except UserError as err:
            if len(names) == 1:
                raise
            print(f"{name}: not fetched: {err}")
            failed.append(name)
    if failed:
        raise UserError(f"weights fetch all: {len(failed)} of {len(names)} not fetched ({', '.join(failed)}; "
                        "reasons above)")
    return 0
