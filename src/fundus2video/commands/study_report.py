"""The study's report, rebuilt from the finished units' result files alone (`study.py`).

Per variant, the mean +- standard deviation over seeds of each seed's test-split scores; for each
variant its paired difference to the reference variant (the full method) with a 95 % bootstrap
confidence interval that resamples seeds and test cases (the same seeds and cases for both arms:
seed k of a variant trained on the data order, initialisation draws and sampling of seed k of the
reference); the paper's claims judged from those intervals; a bar plot with error bars and the
learning curves.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from fundus2video.errors import UserError
from fundus2video.io import atomic_path

# (key, label, higher is better)
TABLE = (("psnr", "PSNR", True), ("ssim", "SSIM", True), ("psnr_lesion", "PSNR lesion", True),
         ("ssim_lesion", "SSIM lesion", True), ("curve_mae", "curve MAE", False),
         ("lesion_rise", "lesion rise", True), ("false_bright", "false bright", False),
         ("time_corr", "time corr", True))
DIFFS = ("psnr", "psnr_lesion", "ssim_lesion", "curve_mae", "lesion_rise", "rise_error", "false_bright")
# rise_error: |generated - real lesion rise| per case; a rise beyond the real one is no better
BETTER = {**{k: hi for k, _, hi in TABLE}, "rise_error": False}
N_BOOT = 10_000
README_BEGIN, README_END = "<!-- study:begin -->", "<!-- study:end -->"


def short_name(variant: str) -> str:
    """A variant's name in tables and folders: the experiment's file name (ablations/no_kba -> no_kba)."""
    return Path(variant).name


def load_units(spec, results: Path) -> dict[str, dict[int, dict]]:
    """variant -> seed -> unit result, for the spec's variants at the spec's budget."""
    out: dict[str, dict[int, dict]] = {}
    for variant in spec.variants:
        name = short_name(variant)
        for path in sorted((results / name).glob("seed*.json")):
            try:
                unit = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise UserError(f"{path}: unreadable unit result ({err})") from None
            if unit.get("budget_id") == spec.budget_id():
                out.setdefault(name, {})[int(unit["seed"])] = unit
    return out


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
    md = results / "study.md"
    with atomic_path(md) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    _write_csv(units, results / "study.csv")
    if units:
        _bar_plot(names, units, results / "study.png")
        _curve_plot(spec, units, results / "curves.png")
    return md


def _write_csv(units: dict[str, dict[int, dict]], path: Path) -> None:
    keys = ["variant", "seed", "train_s", *[k for k, _, _ in TABLE], "real_lesion_rise", "lesion_rise_ratio"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for name, by_seed in units.items():
            for seed, u in sorted(by_seed.items()):
                writer.writerow({"variant": name, "seed": seed, "train_s": u["train_s"],
                                 **{k: u["metrics"].get(k) for k in keys[3:]}})


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bar_plot(names: list[str], units: dict[str, dict[int, dict]], path: Path) -> None:
    plt = _plt()
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


def _curve_plot(spec, units: dict[str, dict[int, dict]], path: Path) -> None:
    """psnr_lesion, lesion_rise and psnr of the validation cases against training videos seen, and the
    per-lesion rise skill and direction accuracy where the curves have them: the reference and the
    baseline in colour (mean over seeds, band min..max), the rest thin."""
    plt = _plt()
    ref, base = short_name(spec.reference), short_name(spec.baseline)
    keys = ["psnr_lesion", "lesion_rise", "psnr"]
    if any("rise_skill_all" in r for by in units.values() for u in by.values() for r in u.get("curve") or []):
        keys[2:2] = ["rise_skill_all", "direction_acc_all"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.7 * len(keys), 3.8))
    for ax, key in zip(axes, keys):
        for n, by_seed in units.items():
            curves = [u["curve"] for u in by_seed.values() if u.get("curve")]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            x = np.array([r["videos"] for r in curves[0][:length]])
            y = np.array([[r.get(key) if r.get(key) is not None else np.nan for r in c[:length]] for c in curves])
            style = {ref: ("tab:red", 2.0), base: ("tab:blue", 2.0)}.get(n, ("tab:grey", 0.8))
            ax.plot(x, np.nanmean(y, axis=0), color=style[0], lw=style[1], label=f"{n} ({len(curves)} seeds)",
                    marker="o" if n in (ref, base) else None, ms=3)
            if n in (ref, base) and len(curves) > 1:
                ax.fill_between(x, np.nanmin(y, axis=0), np.nanmax(y, axis=0), color=style[0], alpha=0.15)
        if key == "lesion_rise":
            real = [r.get("real_lesion_rise") for by in units.values() for u in by.values() for r in u.get("curve", [])]
            real = [r for r in real if r is not None]
            if real:
                ax.axhline(np.mean(real), color="black", ls="--", lw=1, label="real")
        if key == "rise_skill_all":
            ax.axhline(0.0, color="black", ls="--", lw=1, label="constant predictor")
        ax.set_xlabel("training videos seen")
        ax.set_title(f"{key} (validation cases)")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def markers(study: str) -> tuple[str, str]:
    """The lines around a study's block in a markdown file: the first study's unnamed, the others named."""
    if study == "phantom":
        return README_BEGIN, README_END
    return f"<!-- study:{study}:begin -->", f"<!-- study:{study}:end -->"


def update_readme(readme: Path, md: Path, study: str = "phantom") -> None:
    """Replace the study's block (between its markers) of a markdown file (docs/STUDY.md) with `md`,
    links made relative to that file."""
    text = readme.read_text()
    begin, end = markers(study)
    if begin not in text or end not in text:
        raise UserError(f"{readme}: no block of study '{study}' (expected the lines {begin} and {end})")
    rel = Path(os.path.relpath(Path(md).parent.resolve(), readme.parent.resolve())).as_posix()
    body = re.sub(r"\]\((?!https?:)([^)/]+)\)", lambda m: f"]({rel}/{m.group(1)})", Path(md).read_text())
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with atomic_path(readme) as tmp:
        tmp.write_text(f"{head}{begin}\n{body}{end}{tail}")


# ------------------------------------------------------------------ a study with a declared analysis
# (key, label, higher is better) of the declared report's table; per-kind scores follow it
DECLARED_TABLE = (("psnr_fov", "PSNR FOV", True), ("psnr_lesion", "PSNR lesion", True),
                  ("rise_skill_all", "rise skill", True), ("direction_acc_all", "direction", True),
                  ("rise_corr_all", "rise corr", True), ("rise_mae_all", "rise MAE", False),
                  ("curve_mae", "curve MAE", False), ("false_bright", "false bright", False),
                  ("false_dark", "false dark", False))
KINDS = ("leakage", "staining", "pooling", "window_defect", "blocked", "nonperfusion")


def _fmt(x: float, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "—"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _seed_scores(units: dict[str, dict[int, dict]]) -> dict[str, dict[int, dict[str, float]]]:
    def number(v):
        return v if isinstance(v, int | float) and not isinstance(v, bool) else math.nan

    return {n: {s: {k: number(v) for k, v in u["metrics"].items()} for s, u in by.items()} for n, by in units.items()}


def _over_seeds(scores: dict[int, dict[str, float]], key: str) -> str:
    values = [v[key] for v in scores.values() if not math.isnan(v.get(key, math.nan))]
    if not values:
        return "—"
    digits = 2 if key.startswith("psnr") else 3
    return f"{np.mean(values):.{digits}f}" + (f" ± {np.std(values, ddof=1):.{digits}f}" if len(values) > 1 else "")


def declared_report(spec, results: Path) -> Path:
    """study.md of a study whose spec declares its analysis: the analysis as declared, the arms'
    scores, each claim's tests (paired t over seeds, Holm) with the power reached, and the verdicts."""
    from fundus2video.analysis import apply

    results = Path(results)
    units = load_units(spec, results)
    names = [short_name(v) for v in spec.variants]
    ref, a = short_name(spec.reference), spec.analysis
    scores = _seed_scores(units)
    out = apply(a, scores, ref, short_name)
    stale = sorted(f"{n}/seed{s}" for n, by in units.items() for s, u in by.items()
                   if u.get("analysis_id") != spec.analysis_id())
    dirty = sorted(f"{n}/seed{s}" for n, by in units.items() for s, u in by.items()
                   if any(c.get("dirty") for c in u.get("code") or []))
    lines = [f"Study `{spec.name}` (budget `{spec.budget_id()}`, analysis `{spec.analysis_id()}`): "
             f"{sum(len(u) for u in units.values())} of {len(names) * len(spec.seeds)} units finished "
             f"({len(spec.seeds)} seeds x {len(names)} arms declared).", ""]
    if stale:
        lines += [f"Units trained under another declared analysis (read with care): {', '.join(stale)}.", ""]
    if dirty:
        lines += [f"Units that ran code with uncommitted changes: {', '.join(dirty)}.", ""]
    margins = ", ".join(f"{k} {v}" for k, v in (a.get("margins") or {}).items())
    targets = ", ".join(f"{k} {v}" for k, v in (a.get("power_targets") or {}).items())
    lines += ["**The declared analysis** (written in the spec before the first unit trained):",
              f"the unit is the seed (its score over the test cases); each comparison is the paired difference "
              f"over the seeds two arms share, tested with a {a.get('test', 'paired_t')} interval (two-sided; "
              f"one-sided against the margin for non-inferiority) at alpha {out['alpha']}, "
              f"{a.get('correction', 'holm')}-corrected over the {out['m']} (claim, primary endpoint) tests. "
              f"Primary endpoints: {', '.join(a['primary'])}; secondary, reported uncorrected: "
              f"{', '.join(a.get('secondary') or []) or 'none'}. Non-inferiority margins: {margins or 'none'}. "
              f"Power is computed for: {targets or 'nothing'} (at the first Holm step's level, from the observed "
              "standard deviation of the seeds' differences).", ""]
    header = ["arm", "seeds", *[label for _, label, _ in DECLARED_TABLE]]
    lines += ["Scores (mean ± std over seeds; each seed's score is over the test cases; ↑ higher / ↓ lower is "
              "better):", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines[-2] = "| " + " | ".join(["arm", "seeds", *[f"{lab} {'↑' if hi else '↓'}" for _, lab, hi in DECLARED_TABLE]]) \
        + " |"
    for n in names:
        if n not in scores:
            lines.append(f"| {n} | — |" + " — |" * len(DECLARED_TABLE))
            continue
        lines.append(f"| {n} | {','.join(str(s) for s in sorted(scores[n]))} | "
                     + " | ".join(_over_seeds(scores[n], k) for k, _, _ in DECLARED_TABLE) + " |")
    const = [v.get("const_rise_mae_all", math.nan) for by in scores.values() for v in by.values()]
    const = [c for c in const if not math.isnan(c)]
    ious = [r.get("km_iou") for by in units.values() for u in list(by.values())[:1] for r in u["per_case"]
            if isinstance(r.get("km_iou"), float)]
    if const:
        lines += ["", f"Trivial predictors: predicting each kind's mean training rise for every lesion (the constant "
                  f"that `rise skill` 0 stands for) has a rise MAE of {np.mean(const):.3f}; a video that never "
                  "changes has direction 0. The knowledge mask's IoU with the dynamic lesions over the test cases: "
                  f"median {np.median(ious):.2f} (the mask the method is guided by is not the lesion answer)."
                  if ious else ""]
    kind_rows = [n for n in (ref, short_name(spec.baseline), *names) if n in scores]
    kind_rows = list(dict.fromkeys(kind_rows))
    lines += ["", "Per lesion kind (mean over seeds): rise skill / rise corr / direction accuracy.", "",
              "| arm | " + " | ".join(KINDS) + " |", "|" + "---|" * (len(KINDS) + 1)]
    for n in kind_rows:
        cells = []
        for k in KINDS:
            vals = [np.nanmean([v.get(f"{m}_{k}", math.nan) for v in scores[n].values()])
                    if any(not math.isnan(v.get(f"{m}_{k}", math.nan)) for v in scores[n].values()) else math.nan
                    for m in ("rise_skill", "rise_corr", "direction_acc")]
            cells.append(" / ".join(_fmt(v, 2) for v in vals))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "The tests (difference in favour of the claim: reference − arm, or arm − reference for a claim "
              "about the arm; interval at the test's own Holm level; power to detect the declared difference):", "",
              "| claim | endpoint | seeds | difference | interval | p | Holm p | power | seeds for 80 % |",
              "|---|---|---|---|---|---|---|---|---|"]
    for v in out["verdicts"]:
        for t in v["tests"]:
            digits = 2 if t["endpoint"].startswith("psnr") else 3
            lines.append(f"| {v['claim']} | {t['endpoint']} | {t['n']} | {_fmt(t['mean'], digits, True)} | "
                         f"[{_fmt(t.get('lo_step', math.nan), digits, True)}, "
                         f"{_fmt(t.get('hi_step', math.nan), digits, True)}] | {_fmt(t['p'], 3)} | "
                         f"{_fmt(t.get('p_adjusted', math.nan), 3)} | {_fmt(t.get('power', math.nan), 2)} | "
                         f"{t.get('seeds_for_80') or ('—' if math.isnan(t['sd']) else '> 1000')} |")
    lines += ["", "Verdicts (held: a primary endpoint favours the claim after Holm and none goes against it; not held: "
              "one goes against it; not tested: neither, at the power shown; non-inferiority: held when every "
              "primary endpoint's one-sided test clears its margin):", ""]
    for v in out["verdicts"]:
        powers = [t.get("power") for t in v["tests"] if t.get("power") is not None and not math.isnan(t["power"])]
        reach = f" (power reached: {min(powers):.2f}–{max(powers):.2f})" if powers and v["verdict"] == "not tested" \
            else ""
        lines.append(f"- {v['claim']} ({v['variant']}): **{v['verdict']}**{reach}.")
    if out["secondary"]:
        keys = list(a.get("secondary") or [])
        lines += ["", "Secondary endpoints (difference in favour of the claim as above, uncorrected 95 % t interval; "
                  "no verdict):", "", "| arm | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
        for arm, by_key in out["secondary"].items():
            lines.append(f"| {arm} | " + " | ".join(
                f"{_fmt(t['mean'], 3, True)} [{_fmt(t['lo'], 3, True)}, {_fmt(t['hi'], 3, True)}]"
                for t in by_key.values()) + " |")
    total = sum(u["train_s"] or 0 for by in units.values() for u in by.values())
    lines += ["", f"Training time of the finished units: {total / 3600:.1f} hours summed (indicative: units ran "
              f"beside other work). Budget: `{' '.join(spec.budget_overrides())}`.", "",
              "![scores per arm](study.png)", "", "![generated against real rise, case by case](cases.png)", "",
              "![learning curves](curves.png)"]
    md = results / "study.md"
    with atomic_path(md) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    _write_csv(units, results / "study.csv")
    if units:
        _declared_bars(names, scores, results / "study.png")
        _case_scatter(names, units, results / "cases.png")
        _curve_plot(spec, units, results / "curves.png")
    return md


def _declared_bars(names: list[str], scores: dict, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    keys = ("psnr_lesion", "rise_skill_all", "direction_acc_all", "rise_corr_all", "false_dark", "psnr_fov")
    labels = {k: (label, hi) for k, label, hi in DECLARED_TABLE}
    present = [n for n in names if n in scores]
    for ax, key in zip(axes.flat, keys):
        for i, n in enumerate(present):
            values = [v[key] for v in scores[n].values() if not math.isnan(v.get(key, math.nan))]
            if values:
                ax.bar(i, np.mean(values), color="tab:red" if i == 0 else "tab:grey", alpha=0.7)
                ax.scatter([i] * len(values), values, color="black", s=8, zorder=3)
        if key == "rise_skill_all":
            ax.axhline(0, color="black", ls="--", lw=1, label="constant predictor")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(present)), present, rotation=35, ha="right", fontsize=8)
        label, hi = labels[key]
        ax.set_title(label + ("" if hi else " (lower is better)"))
    fig.suptitle("Realistic phantom, test split: mean over seeds (dots: seeds)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _case_scatter(names: list[str], units: dict, path: Path) -> None:
    """Per arm, each test case's generated against real rise of its dynamic lesions (mean over seeds)."""
    plt = _plt()
    present = [n for n in names if n in units]
    cols = min(4, len(present))
    rows = -(-len(present) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    for ax, n in zip(axes.flat, present):
        by_case: dict[str, list[tuple[float, float]]] = {}
        for u in units[n].values():
            for r in u["per_case"]:
                g, t = r.get("lesion_rise"), r.get("real_lesion_rise")
                if isinstance(g, float) and isinstance(t, float):
                    by_case.setdefault(r["case_id"], []).append((g, t))
        if not by_case:
            continue
        pairs = np.array([np.mean(v, axis=0) for v in by_case.values()])
        ax.scatter(pairs[:, 1], pairs[:, 0], s=8, color="tab:red" if n == present[0] else "tab:grey")
        lo, hi = float(pairs.min()) - 0.05, float(pairs.max()) + 0.05
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
        r = np.corrcoef(pairs[:, 1], pairs[:, 0])[0, 1] if len(pairs) > 2 and pairs[:, 0].std() > 0 else math.nan
        ax.set_title(f"{n} (r = {_fmt(r, 2)})", fontsize=9)
        ax.set_xlabel("real rise")
        ax.set_ylabel("generated rise")
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.suptitle("Dynamic lesions, case by case (mean over seeds): generated against real rise")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
