"""Checkpoint reuse from another project: in a fresh process outside the repository, with only
the installed package importable, the checkpoint loads under `weights_only` loading and its
generator fine-tunes inside an unrelated LightningModule."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

OTHER_PROJECT = textwrap.dedent("""
    import importlib.util, json, sys
    import lightning as L
    import torch
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    assert importlib.util.find_spec("tests") is None, "the fundus2video repository is importable"
    path = sys.argv[1]
    raw = torch.load(path, weights_only=True, map_location="cpu")  # plain data only, no pickled objects
    assert isinstance(raw["hyper_parameters"]["config"], dict)

    from fundus2video.module import Fundus2VideoModule

    module = Fundus2VideoModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    generator = module.generator
    k, size = module.hparams.config["model"]["window"], module.hparams.config["data"]["size"]


    class FineTune(L.LightningModule):
        # another project's module: the loaded generator plus an L1 loss, automatic optimization
        def __init__(self, generator):
            super().__init__()
            self.generator = generator

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.l1_loss(self.generator(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.generator.parameters(), lr=1e-3)


    torch.manual_seed(0)
    data = TensorDataset(torch.rand(4, 3 + k, size, size) * 2 - 1, torch.rand(4, k, size, size) * 2 - 1)
    before = {name: p.detach().clone() for name, p in generator.named_parameters()}
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(FineTune(generator), DataLoader(data, batch_size=2))
    changed = [name for name, p in generator.named_parameters() if not torch.equal(p, before[name])]
    with torch.no_grad():
        out = generator.eval()(data.tensors[0])
    print(json.dumps({"global_step": trainer.global_step, "changed": len(changed), "total": len(before),
                      "shape": list(out.shape), "range": [out.min().item(), out.max().item()]}))
""")


@pytest.fixture(scope="module")
def ckpt(trained_run):
    return trained_run("plain") / "checkpoints" / "last.ckpt"


def test_checkpoint_generator_fine_tunes_in_another_projects_lightning_module(ckpt, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    proc = subprocess.run([sys.executable, "-c", OTHER_PROJECT, str(ckpt)], capture_output=True, text=True,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["global_step"] == 2
    assert report["changed"] == report["total"] > 0  # every generator weight took the two steps
    assert report["shape"] == [4, 3, 32, 32]
    assert -1 <= report["range"][0] <= report["range"][1] <= 1  # tanh output
