"""How well does registration recover known transforms? Prints JSON.

On the realistic phantom (docs/PHANTOM.md: eye motion between frames, the CF from another camera, and
every other nuisance: exposure, lesion kinetics, faint CF looks), whose true transforms are kept, each
case's frames are registered onto frame 0 and its CF onto the registered series' mean vessel map, in
frame 0's coordinates (`fundus2video.registration.estimate`, as `fundus2video data register` does), at
each size. Reported per size, for frames and CF apart:

- the error: the mean distance, over a 9 x 9 grid of points spanning the image, between where the
  estimated and the true transform send them (pixels at that size); median, 95th percentile, max;
  over every estimate, and over the estimates that were not flagged (what `data register` writes);
- `unregistered`: the same distance for no registration at all (how far the images are apart);
- flagged: estimates `data register` would not write (its failure criteria), and `silent_over_2px`:
  estimates not flagged yet more than 2 px off;
- the knowledge mask |first - last| > 45 (the method's guide) against the lesion mask, IoU inside the
  field of view, median over cases: before registration, after it (the estimates) and with the true
  transforms;
- seconds per frame and per CF on this machine (one thread).

    OMP_NUM_THREADS=1 python benchmarks/registration.py [--cases 64] [--sizes 128,256,512] [--frames 8]
        [--nuisances realistic|motion] [--model similarity]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, log, machine_info  # noqa: E402

from fundus2video.data_modules.phantom import Nuisances, make_case  # noqa: E402
from fundus2video.knowledge import KM_THRESHOLD, crop_to_roi, knowledge_mask  # noqa: E402
from fundus2video.registration.estimate import (  # noqa: E402
    IDENTITY,
    MODELS,
    composite,
    mean_distance,
    register_cf,
    register_frames,
    warp_to_reference,
)

NUISANCES = {
    "realistic": Nuisances.preset("realistic"),
    # geometry alone: the frames and the CF move, nothing else differs from the aligned preset
    "motion": Nuisances(eye_motion=True, misregistration=True),
}


def km_iou(cf: np.ndarray, first: np.ndarray, last: np.ndarray, lesion: np.ndarray) -> float:
    """The knowledge mask's IoU with the lesion mask inside the field of view, as `data check` measures it
    (here at the images' own size)."""
    crop = crop_to_roi(cf, np.stack([first, last]), {"lesion": lesion})
    roi = crop["roi"]
    km = knowledge_mask(crop["frames"][0] / 255.0, crop["frames"][1] / 255.0, KM_THRESHOLD) & roi
    les = crop["lesion"] & roi
    union = int((km | les).sum())
    return float((km & les).sum()) / union if union else float("nan")


def stats(errors: list[float]) -> dict:
    if not errors:
        return {"n": 0}
    e = np.asarray(errors)
    return {"n": len(e), "median_px": round(float(np.median(e)), 3), "p95_px": round(float(np.percentile(e, 95)), 3),
            "max_px": round(float(e.max()), 3)}


def run_size(size: int, n_cases: int, n_frames: int, nuisances: Nuisances, model: str) -> dict:
    frames_all, frames_kept, frames_none, cf_all, cf_kept, cf_none = [], [], [], [], [], []
    flagged = {"frames": 0, "cf": 0}
    silent = {"frames": 0, "cf": 0}
    iou = {"before": [], "after": [], "true": []}
    seconds = {"frames": 0.0, "cf": 0.0}
    n_frames_total = 0
    for i in range(n_cases):
        case = make_case(i, size=size, n_frames=n_frames, nuisances=nuisances)
        start = time.perf_counter()
        results = register_frames(case.frames, model)
        seconds["frames"] += time.perf_counter() - start
        start = time.perf_counter()
        cf = register_cf(case.cf, composite(case.frames, results), model)
        seconds["cf"] += time.perf_counter() - start
        true_frames = case.frame_to_ref if case.frame_to_ref is not None else [IDENTITY] * len(case.frames)
        true_cf = case.cf_to_ref if case.cf_to_ref is not None else IDENTITY
        for k in range(1, len(case.frames)):
            n_frames_total += 1
            err = mean_distance(results[k].matrix, true_frames[k], size, size)
            frames_all.append(err)
            frames_none.append(mean_distance(IDENTITY, true_frames[k], size, size))
            if results[k].ok:
                frames_kept.append(err)
                silent["frames"] += err > 2
            else:
                flagged["frames"] += 1
        err = mean_distance(cf.matrix, true_cf, size, size)
        cf_all.append(err)
        cf_none.append(mean_distance(IDENTITY, true_cf, size, size))
        if cf.ok:
            cf_kept.append(err)
            silent["cf"] += err > 2
        else:
            flagged["cf"] += 1
        wh = (size, size)
        iou["before"].append(km_iou(case.cf, case.frames[0], case.frames[-1], case.lesion))
        iou["after"].append(km_iou(warp_to_reference(case.cf, cf.matrix, wh), case.frames[0],
                                   warp_to_reference(case.frames[-1], results[-1].matrix, wh), case.lesion))
        iou["true"].append(km_iou(warp_to_reference(case.cf, true_cf, wh), case.frames[0],
                                  warp_to_reference(case.frames[-1], true_frames[-1], wh), case.lesion))
        if (i + 1) % 8 == 0:
            log(f"  {size} px: {i + 1}/{n_cases} cases, frames median {np.median(frames_all):.2f} px, "
                f"CF median {np.median(cf_all):.2f} px")

    def median(values: list[float]) -> float:
        values = [v for v in values if not np.isnan(v)]
        return round(statistics.median(values), 3) if values else float("nan")

    return {
        "frames": {**stats(frames_all), "not_flagged": stats(frames_kept), "unregistered": stats(frames_none),
                   "flagged": flagged["frames"], "silent_over_2px": silent["frames"]},
        "cf": {**stats(cf_all), "not_flagged": stats(cf_kept), "unregistered": stats(cf_none),
               "flagged": flagged["cf"], "silent_over_2px": silent["cf"]},
        "km_lesion_iou_median": {k: median(v) for k, v in iou.items()},
        "seconds_per_frame": round(seconds["frames"] / max(n_frames_total, 1), 4),
        "seconds_per_cf": round(seconds["cf"] / max(n_cases, 1), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=64)
    parser.add_argument("--sizes", default="128,256,512")
    parser.add_argument("--frames", type=int, default=8, help="frames per case (the phantom's release sampling)")
    parser.add_argument("--nuisances", choices=sorted(NUISANCES), default="realistic")
    parser.add_argument("--model", choices=MODELS, default="similarity")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # the timings are one thread's, like the command's on a busy machine
    result = {"settings": {"cases": args.cases, "frames": args.frames, "nuisances": args.nuisances,
                           "model": args.model, "error": "mean distance over a 9 x 9 grid spanning the image, "
                           "estimated vs true transform, pixels at that size"},
              "machine": machine_info(), "sizes": {}}
    for size in [int(s) for s in args.sizes.split(",")]:
        log(f"{size} px ...")
        result["sizes"][str(size)] = run_size(size, args.cases, args.frames, NUISANCES[args.nuisances], args.model)
        log(f"  {result['sizes'][str(size)]}")
    emit(result)


if __name__ == "__main__":
    main()
