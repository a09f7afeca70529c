"""`fundus2video generate`: FFA videos from colour fundus photos with a trained checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from fundus2video.errors import UserError
from fundus2video.limits import MAX_FPS, MAX_FRAMES


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fundus2video import hub
    from fundus2video.devices import check_device
    from fundus2video.hub import load_module
    from fundus2video.inference import generate_videos, output_targets, photos_in
    from fundus2video.onnx_runtime import limit_torch_threads, resolve_runtime

    if args.frames is not None and not 1 <= args.frames <= MAX_FRAMES:
        raise UserError(f"--frames {args.frames}: expected 1 to {MAX_FRAMES}")
    if not 1 <= args.fps <= MAX_FPS:
        raise UserError(f"--fps {args.fps}: expected 1 to {MAX_FPS} frames per second")
    if not args.out:
        raise UserError("--out: empty (expected video.mp4 for one photo, or a folder)")
    runtime = resolve_runtime(args.runtime, args.device, args.bf16)  # refused before anything loads
    limit_torch_threads()
    args.device = str(check_device(args.device, "--device"))
    photos = photos_in(args.cf)
    formats = ("mp4", "gif") if args.gif else ("mp4",)
    targets = output_targets(photos, Path(args.out), formats, args.strip, args.side_by_side, args.overwrite)
    local = hub.local_path(args.ckpt)  # URLs and hf:// downloaded once, into their caches
    module = load_module(local, args.device)
    # the ONNX graph is cached beside the checkpoint (a URL's download included); a snapshot of the Hub's own
    # cache is left as it came, the graph goes to the user cache
    results = generate_videos(module, photos, targets, args.frames, formats, args.fps, args.strip, args.side_by_side,
                              batch=args.batch, bf16=args.bf16, colour_check=not args.no_fundus_check,
                              runtime=runtime, checkpoint=None if str(args.ckpt).startswith("hf://") else local)
    for result in tqdm(results, desc="generating", unit="photo", total=len(photos), disable=len(photos) == 1,
                       delay=0.5):  # no bar when the first photo fails at once
        print(" ".join(str(p) for p in result.paths))
    return 0
