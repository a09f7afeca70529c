import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fundus2video.commands.cli import main
from fundus2video.config import ConfigError, from_plain, load_config, resolve_experiment, to_plain
from tests.helpers.cli import run_cli

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
    proc = run_cli(*argv)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_dry_run_prints_resolved_config():
    proc = run_cli("train", "smoke", "--dry-run", "--data.size=32")
    assert proc.returncode == 0, proc.stderr
    assert OmegaConf.create(proc.stdout).data.size == 32


@pytest.mark.parametrize("override, message", [
    ("optim.lr=-1", "optim.lr: -1.0 is out of range"),
    ("data.batch_size=0", "data.batch_size: 0 is out of range (expected >= 1)"),
    ("data.num_workers=-1", "data.num_workers: -1 is out of range (expected >= 0)"),
    ("model.generator.ngf=0", "model.generator.ngf: 0 is out of range"),
    ("optim.beta1=5", "optim.beta1: 5.0 is out of range (expected 0.0 <= value < 1.0)"),
    ("data.augment.hflip=3", "data.augment.hflip: 3.0 is out of range"),
    ("trainer.devices=0", "trainer.devices: 0 is out of range"),
    ("model.generator.n_blocks=-3", "model.generator.n_blocks: -3 is out of range"),
    ("data.n_frames=2", "data.n_frames: 2 frames cannot fill a window of model.window=3"),
    ("data.phantom.n_train=0", "data.phantom.n_train: 0 is out of range"),
    ("data.phantom.n_val=0", "data.phantom.n_val: 0 is out of range"),
    ("data.manifest.per_phase=0", "data.manifest.per_phase: 0 is out of range (expected >= 1)"),
    ("optim.lr=inf", "optim.lr: inf is out of range (expected a finite learning rate > 0)"),
    ("optim.fused=maybe", "optim.fused: 'maybe' is not one of auto, true, false"),
    ("trainer.checkpoint_every_n_batches=-5", "trainer.checkpoint_every_n_batches: -5 is out of range"),
    ("trainer.accelerator=tpu", "trainer.accelerator: 'tpu' is not one of"),
    ("logging.fps=0", "logging.fps: 0 is out of range"),
    ("loss.nce=-1", "loss.nce: -1.0 is out of range"),
    ("data=5", "override: bad value for 'data'"),
    ("seed=-1", "seed: -1 is out of range (expected 0 <= value <= 4294967295)"),
    ("seed=99999999999", "seed: 99999999999 is out of range"),
    ("data.phantom.seed=-2", "data.phantom.seed: -2 is out of range"),
    ("data.split.seed=-1", "data.split.seed: -1 is out of range"),
    ("data.augment.gamma=5", "data.augment.gamma: 5.0 is out of range (expected 0.0 <= value < 1.0)"),
    ("data.augment.scale=2", "data.augment.scale: 2.0 is out of range (expected 0.0 <= value < 1.0)"),
    ("data.augment.hue=3", "data.augment.hue: 3.0 is out of range (expected 0.0 <= value <= 0.5)"),
    ("data.augment.rotate=400", "data.augment.rotate: 400.0 is out of range"),
    ("loss.gan=inf", "loss.gan: inf is out of range (expected a finite weight >= 0"),
    ("data.phantom.render_size=8", "data.phantom.render_size: 8 is out of range (expected 0, which draws at "
     "data.size, or 32 to 4096)"),
    ("trainer.limit_train_batches=0", "trainer.limit_train_batches: 0 trains nothing"),
    ("trainer.fast_dev_run=-3", "trainer.fast_dev_run: -3 is out of range"),
    ("trainer.devices=[0,0]", "trainer.devices: [0, 0] names a device twice"),
    ("trainer.devices='1,1'", "trainer.devices: '1,1' names a device twice"),
    ("trainer.devices=[-1]", "trainer.devices: [-1] is out of range (expected device indices >= 0"),
    ("model.generator.ngf=4096", "the networks do not fit in this machine's memory (model.generator.ngf=4096"),
    ("model.generator.ngf=100000", "model.generator.ngf: 100000 is out of range (expected at most 4096)"),
    ("model.generator.n_downsample=1000000000", "model.generator.n_downsample: 1000000000 is out of range (expected "
     "1 to 12)"),
    ("data.size=1000000000", "data.size: 1000000000 is out of range (expected 16 to 4096)"),
    ("data.n_frames=1000000000", "data.n_frames: 1000000000 is out of range (expected at most 1000)"),
    ("model.generator.n_blocks=100000", "model.generator.n_blocks: 100000 is out of range (expected at most 64)"),
    ("logging.fps=100000", "logging.fps: 100000 is out of range (expected at most 240)"),
    ("data.manifest.merge_phases=[1]", "override: bad value for 'data.manifest.merge_phases'"),
    ("trainer.devices='0,,1'", "trainer.devices: '0,,1' is out of range"),
    ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches: expected a number >= 0 (int: batches, float: "
     "a fraction up to 1.0), got 1.5"),
    ("model.generator.kba_stages=[bottleneck,bottleneck]", "model.generator.kba_stages: ['bottleneck', "
     "'bottleneck'] names a stage twice"),
    ("loss.nce_temperature=inf", "loss.nce_temperature: inf is out of range (expected a finite temperature > 0)"),
    ("name=../../escape", "name: '../../escape' is not a plain name"),
    ("name=.", "name: '.' is not a plain name"),
    ("data.split.fractions=[1,0,0]", "data.split: the phantom's splits are data.phantom.n_train, n_val and n_test"),
    ("trainer.max_epochs=0", "trainer.max_epochs: 0 epochs train nothing (trainer.max_epochs=0; expected at least 1)"),
])
def test_values_without_meaning_stop_before_anything_runs(override, message, capsys, tmp_path):
    assert main(["train", "smoke", override, f"logging.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # no run directory was made


def test_an_experiment_file_must_be_a_mapping(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "scalar.yaml").write_text("data: 5\n")
    with pytest.raises(ConfigError, match="list.yaml: an experiment is a mapping of sections"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="scalar.yaml: 'data' must be a mapping of keys"):
        load_config(tmp_path / "scalar.yaml")


def test_a_renamed_key_names_its_new_name_and_old_checkpoints_still_load(tmp_path, capsys):

    assert main(["train", "smoke", "loss.gan_km=0.5", f"logging.root={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'loss.gan_km' was renamed to 'loss.kad'" in err, err
    old = tmp_path / "old.yaml"
    old.write_text("loss:\n  gan_km: 0.5\n")
    with pytest.raises(ConfigError, match="'loss.gan_km' was renamed to 'loss.kad'"):
        load_config(old)
    saved = to_plain(load_config("experiments/smoke.yaml", ["loss.kad=0.5"]))
    saved["loss"]["gan_km"] = saved["loss"].pop("kad")  # a checkpoint's config from before the rename
    assert from_plain(saved).loss.kad == 0.5


@pytest.mark.parametrize("argv, expected", [
    (["evaluate", "--ckpt", "x.ckpt", "--split", "bogus"],
     "fundus2video evaluate: error: argument --split: invalid choice: 'bogus'"),
    (["nosuch"], "fundus2video: error: argument command: invalid choice: 'nosuch'"),
    (["generate", "--cf", "a.png"], "fundus2video generate: error: the following arguments are required: --ckpt"),
    # train's options, given to a command that has none of them: named, not ignored
    (["config", "smoke", "--resume", "last"], "override '--resume' is not of the form key=value"),
    (["config", "smoke", "--dry-run"], "override '--dry-run' is not of the form key=value"),
])
def test_usage_errors_are_one_line(argv, expected):
    proc = run_cli(*argv)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr


@pytest.mark.parametrize("layers", ["[]", "[0,0]", "[-1]"])
def test_patchnce_needs_distinct_layers_while_it_is_on(layers):
    with pytest.raises(ConfigError, match=re.escape("loss.nce_layers: ") + ".*expected distinct generator layer "
                       "indices >= 0, at least one while loss.nce=1.0 > 0"):
        load_config("experiments/smoke.yaml", ["loss.nce=1", f"loss.nce_layers={layers}"])
    load_config("experiments/smoke.yaml", ["loss.nce=0", f"loss.nce_layers={layers}"])  # off: not used


def test_settings_that_together_train_nothing_or_less_than_they_seem(tiny, caplog):
    from fundus2video.training import check_training

    off = [f"loss.{k}=0" for k in ("gan", "feat", "vgg", "gv", "nce", "kad", "att", "l1")]
    with pytest.raises(ConfigError, match="loss: every generator term is 0 .*nothing would train the generator"):
        check_training(tiny(*off))
    with pytest.raises(ConfigError, match=re.escape("trainer.max_epochs=-1 takes the schedule's optim.epochs_constant "
                                                    "+ optim.epochs_decay = 0 + 0")):
        check_training(tiny("trainer.max_epochs=-1", "optim.epochs_constant=0", "optim.epochs_decay=0"))
    with caplog.at_level("WARNING", logger="fundus2video"):
        check_training(tiny("loss.att=1", "model.generator.kba_stages=[]"))
    assert "loss.att=1.0 has no effect: model.generator.kba_stages is empty" in caplog.text


def test_experiment_files_with_a_bad_base_or_interpolation_are_named(tmp_path, capsys):
    for name, text, message in (("int.yaml", "base: 5\n", "int.yaml: base: 5 is not an experiment name"),
                                ("list.yaml", "base: [a, b]\n",
                                 "list.yaml: base: ['a', 'b'] is not an experiment name"),
                                ("interp.yaml", "name: ${nope}\n", "interp.yaml: bad value for 'name': Interpolation "
                                 "key 'nope' not found")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(tmp_path / name)
    assert load_config(tmp_path / "interp.yaml", ["name=fine"]).name == "fine"  # an override replaces it
    (tmp_path / "nested.yaml").write_text("model:\n  generator: 5\n")
    with pytest.raises(ConfigError, match=re.escape("nested.yaml: 'model.generator' must be a mapping of keys (e.g. "
                                                    "generator: {key: value}); found 5")):
        load_config(tmp_path / "nested.yaml")
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(ConfigError, match=re.escape(f"experiment {tmp_path / 'folder.yaml'}: a folder, not a YAML")):
        resolve_experiment(str(tmp_path / "folder.yaml"))
    assert run_cli("train", "smoke", "--resume=").stderr.strip() == "fundus2video: error: --resume= needs a value"
