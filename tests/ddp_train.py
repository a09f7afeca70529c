"""Run by tests/test_distributed.py: a tiny training through `train()` under Lightning's DDP (CPU,
gloo), launched as `python tests/ddp_train.py OUT [overrides]`; Lightning starts the second rank by
re-running this file. Each rank saves to OUT/rank<r>.pt its trained parameters, the run directory it
used and the logged metrics; the runs go to OUT/runs."""

import os
import sys
from pathlib import Path

import lightning as L
import torch

from fundus2video.config import load_config
from fundus2video.training import Interrupted, train


class Keep(L.Callback):
    """The trainer and module as training ends, for the results saved after `train()` returns; each
    rank's process id in OUT/pid<rank> once training runs (for the tests that signal one rank)."""

    def __init__(self, out: Path):
        self.out = out

    def on_train_start(self, trainer, module):
        (self.out / f"pid{trainer.global_rank}").write_text(str(os.getpid()))
        self.trainer, self.module = trainer, module

    def on_fit_end(self, trainer, module):
        self.trainer, self.module = trainer, module


if __name__ == "__main__":
    out = Path(sys.argv[1])
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.conftest
    from tests.conftest import TINY

    repo = Path(__file__).resolve().parent.parent
    cfg = load_config(repo / "experiments" / "smoke.yaml", [
        *TINY, "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_epochs=1", "data.phantom.n_train=4",
        "data.phantom.n_val=2", f"logging.root={out / 'runs'}", *sys.argv[2:]])
    torch.set_num_threads(1)
    keep = Keep(out)
    try:
        run_dir = train(cfg, extra_callbacks=[keep])
    except Interrupted as stop:  # SIGTERM to one rank: every rank saved at the same video and stops
        torch.save({"checkpoint": str(stop.checkpoint), "video_step": keep.module.video_step},
                   out / f"stopped{keep.trainer.global_rank}.pt")
        sys.exit(143)
    trainer, module = keep.trainer, keep.module
    torch.save({"params": {k: v.detach().clone() for k, v in module.named_parameters()},
                "world_size": trainer.world_size, "g_step": module.g_step, "video_step": module.video_step,
                "run_dir": str(run_dir), "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
                "reduction": (None if module._reduction is None else
                              {"reduced": module._reduction.reduced, "skipped": module._reduction.skipped})},
               out / f"rank{trainer.global_rank}.pt")
