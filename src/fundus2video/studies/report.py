"""The study's report, rebuilt from the finished units' result files alone.

Per variant, the mean +- standard deviation over seeds of each seed's test-split scores; for each
variant its paired difference to the reference variant (the full method) with a 95 % bootstrap
confidence interval that resamples seeds and test cases (the same seeds and cases for both arms:
seed k of a variant trained on the data order, initialisation draws and sampling of seed k of the
reference); the paper's claims judged from those intervals; a bar plot with error bars and the
learning curves. A spec that declares its analysis gets `declared.declared_report` instead.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from fundus2video.io import atomic_path
from fundus2video.studies.declared import declared_report
from fundus2video.studies.results import (
    BETTER,
    TABLE,
    curve_plot,
    load_units,
    pyplot,
    short_name,
    write_report,
)

DIFFS = ("psnr", "psnr_lesion", "ssim_lesion", "curve_mae", "lesion_rise", "rise_error", "false_bright")


N_BOOT = 10_000


def _case_matrix(unit_by_seed: dict[int, dict], seeds: list[int], cases: list[str], key: str) -> np.ndarray:
    """(seeds, cases) of a per-case score (nan where missing)."""
    m = np.full((len(seeds), len(cases)), np.nan)
    for i, s in enumerate(seeds):
        rows = unit_by_seed[s]["per_case"]
        if key == "rise_error":
            values = {r["case_id"]: None if r.get("lesion_rise") is None or r.get("real_lesion_rise") is None
                      else abs(r["lesion_rise"] - r["real_lesion_rise"]) for r in rows}
        else:
            values = {r["case_id"]: r.get(key) for r in rows}
        for j, c in enumerate(cases):
            v = values.get(c)
            m[i, j] = np.nan if v is None else v
    return m


def _patient(row: dict) -> str:
    """A test case's patient: recorded by the unit, else the phantom's rule (two eyes per patient,
    case `phantom<i>` of patient `P<i // 2>`), else the case itself."""
    if row.get("patient_id"):
        return row["patient_id"]
    match = re.fullmatch(r"phantom(\d+)", row["case_id"])
    return f"P{int(match.group(1)) // 2:04d}" if match else row["case_id"]


def paired_difference(variant: dict[int, dict], reference: dict[int, dict], key: str,
                      n_boot: int = N_BOOT, seed: int = 0) -> dict | None:
    """Mean of (variant - reference) over shared seeds and test cases, and its nominal 95 %
    percentile-bootstrap interval: seeds resampled, then patients (both eyes of a patient stay
    together: they are not independent), with replacement, the same draws for both arms. With
    few seeds the seed level is resampled coarsely, so the interval is only nominally 95 %."""
    seeds = sorted(set(variant) & set(reference))
    if not seeds:
        return None
    rows = {r["case_id"]: r for u in (variant, reference) for s in seeds for r in u[s]["per_case"]}
    cases = sorted(set.intersection(*[{r["case_id"] for r in u[s]["per_case"]} for u in (variant, reference)
                                      for s in seeds]))
    diff = _case_matrix(variant, seeds, cases, key) - _case_matrix(reference, seeds, cases, key)
    keep = ~np.isnan(diff).all(axis=0)
    diff, cases = diff[:, keep], [c for c, k in zip(cases, keep) if k]
    if diff.size == 0:
        return None
    groups: dict[str, list[int]] = {}
    for j, case in enumerate(cases):
        groups.setdefault(_patient(rows[case]), []).append(j)
    clusters = list(groups.values())
    rng = np.random.default_rng(seed)
    si = rng.integers(0, diff.shape[0], (n_boot, diff.shape[0]))
    pi = rng.integers(0, len(clusters), (n_boot, len(clusters)))
    boot = np.array([np.nanmean(diff[s][:, np.concatenate([clusters[k] for k in p])]) for s, p in zip(si, pi)])
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return {"mean": float(np.nanmean(diff)), "lo": float(lo), "hi": float(hi), "seeds": len(seeds),
            "cases": int(diff.shape[1]), "patients": len(clusters)}


def summary(units: dict[str, dict[int, dict]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """variant -> key -> (mean over seeds, std over seeds (ddof 1; nan for one seed), n seeds)."""
    out = {}
    for name, by_seed in units.items():
        row = {}
        for key in [k for k, _, _ in TABLE] + ["real_lesion_rise", "lesion_rise_ratio", "train_s"]:
            values = [u["train_s"] if key == "train_s" else u["metrics"].get(key) for u in by_seed.values()]
            values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
            if values:
                row[key] = (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                            len(values))
        out[name] = row
    return out


def _cell(stat: tuple[float, float, int] | None, digits: int) -> str:
    if stat is None:
        return "—"
    mean, std, _ = stat
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def _digits(key: str) -> int:
    return 2 if key.startswith("psnr") else 3


def _verdict(d: dict | None, higher_is_better: bool) -> int | None:
    """+1: the variant is better than the reference (interval excludes 0), -1 worse, 0 unclear."""
    if d is None or d["seeds"] < 2:
        return None
    if d["lo"] > 0:
        return 1 if higher_is_better else -1
    if d["hi"] < 0:
        return -1 if higher_is_better else 1
    return 0


def claims(spec, diffs: dict[str, dict[str, dict | None]]) -> list[str]:
    """Each of the paper's claims, held / not held / unclear from the paired intervals."""
    ref = short_name(spec.reference)
    words = {1: "better", -1: "worse", 0: "no clear difference", None: "–"}
    lines = []

    def judged(variant: str, keys: tuple[str, ...]) -> tuple[list[int | None], str]:
        verdicts = [_verdict(diffs.get(variant, {}).get(k), BETTER[k]) for k in keys]
        detail = ", ".join(f"{k} {words[v]}" for k, v in zip(keys, verdicts))
        return verdicts, detail

    def status(verdicts: list[int | None], want: int) -> str:
        if any(v is None for v in verdicts):
            return "**not judged yet** (fewer than 2 seeds)"
        if want in verdicts and -want not in verdicts:
            return "**held**"
        if -want in verdicts and want not in verdicts:
            return "**not held**"
        return "**unclear**"

    base = short_name(spec.baseline)
    if base in diffs:
        v, detail = judged(base, ("psnr_lesion", "rise_error", "curve_mae", "psnr"))
        lines.append(f"- The full method beats {base}: {status(v[:3], -1)} inside the lesions "
                     f"({base} against {ref}: {detail}).")
    for name, what in (("no_kba", "knowledge-boosted attention"), ("no_kad", "the knowledge-aware discriminator"),
                       ("no_mask_nce", "mask-enhanced PatchNCE")):
        if name in diffs:
            v, detail = judged(name, ("psnr_lesion", "curve_mae", "rise_error"))
            lines.append(f"- {what[0].upper() + what[1:]} helps inside the lesions: {status(v, -1)} "
                         f"(without it: {detail}).")
    if "lesion_mask" in diffs:
        v, detail = judged("lesion_mask", ("psnr_lesion", "curve_mae", "rise_error"))
        if any(x is None for x in v):
            verdict = "**not judged yet** (fewer than 2 seeds)"
        elif 1 in v and -1 not in v:
            verdict = "**not held**"
        elif -1 in v and 1 not in v:
            verdict = "**held**"  # the supervised mask is clearly worse on some score, better on none
        elif 1 not in v:
            verdict = "**not contradicted**"  # no clear difference: absence of evidence, not equivalence
        else:
            verdict = "**unclear**"
        lines.append(f"- The unsupervised knowledge mask does at least as well as the supervised lesion mask: "
                     f"{verdict} (lesion_mask against {ref}: {detail}).")
    if "no_km" in diffs:
        v, detail = judged("no_km", ("psnr_lesion", "curve_mae", "rise_error"))
        lines.append(f"- Guidance by the knowledge mask beats an all-ones mask: {status(v, -1)} "
                     f"(no_km against {ref}: {detail}).")
    return lines


def build_report(spec, results: Path) -> Path:
    """Write study.md, study.csv, study.png and curves.png into `results` from its unit files (a spec
    with a declared analysis: `declared_report`)."""
    if getattr(spec, "analysis", None):
        return declared_report(spec, results)
    results = Path(results)
    units = load_units(spec, results)
    names = [short_name(v) for v in spec.variants]
    stats = summary(units)
    ref = short_name(spec.reference)
    diffs = {n: {k: paired_difference(units[n], units[ref], k) for k in DIFFS}
             for n in names if n in units and n != ref and ref in units}
    lines = [f"Study `{spec.name}` (budget `{spec.budget_id()}`): "
             f"{sum(len(u) for u in units.values())} of {len(names) * len(spec.seeds)} units finished. "
             "Test split, frames in [0, 1]; mean ± std over seeds (each seed: the mean over the test cases).", ""]
    header = ["variant", "seeds", *[label for _, label, _ in TABLE], "train s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in names:
        row = stats.get(n, {})
        seeds = ",".join(str(s) for s in sorted(units.get(n, {}))) or "—"
        cells = [_cell(row.get(k), _digits(k)) for k, _, _ in TABLE]
        lines.append(f"| {n} | {seeds} | " + " | ".join(cells) + f" | {_cell(row.get('train_s'), 0)} |")
    real = [u["metrics"].get("real_lesion_rise") for by in units.values() for u in by.values()]
    real = [r for r in real if r is not None]
    if real:
        lines += ["", f"Real videos' lesion rise: {np.mean(real):.3f}. Higher is better for PSNR, SSIM and time "
                  "corr; lower for curve MAE and false bright; lesion rise should match the real one (`rise_error`, "
                  "|generated − real| per case, lower is better)."]
    if diffs:
        lines += ["", f"Paired difference to {ref} (variant − {ref}; mean over seeds × test cases, "
                  "[nominal 95 % bootstrap interval resampling seeds, then patients]):", ""]
        lines += ["| variant | " + " | ".join(DIFFS) + " |", "|" + "---|" * (len(DIFFS) + 1)]
        for n, by_key in diffs.items():
            cells = []
            for k in DIFFS:
                d = by_key[k]
                cells.append("—" if d is None else
                             f"{d['mean']:+.{_digits(k)}f} [{d['lo']:+.{_digits(k)}f}, {d['hi']:+.{_digits(k)}f}]")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines += ["", "The paper's claims on the phantom. The rule: a claim is *held* when at least one of its "
                  "lesion scores' intervals says the full method is better and none says worse, *not held* in "
                  "the opposite case, *unclear* when they disagree or say nothing (for the lesion-mask claim "
                  "*not contradicted*: no clear difference). The intervals are nominal and not corrected for "
                  "the several scores and variants compared: read a verdict resting on one score near its "
                  "interval's edge as a hint.", "", *claims(spec, diffs)]
    total = sum(u["train_s"] or 0 for by in units.values() for u in by.values())
    threads = sorted({u.get("threads") for by in units.values() for u in by.values()} - {None})
    lines += ["", f"Training time of the finished units: {total / 3600:.1f} hours of wall-clock time summed over "
              f"the units ({'/'.join(map(str, threads)) or '?'} thread(s) each; units ran side by side, with other "
              "work on the machine, so the times are indicative only). Budget (over each variant's experiment): "
              f"`{' '.join(spec.budget_overrides())}`.", "",
              "![scores per variant](study.png)", "", "![learning curves](curves.png)"]
    return write_report(lines, units, results, {"study.png": lambda p: _bar_plot(names, units, p),
                                                 "curves.png": lambda p: curve_plot(spec, units, p)})


def _bar_plot(names: list[str], units: dict[str, dict[int, dict]], path: Path) -> None:
    plt = pyplot()
    keys = ("psnr_lesion", "ssim_lesion", "lesion_rise", "curve_mae", "false_bright", "psnr")
    labels = {k: label for k, label, _ in TABLE}
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    present = [n for n in names if n in units]
    for ax, key in zip(axes.flat, keys):
        for i, n in enumerate(present):
            values = [u["metrics"].get(key) for u in units[n].values()]
            values = [v for v in values if v is not None]
            if not values:
                continue
            ax.bar(i, np.mean(values), yerr=np.std(values, ddof=1) if len(values) > 1 else 0, capsize=3,
                   color="tab:red" if i == 0 else "tab:grey", alpha=0.7)
            ax.scatter([i] * len(values), values, color="black", s=8, zorder=3)
        if key == "lesion_rise":
            real = [u["metrics"].get("real_lesion_rise") for by in units.values() for u in by.values()]
            ax.axhline(np.mean([r for r in real if r is not None]), color="black", ls="--", lw=1, label="real")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(present)), present, rotation=35, ha="right", fontsize=8)
        ax.set_title(labels[key] + (" (lower is better)" if not BETTER[key] else ""))
        if key.startswith("psnr"):
            lo = min(u["metrics"][key] for n in present for u in units[n].values() if u["metrics"].get(key))
            ax.set_ylim(lo - 1.5, None)
    fig.suptitle("Phantom test split: mean ± std over seeds (dots: seeds)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
