"""Run by tests/test_distributed.py: a tiny training under Lightning's DDP (CPU, gloo), launched as
`python tests/ddp_train.py OUT [overrides]`; Lightning starts the second rank by re-running this
file. Each rank saves its trained parameters to OUT/rank<r>.pt, and rank 0 the logged metrics."""

import sys
from pathlib import Path

import lightning as L
import torch

from fundus2video.commands.train import build_trainer
from fundus2video.config import load_config, to_plain
from fundus2video.data_modules import Fundus2VideoDataModule
from fundus2video.module import Fundus2VideoModule

if __name__ == "__main__":
    out = Path(sys.argv[1])
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.conftest
    from tests.conftest import TINY

    repo = Path(__file__).resolve().parent.parent
    cfg = load_config(repo / "experiments" / "smoke.yaml", [
        *TINY, "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_epochs=1", "data.phantom.n_train=4",
        "data.phantom.n_val=2", *sys.argv[2:]])
    torch.set_num_threads(1)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # as train(): runs with the same config start alike
    module = Fundus2VideoModule(to_plain(cfg))
    trainer = build_trainer(cfg, None)
    trainer.fit(module, datamodule=Fundus2VideoDataModule(to_plain(cfg.data), seed=cfg.seed))
    rank = trainer.global_rank
    torch.save({"params": {k: v.detach().clone() for k, v in module.named_parameters()},
                "world_size": trainer.world_size, "g_step": module.g_step, "video_step": module.video_step,
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
                "reduction": (None if module._reduction is None else
                              {"reduced": module._reduction.reduced, "skipped": module._reduction.skipped})},
               out / f"rank{rank}.pt")
