"""`fundus2video evaluate`: roll out every case of a split and score the videos.

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

import argparse
import csv
import json
import logging
import math
import warnings
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from tqdm import tqdm

from fundus2video.config import to_plain
from fundus2video.data_modules import Fundus2VideoDataModule
from fundus2video.errors import UserError
from fundus2video.hub import load_module
from fundus2video.io import atomic_path, file_in_the_way, staged_outputs
from fundus2video.knowledge import KM_THRESHOLD
from fundus2video.metrics.image import (
    PaperPSNR,
    PaperSSIM,
    TemporalError,
    VideoMSSSIM,
    VideoPSNR,
    VideoSSIM,
    msssim_min_side,
)
from fundus2video.metrics.kinetics import LesionKinetics, kinetics_plot, reference_rise, rise_plot
from fundus2video.module import Fundus2VideoModule
from fundus2video.video_io import write_png
from fundus2video.visuals import enlarge, label_band, to_uint8

log = logging.getLogger("fundus2video")

PROTOCOLS = ("standard", "paper", "both")
# the files an evaluation writes into --out (staged together; a rerun removes those it no longer makes)
OUTPUTS = {"metrics.json", "per_case.csv", "per_phase.csv", "contact_sheet.png", "kinetics.png",
           "kinetics_cases.json", "kinetics_cases.png"}
REGIONS = {"": None, "_fov": "roi", "_km": "km", "_lesion": "lesion"}  # metric suffix -> sample mask
MASKED = {**{f"{m}{suffix}": mask for suffix, mask in REGIONS.items() for m in ("psnr", "ssim")},
          "temporal_error": "roi"}


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


class Scores:
    """The metrics of the chosen protocols, aggregate and per case (one fresh set per case, merged
    into the aggregate, so nothing is computed twice)."""

    def __init__(self, protocol: str, size: int, i3d: str | None = None, lpips: str | None = None,
                 lpips_net: str = "vgg", i3d_size: int = 224, km_threshold: float = KM_THRESHOLD,
                 device: str = "cpu", reference_rise: dict[str, float] | None = None):
        self.device = torch.device(device)  # every metric, I3D and LPIPS included, computes there
        self.standard = protocol in ("standard", "both")
        self.paper = protocol in ("paper", "both")
        self.skipped: dict[str, str] = {}
        self.settings: dict[str, Any] = {"protocol": protocol}
        # LPIPS first (only its path is checked here): a missing named file stops before FVD says it skips
        self.lpips_path = self._load("lpips", lpips, "--lpips", f"torchvision's {lpips_net} ImageNet weights "
                                     "(vgg16-397923af.pth or alexnet-owt-7be5be79.pth)", lambda p: p,
                                     auto=({"vgg": "vgg16", "alex": "alexnet"}.get(lpips_net, "vgg16"),))
        self.i3d = self._load("fvd", i3d, "--i3d", "an I3D file (StyleGAN-V's i3d_torchscript.pt or pytorch-i3d's "
                              "i3d_pretrained_400.pt)", lambda p: __import__(
                                  "fundus2video.metrics.i3d", fromlist=["load_i3d"]).load_i3d(p, size=i3d_size
                                                                                             ).to(self.device),
                              auto=("i3d", "i3d_400"))
        self.lpips_net = lpips_net
        scales = next((s for s in (5, 4, 3) if msssim_min_side(s) <= size), 0)
        if self.standard and not scales:
            self.skipped["ms_ssim"] = f"frames of {size} px are too small (3 scales need {msssim_min_side(3)} px)"
        self.msssim_scales = scales
        self.aggregate = self.make()
        self.phases: dict[str, tuple[VideoPSNR, VideoSSIM]] = {}
        self.n_videos = 0
        # reference_rise: the training split's mean real rise per lesion kind (training_rise)
        self.kinetics = LesionKinetics(km_threshold, reference_rise)
        self.fvd = None
        if self.standard and self.i3d is not None:
            from fundus2video.metrics.fvd import FrechetVideoDistance

            self.fvd = FrechetVideoDistance(self.i3d).to(self.device)

    def _load(self, name: str, path: str | None, flag: str, what: str, loader, auto: tuple[str, ...] = ()):
        """`loader(file)`, or None with the reason in `skipped`. `path`: a file, or `auto` / a name of
        fundus2video.pretrained (`auto`: the first of `auto`), cached or fetched and verified there;
        when that cannot be had (offline, no verifiable download) the metric is skipped, not the run."""
        from fundus2video.pretrained import is_name, resolve

        wanted = self.standard if name == "lpips" else True
        if not wanted:
            return None
        if not path:
            reason = f"no {flag} file given ({what})"
        elif is_name(path):
            try:
                found = resolve(path, flag, auto)
            except UserError as err:  # not cached and not fetched (offline, no verifiable download, no network)
                reason = str(err)
            else:
                return loader(str(found))
        elif not Path(path).is_file():  # a file asked for by name: its absence is the user's to fix, not a skip
            raise UserError(f"{flag} {path}: file not found (expected {what}, or auto)")
        else:
            return loader(path)
        log.warning("%s skipped: %s", name.upper(), reason)
        self.skipped[name] = reason
        return None

    def _lpips(self) -> Metric:
        """One LPIPS network for the whole evaluation (its backbone file is hundreds of MB), its state
        reset for each case."""
        if getattr(self, "_lpips_metric", None) is None:
            from fundus2video.metrics.lpips import VideoLPIPS

            self._lpips_metric = VideoLPIPS(self.lpips_path, net=self.lpips_net).to(self.device)
        self._lpips_metric.reset()
        return self._lpips_metric

    def make(self) -> dict[str, Metric]:
        m: dict[str, Metric] = {}
        if self.standard:
            for suffix in REGIONS:
                m[f"psnr{suffix}"], m[f"ssim{suffix}"] = VideoPSNR(), VideoSSIM()
            m["temporal_error"] = TemporalError()
            if self.msssim_scales:
                m["ms_ssim"] = VideoMSSSIM(scales=self.msssim_scales)
            if self.lpips_path:
                m["lpips"] = self._lpips()
        if self.paper:
            m["paper_psnr"], m["paper_ssim"] = PaperPSNR(), PaperSSIM()
            if self.i3d is not None:
                from fundus2video.metrics.fvd import PaperFVD

                m["paper_fvd"] = PaperFVD(self.i3d)
        return {name: metric.to(self.device) for name, metric in m.items()}

    def case(self, fake01: Tensor, real01: Tensor, sample: dict) -> dict[str, float]:
        """Score one case (videos (1, T, 1, H, W) in [0, 1]); returns its per-case values."""
        metrics, values = self.make(), {}
        for name, metric in metrics.items():
            if name in ("paper_psnr", "paper_ssim"):
                metric.update(fake01 * 2 - 1, real01 * 2 - 1)  # the release's [-1, 1] tensors
            elif name in MASKED:
                mask = MASKED[name]
                metric.update(fake01, real01, sample[mask][None].to(fake01.device) if mask else None)
            else:  # whole frames in [0, 1]: ms_ssim, lpips, paper_fvd (which maps to [-1, 1] itself)
                metric.update(fake01, real01)
            values[name] = float(metric.compute())
            self.aggregate[name].merge_state(metric)
        if self.fvd is not None:
            self.fvd.update(fake01, real01)
            self.n_videos += 1
        if LesionKinetics.applies(sample):
            values.update(self.kinetics.update(fake01.cpu(), real01.cpu(), sample))
        for phase in dict.fromkeys(sample["phases"]) if self.standard and any(sample["phases"]) else ():
            idx = [i for i, p in enumerate(sample["phases"]) if p == phase]
            pair = self.phases.setdefault(phase, (VideoPSNR().to(self.device), VideoSSIM().to(self.device)))
            for metric in pair:
                metric.update(fake01[:, idx], real01[:, idx])
        return values

    def per_phase(self) -> list[dict]:
        """Mean PSNR and SSIM of the frames of each phase, in order of first appearance."""
        return [{"phase": phase, "frames": int(psnr.count), "psnr": round(float(psnr.compute()), 5),
                 "ssim": round(float(ssim.compute()), 5)} for phase, (psnr, ssim) in self.phases.items()]

    def results(self) -> dict[str, float]:
        with warnings.catch_warnings():  # the aggregates were filled by merge_state, not update
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            out = {name: float(metric.compute()) for name, metric in self.aggregate.items()}
        if self.fvd is not None:
            if self.n_videos >= 2:
                out["fvd"] = float(self.fvd.compute())
                self.settings["fvd"] = self.fvd.settings()
            else:
                self.skipped["fvd"] = "set-level FVD needs at least 2 videos"
        if "paper_fvd" in self.aggregate:
            self.settings["paper_fvd"] = self.aggregate["paper_fvd"].settings()
        if self.kinetics.rows:
            out.update(self.kinetics.compute())
        for name in ("psnr_lesion", "ssim_lesion", "psnr_km", "ssim_km"):
            metric = self.aggregate.get(name)
            if metric is not None:
                self.settings[f"{name}_frames_without_mask"] = int(metric.skipped)
        return out


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


def score_samples(module: Fundus2VideoModule, samples: list, scores: Scores, device: str = "cpu",
                  bf16: bool = False, sheet_cases: int = 0, desc: str = "scoring",
                  progress: bool = True) -> tuple[list, list]:
    """Roll out every sample and score it into `scores`; returns the per-case rows and the first
    `sheet_cases` cases' frames for the contact sheet."""
    case_rows, sheet = [], []
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if bf16 else nullcontext()
    for sample in tqdm(samples, desc=desc, unit="case", disable=not progress):
        with torch.inference_mode(), autocast:
            fake = module(sample["cf"][None].to(device), sample["frames"].shape[0]).float()
        # scored where the video was made: moving it to the CPU first would leave the GPU idle in scoring
        fake01, real01 = (fake.clamp(-1, 1) + 1) / 2, ((sample["frames"][None] + 1) / 2).to(fake.device)
        fake = fake.cpu()
        values = scores.case(fake01, real01, sample)
        case_rows.append({"case_id": sample["case_id"], "patient_id": sample["patient_id"],
                          "frames": real01.shape[1], **{k: _fmt(v) for k, v in values.items()}})
        if len(sheet) < sheet_cases:
            sheet.append({"case_id": sample["case_id"], "cf": sample["cf"], "real": sample["frames"],
                          "fake": fake[0]})
    return case_rows, sheet


def _fmt(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 5)


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
        "metrics": {k: _fmt(v) for k, v in results.items()}, "skipped": scores.skipped,
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from fundus2video.hub import check_device

    args.device = str(check_device(args.device, "--device"))
    out = evaluate(args.ckpt, args.data, args.split, args.protocol, args.out, args.i3d, args.lpips, args.lpips_net,
                   args.device, args.bf16)
    report = json.loads((out / "metrics.json").read_text())
    width = max(len(k) for k in report["metrics"]) if report["metrics"] else 0
    print(f"{report['n_cases']} cases ({report['split']}), protocol {report['settings']['protocol']}:")
    for name, value in report["metrics"].items():
        print(f"  {name:<{width}}  {value}")
    for name, reason in report["skipped"].items():
        print(f"  {name:<{width}}  SKIPPED: {reason}")
    print(f"written: {out}/metrics.json, per_case.csv, contact_sheet.png"
          + "".join(f", {name}" for name in ("per_phase.csv", "kinetics.png", "kinetics_cases.json",
                                              "kinetics_cases.png") if (out / name).is_file()))
    return 0
