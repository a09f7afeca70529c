"""Does loading keep up with training? Prints JSON.

Writes the phantom at 512 x 512 in both case-folder layouts (ffa.mp4, ffa/*.png) with more
frames on disk than a case uses, then measures cases/s of the training DataLoader (augmented,
as training reads) with 0, 1 and 2 workers, next to the training time per case of the smoke
and the paper configuration on this machine (one G + D step per window, T windows a case).
`phantom`: milliseconds to render one in-memory phantom case (the embedded default's loader renders
each case on the fly) at 128 and 512, median of 5 after a warm-up.

    python benchmarks/data.py [--cases 8] [--size 512] [--frames-on-disk 48] [--frames 12]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from fundus2video.config import AugmentConfig, load_config, to_plain
from fundus2video.data_modules.cases import folder_records
from fundus2video.data_modules.datasets import FileVideoDataset
from fundus2video.data_modules.phantom import make_case
from fundus2video.data_modules.phantom_files import write_phantom
from fundus2video.data_modules.transforms import PairedTransform
from fundus2video.module import Fundus2VideoModule

ROOT = Path(__file__).resolve().parent.parent


def loader_rate(root: Path, size: int, frames: int, workers: int, epochs: int = 3) -> dict:
    """Median cases/s over `epochs` passes (the first pass, with worker start-up, excluded)."""
    ds = FileVideoDataset(folder_records(root), size, frames, 4, train=True,
                          transform=PairedTransform(size, train=True, cfg=AugmentConfig()))
    loader = DataLoader(ds, batch_size=1, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    rates = []
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        for _ in loader:
            pass
        if epoch > 0:
            rates.append(len(ds) / (time.perf_counter() - start))
    return {"workers": workers, "cases_per_s": round(statistics.median(rates), 2)}


def phantom_ms_per_case(size: int, repeats: int = 5) -> dict:
    """Median milliseconds of `make_case` (default frames) at `size`, distinct cases, after a warm-up."""
    make_case(0, size=size)
    times = []
    for index in range(repeats):
        start = time.perf_counter()
        make_case(100 + index, size=size)
        times.append(time.perf_counter() - start)
    return {"size": size, "ms_per_case": round(1000 * statistics.median(times), 1), "repeats": repeats}


def train_seconds_per_case(experiment: str, windows_measured: int = 3, repeats: int = 3) -> dict:
    """Seconds of one training window (G step + D step) x windows per case, median of repeats.
    The VGG19 term is off: its ImageNet weights cannot be downloaded here."""
    cfg = load_config(ROOT / "experiments" / f"{experiment}.yaml", ["loss.vgg=0"])
    module = Fundus2VideoModule(to_plain(cfg))
    k, s = cfg.model.window, cfg.data.size
    opt_g = torch.optim.Adam(module.generator.parameters(), lr=cfg.optim.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(module.discriminator.parameters(), lr=cfg.optim.lr, betas=(0.5, 0.999))
    cf, prev, target = torch.randn(1, 3, s, s), torch.randn(1, k, s, s), torch.randn(1, k, s, s)
    km = (torch.rand(1, 1, s, s) > 0.9).float()

    def window() -> None:  # the module's per-window work, outside a Trainer
        _, g_total, _, d_total, _ = module.window_losses(cf, prev, target, km)
        opt_g.zero_grad()
        g_total.backward()
        opt_g.step()
        opt_d.zero_grad()
        d_total.backward()
        opt_d.step()

    window()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(windows_measured):
            window()
        times.append((time.perf_counter() - start) / windows_measured)
    per_window = statistics.median(times)
    return {"experiment": experiment, "size": s, "vgg": "off", "seconds_per_window": round(per_window, 4),
            "windows_per_case": cfg.data.n_frames,
            "seconds_per_case": round(per_window * cfg.data.n_frames, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames-on-disk", type=int, default=48)
    parser.add_argument("--frames", type=int, default=12, help="frames a case uses")
    parser.add_argument("--paper-repeats", type=int, default=1, help="repeats of the slow paper config")
    args = parser.parse_args()
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "torch": torch.__version__, "threads": torch.get_num_threads()},
              "settings": vars(args), "loading": {}, "training": [],
              "phantom": [phantom_ms_per_case(size) for size in (128, 512)]}
    with tempfile.TemporaryDirectory() as tmp:
        for video in ("mp4", "png"):
            root = write_phantom(Path(tmp) / video, args.cases, size=args.size, n_frames=args.frames_on_disk,
                                 video=video, progress=False)
            result["loading"][video] = [loader_rate(root, args.size, args.frames, w) for w in (0, 1, 2)]
    result["training"].append(train_seconds_per_case("smoke"))
    result["training"].append(train_seconds_per_case("fundus2video", windows_measured=1,
                                                     repeats=args.paper_repeats))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
