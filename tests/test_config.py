import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fundus2video.config import ConfigError, from_plain, load_config, to_plain

# experiments (sweep files are wandb sweep configurations, validated in test_sweep.py)
EXPERIMENTS = sorted(p for p in Path("experiments").rglob("*.yaml") if not {"sweeps", "studies"} & set(p.parts))


def test_there_are_experiments():
    names = {p.stem for p in EXPERIMENTS}
    assert {"fundus2video", "smoke"} <= names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_loads_and_validates(path):
    cfg = load_config(path)
    assert cfg.name
    assert from_plain(to_plain(cfg)) == cfg  # plain data round-trips (checkpoint hparams)


def test_paper_configuration_matches_method():
    cfg = load_config("experiments/fundus2video.yaml")
    assert cfg.data.size == 512 and cfg.model.window == 3
    g = cfg.model.generator
    assert (g.ngf, g.n_downsample, g.n_blocks) == (64, 4, 9)
    assert cfg.optim.lr == pytest.approx(2e-4)
    assert (cfg.optim.beta1, cfg.optim.beta2) == (0.5, 0.999)
    assert (cfg.optim.epochs_constant, cfg.optim.epochs_decay) == (10, 40)
    assert cfg.data.km_threshold == pytest.approx(45 / 255)
    assert (cfg.loss.gan, cfg.loss.feat) == (2.0, 10.0)


def test_overrides_in_both_forms():
    cfg = load_config("experiments/smoke.yaml", ["data.size=128", "--optim.lr=0.001"])
    assert cfg.data.size == 128 and cfg.optim.lr == pytest.approx(1e-3)


@pytest.mark.parametrize("override, expected", [
    ("model.ngff=3", "unknown key 'model.ngff'; did you mean 'model.generator.ngf'?"),
    ("optim.lrr=1", "did you mean 'optim.lr'?"),
    ("data.size=abc", "bad value for 'data.size'"),
    ("data.size=100", "divisible by"),
    ("logging.wandb=maybe", "logging.wandb"),
    ("noequals", "not of the form key=value"),
])
def test_bad_overrides_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=None) as info:
        load_config("experiments/smoke.yaml", [override])
    assert expected in str(info.value)


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  sise: 64\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(bad) in str(info.value) and "'data.sise'" in str(info.value)
    assert "'data.size'" in str(info.value)


def test_config_is_read_only():
    cfg = load_config("experiments/smoke.yaml")
    assert OmegaConf.is_readonly(cfg)


@pytest.mark.parametrize("argv, expected", [
    (["train", "nosuch"], "experiment not found: experiments/nosuch.yaml"),
    (["train", "smoke", "model.ngff=3"], "did you mean 'model.generator.ngf'?"),
])
def test_cli_errors_are_one_line(argv, expected):
    proc = subprocess.run([sys.executable, "-m", "fundus2video", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_dry_run_prints_resolved_config():
    proc = subprocess.run([sys.executable, "-m", "fundus2video", "train", "smoke", "--dry-run",
                           "--data.size=32"], capture_output=True, text=True, check=True)
    assert OmegaConf.create(proc.stdout).data.size == 32
