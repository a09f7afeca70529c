"""`fundus2video ablation`: the full method, the pix2pixHD baseline and each ablation, trained on
the phantom at one small budget and seed, evaluated on the phantom's test split.

Writes into `<out>/`: `ablation.md` and `ablation.csv`, `ablation.png` (one test case across
variants) and the run directory of every variant. Scores (frames in [0, 1], means over the test
cases): PSNR and SSIM over the whole frame and inside the phantom's lesion regions; and two
measures of the time course, which PSNR hardly sees: `time_corr`, the correlation between the
real and the generated per-frame mean brightness in the field of view (1 = the video brightens
and fades when the real one does), and `lesion_rise`, how much the lesions brighten from the
first to the last generated frame (the real videos' value is in the table's caption).
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torchmetrics.functional.image import structural_similarity_index_measure
from tqdm import tqdm

from fundus2video.config import load_config, to_plain
from fundus2video.data_modules import Fundus2VideoDataModule
from fundus2video.module import Fundus2VideoModule
from fundus2video.train import train
from fundus2video.video_io import atomic_path, write_png
from fundus2video.visuals import enlarge, label_band, to_uint8

log = logging.getLogger("fundus2video")

VARIANTS = ["fundus2video", "pix2pixhd", "ablations/no_kba", "ablations/no_kad", "ablations/no_mask_nce",
            "ablations/no_km", "ablations/lesion_mask"]

# The small budget every variant gets: the smoke experiment's sizes, no VGG (no ImageNet weights here).
BUDGET = [
    "data.size=64", "data.n_frames=8", "data.phantom.render_size=128", "data.phantom.n_train=32",
    "data.phantom.n_val=2", "data.phantom.n_test=8", "data.augment.crop=false", "data.augment.affine_p=0.0",
    "data.num_workers=0", "model.init=pytorch", "model.generator.ngf=16", "model.generator.n_downsample=3",
    "model.generator.n_blocks=3", "model.discriminator.ndf=16", "model.discriminator.n_layers=2", "loss.vgg=0",
    "loss.l1=20", "loss.nce_patches=64", "loss.nce_layers=[0,4,8,12,13]", "optim.lr=0.0005",
    "optim.epochs_constant=4", "optim.epochs_decay=4", "rollout.ss_steps=150", "rollout.ss_interval=15",
    "trainer.accelerator=cpu", "trainer.devices=1", "logging.wandb=disabled", "logging.n_samples=1",
    "trainer.enable_progress_bar=false", "seed=7",
]


def _masked_psnr(fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR (data range 1) of the pixels where mask is set, over all frames."""
    m = mask.expand_as(real).bool()
    if not m.any():
        return float("nan")
    mse = torch.mean((fake[m] - real[m]) ** 2).clamp_min(1e-10)
    return float(10 * torch.log10(1.0 / mse))


@torch.no_grad()
def evaluate_test_split(ckpt: Path) -> tuple[dict[str, float], dict]:
    """Scores over the phantom's test split, and the first case's frames for the picture."""
    module = Fundus2VideoModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = Fundus2VideoDataModule(to_plain(module.cfg.data))
    dm.setup()
    sums = {"psnr": [], "ssim": [], "psnr_lesion": [], "ssim_lesion": [], "time_corr": [], "lesion_rise": [],
            "real_lesion_rise": []}
    first = None
    for sample in dm.datasets["test"]:
        fake = (module(sample["cf"][None], sample["frames"].shape[0])[0] + 1) / 2  # (T, 1, H, W)
        real = (sample["frames"] + 1) / 2
        lesion = sample["lesion"]
        sums["psnr"].append(_masked_psnr(fake, real, torch.ones_like(lesion)))
        ssim_map = structural_similarity_index_measure(fake, real, data_range=1.0, return_full_image=True)[1]
        sums["ssim"].append(float(ssim_map.mean()))
        sums["psnr_lesion"].append(_masked_psnr(fake, real, lesion))
        les = lesion.expand_as(ssim_map).bool()
        sums["ssim_lesion"].append(float(ssim_map[les].mean()) if les.any() else float("nan"))
        roi = sample["roi"].bool()
        curves = [torch.stack([f[0][roi[0]].mean() for f in v]) for v in (real, fake)]
        sums["time_corr"].append(float(torch.corrcoef(torch.stack(curves))[0, 1]))
        if lesion.any():
            rise = [float(v[-1][lesion.bool()].mean() - v[0][lesion.bool()].mean()) for v in (real, fake)]
            sums["real_lesion_rise"].append(rise[0])
            sums["lesion_rise"].append(rise[1])
        if first is None:
            first = {"cf": sample["cf"], "real": sample["frames"], "fake": fake * 2 - 1}
    return {k: float(np.nanmedian(v) if k == "time_corr" else np.nanmean(v)) for k, v in sums.items()}, first


def contact_sheet(cases: dict[str, dict], n_columns: int = 6) -> np.ndarray:
    """Rows: real FFA, then each variant; columns: evenly spaced frames; CF at the left."""
    any_case = next(iter(cases.values()))
    t = any_case["real"].shape[0]
    cols = np.linspace(0, t - 1, min(n_columns, t)).round().astype(int)
    rows = [("real", any_case["real"])] + [(name, c["fake"]) for name, c in cases.items()]
    cf = enlarge(to_uint8(any_case["cf"]))
    blocks = []
    for name, video in rows:
        row = np.hstack([cf] + [enlarge(to_uint8(video[i])) for i in cols])
        blocks.append(np.vstack([label_band(row.shape[1], [name] + [f"frame {i}" for i in cols]), row]))
    return np.vstack(blocks)


def run_ablation(out: str | Path, variants: list[str] | None = None, extra: list[str] | None = None,
                 evaluate_only: bool = False) -> Path:
    """Train (unless `evaluate_only`: reuse `<out>/<variant>/latest`) and evaluate every variant."""
    out = Path(out)
    rows, pictures = [], {}
    previous = {}  # training times of an earlier full run, kept when only re-evaluating
    if evaluate_only and (out / "ablation.csv").is_file():
        with open(out / "ablation.csv", newline="") as f:
            previous = {r["variant"]: float(r["train_s"]) for r in csv.DictReader(f)}
    for variant in tqdm(variants or VARIANTS, desc="ablation", unit="variant"):
        name = Path(variant).name
        cfg = load_config(Path("experiments") / f"{variant}.yaml",
                          [*BUDGET, f"name={name}", f"logging.root={out}", *(extra or [])])
        start = time.perf_counter()
        run_dir = (out / name / "latest").resolve() if evaluate_only else train(cfg)
        seconds = previous.get(name, float("nan")) if evaluate_only else time.perf_counter() - start
        scores, picture = evaluate_test_split(run_dir / "checkpoints" / "last.ckpt")
        rows.append({"variant": name, **{k: round(v, 3) for k, v in scores.items()},
                     "train_s": round(seconds, 1), "run_dir": str(run_dir)})
        pictures[name] = picture
        log.info("%s: %s", name, scores)
    keys = ["variant", "psnr", "ssim", "psnr_lesion", "ssim_lesion", "time_corr", "lesion_rise", "train_s"]
    with atomic_path(out / "ablation.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*keys, "real_lesion_rise", "run_dir"])
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    budget = " ".join(BUDGET + (extra or []))
    real_rise = rows[0]["real_lesion_rise"]
    with atomic_path(out / "ablation.md") as tmp:
        tmp.write_text("\n".join(lines) + f"\n\nPhantom test split; "
                       f"real videos' lesion_rise: {real_rise}. "
                       f"Budget (overrides of each experiment): `{budget}`\n")
    write_png(out / "ablation.png", contact_sheet(pictures))
    OmegaConf.save(OmegaConf.create({"variants": variants or VARIANTS, "budget": BUDGET + (extra or [])}),
                   out / "ablation_settings.yaml")
    return out
