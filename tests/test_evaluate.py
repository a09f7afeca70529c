"""`fundus2video evaluate` after a short training: every output, both protocols, FVD and LPIPS with
random-weight files of the real formats, and loud skips when a weights file is missing."""

import csv
import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fundus2video.commands.cli import main
from fundus2video.config import load_config
from fundus2video.evaluation import evaluate
from fundus2video.metrics.lpips import LPIPSBackbone
from fundus2video.training import train
from tests.conftest import TINY


class Detector(nn.Module):
    """StyleGAN-V's i3d_torchscript.pt calling convention around a tiny random network."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, 3, stride=(1, 4, 4))
        self.head = nn.Linear(8, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        logits = self.head(F.relu(self.conv(x)).mean(dim=(2, 3, 4)))
        return logits if return_features else logits.softmax(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(Detector()), root / "i3d_torchscript.pt")
    torch.save(LPIPSBackbone("alex").state_dict(), root / "alexnet.pth")
    cfg = load_config("experiments/smoke.yaml", [*TINY, f"logging.root={root}", "trainer.max_epochs=1",
                                                 "data.n_frames=10", "data.phantom.n_test=3"])
    return root, train(cfg) / "checkpoints" / "last.ckpt"


def test_evaluate_writes_every_output_with_both_protocols(trained):
    root, ckpt = trained
    out = evaluate(ckpt, protocol="both", out=root / "eval", i3d=str(root / "i3d_torchscript.pt"),
                   lpips=str(root / "alexnet.pth"), lpips_net="alex", i3d_size=64)
    report = json.loads((out / "metrics.json").read_text())
    m = report["metrics"]
    for name in ("psnr", "ssim", "psnr_fov", "psnr_km", "psnr_lesion", "ssim_lesion", "temporal_error", "lpips",
                 "fvd", "paper_psnr", "paper_ssim", "paper_fvd"):
        assert m[name] is not None and math.isfinite(m[name]), name
    # the release's PSNR is the [0, 1] PSNR of every frame minus 20 log10(2): equal-length videos
    assert m["paper_psnr"] == pytest.approx(m["psnr"] - 20 * math.log10(2), abs=1e-3)
    assert report["skipped"] == {"ms_ssim": "frames of 32 px are too small (3 scales need 44 px)"}
    assert report["settings"]["fvd"]["n_videos"] == 3 and report["settings"]["fvd"]["clip_len"] == 16
    assert report["settings"]["paper_fvd"]["n_videos_scored"] == 3
    with open(out / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[0]["frames"] == "10"
    # the aggregate is the mean of the cases (same number of frames each)
    assert float(m["psnr"]) == pytest.approx(sum(float(r["psnr"]) for r in rows) / 3, abs=1e-3)
    with open(out / "per_phase.csv") as f:
        phases = list(csv.DictReader(f))
    assert sum(int(p["frames"]) for p in phases) == 30 and len(phases) >= 2
    assert (out / "contact_sheet.png").stat().st_size > 0
    # the phantom carries its lesions: the case-by-case kinetics, against the training split's constant
    for name in ("rise_skill_all", "rise_corr_all", "direction_acc_all", "rise_mae_all", "const_rise_mae_all"):
        assert name in m, name
    assert m["n_all"] >= 3 and report["const_rise_source"].startswith("train")
    assert "checkpoint's training split" in report["settings"]["const_rise"]
    cases = json.loads((out / "kinetics_cases.json").read_text())
    assert [c["case_id"] for c in cases] == [r["case_id"] for r in rows]
    assert all(len(k["real"]) == 10 for c in cases for k in c["kinds"].values())


def test_missing_weights_skip_only_that_metric_loudly(trained, capsys, monkeypatch, tmp_path):
    root, ckpt = trained
    # a file named that is not there is an error; auto with nothing cached (the I3Ds have no verifiable
    # download) skips FVD, and says so
    assert main(["evaluate", "--ckpt", str(ckpt), "--protocol", "paper", "--out", str(root / "eval_nope"),
                 "--i3d", str(root / "nope.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fundus2video: error: --i3d {root / 'nope.pt'}: file not found (expected an I3D file " \
        "(StyleGAN-V's i3d_torchscript.pt or pytorch-i3d's i3d_pretrained_400.pt), or auto)", err
    assert not (root / "eval_nope").exists()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    code = main(["evaluate", "--ckpt", str(ckpt), "--protocol", "paper", "--out", str(root / "eval_paper"),
                 "--i3d", "auto"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "paper_fvd" not in json.loads((root / "eval_paper" / "metrics.json").read_text())["metrics"]
    assert "fvd" in printed and "SKIPPED:" in printed
    report = json.loads((root / "eval_paper" / "metrics.json").read_text())
    # the paper protocol's image metrics, and the lesion kinetics (the phantom carries its lesions)
    kinetics = ("curve_mae", "lesion_rise", "real_", "false_", "time_corr", "rise_", "const_rise_", "direction_",
                "n_", "km_iou")
    image = {k for k in report["metrics"] if not k.startswith(kinetics)}
    assert image == {"paper_psnr", "paper_ssim"}
    assert {"lesion_rise", "curve_mae", "false_bright", "time_corr", "rise_skill_all"} <= set(report["metrics"])


def test_evaluate_errors_name_the_input(trained, tmp_path, capsys):
    _, ckpt = trained
    assert main(["evaluate", "--ckpt", str(tmp_path / "none.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["evaluate", "--ckpt", str(ckpt), "--data", str(tmp_path / "nodata")]) == 2
    assert "--data: not found" in capsys.readouterr().err


def test_training_split_is_scored_deterministically(tiny, tmp_path):
    """Scoring reads every split as validation does (no augmentation, no random frame draws): the
    training cases it scores are the cases as a plain read gives them, and cases of different
    lengths fit one contact sheet."""
    from fundus2video.data_modules.cases import folder_records
    from fundus2video.data_modules.datasets import FileVideoDataset
    from fundus2video.data_modules.phantom_files import write_phantom
    from fundus2video.data_modules.transforms import PairedTransform
    from fundus2video.evaluation import evaluation_data
    from fundus2video.hub import load_module

    write_phantom(tmp_path / "cases", 6, size=48, n_frames=10, video="png", progress=False)
    cfg = tiny("data.source=folders", f"data.root={tmp_path / 'cases'}", "data.augment_train=true",
               "optim.epochs_constant=1", "optim.epochs_decay=0", "data.split.fractions=[0.7,0.15,0.15]")
    run_dir = train(cfg)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    samples = evaluation_data(load_module(ckpt), ckpt, None, "train")
    records = {r.case_id: r for r in folder_records(tmp_path / "cases")}
    for sample in samples:
        plain = FileVideoDataset([records[sample["case_id"]]], 32, 4, cfg.data.manifest.per_phase, False,
                                 PairedTransform(32, train=False))[0]
        assert torch.equal(sample["cf"], plain["cf"]) and torch.equal(sample["frames"], plain["frames"])
    out = evaluate(ckpt, split="train", protocol="standard", out=tmp_path / "a")
    assert (out / "contact_sheet.png").stat().st_size > 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["const_rise_source"] == "train"  # the scored split is the training split: every kind is in it
    # the checkpoint's data gone: scoring the phantom still works, the constant is the scored set's own
    (tmp_path / "cases").rename(tmp_path / "moved")
    out = evaluate(ckpt, data="phantom", split="test", protocol="standard", out=tmp_path / "b")
    report = json.loads((out / "metrics.json").read_text())
    assert report["const_rise_source"] == "scored set"
    assert "cannot be read" in report["settings"]["const_rise"]
    with open(out / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    kinds = [k[len("n_"):] for k in report["metrics"] if k.startswith("n_") and k != "n_all"]
    assert kinds
    for kind in kinds:
        real = [float(r[f"real_rise_{kind}"]) for r in rows if r[f"real_rise_{kind}"]]
        assert report["metrics"][f"const_rise_{kind}"] == pytest.approx(sum(real) / len(real), abs=1e-4), kind


def test_the_output_folder_is_checked_first_and_sits_beside_a_loose_checkpoint(trained, tmp_path, capsys):
    root, ckpt = trained
    (tmp_path / "taken").write_text("a file")
    assert main(["evaluate", "--ckpt", str(ckpt), "--out", str(tmp_path / "taken" / "ev")]) == 2
    assert capsys.readouterr().err.strip() == (f"fundus2video: error: --out {tmp_path / 'taken' / 'ev'}: a file is in "
                                               "the way (expected a folder, new or to be added to)")
    loose = tmp_path / "kept" / "model.ckpt"  # a checkpoint copied out of its run folder
    loose.parent.mkdir()
    loose.write_bytes(ckpt.read_bytes())
    assert main(["evaluate", "--ckpt", str(loose), "--protocol", "standard", "--lpips", str(root / "alexnet.pth"),
                 "--lpips-net", "alex"]) == 0
    assert (tmp_path / "kept" / "model-eval" / "test-own" / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "taken"]  # nothing two levels up
