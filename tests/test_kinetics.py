"""Lesion kinetics: the scores on videos whose answer is known, the masks that carry them (phantom
and case folders), and `evaluate` writing them with the curves picture."""

import csv
import json
import math

import cv2
import numpy as np
import pytest
import torch

from fundus2video.data_modules.cases import folder_records
from fundus2video.data_modules.datasets import FileVideoDataset, PhantomVideoDataset
from fundus2video.data_modules.phantom import DYNAMIC_KINDS, LESION_KINDS
from fundus2video.data_modules.phantom_files import write_phantom
from fundus2video.data_modules.transforms import PairedTransform
from fundus2video.evaluation import evaluate
from fundus2video.metrics.kinetics import DIRECTION_MIN, LesionKinetics, reference_rise
from fundus2video.training import train


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


# A set of cases of known answer: two lesion kinds, a leakage square (dynamic) and a blocked square
# (static), whose real rises differ from case to case.
REAL_RISE = {"leakage": [0.30, 0.10, 0.45, 0.02, 0.25], "blocked": [-0.08, 0.0, -0.20, 0.12, 0.06]}
SIZE, T = 24, 5
SQUARES = {"leakage": (slice(2, 8), slice(2, 8)), "blocked": (slice(2, 8), slice(14, 20))}


def _masks() -> dict:
    masks = {}
    for kind, (ys, xs) in SQUARES.items():
        m = torch.zeros(1, SIZE, SIZE)
        m[:, ys, xs] = 1
        masks[kind] = m
    return masks


def _video(rises: dict[str, float], base: float = 0.5) -> torch.Tensor:
    """(T, 1, S, S) in [0, 1]: a flat background, each square ramping by its rise from first to last frame."""
    video = torch.full((T, 1, SIZE, SIZE), base)
    ramp = torch.linspace(0, 1, T).view(T, 1, 1)
    for kind, (ys, xs) in SQUARES.items():
        video[:, 0, ys, xs] = base + rises[kind] * ramp
    return video


def _case_sample(i: int, real: torch.Tensor) -> dict:
    masks = _masks()
    km = ((real[-1] - real[0]).abs() > 45 / 255).float()  # the real video's knowledge mask, as the datasets make it
    return {"roi": torch.ones(1, SIZE, SIZE), "lesion": masks["leakage"], "km": km,
            "times": torch.linspace(10, 600, T), "case_id": f"c{i}", "patient_id": f"p{i}",
            "regions": {**masks, "vessels": torch.zeros(1, SIZE, SIZE)}}


def _score(fake_rises, reference=None, fake_video=None) -> tuple[LesionKinetics, dict]:
    """Score the five cases; `fake_rises(i)`: the generated rises of case i (or `fake_video(i, real)`)."""
    kin = LesionKinetics(reference_rise=reference)
    for i in range(5):
        real = _video({k: REAL_RISE[k][i] for k in SQUARES})
        fake = fake_video(i, real) if fake_video else _video(fake_rises(i))
        kin.update(fake[None], real[None], _case_sample(i, real))
    return kin, kin.compute()


def _skill(gen: np.ndarray, real: np.ndarray, const: np.ndarray) -> float:
    return 1 - float(((gen - real) ** 2).sum() / ((const - real) ** 2).sum())


def test_a_perfect_generator_scores_perfectly_case_by_case():
    kin, out = _score(lambda i: {k: REAL_RISE[k][i] for k in SQUARES}, reference={"leakage": 0.2, "blocked": 0.0})
    for k in ("leakage", "blocked", "all"):
        assert out[f"rise_skill_{k}"] == pytest.approx(1, abs=1e-6)
        assert out[f"rise_corr_{k}"] == pytest.approx(1, abs=1e-6)
        assert out[f"direction_acc_{k}"] == 1
        assert out[f"rise_mae_{k}"] == pytest.approx(0, abs=1e-6)
    assert out["n_leakage"] == out["n_blocked"] == 5 and out["n_all"] == 10
    # the lesions whose real rise is at least 10 grey levels: 0.02 and 0.0 are not
    real = np.array(REAL_RISE["leakage"] + REAL_RISE["blocked"])
    assert out["direction_n_all"] == int((np.abs(real) >= DIRECTION_MIN).sum()) == 8
    assert out["direction_n_leakage"] == 4
    rows = kin.rows
    assert [r["real_rise_leakage"] for r in rows] == pytest.approx(REAL_RISE["leakage"], abs=1e-6)
    assert [r["rise_blocked"] for r in rows] == pytest.approx(REAL_RISE["blocked"], abs=1e-6)
    assert all(r["rise_error"] == pytest.approx(0, abs=1e-6) and r["false_dark"] == r["real_false_dark"] for r in rows)
    assert out["const_rise_mae_leakage"] == pytest.approx(np.abs(0.2 - np.array(REAL_RISE["leakage"])).mean())


def test_a_static_video_scores_the_skill_of_predicting_zero_and_no_direction():
    reference = {"leakage": 0.2, "blocked": -0.02}
    _, out = _score(None, reference, fake_video=lambda i, real: real[:1].expand_as(real).clone())
    zeros = {k: np.zeros(5) for k in SQUARES}
    for k in SQUARES:
        real = np.array(REAL_RISE[k])
        expected = _skill(zeros[k], real, np.full(5, reference[k]))
        assert out[f"rise_skill_{k}"] == pytest.approx(expected, abs=1e-5)
        assert out[f"rise_mae_{k}"] == pytest.approx(np.abs(real).mean(), abs=1e-6)
        assert out[f"direction_acc_{k}"] == 0  # every lesion that really changes is judged, and missed
        assert math.isnan(out[f"rise_corr_{k}"])  # a rise that is the same in every case follows nothing
    real_all = np.concatenate([REAL_RISE[k] for k in SQUARES])
    const_all = np.concatenate([np.full(5, reference[k]) for k in SQUARES])
    assert out["rise_skill_all"] == pytest.approx(_skill(np.zeros(10), real_all, const_all), abs=1e-5)
    assert out["rise_skill_leakage"] < 0  # predicting no change is worse than predicting the training mean
    assert out["direction_acc_all"] == 0


def test_a_generator_that_predicts_the_training_mean_has_no_skill():
    reference = {"leakage": 0.17, "blocked": -0.03}
    _, out = _score(lambda i: reference, reference)
    for k in ("leakage", "blocked", "all"):
        assert out[f"rise_skill_{k}"] == pytest.approx(0, abs=1e-4)
        assert out[f"rise_mae_{k}"] == pytest.approx(out[f"const_rise_mae_{k}"], abs=1e-5)
    assert out["const_rise_leakage"] == 0.17 and out["const_rise_blocked"] == -0.03
    # a generator that follows the cases but overshoots: r = 1, the skill of its errors
    _, out = _score(lambda i: {k: 1.5 * REAL_RISE[k][i] for k in SQUARES}, reference)
    real = np.array(REAL_RISE["leakage"])
    assert out["rise_corr_leakage"] == pytest.approx(1, abs=1e-5)
    assert out["rise_skill_leakage"] == pytest.approx(_skill(1.5 * real, real, np.full(5, 0.17)), abs=1e-5)


def test_darkening_where_the_real_video_brightens_is_caught():
    def fake_video(i, real):
        fake = _video({k: -REAL_RISE[k][i] for k in SQUARES})
        fake[-1, :, 14:24, 0:10] -= 0.4  # the background darkens at the end in a 10 x 10 block
        return fake

    kin, out = _score(None, fake_video=fake_video)
    assert out["direction_acc_leakage"] == 0 and out["direction_acc_blocked"] == 0 and out["direction_acc_all"] == 0
    assert out["rise_corr_leakage"] == pytest.approx(-1, abs=1e-5) and out["rise_skill_leakage"] < 0
    # the background: outside the dynamic lesion (leakage), grown by a 5 x 5 disc; no vessels
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    background = cv2.dilate(_masks()["leakage"][0].numpy().astype(np.uint8), disc) == 0
    block = np.zeros((SIZE, SIZE), bool)
    block[14:24, 0:10] = True
    blocked = np.zeros((SIZE, SIZE), bool)
    blocked[SQUARES["blocked"]] = True  # a static kind: part of the background
    thr = 45 / 255

    def share(mask):
        return (mask & background).sum() / background.sum()

    for i, row in enumerate(kin.rows):
        r = REAL_RISE["blocked"][i]  # the generated blocked square changes by -r
        assert row["false_dark"] == pytest.approx(share(block | (blocked & (-r < -thr))), abs=1e-6)
        assert row["false_bright"] == pytest.approx(share(blocked & (-r > thr)), abs=1e-6)
        assert row["real_false_dark"] == pytest.approx(share(blocked & (r < -thr)), abs=1e-6)
        assert row["real_false_bright"] == pytest.approx(share(blocked & (r > thr)), abs=1e-6)
        assert row["false_dark"] > 0.2 > row["real_false_dark"]
        assert row["rise_error"] == pytest.approx(2 * abs(REAL_RISE["leakage"][i]), abs=1e-5)


def test_km_iou_measures_the_knowledge_mask_against_the_dynamic_lesions():
    video, sample = _sample()
    sample["km"] = sample["lesion"].clone()
    assert LesionKinetics().update(video, video, sample)["km_iou"] == 1
    sample["km"] = torch.zeros_like(sample["lesion"])
    sample["km"][:, 20:24, 20:24] = 1
    assert LesionKinetics().update(video, video, sample)["km_iou"] == 0
    sample["km"][:, 4:10, 4:7] = 1  # half the lesion, and the 16 px outside it: 18 / (36 + 16)
    assert LesionKinetics().update(video, video, sample)["km_iou"] == pytest.approx(18 / 52)
    sample["km"] = torch.zeros_like(sample["lesion"])
    sample["regions"] = {"blocked": sample["lesion"].clone()}
    sample["lesion"] = torch.zeros_like(sample["km"])  # no dynamic lesion, nothing changes: no IoU to give
    assert math.isnan(LesionKinetics().update(video[:1].expand_as(video), video[:1].expand_as(video),
                                              sample)["km_iou"])


def test_the_constant_comes_from_the_training_split_and_falls_back_to_the_scored_set():
    # the training split: three cases of known rises, as the datasets give them (frames in [-1, 1])
    train_rise = {"leakage": [0.1, 0.2, 0.6], "blocked": [0.0, -0.1, -0.2]}
    train = []
    for i in range(3):
        real = _video({k: train_rise[k][i] for k in SQUARES})
        train.append({**_case_sample(i, real), "frames": real * 2 - 1})
    train.append({**_case_sample(9, _video({"leakage": 0, "blocked": 0})), "frames": torch.zeros(T, 1, SIZE, SIZE),
                  "lesion": torch.zeros(1, SIZE, SIZE), "regions": {}})  # no annotations: not counted
    means, n = reference_rise(train)
    assert n == 3 and means == pytest.approx({"leakage": 0.3, "blocked": -0.1}, abs=1e-6)
    perfect = lambda i: {k: REAL_RISE[k][i] for k in SQUARES}  # noqa: E731
    kin, out = _score(perfect, means)
    assert kin.const_rise_source() == "train"
    assert out["const_rise_leakage"] == pytest.approx(0.3) and out["const_rise_blocked"] == pytest.approx(-0.1)
    real = np.array(REAL_RISE["leakage"])
    assert out["const_rise_mae_leakage"] == pytest.approx(np.abs(0.3 - real).mean(), abs=1e-6)
    # no reference: the scored set's own mean real rise
    kin, out = _score(perfect)
    assert kin.const_rise_source() == "scored set"
    assert out["const_rise_leakage"] == pytest.approx(real.mean(), abs=1e-6)
    assert out["const_rise_mae_leakage"] == pytest.approx(np.abs(real.mean() - real).mean(), abs=1e-6)
    # a kind the training split lacks falls back alone
    kin, out = _score(perfect, {"leakage": 0.3})
    assert kin.const_rise_source() == "train; scored set for blocked"
    assert out["const_rise_blocked"] == pytest.approx(np.mean(REAL_RISE["blocked"]), abs=1e-6)


def test_fewer_than_three_cases_have_no_correlation_and_cases_keep_their_curves():
    kin = LesionKinetics()
    for i in range(2):
        real = _video({k: REAL_RISE[k][i] for k in SQUARES})
        kin.update(real, real, _case_sample(i, real))
    out = kin.compute()
    assert math.isnan(out["rise_corr_leakage"]) and out["rise_skill_leakage"] == pytest.approx(1, abs=1e-6)
    case = kin.cases[1]
    assert case["case_id"] == "c1" and case["patient_id"] == "p1" and len(case["times"]) == T
    assert set(case["kinds"]) == {"leakage", "blocked"} and case["kinds"]["leakage"]["px"] == 36
    curve = case["kinds"]["leakage"]["real"]
    assert len(curve) == T and curve[-1] - curve[0] == pytest.approx(REAL_RISE["leakage"][1], abs=1e-4)
    json.dumps(kin.cases, allow_nan=False)  # NaN is written as null


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
    from fundus2video.evaluation import evaluation_data
    from fundus2video.hub import load_module

    run_dir = train(tiny("optim.epochs_constant=1", "optim.epochs_decay=0", "data.phantom.n_test=3",
                         "data.phantom.n_train=4"))
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    out = evaluate(ckpt, data="phantom", split="test", protocol="standard", out=tmp_path / "eval")
    report = json.loads((out / "metrics.json").read_text())
    metrics = report["metrics"]
    for key in ("curve_mae", "lesion_rise", "real_lesion_rise", "lesion_rise_ratio", "false_bright", "time_corr",
                "false_dark", "real_false_dark", "rise_error", "km_iou", "rise_skill_all", "rise_corr_all",
                "direction_acc_all", "direction_n_all", "rise_mae_all", "const_rise_mae_all", "n_all"):
        assert key in metrics, key
    assert metrics["real_lesion_rise"] > 0.1  # the phantom's dynamic lesions brighten
    assert any(k.startswith("curve_mae_") for k in metrics)
    with open(out / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    for key in ("lesion_rise", "false_bright", "false_dark", "rise_error", "km_iou"):
        assert key in rows[0], key
    # the constant predictor: the mean real rise per kind over the checkpoint's training split, computed
    # here from the training samples' real videos and masks
    samples = evaluation_data(load_module(ckpt), ckpt, None, "train")
    rises: dict[str, list[float]] = {}
    for sample in samples:
        real = (sample["frames"][:, 0] + 1) / 2
        roi = sample["roi"][0] > 0
        for kind, mask in sample["regions"].items():
            m = (mask[0] > 0) & roi
            if kind != "vessels" and int(m.sum()) >= 4:
                rises.setdefault(kind, []).append(float(real[-1][m].mean() - real[0][m].mean()))
    scored = {k[len("n_"):] for k in metrics if k.startswith("n_") and k != "n_all"}
    assert scored and scored & set(rises)
    for kind in scored:
        got = [float(r[f"real_rise_{kind}"]) for r in rows if r.get(f"real_rise_{kind}")]
        assert metrics[f"n_{kind}"] == len(got)
        expected = np.mean(rises[kind]) if kind in rises else np.mean(got)
        assert metrics[f"const_rise_{kind}"] == pytest.approx(expected, abs=1e-4), kind
    lacking = sorted(scored - set(rises), key=list(LESION_KINDS).index)
    assert report["const_rise_source"] == ("train" if not lacking else f"train; scored set for {', '.join(lacking)}")
    # one item per case, from which the per-case rises are recomputed
    cases = json.loads((out / "kinetics_cases.json").read_text())
    assert [c["case_id"] for c in cases] == [r["case_id"] for r in rows] and len(cases) == 3
    for case, row in zip(cases, rows, strict=True):
        assert len(case["times"]) == int(row["frames"])
        for kind, c in case["kinds"].items():
            assert c["px"] >= 4 and len(c["real"]) == len(c["fake"]) == len(case["times"])
            assert c["fake"][-1] - c["fake"][0] == pytest.approx(float(row[f"rise_{kind}"]), abs=2e-5)
            assert c["real"][-1] - c["real"][0] == pytest.approx(float(row[f"real_rise_{kind}"]), abs=2e-5)
    for name in ("kinetics.png", "kinetics_cases.png"):
        png = cv2.imread(str(out / name))
        assert png is not None and png.shape[0] > 200, name
