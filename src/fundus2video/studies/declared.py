"""The report of a study whose spec declares its analysis before it runs: the declaration, the arms'
scores, each claim's paired t tests over seeds with Holm's correction and the power reached
(`fundus2video.analysis`), the verdicts, and the case-by-case pictures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fundus2video.io import atomic_path
from fundus2video.studies.results import curve_plot, load_units, pyplot, short_name, write_report

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


def case_by_case(unit: dict) -> tuple[float, int, float, float] | None:
    """One unit's lesions judged one by one: (the fraction of its (test case, lesion kind) pairs whose
    generated rise is closer to the real one than the constant predictor's, the pairs, the spread (SD)
    of the generated rises, that of the real ones); None without per-case curves. A set score can match
    while every lesion is wrong; this says how many are right."""
    closer, generated, real = 0, [], []
    for case in unit.get("kinetics_cases") or []:
        for kind, curves in case.get("kinds", {}).items():
            const = (unit.get("metrics") or {}).get(f"const_rise_{kind}")
            if not isinstance(const, (int, float)) or not curves.get("fake") or not curves.get("real"):
                continue
            g, r = curves["fake"][-1] - curves["fake"][0], curves["real"][-1] - curves["real"][0]  # kinetics.rise
            closer += abs(g - r) < abs(const - r)
            generated.append(g)
            real.append(r)
    if not real:
        return None
    return closer / len(real), len(real), float(np.std(generated)), float(np.std(real))


def _case_lines(names: list[str], units: dict[str, dict[int, dict]]) -> list[str]:
    rows = []
    for n in names:
        judged = {s: case_by_case(u) for s, u in sorted(units.get(n, {}).items())}
        judged = {s: j for s, j in judged.items() if j is not None}
        if judged:
            rows.append(f"| {n} | " + ", ".join(f"{100 * j[0]:.0f}" for j in judged.values())
                        + f" | {100 * np.mean([j[0] for j in judged.values()]):.0f} | "
                        + f"{np.mean([j[2] for j in judged.values()]):.3f} | "
                        + f"{np.mean([j[3] for j in judged.values()]):.3f} | {next(iter(judged.values()))[1]} |")
    if not rows:
        return []
    return ["", "Case by case: the share (%) of (test case, lesion kind) pairs whose generated rise is closer to "
            "the real one than the constant predictor's, per seed and on average (a model that follows each "
            "lesion is closer in most pairs), and the spread (SD over the pairs) of the "
            "generated and the real rises.", "",
            "| arm | per seed | mean | SD generated | SD real | pairs per seed |", "|---|---|---|---|---|---|", *rows]


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
    lines += ["**The declared analysis** (as the spec declares it; units trained under another are listed above):",
              f"the unit is the seed (its score over the test cases); each comparison is the paired difference "
              f"over the seeds two arms share, tested with a {a.get('test', 'paired_t')} interval (two-sided; "
              f"one-sided against the margin for non-inferiority) at alpha {out['alpha']}, "
              + (f"{a.get('correction', 'holm')}-corrected over the {out['m']} (claim, primary endpoint) tests. "
                 if out["verdicts"] else "descriptive: no claim is tested, so nothing is corrected. ") +
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
    lines += _case_lines(kind_rows, units)
    if out["verdicts"]:
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
        lines += ["", "Verdicts (held: a primary endpoint favours the claim after Holm and none goes against it; "
                  "not held: one goes against it; not tested: neither, at the power shown; non-inferiority: held "
                  "when every primary endpoint's one-sided test clears its margin):", ""]
        for v in out["verdicts"]:
            powers = [t.get("power") for t in v["tests"]
                      if t.get("power") is not None and not math.isnan(t["power"])]
            reach = (f" (power reached: {min(powers):.2f}–{max(powers):.2f})"
                     if powers and v["verdict"] == "not tested" else "")
            lines.append(f"- {v['claim']} ({v['variant']}): **{v['verdict']}**{reach}.")
    if out["compared"]:
        keys = [*a["primary"], *(a.get("secondary") or [])]
        lines += ["", f"Descriptive comparisons ({ref} − arm over the seeds both have; uncorrected 95 % t interval; "
                  "no verdict):", "", "| arm | seeds | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
        for arm, by_key in out["compared"].items():
            n = max((t["n"] for t in by_key.values()), default=0)
            lines.append(f"| {arm} | {n} | " + " | ".join(
                f"{_fmt(t['mean'], 2 if k.startswith('psnr') else 3, True)} [{_fmt(t['lo'], 3, True)}, "
                f"{_fmt(t['hi'], 3, True)}]" for k, t in by_key.items()) + " |")
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
    return write_report(lines, units, results, {"study.png": lambda p: _declared_bars(names, scores, p),
                                                 "cases.png": lambda p: _case_scatter(names, units, p),
                                                 "curves.png": lambda p: curve_plot(spec, units, p)})


def _declared_bars(names: list[str], scores: dict, path: Path) -> None:
    plt = pyplot()
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
    plt = pyplot()
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
