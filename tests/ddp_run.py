"""Run by tests/test_distributed.py: `train()` itself under Lightning's DDP (CPU, gloo), launched as
`python tests/ddp_run.py OUT [overrides]`; Lightning starts the second rank by re-running this file.
Each rank writes the run directory it used to OUT/rank<r>.json."""

import json
import os
import sys
from pathlib import Path

import torch

from fundus2video.commands.train import train
from fundus2video.config import load_config

if __name__ == "__main__":
    out = Path(sys.argv[1])
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.conftest
    from tests.conftest import TINY

    repo = Path(__file__).resolve().parent.parent
    cfg = load_config(repo / "experiments" / "smoke.yaml", [
        *TINY, "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_epochs=1", "data.phantom.n_train=4",
        "data.phantom.n_val=2", f"logging.root={out / 'runs'}", *sys.argv[2:]])
    torch.set_num_threads(1)
    run_dir = train(cfg)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    (out / f"rank{rank}.json").write_text(json.dumps({"run_dir": str(run_dir)}))
