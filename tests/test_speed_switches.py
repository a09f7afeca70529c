"""The speed switches and the DDP settings act as documented (what can be seen on a CPU)."""

from __future__ import annotations

import pytest
import torch

from fundus2video.config import ConfigError, to_plain
from fundus2video.data_modules.sampling import SeededSampler
from fundus2video.module import Fundus2VideoModule, lr_scale


@pytest.mark.parametrize(("n", "world"), [(5, 2), (7, 3), (2, 4), (8, 2)])
def test_evaluation_shards_hold_every_case_once(n, world):
    shards = [[i for i, _ in SeededSampler(n, 0, shuffle=False, rank=r, world_size=world, pad=False)]
              for r in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))
    assert [len(s) for s in shards] == [len(SeededSampler(n, 0, False, r, world, pad=False)) for r in range(world)]
    # training shards stay padded to one length: every rank takes the same number of steps
    padded = [len(list(SeededSampler(n, 0, True, r, world))) for r in range(world)]
    assert len(set(padded)) == 1 and padded[0] * world >= n


def test_lr_scaling_rules(tiny):
    assert lr_scale("none", 8) == 1.0 and lr_scale("linear", 8) == 8.0 and lr_scale("sqrt", 4) == 2.0
    module = Fundus2VideoModule(to_plain(tiny("optim.lr_scaling=linear")))
    (opt_g, opt_d), _ = module.configure_optimizers()  # outside a Trainer: one process
    assert opt_g.param_groups[0]["lr"] == opt_d.param_groups[0]["lr"] == module.cfg.optim.lr
    with pytest.raises(ConfigError, match="optim.lr_scaling: 'cubic' is not one of none, linear, sqrt"):
        tiny("optim.lr_scaling=cubic")


def test_fused_adam_on_request_and_channels_last(tiny):
    torch.manual_seed(0)
    module = Fundus2VideoModule(to_plain(tiny("optim.fused=true", "model.channels_last=true")))
    torch.manual_seed(0)
    auto = Fundus2VideoModule(to_plain(tiny()))
    (opt_g, opt_d), _ = module.configure_optimizers()
    assert opt_g.defaults["fused"] and opt_d.defaults["fused"]  # torch's CPU kernel: fused runs here too
    assert not auto.configure_optimizers()[0][0].defaults.get("fused")  # auto: CUDA only
    module.setup("fit")
    conv = next(m for m in module.generator.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    # another memory layout of the same weights: the same video, up to the kernels' rounding
    torch.testing.assert_close(module.eval()(x, 4), auto.eval()(x, 4), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="optim.fused: 'maybe' is not one of auto, true, false"):
        tiny("optim.fused=maybe")


def test_matmul_precision_is_a_checked_choice(tiny):
    assert tiny("trainer.matmul_precision=high").trainer.matmul_precision == "high"
    with pytest.raises(ConfigError, match="trainer.matmul_precision: 'tf32' is not one of highest, high, medium"):
        tiny("trainer.matmul_precision=tf32")


@pytest.mark.slow
def test_the_gpu_speed_benchmark_runs_every_switch_as_training_applies_it(tmp_path):
    """benchmarks/gpu_speed.py on the CPU at toy size: every switch but compile runs its window (the
    16-mixed one through a GradScaler), so `make gpu-check` meets no untested code path."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    switches = ["baseline", "cudnn_benchmark", "matmul_high", "unfused_adam", "channels_last", "bf16_autocast",
                "fp16_scaler"]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_speed.py"), "--device", "cpu", "--size",
                           "32", "--ngf", "8", "--repeats", "1", "--switches", ",".join(switches),
                           "--switch-timeout", "120", "--budget", "600"],
                          capture_output=True, text=True, timeout=660, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    results = {r["switch"]: r for r in json.loads(done.stdout)["results"]}
    assert list(results) == switches
    assert all(r["status"] == "ok" and r["seconds"] > 0 for r in results.values()), results
