"""Scoring generated videos against real ones, case by case and over a set: the metrics of each
protocol (`evaluate`'s docstring defines them) and the roll-out that feeds them. Shared by
`fundus2video evaluate` and the learning-curve callback, so a curve's point is scored exactly as a
finished run is."""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from tqdm import tqdm

from fundus2video.devices import device_type
from fundus2video.errors import UserError
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
from fundus2video.metrics.kinetics import LesionKinetics
from fundus2video.module import Fundus2VideoModule

log = logging.getLogger("fundus2video")

PROTOCOLS = ("standard", "paper", "both")
REGIONS = {"": None, "_fov": "roi", "_km": "km", "_lesion": "lesion"}  # metric suffix -> sample mask
MASKED = {**{f"{m}{suffix}": mask for suffix, mask in REGIONS.items() for m in ("psnr", "ssim")},
          "temporal_error": "roi"}


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
        from fundus2video.pretrained import is_name, weights_file

        wanted = self.standard if name == "lpips" else True
        if not wanted:
            return None
        if not path:
            reason = f"no {flag} file given ({what})"
        elif is_name(path):
            try:
                found = weights_file(path, flag, auto)
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


def score_samples(module: Fundus2VideoModule, samples: list, scores: Scores, device: str = "cpu",
                  bf16: bool = False, sheet_cases: int = 0, desc: str = "scoring",
                  progress: bool = True) -> tuple[list, list]:
    """Roll out every sample and score it into `scores`; returns the per-case rows and the first
    `sheet_cases` cases' frames for the contact sheet."""
    case_rows, sheet = [], []
    autocast = torch.autocast(device_type(device), dtype=torch.bfloat16) if bf16 else nullcontext()
    for sample in tqdm(samples, desc=desc, unit="case", disable=not progress):
        with torch.inference_mode(), autocast:
            fake = module(sample["cf"][None].to(device), sample["frames"].shape[0]).float()
        # scored where the video was made: moving it to the CPU first would leave the GPU idle in scoring
        fake01, real01 = (fake.clamp(-1, 1) + 1) / 2, ((sample["frames"][None] + 1) / 2).to(fake.device)
        fake = fake.cpu()
        values = scores.case(fake01, real01, sample)
        case_rows.append({"case_id": sample["case_id"], "patient_id": sample["patient_id"],
                          "frames": real01.shape[1], **{k: rounded(v) for k, v in values.items()}})
        if len(sheet) < sheet_cases:
            sheet.append({"case_id": sample["case_id"], "cf": sample["cf"], "real": sample["frames"],
                          "fake": fake[0]})
    return case_rows, sheet


def rounded(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 5)
