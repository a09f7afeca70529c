"""Lesion kinetics: does the generated video brighten, fill and fade where the real one does, case by case?

PSNR and SSIM average over the whole frame, where the lesions are a few per cent of the pixels;
the method exists to get the lesions' time course right. A set mean hides a generator that paints
the same brightening into every case whatever that case's lesion does, so the scores below judge
each lesion of each case against the real one and against a trivial predictor. They apply to data
whose cases carry lesion annotations (the phantom knows each lesion's kind; real data:
`lesion.png`, optionally `lesion_<kind>.png` per kind and `vessels.png`). Frames are in [0, 1]; a
kind's mask is taken inside the field of view and counts when it has at least MIN_PIXELS pixels;
without per-kind masks the lesion mask is one kind, `lesion`. A rise is the mean intensity inside a
mask in the last frame minus the first.

Per case (one row; `evaluate`'s per_case.csv):
  rise_<kind>        the generated video's rise inside that kind's mask; `real_rise_<kind>` the
                     real video's (the closer the two, the better)
  curve_mae_<kind>   mean over frames of |generated - real| mean intensity inside the kind's mask
                     (lower is better); `curve_mae` averages the kinds the case has
  lesion_rise        the generated rise of the dynamic lesions together (the lesion mask);
                     `real_lesion_rise` the real one; `rise_error` = |lesion_rise - real_lesion_rise|
                     (lower is better)
  false_bright       the fraction of the background (field of view outside the dynamic lesions and
                     the vessels, both dilated by EDGE_PX) where the generated video brightens by
                     more than the knowledge-mask threshold: leakage painted where there is none
                     (lower is better; `real_false_bright` the real video's, the phantom's is ~0)
  false_dark         the same background, the fraction where the generated video darkens by more
                     than the threshold (lower is better; `real_false_dark` the real video's)
  time_corr          correlation between the real and the generated mean brightness in the field
                     of view, frame by frame (1 = the video fills and fades when the real one does;
                     0 for a generated video whose brightness never changes)
  km_iou             IoU, inside the field of view, of the knowledge mask (the real video's
                     |last - first| > threshold) with the dynamic lesion mask: how far the
                     unsupervised mask that guides the method is from the annotated lesions. A
                     property of the data, not of the generator (NaN when both masks are empty)

Over the set (`compute`): the mean of every per-case value over the cases that have it,
`lesion_rise_ratio` (the mean generated lesion_rise over the mean real one; 1 = as much leakage
as real, but blind to which case gets it), and for each kind k and for k = `all` (every
(case, kind) pair pooled, each pair judged against its own kind's constant):
  n_<k>              the cases with that kind (`n_all`: the (case, kind) pairs)
  rise_corr_<k>      Pearson correlation across cases of the generated against the real rise
                     (higher is better, 1 at best). NaN with fewer than 3 cases or when either rise
                     is constant across cases: a generated rise that is the same in every case
                     follows nothing and has no correlation (NaN, not 0); rise_skill judges it
  rise_skill_<k>     1 - sum (gen - real)^2 / sum (const_k - real)^2 over the cases: 1 = perfect,
                     0 = no better than predicting const_k for every case, negative = worse
                     (higher is better; NaN when every real rise equals const_k)
  const_rise_<k>     const_k, the constant predictor: the training split's mean real rise of
                     kind k (`reference_rise`), else the scored set's own (`const_rise_source()`)
  rise_mae_<k>       mean |gen - real| rise (lower is better); `const_rise_mae_<k>` the constant
                     predictor's, the bar to beat
  direction_acc_<k>  of the lesions whose real rise is at least DIRECTION_MIN in size
                     (`direction_n_<k>` of them), the fraction whose generated rise has the same
                     sign (higher is better; a video that never changes scores 0; NaN when none
                     qualify)

`kinetics_plot` draws the per-kind curves, real against generated, over the set; `rise_plot` one
scatter per kind of generated against real rise, case by case; `LesionKinetics.cases` keeps every
case's per-kind curves (evaluate's kinetics_cases.json), so the per-kind scores can be recomputed
without the model.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import cv2
import numpy as np
import torch
from torch import Tensor

from fundus2video.knowledge import KM_THRESHOLD, knowledge_mask

DYNAMIC_KINDS = ("leakage", "staining", "pooling", "window_defect")
STATIC_KINDS = ("blocked", "nonperfusion")
MIN_PIXELS = 4  # a kind's mask smaller than this (after resizing) is too small to give a curve
EDGE_PX = 2  # the background excludes lesions and vessels dilated by this much (blurred edges)
DIRECTION_MIN = 10 / 255  # a real rise below this is within a few grey levels: it has no direction to get right
FLAT = 1e-6  # rises (0..1 intensity) spread less than this across cases are constant
PLOT_SPAN = 0.2  # rise_plot's narrowest axis, in intensity (about 50 grey levels)
DIGITS = 5  # kinetics_cases.json: well below one grey level, and a small file


def region_curve(video: Tensor, mask: Tensor) -> Tensor:
    """Mean intensity inside `mask` (H, W) bool of every frame of `video` (T, H, W) -> (T,)."""
    return video[:, mask].mean(dim=1)


def _video(x: Tensor) -> Tensor:
    return x.reshape(-1, *x.shape[-2:]).float().cpu()


def _dilate(mask: np.ndarray, px: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def _nan_mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _ordered(kinds: Iterable[str]) -> list[str]:
    """The phantom's kinds in its order (dynamic, then static), any other name after them by name."""
    order = {k: i for i, k in enumerate((*DYNAMIC_KINDS, *STATIC_KINDS))}
    return sorted(set(kinds), key=lambda k: (order.get(k, len(order)), k))


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), DIGITS)


def kind_masks(sample: dict) -> dict[str, Tensor]:
    """The lesion kinds a case is scored on: each kind's mask (H, W) inside the field of view, of at
    least MIN_PIXELS pixels; the lesion mask as the one kind `lesion` when the case names no kinds."""
    roi = sample["roi"][0].bool()
    kinds = {k: v[0].bool() for k, v in sample.get("regions", {}).items() if k != "vessels"}
    lesion = sample["lesion"][0].bool()
    if not kinds and lesion.any():
        kinds = {"lesion": lesion}
    return {k: m & roi for k, m in kinds.items() if int((m & roi).sum()) >= MIN_PIXELS}


def rise(curve: Tensor) -> float:
    """Last frame minus first of a mean-intensity curve."""
    return float(curve[-1] - curve[0])


def reference_rise(samples: Iterable[dict]) -> tuple[dict[str, float], int]:
    """The mean real rise per lesion kind over `samples` (sample dicts as the datasets give them
    with `with_regions`, frames in [-1, 1]), masks exactly as `LesionKinetics.update` takes them:
    the constant predictor of `rise_skill` when `samples` are the training split. Returns the means
    (kinds no case has are absent) and the number of cases with annotations."""
    rises: dict[str, list[float]] = defaultdict(list)
    n = 0
    for sample in samples:
        if not LesionKinetics.applies(sample):
            continue
        n += 1
        real = _video((sample["frames"] + 1) / 2)
        for kind, mask in kind_masks(sample).items():
            rises[kind].append(rise(region_curve(real, mask)))
    return {k: float(np.mean(v)) for k, v in rises.items()}, n


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or x.std() < FLAT or y.std() < FLAT:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _set_scores(fake: np.ndarray, real: np.ndarray, const: np.ndarray) -> dict[str, float]:
    """The set scores of one kind (or of all pairs): generated, real and constant rise per case."""
    n = len(real)
    worst = float(np.sum((const - real) ** 2))
    qualify = np.abs(real) >= DIRECTION_MIN
    return {
        "n": n,
        "rise_corr": _pearson(fake, real),
        "rise_skill": 1.0 - float(np.sum((fake - real) ** 2)) / worst if worst > n * FLAT**2 else float("nan"),
        "rise_mae": float(np.abs(fake - real).mean()),
        "const_rise_mae": float(np.abs(const - real).mean()),
        "direction_acc": (float((np.sign(fake[qualify]) == np.sign(real[qualify])).mean()) if qualify.any()
                          else float("nan")),
        "direction_n": int(qualify.sum()),
    }


class LesionKinetics:
    """Accumulates the kinetics scores case by case (`update`), over the set (`compute`), the
    per-kind curves for the picture (`curves`), the rises for the scatter (`rises`) and every
    case's curves (`cases`).

    `reference_rise`: {kind: the training split's mean real rise} (`reference_rise()` of the
    training samples), the constant predictor `rise_skill` is measured against; a kind it lacks
    falls back to the scored set's own mean real rise (`const_rise_source` says which)."""

    def __init__(self, threshold: float = KM_THRESHOLD, reference_rise: dict[str, float] | None = None):
        self.threshold = threshold
        self.reference_rise = dict(reference_rise or {})
        self.rows: list[dict[str, float]] = []
        self.cases: list[dict] = []
        self._curves: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = defaultdict(list)
        self._pairs: list[tuple[str, float, float]] = []  # (kind, generated rise, real rise) per case and kind

    @staticmethod
    def applies(sample: dict) -> bool:
        """Scored only where the data carries lesion annotations."""
        return bool(sample["lesion"].any()) or any(m.any() for m in sample.get("regions", {}).values())

    def update(self, fake01: Tensor, real01: Tensor, sample: dict) -> dict[str, float]:
        """One case: videos (1, T, 1, H, W) or (T, 1, H, W) in [0, 1]; returns its values."""
        fake, real = _video(fake01), _video(real01)
        roi = sample["roi"][0].bool()
        lesion = sample["lesion"][0].bool()
        vessels = sample.get("regions", {}).get("vessels")
        times = sample["times"].numpy() if "times" in sample else np.arange(real.shape[0], dtype=np.float32)
        row: dict[str, float] = {}
        maes, kinds = [], {}
        for kind, mask in kind_masks(sample).items():
            r, f = region_curve(real, mask), region_curve(fake, mask)
            row[f"curve_mae_{kind}"] = float((f - r).abs().mean())
            row[f"rise_{kind}"], row[f"real_rise_{kind}"] = rise(f), rise(r)
            maes.append(row[f"curve_mae_{kind}"])
            self._curves[kind].append((times, r.numpy(), f.numpy()))
            self._pairs.append((kind, row[f"rise_{kind}"], row[f"real_rise_{kind}"]))
            kinds[kind] = {"real": [_round(v) for v in r.tolist()], "fake": [_round(v) for v in f.tolist()],
                           "px": int(mask.sum())}
        row["curve_mae"] = _nan_mean(maes)
        dynamic = lesion & roi
        if int(dynamic.sum()) >= MIN_PIXELS:
            row["lesion_rise"] = float(fake[-1][dynamic].mean() - fake[0][dynamic].mean())
            row["real_lesion_rise"] = float(real[-1][dynamic].mean() - real[0][dynamic].mean())
        else:
            row["lesion_rise"] = row["real_lesion_rise"] = float("nan")
        row["rise_error"] = abs(row["lesion_rise"] - row["real_lesion_rise"])
        exclude = dynamic.numpy() | (vessels[0].bool().numpy() if vessels is not None else False)
        background = roi & ~torch.from_numpy(_dilate(exclude, EDGE_PX))
        if int(background.sum()) >= MIN_PIXELS:
            for prefix, video in (("", fake), ("real_", real)):
                change = (video[-1] - video[0])[background]
                row[f"{prefix}false_bright"] = float((change > self.threshold).float().mean())
                row[f"{prefix}false_dark"] = float((change < -self.threshold).float().mean())
        else:
            row["false_bright"] = row["real_false_bright"] = row["false_dark"] = row["real_false_dark"] = float("nan")
        curves = torch.stack([region_curve(real, roi), region_curve(fake, roi)])
        flat = curves.std(dim=1) <= 1e-6
        # a generated video with no time course at all scores 0 (it follows none), not a skipped case
        row["time_corr"] = (float("nan") if bool(flat[0]) else 0.0 if bool(flat[1])
                            else float(torch.corrcoef(curves)[0, 1]))
        # the knowledge mask as the data gives it; computed the same way where a caller has none
        km = sample["km"][0].bool() if "km" in sample else knowledge_mask(real[0], real[-1], self.threshold)
        union = int(((km | lesion) & roi).sum())
        row["km_iou"] = float((km & lesion & roi).sum()) / union if union else float("nan")
        self.rows.append(row)
        self.cases.append({"case_id": str(sample.get("case_id", len(self.cases))),
                           "patient_id": str(sample.get("patient_id", "")),
                           "times": [_round(float(t)) for t in times], "kinds": kinds,
                           "km_iou": _round(row["km_iou"])})
        return row

    def const_rise(self) -> dict[str, float]:
        """const_k for every kind the scored set has: the reference value, else the set's mean real rise."""
        real: dict[str, list[float]] = defaultdict(list)
        for kind, _, r in self._pairs:
            real[kind].append(r)
        return {k: self.reference_rise[k] if k in self.reference_rise else float(np.mean(real[k]))
                for k in _ordered(real)}

    def const_rise_source(self) -> str:
        """Where the constants came from: `train` when every scored kind's is the reference's, `scored
        set` when none is, else `train; scored set for <kinds>`."""
        kinds = _ordered(k for k, _, _ in self._pairs)
        fallback = [k for k in kinds if k not in self.reference_rise]
        if not fallback:
            return "train"
        if len(fallback) == len(kinds):
            return "scored set"
        return f"train; scored set for {', '.join(fallback)}"

    def rises(self) -> dict[str, dict[str, np.ndarray]]:
        """Per kind (then `all`, every pair pooled): generated (`fake`), real and constant-predictor
        (`const`) rise per case, and `kind` per pair."""
        const = self.const_rise()
        out = {}
        for kind in const:
            pairs = [(f, r) for k, f, r in self._pairs if k == kind]
            fake, real = (np.array(v, np.float64) for v in zip(*pairs, strict=True))
            out[kind] = {"fake": fake, "real": real, "const": np.full_like(real, const[kind]),
                         "kind": np.array([kind] * len(real))}
        if out:
            out["all"] = {key: np.concatenate([v[key] for v in out.values()])
                          for key in ("fake", "real", "const", "kind")}
        return out

    def compute(self) -> dict[str, float]:
        """Means over the cases that have each value; `lesion_rise_ratio` from the means; the set scores
        per kind and over all pairs (module docstring)."""
        keys = sorted({k for row in self.rows for k in row})
        out = {k: _nan_mean([row.get(k, float("nan")) for row in self.rows]) for k in keys}
        real = out.get("real_lesion_rise", float("nan"))
        out["lesion_rise_ratio"] = out.get("lesion_rise", float("nan")) / real if real and real > 0 else float("nan")
        const = self.const_rise()
        for kind, r in self.rises().items():
            out.update({f"{name}_{kind}": v for name, v in _set_scores(r["fake"], r["real"], r["const"]).items()})
            if kind in const:
                out[f"const_rise_{kind}"] = const[kind]
        return out

    def curves(self) -> dict[str, dict[str, np.ndarray]]:
        """Per kind, over the cases that have it: mean time, real and generated curve per frame
        index (cases have the same number of frames) and the number of cases."""
        out = {}
        for kind in _ordered(self._curves):
            items = self._curves[kind]
            n_frames = min(len(t) for t, _, _ in items)
            time, real, fake = (np.stack([item[i][:n_frames] for item in items]) for i in range(3))
            out[kind] = {"time": time.mean(0), "real": real.mean(0), "fake": fake.mean(0),
                         "real_std": real.std(0), "fake_std": fake.std(0), "n": len(items)}
        return out


def kinetics_plot(curves: dict[str, dict[str, np.ndarray]], path, title: str = "") -> None:
    """One panel per lesion kind: mean intensity over time, real (solid) and generated (dashed),
    the band one standard deviation over the cases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fundus2video.io import atomic_path

    kinds = list(curves)
    n = max(1, len(kinds))
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, kind in zip(axes.flat, kinds):
        c = curves[kind]
        for key, style, colour in (("real", "-", "black"), ("fake", "--", "tab:red")):
            ax.plot(c["time"], c[key], style, color=colour, marker="o", ms=3,
                    label="real" if key == "real" else "generated")
            ax.fill_between(c["time"], c[key] - c[f"{key}_std"], c[key] + c[f"{key}_std"], color=colour, alpha=0.12)
        ax.set_xscale("log")
        ax.set_title(f"{kind} (n={c['n']})")
        ax.set_xlabel("seconds after injection")
        ax.set_ylabel("mean intensity")
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(kinds):]:
        ax.axis("off")
    if kinds:
        axes.flat[0].legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _fmt_score(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def rise_plot(rises: dict[str, dict[str, np.ndarray]], scores: dict[str, float], path, title: str = "") -> None:
    """One scatter per kind (then all pairs): each case's generated rise against its real one, the
    identity line (a perfect generator), the constant predictor's line (const_k for every case), and
    r and skill in the panel's title. `rises`: `LesionKinetics.rises()`; `scores`: its `compute()`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fundus2video.io import atomic_path

    kinds = list(rises)
    n = max(1, len(kinds))
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows), squeeze=False)
    colours = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(k for k in kinds if k != "all")}
    for ax, kind in zip(axes.flat, kinds):
        r = rises[kind]
        values = np.concatenate([r["fake"], r["real"], r["const"]])
        # at least PLOT_SPAN wide: rises of a few grey levels (static kinds) stay near the identity
        mid, span = (float(values.min()) + float(values.max())) / 2, max(float(np.ptp(values)), PLOT_SPAN) * 1.1
        lo, hi = mid - span / 2, mid + span / 2
        ax.plot([lo, hi], [lo, hi], "-", color="grey", lw=1, label="identity")
        if kind == "all":  # each pair is judged against its own kind's constant: one line per kind
            for k in colours:
                sel = r["kind"] == k
                ax.scatter(r["real"][sel], r["fake"][sel], s=14, color=colours[k], label=k)
        else:
            ax.axhline(float(r["const"][0]), ls="--", color="tab:blue", lw=1, label="constant predictor")
            ax.scatter(r["real"], r["fake"], s=14, color=colours[kind])
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_title(f"{kind} (n={len(r['real'])})\nr={_fmt_score(scores.get(f'rise_corr_{kind}', math.nan))}  "
                     f"skill={_fmt_score(scores.get(f'rise_skill_{kind}', math.nan))}", fontsize=9)
        ax.set_xlabel("real rise (last - first)")
        ax.set_ylabel("generated rise")
        ax.legend(loc="best", fontsize=6)
    for ax in list(axes.flat)[len(kinds):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
