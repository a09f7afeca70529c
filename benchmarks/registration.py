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

`--ranges wide`: instead of the preset's own eye motion and CF camera, frames 1.. and the CF of the preset
with those two nuisances off are moved by known similarities drawn in wider ranges (as
tests/test_registration.py does): frames up to 5 % of the image side per axis, 5 degrees and a scale of
0.97-1.03; the CF a scale of 0.8-1.25, 10 degrees and 5 % of the side.

`--speed N`: seconds to register a whole case (every frame, the series' mean, the CF) of `--speed-frames`
frames (20) at `--speed-size` px (512), N cases; per case and the median. With `--baseline FILE` (an older
estimate.py, e.g. `git show REV:src/fundus2video/registration/estimate.py > old.py`) each case is also
registered by it, the two alternating (old first on even cases) so a machine shared with other work slows
both alike. `--sizes ''` skips the accuracy runs.

    OMP_NUM_THREADS=1 python benchmarks/registration.py [--cases 64] [--sizes 128,256,512] [--frames 8]
        [--nuisances realistic|motion|aligned] [--ranges phantom|wide] [--model similarity]
        [--speed 5] [--speed-size 512] [--speed-frames 20] [--baseline old_estimate.py] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, log, machine_info  # noqa: E402

from fundus2video.data_modules.phantom import Nuisances, make_case  # noqa: E402
from fundus2video.knowledge import KM_THRESHOLD, crop_to_roi, knowledge_mask  # noqa: E402
from fundus2video.registration import estimate  # noqa: E402
from fundus2video.registration.estimate import (  # noqa: E402
    IDENTITY,
    MODELS,
    composite,
    invert,
    mean_distance,
    register_cf,
    register_frames,
    warp_to_reference,
)

NUISANCES = {
    "realistic": Nuisances.preset("realistic"),
    # geometry alone: the frames and the CF move, nothing else differs from the aligned preset
    "motion": Nuisances(eye_motion=True, misregistration=True),
    "aligned": Nuisances(),  # with --ranges wide: the geometry alone, the first frame as the dye arrives
}
WIDE_FRAME = {"shift": 0.05, "rotation": 5.0, "scale": (0.97, 1.03)}
WIDE_CF = {"shift": 0.05, "rotation": 10.0, "scale": (0.8, 1.25)}


def _similarity(rng: np.random.Generator, size: int, shift: float, rotation: float, scale) -> np.ndarray:
    c = (size - 1) / 2
    m = cv2.getRotationMatrix2D((c, c), rng.uniform(-rotation, rotation),
                                math.exp(rng.uniform(math.log(scale[0]), math.log(scale[1]))))
    m[:, 2] += rng.uniform(-shift, shift, 2) * size
    return m


def load_case(i: int, size: int, n_frames: int, nuisances: Nuisances, ranges: str):
    """(cf, frames, true frame -> frame 0 matrices, true CF -> frame 0 matrix, lesion mask) of case i."""
    if ranges == "phantom":
        case = make_case(i, size=size, n_frames=n_frames, nuisances=nuisances)
        truth = case.frame_to_ref if case.frame_to_ref is not None else [IDENTITY] * len(case.frames)
        return case.cf, case.frames, truth, case.cf_to_ref if case.cf_to_ref is not None else IDENTITY, case.lesion
    case = make_case(i, size=size, n_frames=n_frames, nuisances=replace(nuisances, eye_motion=False,
                                                                         misregistration=False))
    rng = np.random.default_rng(1000 + i)
    frames, truth = case.frames.copy(), [IDENTITY]
    for k in range(1, len(frames)):
        m = _similarity(rng, size, **WIDE_FRAME)
        frames[k] = cv2.warpAffine(case.frames[k], m, (size, size), flags=cv2.INTER_LINEAR)
        truth.append(invert(m))
    m = _similarity(rng, size, **WIDE_CF)
    return cv2.warpAffine(case.cf, m, (size, size), flags=cv2.INTER_LINEAR), frames, truth, invert(m), case.lesion


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


def run_size(size: int, n_cases: int, n_frames: int, nuisances: Nuisances, model: str, ranges: str) -> dict:
    frames_all, frames_kept, frames_none, cf_all, cf_kept, cf_none = [], [], [], [], [], []
    flagged = {"frames": 0, "cf": 0}
    silent = {"frames": 0, "cf": 0}
    iou = {"before": [], "after": [], "true": []}
    seconds = {"frames": 0.0, "cf": 0.0}
    n_frames_total = 0
    for i in range(n_cases):
        case_cf, case_frames, true_frames, true_cf, lesion = load_case(i, size, n_frames, nuisances, ranges)
        start = time.perf_counter()
        results = register_frames(case_frames, model)
        seconds["frames"] += time.perf_counter() - start
        start = time.perf_counter()
        cf = register_cf(case_cf, composite(case_frames, results), model)
        seconds["cf"] += time.perf_counter() - start
        for k in range(1, len(case_frames)):
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
        iou["before"].append(km_iou(case_cf, case_frames[0], case_frames[-1], lesion))
        iou["after"].append(km_iou(warp_to_reference(case_cf, cf.matrix, wh), case_frames[0],
                                   warp_to_reference(case_frames[-1], results[-1].matrix, wh), lesion))
        iou["true"].append(km_iou(warp_to_reference(case_cf, true_cf, wh), case_frames[0],
                                  warp_to_reference(case_frames[-1], true_frames[-1], wh), lesion))
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


def _module(path: str):
    """An estimate.py loaded from a file, beside the installed one."""
    spec = importlib.util.spec_from_file_location("baseline_estimate", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run_speed(n_cases: int, size: int, n_frames: int, nuisances: Nuisances, model: str, baseline: str | None) -> dict:
    """Seconds per whole case (frames, the series' mean, the CF) of this estimator and, alternating with it,
    of `baseline`; the frame and CF errors of each as a check that both did the same work."""
    modules = {"current": estimate} | ({"baseline": _module(baseline)} if baseline else {})
    seconds = {name: [] for name in modules}
    errors = {name: {"frames": [], "cf": []} for name in modules}
    for i in range(n_cases):
        case_cf, case_frames, true_frames, true_cf, _ = load_case(i, size, n_frames, nuisances, "phantom")
        order = list(modules) if i % 2 else list(modules)[::-1]
        for name in order:
            m = modules[name]
            start = time.perf_counter()
            results = m.register_frames(case_frames, model)
            cf = m.register_cf(case_cf, m.composite(case_frames, results), model)
            seconds[name].append(round(time.perf_counter() - start, 3))
            errors[name]["frames"] += [mean_distance(results[k].matrix, true_frames[k], size, size)
                                       for k in range(1, len(case_frames))]
            errors[name]["cf"].append(mean_distance(cf.matrix, true_cf, size, size))
        log(f"  speed {i + 1}/{n_cases}: " + ", ".join(f"{name} {seconds[name][-1]:.2f} s" for name in modules))
    return {name: {"seconds_per_case": seconds[name], "median_s": round(statistics.median(seconds[name]), 3),
                   "frames": stats(errors[name]["frames"]), "cf": stats(errors[name]["cf"])} for name in modules}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=64)
    parser.add_argument("--sizes", default="128,256,512")
    parser.add_argument("--frames", type=int, default=8, help="frames per case (the phantom's release sampling)")
    parser.add_argument("--nuisances", choices=sorted(NUISANCES), default="realistic")
    parser.add_argument("--ranges", choices=("phantom", "wide"), default="phantom",
                        help="the preset's own eye motion and CF camera, or known transforms in wider ranges")
    parser.add_argument("--model", choices=MODELS, default="similarity")
    parser.add_argument("--speed", type=int, default=0, metavar="N", help="time N whole cases (see above)")
    parser.add_argument("--speed-size", type=int, default=512)
    parser.add_argument("--speed-frames", type=int, default=20)
    parser.add_argument("--baseline", default=None, help="an older estimate.py to time alternately with --speed")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV's threads")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)  # one by default: the timings are one thread's, as on a busy machine
    result = {"settings": {"cases": args.cases, "frames": args.frames, "nuisances": args.nuisances,
                           "ranges": args.ranges, "model": args.model, "threads": args.threads,
                           "error": "mean distance over a 9 x 9 grid spanning the image, "
                           "estimated vs true transform, pixels at that size"},
              "machine": machine_info(), "sizes": {}}
    for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
        log(f"{size} px ...")
        result["sizes"][str(size)] = run_size(size, args.cases, args.frames, NUISANCES[args.nuisances], args.model,
                                              args.ranges)
        log(f"  {result['sizes'][str(size)]}")
    if args.speed:
        log(f"speed: {args.speed} cases of {args.speed_frames} frames at {args.speed_size} px ...")
        result["speed"] = {"size": args.speed_size, "frames": args.speed_frames, "cases": args.speed,
                           "nuisances": args.nuisances, "baseline": args.baseline,
                           **run_speed(args.speed, args.speed_size, args.speed_frames, NUISANCES[args.nuisances],
                                       args.model, args.baseline)}
    emit(result)


if __name__ == "__main__":
    main()
