"""End to end: `fundus2video train` leaves everything a person needs in the run directory,
and the checkpoint loads in a fresh Python process with `weights_only` loading."""

import csv
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from fundus2video.module import Fundus2VideoModule
from fundus2video.training import train
from fundus2video.video_io import read_video


@pytest.mark.slow
def test_train_writes_run_directory_and_checkpoint_loads_in_fresh_process(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = tiny("trainer.max_epochs=2", "logging.wandb=auto", "data.n_frames=5", "trainer.log_every_n_steps=1")
    run_dir = train(cfg)

    assert (run_dir / "config.yaml").is_file()
    info = json.loads((run_dir / "run.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert info["git_commit"] == head and info["seed"] == cfg.seed
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val/psnr") for r in rows) and any(r.get("train/g_gan") for r in rows)
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb offline run missing"
    assert (run_dir / "knowledge_masks.png").stat().st_size > 0
    video = read_video(run_dir / "samples" / "last.mp4")
    assert video.shape[0] == 5  # every frame of T = 5
    assert (run_dir / "samples" / "last.gif").is_file()
    assert (run_dir / "samples" / "epoch_001.mp4").is_file()

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    torch.load(ckpt, weights_only=True, map_location="cpu")  # plain data only
    out = tmp_path / "fresh.pt"
    code = textwrap.dedent(f"""
        import torch
        from fundus2video.module import Fundus2VideoModule
        m = Fundus2VideoModule.load_from_checkpoint({str(ckpt)!r}, map_location="cpu")
        torch.manual_seed(0)
        cf = torch.rand(1, 3, 32, 32) * 2 - 1
        torch.save(m.eval()(cf, 5), {str(out)!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    module = Fundus2VideoModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    torch.manual_seed(0)
    cf = torch.rand(1, 3, 32, 32) * 2 - 1
    expected = module(cf, 5)
    assert expected.shape == (1, 5, 1, 32, 32)
    assert torch.equal(torch.load(out), expected)
    assert module.g_step == 2 * 2 * 5  # epochs x videos x windows, restored from the checkpoint


def test_wandb_disabled_writes_no_wandb_dir(tiny):
    run_dir = train(tiny("trainer.max_epochs=1", "logging.wandb=disabled"))
    assert not (run_dir / "wandb").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
