"""Shared fixtures: the real experiment configs with tiny overrides, so tests run in seconds."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["WANDB_MODE"] = "disabled"  # tests that need wandb set their own mode
os.environ.setdefault("WANDB_SILENT", "true")
# no test reaches past this machine: pretrained weights asked for as `auto` are skipped, not fetched
# (the download tests serve them from 127.0.0.1 and clear this themselves)
os.environ["FUNDUS2VIDEO_OFFLINE"] = "1"

from fundus2video.config import load_config  # noqa: E402

TINY = [
    "data.size=32", "data.n_frames=4", "data.phantom.n_train=2", "data.phantom.n_val=1",
    "data.phantom.n_test=1", "data.phantom.render_size=64", "data.num_workers=0",
    "model.generator.ngf=8", "model.generator.n_downsample=2", "model.generator.n_blocks=1",
    "model.discriminator.ndf=8", "model.discriminator.n_layers=2",
    "trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
    "logging.wandb=disabled", "logging.n_samples=1",
]


@pytest.fixture
def tiny(tmp_path):
    """tiny(*overrides): the smoke experiment shrunk to 32 x 32, 4 frames, 2 training cases."""
    def make(*extra: str):
        return load_config("experiments/smoke.yaml", [*TINY, f"logging.root={tmp_path / 'runs'}", *extra])
    return make


@pytest.fixture
def full(tiny):
    """full(*overrides): `tiny` with every part of the full method on (tests/helpers/full.py)."""
    from tests.helpers.full import FULL

    return lambda *overrides: tiny(*FULL, *overrides)


# the tiny experiments the checkpoint tests share: trained once per session, each test module
# gets its own copy of the run (a module may write beside the checkpoint without touching another's)
TRAINED = {
    "plain": ["trainer.max_epochs=1"],
    # every branch an export must trace: the local enhancer and a KBA head
    "local_kba": ["trainer.max_epochs=1", "model.generator.netg=local", "model.generator.kba_stages=[bottleneck]"],
}


@pytest.fixture(scope="session")
def _trained_runs(tmp_path_factory):
    from fundus2video.training import train

    runs: dict[str, object] = {}

    def get(name: str):
        if name not in runs:
            root = tmp_path_factory.mktemp(f"trained-{name}")
            runs[name] = train(load_config("experiments/smoke.yaml",
                                           [*TINY, f"logging.root={root}", *TRAINED[name]]))
        return runs[name]
    return get


@pytest.fixture(scope="module")
def trained_run(_trained_runs, tmp_path_factory):
    """trained_run(name): a copy of the run directory of TRAINED[name], trained once per session."""
    import shutil

    def copy(name: str):
        dest = tmp_path_factory.mktemp(f"run-{name}") / "run"
        shutil.copytree(_trained_runs(name), dest, symlinks=True)
        return dest
    return copy
