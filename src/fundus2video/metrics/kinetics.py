"""Lesion kinetics: does the generated video brighten, fill and fade where the real one does?

PSNR and SSIM average over the whole frame, where the lesions are a few per cent of the pixels;
the method exists to get the lesions' time course right. For data whose cases carry lesion
annotations (the phantom knows each lesion's kind; real data: `lesion.png`, optionally
`lesion_<kind>.png` per kind and `vessels.png`), per case and then over the set:

  curve_mae_<kind>  mean over frames of |generated - real| mean intensity inside that kind's
                    mask (frames in [0, 1]); `curve_mae` averages the kinds the case has
  lesion_rise       the generated video's brightening of the dynamic lesions, last frame minus
                    first (`real_lesion_rise`: the real video's); `lesion_rise_ratio` the set's
                    mean generated rise over its mean real rise (1 = as much leakage as real)
  false_bright      the fraction of the background (field of view outside the dynamic lesions and
                    the vessels, both dilated by 2 px) where the generated video brightens by more
                    than the knowledge-mask threshold: leakage painted where there is none
                    (`real_false_bright`: the same on the real video, the phantom's is ~0)
  time_corr         correlation between the real and the generated mean brightness in the field
                    of view, frame by frame (1 = the video fills and fades when the real one does;
                    0 for a generated video whose brightness never changes)

`kinetics_plot` draws the per-kind curves, real against generated, over the set.
"""

from __future__ import annotations

import math
from collections import defaultdict

import cv2
import numpy as np
import torch
from torch import Tensor

from fundus2video.knowledge import KM_THRESHOLD

DYNAMIC_KINDS = ("leakage", "staining", "pooling", "window_defect")
MIN_PIXELS = 4  # a kind's mask smaller than this (after resizing) is too small to give a curve
EDGE_PX = 2  # the background excludes lesions and vessels dilated by this much (blurred edges)


def region_curve(video: Tensor, mask: Tensor) -> Tensor:
    """Mean intensity inside `mask` (H, W) bool of every frame of `video` (T, H, W) -> (T,)."""
    return video[:, mask].mean(dim=1)


def _dilate(mask: np.ndarray, px: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def _nan_mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


class LesionKinetics:
    """Accumulates the kinetics scores case by case (`update`), over the set (`compute`), and the
    per-kind curves for the picture (`curves`)."""

    def __init__(self, threshold: float = KM_THRESHOLD):
        self.threshold = threshold
        self.rows: list[dict[str, float]] = []
        self._curves: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = defaultdict(list)

    @staticmethod
    def applies(sample: dict) -> bool:
        """Scored only where the data carries lesion annotations."""
        return bool(sample["lesion"].any()) or any(m.any() for m in sample.get("regions", {}).values())

    def update(self, fake01: Tensor, real01: Tensor, sample: dict) -> dict[str, float]:
        """One case: videos (1, T, 1, H, W) or (T, 1, H, W) in [0, 1]; returns its values."""
        fake = fake01.reshape(-1, *fake01.shape[-2:]).float().cpu()
        real = real01.reshape(-1, *real01.shape[-2:]).float().cpu()
        roi = sample["roi"][0].bool()
        regions = {k: v[0].bool() for k, v in sample.get("regions", {}).items()}
        lesion = sample["lesion"][0].bool()
        kinds = {k: m for k, m in regions.items() if k != "vessels"} or ({"lesion": lesion} if lesion.any() else {})
        times = sample["times"].numpy() if "times" in sample else np.arange(real.shape[0], dtype=np.float32)
        row: dict[str, float] = {}
        maes = []
        for kind, mask in kinds.items():
            mask = mask & roi
            if int(mask.sum()) < MIN_PIXELS:
                continue
            r, f = region_curve(real, mask), region_curve(fake, mask)
            row[f"curve_mae_{kind}"] = float((f - r).abs().mean())
            maes.append(row[f"curve_mae_{kind}"])
            self._curves[kind].append((times, r.numpy(), f.numpy()))
        row["curve_mae"] = _nan_mean(maes)
        dynamic = lesion & roi
        if int(dynamic.sum()) >= MIN_PIXELS:
            row["lesion_rise"] = float(fake[-1][dynamic].mean() - fake[0][dynamic].mean())
            row["real_lesion_rise"] = float(real[-1][dynamic].mean() - real[0][dynamic].mean())
        else:
            row["lesion_rise"] = row["real_lesion_rise"] = float("nan")
        exclude = dynamic.numpy() | regions.get("vessels", torch.zeros_like(roi)).numpy()
        background = roi & ~torch.from_numpy(_dilate(exclude, EDGE_PX))
        if int(background.sum()) >= MIN_PIXELS:
            row["false_bright"] = float(((fake[-1] - fake[0])[background] > self.threshold).float().mean())
            row["real_false_bright"] = float(((real[-1] - real[0])[background] > self.threshold).float().mean())
        else:
            row["false_bright"] = row["real_false_bright"] = float("nan")
        curves = torch.stack([region_curve(real, roi), region_curve(fake, roi)])
        flat = curves.std(dim=1) <= 1e-6
        # a generated video with no time course at all scores 0 (it follows none), not a skipped case
        row["time_corr"] = (float("nan") if bool(flat[0]) else 0.0 if bool(flat[1])
                            else float(torch.corrcoef(curves)[0, 1]))
        self.rows.append(row)
        return row

    def compute(self) -> dict[str, float]:
        """Means over the cases that have each value; `lesion_rise_ratio` from the means."""
        keys = sorted({k for row in self.rows for k in row})
        out = {k: _nan_mean([row.get(k, float("nan")) for row in self.rows]) for k in keys}
        real = out.get("real_lesion_rise", float("nan"))
        out["lesion_rise_ratio"] = out.get("lesion_rise", float("nan")) / real if real and real > 0 else float("nan")
        return out

    def curves(self) -> dict[str, dict[str, np.ndarray]]:
        """Per kind, over the cases that have it: mean time, real and generated curve per frame
        index (cases have the same number of frames) and the number of cases."""
        out = {}
        order = {k: i for i, k in enumerate((*DYNAMIC_KINDS, "blocked", "nonperfusion"))}
        for kind, items in sorted(self._curves.items(), key=lambda kv: order.get(kv[0], len(order))):
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
