"""Sweeps: every sweep file fits the config schema; local grid/random/bayes runs; the table; errors."""

import csv
import os
import random
import socket
import sys
from pathlib import Path

import pytest

from fundus2video.commands.cli import main
from fundus2video.config import load_config
from fundus2video.errors import ConfigError, UserError
from fundus2video.sweeps import run as sw
from fundus2video.sweeps.search import Search
from fundus2video.sweeps.spec import expand_command, load_sweep
from tests.conftest import TINY

SWEEPS = sorted(Path("experiments/sweeps").glob("*.yaml"))


def write_sweep(tmp_path: Path, parameters: str, method: str = "random", command: str = "") -> Path:
    command = command or "[fundus2video, train, smoke, '${args_no_hyphens}']"
    path = tmp_path / "s.yaml"
    path.write_text(f"program: fundus2video\nmethod: {method}\nmetric: {{name: val/psnr, goal: maximize}}\n"
                    f"parameters:\n{parameters}\ncommand: {command}\n")
    return path


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_file_fits_the_config_schema(path):
    sweep = load_sweep(path)  # checks every listed value and each range's ends
    assert sweep.experiment.is_file() and sweep.metric == "val/psnr"
    argv = expand_command(sweep.command, {}, sweep.program)
    assert argv[argv.index("train") - 2:argv.index("train")] == ["-m", "fundus2video"]
    rng = random.Random(0)
    for _ in range(2):  # and random draws, as a random or bayes search makes them
        load_config(sweep.experiment, sweep.overrides({p.name: p.sample(rng) for p in sweep.params}))
    if path.stem in ("smoke", "fundus2video"):  # the minimum: lr, loss weights, the mask threshold
        assert {p.name for p in sweep.params} >= {"optim.lr", "data.km_threshold"}
        assert any(p.name.startswith("loss.") for p in sweep.params)


def test_local_sweep_trains_two_runs_and_ranks_them(tmp_path):
    extra = [*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=1", f"logging.root={tmp_path}"]
    results = sw.run_local("experiments/sweeps/smoke.yaml", count=2, extra_overrides=extra, out_root=tmp_path)
    assert sorted(r.run for r in results) == ["smoke-0", "smoke-1"]
    assert all(r.status == "ok" and Path(r.run_dir).is_dir() for r in results)
    assert results[0].params != results[1].params
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    scores = [float(r["val/psnr"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and scores[0] == results[0].metric
    assert [r["run"] for r in rows] == [r.run for r in results]
    cfg = load_config(Path(results[0].run_dir) / "config.yaml")
    assert cfg.logging.group == "smoke" and cfg.name == results[0].run
    assert cfg.optim.lr == pytest.approx(results[0].params["optim.lr"])
    assert "| smoke-" in (tmp_path / "sweep.md").read_text()


def test_grid_is_the_cartesian_product_in_file_order():
    search = Search(load_sweep("experiments/sweeps/smoke_grid.yaml"))
    combos = [search.ask() for _ in range(5)]
    assert search.size == 4 and combos[4] is None
    assert [tuple(c.values()) for c in combos[:4]] == [(0.0005, 10.0), (0.0005, 20.0), (0.001, 10.0), (0.001, 20.0)]


def test_random_search_is_reproducible_and_within_bounds(tmp_path):
    path = write_sweep(tmp_path, "  optim.lr: {distribution: log_uniform_values, min: 0.0001, max: 0.01}\n"
                                 "  data.size: {values: [32, 64]}\n"
                                 "  optim.epochs_decay: {min: 2, max: 5}\n"
                                 "  loss.l1: {distribution: q_uniform, min: 0, max: 20, q: 5}\n")
    sweep = load_sweep(path)
    draws = [Search(sweep, seed=3) for _ in range(2)] + [Search(sweep, seed=4)]
    first, again, other = ([s.ask() for _ in range(6)] for s in draws)
    assert first == again and first != other
    assert len({d["optim.lr"] for d in first}) == 6
    for d in first:
        assert 0.0001 <= d["optim.lr"] <= 0.01 and d["data.size"] in (32, 64)
        assert isinstance(d["optim.epochs_decay"], int) and 2 <= d["optim.epochs_decay"] <= 5
        assert d["loss.l1"] in (0, 5, 10, 15, 20)


def test_bayes_search_asks_within_bounds_and_learns():
    pytest.importorskip("optuna")
    sweep = load_sweep("experiments/sweeps/fundus2video.yaml")
    search = Search(sweep, seed=0)
    for value in (20.0, None, 21.5):
        values = search.ask()
        assert 5e-5 <= values["optim.lr"] <= 5e-4 and 0.1 <= values["data.km_threshold"] <= 0.3
        search.tell(value)
    assert search._study.best_value == 21.5


def test_unknown_parameter_names_the_sweep_file_and_the_key(tmp_path):
    path = write_sweep(tmp_path, "  loss.l11: {values: [1.0, 2.0]}")
    with pytest.raises(ConfigError, match=r"s\.yaml: unknown key 'loss\.l11'; did you mean 'loss\.l1'"):
        load_sweep(path)
    path = write_sweep(tmp_path, "  data.km_threshold: {min: 0.1, max: 1.5}")
    with pytest.raises(ConfigError, match=r"s\.yaml: data\.km_threshold"):
        load_sweep(path)
    path = write_sweep(tmp_path, "  optim.lr: {min: 0.001, max: 0.01}", method="grid")
    with pytest.raises(ConfigError, match="a grid needs `value` or `values`"):
        load_sweep(path)
    path = write_sweep(tmp_path, "  optim.lr: {distribution: uniform, min: 0.001, mx: 0.01}")
    with pytest.raises(ConfigError, match=r"parameters\.optim\.lr: unexpected \['mx'\]"):
        load_sweep(path)


def test_command_macros_expand_as_wandb_agents_do(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_EXTRA", "seed=3")
    command = ["${env}", "${interpreter}", "-m", "fundus2video", "train", "smoke", "${envvar:SWEEP_EXTRA}",
               "${args}", "${args_no_hyphens}"]
    argv = expand_command(command, {"optim.lr": 0.001, "loss.l1": 20}, "fundus2video")
    assert argv == ["/usr/bin/env", "python", "-m", "fundus2video", "train", "smoke", "seed=3",
                    "--optim.lr=0.001", "--loss.l1=20", "optim.lr=0.001", "loss.l1=20"]
    for bad in ("[fundus2video, train, smoke, '${args_json}']", "[fundus2video, train, smoke]",
                "[python, train.py, '${args}']", "[fundus2video, train, '${args}']"):
        with pytest.raises(ConfigError, match="command: "):
            load_sweep(write_sweep(tmp_path, "  optim.lr: {value: 0.001}", command=bad))


def test_failed_runs_are_recorded_and_ranked_last(tmp_path, monkeypatch, capsys):
    """Through the command (flags after SWEEP), with a stand-in for training."""
    def fake_train(cfg):
        if cfg.optim.lr == 0.001 and cfg.loss.l1 == 20:
            raise RuntimeError("diverged")
        run_dir = Path(cfg.logging.root) / cfg.name / "run"
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.csv").write_text(f"epoch,val/psnr\n0,1.0\n1,{cfg.loss.l1 + cfg.optim.lr * 1000}\n2,\n")
        return run_dir

    monkeypatch.setattr("fundus2video.training.train", fake_train)
    assert main(["sweep", "smoke_grid", "--local", f"--out={tmp_path}", "--count", "9", *TINY]) == 1  # a run failed
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [(r["run"], r["val/psnr"]) for r in rows] == [
        ("smoke_grid-1", "20.5"), ("smoke_grid-2", "11.0"), ("smoke_grid-0", "10.5"), ("smoke_grid-3", "")]
    assert rows[3]["status"] == "failed: RuntimeError: diverged"
    assert "| smoke_grid-1 | ok | 20.5 |" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="needs a number of runs"):
        sw.run_local("experiments/sweeps/smoke.yaml", out_root=tmp_path)
    with pytest.raises(ConfigError, match="loss.l11"):
        sw.run_local("experiments/sweeps/smoke_grid.yaml", extra_overrides=["loss.l11=1"], out_root=tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty weights cache, and no download
    monkeypatch.setenv("FUNDUS2VIDEO_OFFLINE", "1")
    with pytest.raises(ConfigError, match="needs torchvision's VGG19 ImageNet weights"):  # before any run
        sw.run_local("experiments/sweeps/fundus2video.yaml", count=1, out_root=tmp_path / "full")
    assert not (tmp_path / "full").exists()


def test_unreachable_server_suggests_local(monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(UserError, match=r"unreachable.*--local"):
        sw.create_and_agent("experiments/sweeps/smoke.yaml", count=1)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(UserError, match="WANDB_MODE=offline.*--local"):
        sw.create_and_agent("experiments/sweeps/smoke.yaml", count=1)


def test_online_sweep_sends_the_file_with_overrides_as_constants(monkeypatch):
    import wandb

    calls = {}
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("PATH", os.environ["PATH"])  # restored afterwards
    monkeypatch.setattr(sw, "_check_reachable", lambda url: None)
    monkeypatch.setattr(wandb, "sweep", lambda config, entity, project: calls.update(config=config, project=project)
                        or "abc123")
    monkeypatch.setattr(wandb, "agent", lambda sweep_id, entity, project, count: calls.update(agent=(sweep_id, count)))
    assert sw.create_and_agent("experiments/sweeps/smoke.yaml", 3, ["--loss.vgg=0"]) == "abc123"
    assert calls["agent"] == ("abc123", 3) and calls["project"] == "fundus2video"
    config = calls["config"]
    assert config["parameters"]["loss.vgg"] == {"value": "0"} and "loss.vgg" not in load_sweep(
        "experiments/sweeps/smoke.yaml").spec["parameters"]
    assert config["name"] == "smoke" and config["command"][-1] == "${args_no_hyphens}"
    assert os.environ["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)  # ${interpreter} = this python
