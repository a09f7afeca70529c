"""A study's finished units, read back from their result files, and what every report draws from
them: the table's scores, the CSV, the learning curves, and the study's block in a markdown file."""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fundus2video.errors import UserError
from fundus2video.io import atomic_path

# the first study's block in docs/STUDY.md; the others are named (`markers`)
README_BEGIN, README_END = "<!-- study:begin -->", "<!-- study:end -->"

# (key, label, higher is better)
TABLE = (("psnr", "PSNR", True), ("ssim", "SSIM", True), ("psnr_lesion", "PSNR lesion", True),
         ("ssim_lesion", "SSIM lesion", True), ("curve_mae", "curve MAE", False),
         ("lesion_rise", "lesion rise", True), ("false_bright", "false bright", False),
         ("time_corr", "time corr", True))


# rise_error: |generated - real lesion rise| per case; a rise beyond the real one is no better
BETTER = {**{k: hi for k, _, hi in TABLE}, "rise_error": False}


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


def write_csv(units: dict[str, dict[int, dict]], path: Path) -> None:
    keys = ["variant", "seed", "train_s", *[k for k, _, _ in TABLE], "real_lesion_rise", "lesion_rise_ratio"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for name, by_seed in units.items():
            for seed, u in sorted(by_seed.items()):
                writer.writerow({"variant": name, "seed": seed, "train_s": u["train_s"],
                                 **{k: u["metrics"].get(k) for k in keys[3:]}})


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_plot(spec, units: dict[str, dict[int, dict]], path: Path) -> None:
    """psnr_lesion, lesion_rise and psnr of the validation cases against training videos seen, and the
    per-lesion rise skill and direction accuracy where the curves have them: the reference and the
    baseline in colour (mean over seeds, band min..max), the rest thin."""
    plt = pyplot()
    ref, base = short_name(spec.reference), short_name(spec.baseline)
    keys = ["psnr_lesion", "lesion_rise", "psnr"]
    if any("rise_skill_all" in r for by in units.values() for u in by.values() for r in u.get("curve") or []):
        keys[2:2] = ["rise_skill_all", "direction_acc_all"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.7 * len(keys), 3.8))
    for ax, key in zip(axes, keys):
        for n, by_seed in units.items():
            # units scored before a key was in the curve have no value for it: left out, not drawn as NaN
            curves = [u["curve"] for u in by_seed.values() if any(r.get(key) is not None for r in u.get("curve") or [])]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            x = np.array([r["videos"] for r in curves[0][:length]])
            y = np.array([[r.get(key) if r.get(key) is not None else np.nan for r in c[:length]] for c in curves])
            style = {ref: ("tab:red", 2.0), base: ("tab:blue", 2.0)}.get(n, ("tab:grey", 0.8))
            with warnings.catch_warnings():  # epochs a resumed unit scored before the key existed: left blank
                warnings.simplefilter("ignore", RuntimeWarning)
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


def write_report(lines: list[str], units: dict, results: Path, pictures: dict[str, Callable[[Path], None]]) -> Path:
    """study.md from `lines`, study.csv from the units, and each picture (file name -> drawing) once
    there are units to draw."""
    md = results / "study.md"
    with atomic_path(md) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    write_csv(units, results / "study.csv")
    for name, draw in pictures.items() if units else ():
        draw(results / name)
    return md
