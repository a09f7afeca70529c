"""Scoring a checkpoint on a split (`fundus2video evaluate`): roll out every case and score the videos.

Two protocols (docs/METHOD.md, "Evaluation"), chosen with `--protocol` (default: both):
  standard  frames in [0, 1]; PSNR, SSIM over the whole frame, the field of view, the knowledge
            mask and the lesion mask (where cases have one); MS-SSIM (as many scales as the size
            allows); temporal error (frame-to-frame changes, in the field of view); LPIPS (needs
            `--lpips`, torchvision's VGG16 file); FVD over the whole set, one 16-frame clip per video
            (needs `--i3d`).
  paper     the release's formulas exactly: [-1, 1] tensors into [0, 1] code (PSNR 6.02 dB lower),
            its SSIM, and FVD per single video over clip lengths 10..T, averaged.
  kinetics  with either protocol, where the cases carry lesion annotations (the phantom, or
            `lesion.png` / `lesion_<kind>.png` / `vessels.png` in the case folders), each lesion
            judged case by case (metrics/kinetics.py's docstring defines each score):
              per case   rise_<kind> / real_rise_<kind> (last - first frame mean intensity inside
                         the kind's mask, generated / real), curve_mae_<kind> and curve_mae (lower
                         is better), lesion_rise / real_lesion_rise of the dynamic lesions and
                         rise_error = |lesion_rise - real_lesion_rise| (lower is better),
                         false_bright / false_dark (background brightening / darkening beyond the
                         knowledge-mask threshold; lower is better; real_false_bright /
                         real_false_dark the real video's), time_corr (higher is better), km_iou
                         (the knowledge mask against the dynamic lesions: a property of the data)
              over cases for each kind k and `all` (every (case, kind) pair):
                         rise_skill_<k> (1 - SSE / the constant predictor's SSE: 1 perfect, 0 no
                         better than predicting const_rise_<k> for every case, < 0 worse),
                         rise_corr_<k> (Pearson r across cases; NaN with < 3 cases or a rise
                         constant across cases), rise_mae_<k> against const_rise_mae_<k> (lower is
                         better), direction_acc_<k> (sign agreement where the real |rise| >= 10/255,
                         direction_n_<k> of them; higher is better), n_<k>; the means of every
                         per-case value; lesion_rise_ratio (set means only: blind to per-case errors)
            const_rise_<k> is the mean real rise of kind k over the training split of the
            checkpoint's own data (real videos only, read as scoring reads them: nothing is
            generated); where that split cannot be read or lacks the kind, the scored set's own mean.
            metrics.json's `const_rise_source` says which: "train", "scored set", or "train; scored
            set for <kinds>".
A metric whose weights file is not given or not found is skipped, with a warning and a line in
`metrics.json` under "skipped"; the rest still run.

Writes into `--out` (default: `<run dir>/eval/<split>-<data>`): `metrics.json` (aggregates with
every setting), `per_case.csv`, `per_phase.csv` (when the frames' phases are known) and
`contact_sheet.png` (CF, real and generated frames of the first cases) and, with lesion
annotations, `kinetics.png` (the per-kind curves over the set), `kinetics_cases.png` (per kind,
each case's generated against real rise, with the identity and the constant predictor) and
`kinetics_cases.json`: one item per case, {"case_id", "patient_id", "times": [T seconds],
"kinds": {kind: {"real": [T], "fake": [T] mean intensities, "px": mask pixels}}, "km_iou"}
(5 digits, null for NaN), from which the per-kind scores (rise_*, curve_mae_*, direction_*) and
km_iou can be recomputed without the model.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from tqdm import tqdm

from fundus2video.config import to_plain
from fundus2video.data_modules import Fundus2VideoDataModule
from fundus2video.errors import UserError
from fundus2video.hub import load_module
from fundus2video.io import atomic_path, file_in_the_way, staged_outputs
from fundus2video.metrics.kinetics import LesionKinetics, kinetics_plot, reference_rise, rise_plot
from fundus2video.module import Fundus2VideoModule
from fundus2video.scoring import PROTOCOLS, Scores, rounded, score_samples
from fundus2video.video_io import write_png
from fundus2video.visuals import enlarge, label_band, to_uint8

log = logging.getLogger("fundus2video")

# the files an evaluation writes into --out (staged together; a rerun removes those it no longer makes)
OUTPUTS = {"metrics.json", "per_case.csv", "per_phase.csv", "contact_sheet.png", "kinetics.png",
           "kinetics_cases.json", "kinetics_cases.png"}
def _datamodule(module: Fundus2VideoModule, ckpt: Path, data: str | None) -> Fundus2VideoDataModule:
    """The checkpoint's own data (and its run's split.csv) unless `data` names `phantom`, a folder of
    case folders or a manifest CSV; every split read as validation reads it, with the lesion masks.
    A Hub folder holds a generator without its training data: it is scored on `data` (required), read
    with the default data settings at the folder's size and frame count."""
    if isinstance(module.cfg.data, SimpleNamespace):
        if not data:
            raise UserError(f"--ckpt {ckpt}: a Hub folder carries the generator, not the data it was trained on; "
                            "give --data (a folder of case folders, a manifest CSV, or phantom)")
        from fundus2video.config import load_config

        hub = module.cfg.data
        defaults = load_config(None, [f"data.size={hub.size}", f"data.n_frames={hub.n_frames}"])
        cfg = to_plain(defaults.data)
    else:
        cfg = to_plain(module.cfg.data)
    if data == "phantom":
        cfg["source"] = "phantom"
    elif data:
        path = Path(data)
        if not path.exists():
            raise UserError(f"--data: not found: {path} (expected a folder of case folders, a manifest CSV, "
                            "or 'phantom')")
        cfg.update(source="manifest" if path.suffix.lower() == ".csv" else "folders", root=str(path))
        cfg["split"]["file"] = ""
    run_split = ckpt.parent.parent / "split.csv"
    if not data and cfg["source"] != "phantom" and run_split.is_file():
        cfg["split"]["file"] = str(run_split)  # the cases this run held out
    dm = Fundus2VideoDataModule(cfg, min_frames=module.cfg.model.window + 1, evaluation=True)
    dm.setup()  # data that cannot be read stops here, before anything is said about it
    for dataset in dm.datasets.values():
        dataset.with_regions = True  # per-kind lesion and vessel masks, where the data has them
    return dm


def _split_cases(dm: Fundus2VideoDataModule, split: str) -> list:
    if split == "all":
        return [s for name in ("train", "val", "test") for s in dm.datasets[name]]
    if split not in dm.datasets:
        raise UserError(f"--split: '{split}' is not one of train, val, test, all")
    if len(dm.datasets[split]) == 0:
        raise UserError(f"--split {split}: no cases (sizes: { {k: len(v) for k, v in dm.datasets.items()} })")
    return list(dm.datasets[split])


def evaluation_data(module: Fundus2VideoModule, ckpt: Path, data: str | None, split: str) -> list:
    """The cases to score: the checkpoint's own data (and its run's split.csv) unless `data` names
    `phantom`, a folder of case folders or a manifest CSV."""
    dm = _datamodule(module, ckpt, data)
    if data and split != "all":
        log.info("--data given: cases split by patient with the checkpoint's fractions and seed")
    return _split_cases(dm, split)


def training_rise(module: Fundus2VideoModule, ckpt: Path, own: Fundus2VideoDataModule | None = None,
                  progress: bool = True) -> tuple[dict[str, float], str]:
    """The constant predictor of the kinetics skill scores: the mean real lesion rise per kind over the
    training split of the checkpoint's own data (`own`: its DataModule, when already set up), read
    exactly as scoring reads cases, without generating anything. Returns the means and how they were
    had; empty means when that split cannot be read or has no lesion annotations (the scores then
    fall back to the scored set's own mean)."""
    try:
        dm = own if own is not None else _datamodule(module, ckpt, None)
        train = dm.datasets["train"]
        samples = (train[i] for i in tqdm(range(len(train)), desc="training split's lesion rise", unit="case",
                                          disable=not progress, leave=False, delay=1.0))
        means, n = reference_rise(samples)
    except UserError as err:  # its data moved, changed or went bad since training: say so, score anyway
        log.warning("the constant predictor falls back to the scored set: the checkpoint's training split "
                    "cannot be read (%s)", err)
        return {}, f"the checkpoint's training split cannot be read ({err})"
    if not means:
        log.info("the constant predictor falls back to the scored set: the checkpoint's training split has no "
                 "lesion annotations")
        return {}, f"the checkpoint's training split ({len(train)} cases) has no lesion annotations"
    return means, f"mean real rise per kind over the {n} annotated cases of the checkpoint's training split"


def contact_sheet(cases: list[dict], n_columns: int = 6) -> np.ndarray:
    """Per case two rows: CF + real frames, then CF + generated frames, labelled."""
    blocks = []
    n_columns = min([n_columns, *(case["real"].shape[0] for case in cases)])  # cases may differ in length
    for case in cases:
        t = case["real"].shape[0]
        cols = np.linspace(0, t - 1, n_columns).round().astype(int)
        cf = enlarge(to_uint8(case["cf"]))
        for label, video in (("real", case["real"]), ("generated", case["fake"])):
            row = np.hstack([cf] + [enlarge(to_uint8(video[i])) for i in cols])
            names = [f"{case['case_id']} {label}"] + [f"frame {i}" for i in cols]
            blocks.append(np.vstack([label_band(row.shape[1], names), row]))
    return np.vstack(blocks)


def evaluate(ckpt: str | Path, data: str | None = None, split: str = "test", protocol: str = "both",
             out: str | Path | None = None, i3d: str | None = None, lpips: str | None = None,
             lpips_net: str = "vgg", device: str = "cpu", bf16: bool = False, sheet_cases: int = 4,
             i3d_size: int = 224) -> Path:
    """Score a checkpoint on a split; returns the output folder (see the module docstring).
    `i3d_size`: the I3D's input size; 224 is FVD's definition (smaller only for quick tests)."""
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol: '{protocol}' is not one of {', '.join(PROTOCOLS)}")
    ckpt = Path(ckpt)
    # <run dir>/eval/... for a run's checkpoint, <name>-eval/... beside one kept elsewhere; checked first
    home = ckpt.parent.parent / "eval" if ckpt.parent.name == "checkpoints" else ckpt.parent / f"{ckpt.stem}-eval"
    out = Path(out) if out else home / f"{split}-{Path(data).stem if data else 'own'}"
    if file_in_the_way(out) is not None:
        raise UserError(f"--out {out}: a file is in the way (expected a folder, new or to be added to)")
    module = load_module(ckpt, device)
    dm = _datamodule(module, ckpt, data)
    if data and split != "all":
        log.info("--data given: cases split by patient with the checkpoint's fractions and seed")
    samples = _split_cases(dm, split)
    size = module.cfg.data.size
    annotated = any(LesionKinetics.applies(s) for s in samples)
    reference, reference_note = training_rise(module, ckpt, None if data else dm) if annotated else ({}, "")
    scores = Scores(protocol, size, i3d, lpips, lpips_net, i3d_size, dm.cfg["km_threshold"], device,
                    reference)
    case_rows, sheet = score_samples(module, samples, scores, device, bf16, sheet_cases, desc=f"evaluating {split}")
    results = scores.results()
    kinetics = scores.kinetics
    if kinetics.rows:
        source = kinetics.const_rise_source()
        if source == "train":
            how = reference_note
        elif source == "scored set":
            how = f"the scored set's own mean real rise per kind, because {reference_note}"
        else:
            how = f"{reference_note}; the scored set's own mean for the kinds that split lacks ({source})"
        scores.settings["const_rise"] = f"the constant predictor of rise_skill_<kind>: {how}"
    report = {
        "checkpoint": str(ckpt.resolve()), "data": data or f"checkpoint's own ({dm.cfg['source']})",
        "split": split, "n_cases": len(samples), "size": size, "bf16": bf16,
        "metrics": {k: rounded(v) for k, v in results.items()}, "skipped": scores.skipped,
        **({"const_rise_source": kinetics.const_rise_source()} if kinetics.rows else {}),
        "settings": {**scores.settings, "standard": "frames in [0, 1]; psnr/ssim: mean over frames of per-frame "
                     "scores; _fov/_km/_lesion: restricted to that mask; temporal_error: mean |d fake - d real| "
                     "of consecutive frames in the field of view",
                     "paper": "the release's formulas on [-1, 1] tensors (PSNR 6.02 dB below the convention)"},
    }
    # every file of this evaluation lands together, or none does: never one beside an earlier run's
    with staged_outputs(out, OUTPUTS, "evaluate") as stage:
        with atomic_path(stage / "metrics.json") as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        with atomic_path(stage / "per_case.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in case_rows for k in row)))
            writer.writeheader()
            writer.writerows(case_rows)
        phases = scores.per_phase()
        if phases:
            with atomic_path(stage / "per_phase.csv") as tmp, open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(phases[0]))
                writer.writeheader()
                writer.writerows(phases)
        write_png(stage / "contact_sheet.png", contact_sheet(sheet))
        curves = kinetics.curves()
        if curves:
            kinetics_plot(curves, stage / "kinetics.png", f"{split} split, {len(samples)} cases: real vs generated")
        if kinetics.rows:
            with atomic_path(stage / "kinetics_cases.json") as tmp:
                tmp.write_text(json.dumps(kinetics.cases, separators=(",", ":")) + "\n")
            rises = kinetics.rises()
            if rises:
                rise_plot(rises, results, stage / "kinetics_cases.png",
                          f"{split} split: lesion rise per case, generated vs real")
    return out
