"""Metrics synchronise under DDP: two gloo processes, each with part of the data, compute the all-data value.

The processes are forked (as Lightning's ddp_fork does), so they start with torch and torchmetrics already
imported: spawned ones would each spend seconds importing them.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fundus2video.metrics.image import PaperPSNR, TemporalError, VideoPSNR, VideoSSIM

SPLIT = [slice(0, 1), slice(1, 4)]  # uneven on purpose: a mean of the ranks' means would be wrong


def make_metrics():
    return {"psnr": VideoPSNR(), "ssim": VideoSSIM(), "temporal": TemporalError(), "paper": PaperPSNR()}


def update(metrics, fake, real, mask):
    for name, metric in metrics.items():
        if name == "paper":
            metric.update(fake * 2 - 1, real * 2 - 1)
        else:
            metric.update(fake, real, mask)


def worker(rank, init_file, fake, real, mask, expected):
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=len(SPLIT))
    try:
        metrics = make_metrics()
        part = SPLIT[rank]
        update(metrics, fake[part], real[part], mask[part])
        for name, metric in metrics.items():
            assert metric.compute().item() == pytest.approx(expected[name], rel=1e-5), (rank, name)
        with metrics["psnr"].sync_context():
            assert metrics["psnr"].skipped.item() == expected["skipped"]
            assert metrics["psnr"].count.item() == expected["count"]
    finally:
        dist.destroy_process_group()


def test_compute_in_every_rank_equals_the_single_process_value(tmp_path):
    g = torch.Generator().manual_seed(0)
    real = torch.rand(4, 3, 1, 16, 16, generator=g)
    fake = (real + 0.1 * torch.randn(4, 3, 1, 16, 16, generator=g)).clamp(0, 1)
    mask = torch.rand(4, 3, 1, 16, 16, generator=g) > 0.3
    mask[2, 1] = False  # one empty frame, on rank 1
    metrics = make_metrics()
    update(metrics, fake, real, mask)
    expected = {name: metric.compute().item() for name, metric in metrics.items()}
    expected.update(skipped=metrics["psnr"].skipped.item(), count=metrics["psnr"].count.item())
    assert expected["skipped"] == 1 and expected["count"] == 11
    mp.start_processes(worker, args=(str(tmp_path / "rendezvous"), fake, real, mask, expected), nprocs=len(SPLIT),
                       start_method="fork")
