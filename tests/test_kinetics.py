"""Lesion kinetics: the scores on videos whose answer is known, the masks that carry them (phantom
and case folders), and `evaluate` writing them with the curves picture."""

import json

import cv2
import numpy as np
import pytest
import torch

from fundus2video.commands.evaluate import evaluate
from fundus2video.commands.train import train
from fundus2video.data_modules.cases import folder_records
from fundus2video.data_modules.datasets import FileVideoDataset, PhantomVideoDataset
from fundus2video.data_modules.phantom import DYNAMIC_KINDS, LESION_KINDS
from fundus2video.data_modules.phantom_files import write_phantom
from fundus2video.data_modules.transforms import PairedTransform
from fundus2video.metrics.kinetics import LesionKinetics


def _sample(t: int = 6, size: int = 24) -> tuple[torch.Tensor, dict]:
    """A video (T, 1, S, S) in [0, 1]: a dark background, a lesion square that brightens by 0.5, a
    vessel stripe that fades, and the sample dict with its masks."""
    video = torch.full((t, 1, size, size), 0.2)
    lesion = torch.zeros(1, size, size)
    lesion[:, 4:10, 4:10] = 1
    vessels = torch.zeros(1, size, size)
    vessels[:, 16:18, :] = 1
    ramp = torch.linspace(0, 0.5, t)
    video[:, :, 4:10, 4:10] += ramp.view(t, 1, 1, 1)
    video[:, :, 16:18, :] = torch.linspace(0.9, 0.3, t).view(t, 1, 1, 1)
    video += 0.05 * torch.linspace(0, 1, t).view(t, 1, 1, 1) ** 2  # the global time course
    sample = {"roi": torch.ones(1, size, size), "lesion": lesion, "times": torch.linspace(10, 600, t),
              "regions": {"leakage": lesion, "blocked": torch.zeros(1, size, size), "vessels": vessels}}
    return video, sample


def test_a_perfect_video_scores_perfectly():
    video, sample = _sample()
    kin = LesionKinetics()
    row = kin.update(video[None], video[None], sample)
    assert row["curve_mae_leakage"] == 0 and row["curve_mae"] == 0
    assert row["lesion_rise"] == pytest.approx(row["real_lesion_rise"]) == pytest.approx(0.55, abs=1e-5)
    assert row["false_bright"] == 0 and row["real_false_bright"] == 0
    assert row["time_corr"] == pytest.approx(1.0)
    assert "curve_mae_blocked" not in row  # an empty mask gives no curve
    out = kin.compute()
    assert out["lesion_rise_ratio"] == pytest.approx(1.0)
    assert set(kin.curves()) == {"leakage"}


def test_a_static_video_has_no_rise_and_false_leakage_is_counted():
    video, sample = _sample()
    static = video[:1].expand_as(video).clone()  # the first frame held: no time course at all
    kin = LesionKinetics()
    row = kin.update(static[None], video[None], sample)
    assert row["lesion_rise"] == 0 and row["real_lesion_rise"] > 0.5
    assert row["curve_mae_leakage"] > 0.2
    assert row["time_corr"] == 0  # a video with no time course follows none
    assert kin.compute()["lesion_rise_ratio"] == 0
    # leakage painted in the background: a quarter of the background brightens by 0.4 at the end
    fake = video.clone()
    fake[-1, :, 12:24, 12:24] += 0.4
    row = LesionKinetics().update(fake, video, sample)
    # the background: outside the lesion and the vessels, each grown by a 5 x 5 disc
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    exclude = ((sample["lesion"][0] + sample["regions"]["vessels"][0]) > 0).numpy().astype(np.uint8)
    background = torch.from_numpy(cv2.dilate(exclude, disc) == 0).float()
    assert 0 < background.mean() < 0.7
    bright = torch.zeros_like(background)
    bright[12:24, 12:24] = 1
    expected = float((bright * background).sum() / background.sum())
    assert row["false_bright"] == pytest.approx(expected, abs=1e-6) and row["false_bright"] > 0.2
    assert row["real_false_bright"] == 0


def test_without_kinds_the_lesion_mask_gives_one_curve():
    video, sample = _sample()
    del sample["regions"]
    kin = LesionKinetics()
    row = kin.update(video, video, sample)
    assert "curve_mae_lesion" in row and not LesionKinetics.applies({"lesion": torch.zeros(1, 4, 4)})


def test_phantom_samples_carry_every_kind_and_the_vessels_only_when_asked():
    ds = PhantomVideoDataset("test", 3, 32, 4, render_size=64)
    assert "regions" not in ds[0]  # training samples stay as they were
    ds.with_regions = True
    sample = ds[0]
    assert set(sample["regions"]) == {*LESION_KINDS, "vessels"}
    assert all(m.shape == (1, 32, 32) for m in sample["regions"].values())
    assert sample["regions"]["vessels"].sum() > 4  # the larger vessels (thin at this size)
    union = torch.stack([sample["regions"][k] for k in DYNAMIC_KINDS]).amax(0)
    # the lesion mask is the union of the dynamic kinds (resized alike)
    assert float((union != sample["lesion"]).float().mean()) < 0.01


def test_case_folders_read_lesion_kind_and_vessel_masks(tmp_path):
    write_phantom(tmp_path / "data", 2, size=48, n_frames=4, video="png", progress=False)
    case = sorted(p for p in (tmp_path / "data").iterdir() if p.is_dir())[0]
    written = {p.name for p in case.glob("*.png")}
    assert "vessels.png" in written and any(n.startswith("lesion_") for n in written)
    for p in case.glob("lesion_*.png"):
        p.unlink()
    mask = np.zeros((48, 48), np.uint8)
    mask[10:20, 10:20] = 255
    cv2.imwrite(str(case / "lesion_leakage.png"), mask)
    cv2.imwrite(str(case / "vessels.png"), mask[::-1].copy())
    rec = next(r for r in folder_records(tmp_path / "data") if r.case_id == case.name)
    assert set(rec.regions) == {"leakage", "vessels"}
    ds = FileVideoDataset([rec], 32, 4, 1, False, PairedTransform(32, train=False))
    assert "regions" not in ds[0]
    ds.with_regions = True
    sample = ds[0]
    assert set(sample["regions"]) == {"leakage", "vessels"}
    assert 0 < float(sample["regions"]["leakage"].mean()) < 0.2


def test_evaluate_writes_the_kinetics_scores_and_curves(tiny, tmp_path):
    run_dir = train(tiny("optim.epochs_constant=1", "optim.epochs_decay=0", "data.phantom.n_test=3"))
    out = evaluate(run_dir / "checkpoints" / "last.ckpt", data="phantom", split="test", protocol="standard",
                   out=tmp_path / "eval")
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    for key in ("curve_mae", "lesion_rise", "real_lesion_rise", "lesion_rise_ratio", "false_bright", "time_corr"):
        assert key in metrics
    assert metrics["real_lesion_rise"] > 0.1  # the phantom's dynamic lesions brighten
    assert any(k.startswith("curve_mae_") for k in metrics)
    header = (out / "per_case.csv").read_text().splitlines()[0].split(",")
    assert "lesion_rise" in header and "false_bright" in header
    png = cv2.imread(str(out / "kinetics.png"))
    assert png is not None and png.shape[0] > 200
