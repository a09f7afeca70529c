"""Resume is exact: N epochs straight equal N/2 + resume + N/2, and a run stopped by SIGTERM in the
middle of an epoch and resumed equals the uninterrupted one (weights, optimizer states, step
counters), with augmentation on. Checkpoints are written atomically."""

import os
import signal

import lightning as L
import pytest
import torch

import fundus2video.training.fit as train_module
from fundus2video.callbacks import AtomicCheckpointIO
from fundus2video.commands.cli import main
from fundus2video.config import load_config, to_plain
from fundus2video.errors import ConfigError
from fundus2video.module import Fundus2VideoModule
from fundus2video.training import Interrupted, init_weights_from, resolve_resume, train
from tests.conftest import TINY


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")

    def cfg(*extra):
        return load_config("experiments/smoke.yaml", [
            *TINY, f"logging.root={root}", "data.phantom.n_train=3", "data.augment_train=true",
            "trainer.limit_val_batches=0", "logging.n_samples=0", *extra])
    return cfg, train(cfg("name=straight", "trainer.max_epochs=2"))


def _state(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")


def _assert_same_training(a, b):
    assert a["fundus2video"] == b["fundus2video"] and a["global_step"] == b["global_step"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"]):
        for pid, state in opt_a["state"].items():
            assert torch.equal(state["exp_avg_sq"], opt_b["state"][pid]["exp_avg_sq"])
    assert a["lr_schedulers"] == b["lr_schedulers"]


@pytest.mark.slow
def test_resume_at_epoch_boundary_matches_straight_run(runs):
    cfg, straight = runs
    half = train(cfg("name=half", "trainer.max_epochs=1"))
    resumed = train(cfg("name=half", "trainer.max_epochs=2"), resume=resolve_resume(cfg("name=half"), "last"))
    assert resumed != half
    _assert_same_training(_state(straight), _state(resumed))


class _SignalAt(L.Callback):
    """Sends this process a signal after the given training video: SIGTERM as a cluster scheduler
    would, SIGINT as Ctrl-C does."""

    def __init__(self, video: int, signum: int = signal.SIGTERM):
        self.video, self.signum = video, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.video_step == self.video:
            os.kill(os.getpid(), self.signum)


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_resume_matches_straight_run(runs, monkeypatch):
    cfg, straight = runs
    build = train_module.build_trainer
    monkeypatch.setattr(train_module, "build_trainer", lambda c, d, callbacks=None, loggers=False: build(
        c, d, [_SignalAt(4), *(callbacks or [])], loggers))
    with pytest.raises(Interrupted) as stop:
        train(cfg("name=killed", "trainer.max_epochs=2"))
    monkeypatch.setattr(train_module, "build_trainer", build)
    saved = torch.load(stop.value.checkpoint, weights_only=True)
    assert saved["fundus2video"]["video_step"] == 4  # epoch 1, after 1 of its 3 videos
    assert saved["Fundus2VideoDataModule"] == {"epoch": 1, "train_items_seen": 1}
    resumed = train(cfg("name=killed", "trainer.max_epochs=2"), resume=stop.value.checkpoint)
    _assert_same_training(_state(straight), _state(resumed))


class _SignalInValidation(L.Callback):
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.current_epoch == 0 and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_sigterm_during_validation_stops_with_the_epochs_checkpoint(runs, capsys):
    """SIGTERM during validation: the stop is decided at the next video boundary (every rank together),
    one video into the next epoch, with its checkpoint; resuming from it gives the straight run."""
    cfg, straight = runs
    with pytest.raises(Interrupted, match="stopped by SIGTERM; checkpoint saved") as stop:
        train(cfg("name=valterm", "trainer.max_epochs=2", "trainer.limit_val_batches=1"),
              extra_callbacks=[_SignalInValidation()])
    saved = torch.load(stop.value.checkpoint, weights_only=True)
    assert saved["fundus2video"]["video_step"] == 4  # the first epoch's 3 videos and the next one
    resumed = train(cfg("name=valterm", "trainer.max_epochs=2"), resume=stop.value.checkpoint)
    _assert_same_training(_state(straight), _state(resumed))


@pytest.mark.slow
def test_ctrl_c_saves_like_sigterm_and_resumes_exactly(runs):
    cfg, straight = runs
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted, match="stopped by SIGINT") as stop:
        train(cfg("name=ctrlc", "trainer.max_epochs=2"), extra_callbacks=[_SignalAt(2, signal.SIGINT)])
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C behaves as usual again
    saved = torch.load(stop.value.checkpoint, weights_only=True)
    assert saved["fundus2video"]["video_step"] == 2  # the interrupted video finished, then saved
    resumed = train(cfg("name=ctrlc", "trainer.max_epochs=2"), resume=resolve_resume(cfg("name=ctrlc"), "last"))
    _assert_same_training(_state(straight), _state(resumed))


def test_one_seed_fixes_the_run_and_deterministic_option_changes_nothing(runs):
    cfg, straight = runs
    again = train(cfg("name=again", "trainer.max_epochs=2", "trainer.deterministic=true"))
    _assert_same_training(_state(straight), _state(again))
    other = _state(train(cfg("name=other", "trainer.max_epochs=1", "seed=8")))["state_dict"]
    first = _state(straight)["state_dict"]
    assert any(not torch.equal(v, other[k]) for k, v in first.items())


def test_checkpoint_every_n_batches_writes_last(runs):
    cfg, _ = runs
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            path = trainer.default_root_dir + "/checkpoints/last.ckpt"
            if os.path.exists(path):
                seen.append(torch.load(path, weights_only=True)["fundus2video"]["video_step"])

    build = train_module.build_trainer
    train_module.build_trainer = lambda c, d, callbacks=None, loggers=False: build(c, d, [*(callbacks or []), Spy()],
                                                                                   loggers)
    try:
        train(cfg("name=every", "trainer.max_epochs=1", "trainer.checkpoint_every_n_batches=2"))
    finally:
        train_module.build_trainer = build
    assert seen == [2, 2]  # written after video 2 (the spy runs after the writer), not after 1 or 3


def test_last_ckpt_is_the_newest_state_after_every_epoch_under_one_name(runs):
    """With mid-epoch checkpoints on, the epoch-end checkpoint still lands in last.ckpt (never
    last-v1.ckpt), after every epoch, and the run's last.ckpt is its final model."""
    cfg, _ = runs
    at_epoch_start = []

    class Spy(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            path = trainer.default_root_dir + "/checkpoints/last.ckpt"
            if os.path.exists(path):
                at_epoch_start.append(torch.load(path, weights_only=True)["fundus2video"]["video_step"])

    run_dir = train(cfg("name=epochs", "trainer.max_epochs=3", "trainer.checkpoint_every_n_batches=2"),
                    extra_callbacks=[Spy()])
    assert at_epoch_start == [3, 6]  # 3 videos an epoch: epochs 1 and 2 ended with a checkpoint
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert _state(run_dir)["fundus2video"]["video_step"] == 9


def test_resume_last_skips_a_newest_run_without_checkpoint(runs):
    cfg, _ = runs
    done = train(cfg("name=crashed", "trainer.max_epochs=1"))
    base = done.parent
    empty = base / "29991231-235959"  # a later run that died before its first checkpoint
    empty.mkdir()
    (base / "latest").unlink()
    (base / "latest").symlink_to(empty.name)
    assert resolve_resume(cfg("name=crashed"), "last") == (done / "checkpoints" / "last.ckpt").resolve()


def test_atomic_checkpoint_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_resume_errors_name_the_file(tiny, tmp_path, capsys):
    cfg = tiny()
    with pytest.raises(ConfigError, match="no checkpoint at .*smoke/latest/checkpoints/last.ckpt"):
        resolve_resume(cfg, "last")
    with pytest.raises(ConfigError, match="checkpoint not found: .*nope.ckpt"):
        resolve_resume(cfg, str(tmp_path / "nope.ckpt"))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="junk.ckpt is not a fundus2video checkpoint"):
        resolve_resume(cfg, str(tmp_path / "junk.ckpt"))
    assert main(["train", "smoke", f"logging.root={tmp_path}", "--resume", "last"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_resume_past_max_epochs_is_refused_in_one_line(runs, capsys):
    """A checkpoint of 2 epochs resumed with trainer.max_epochs=1: one line, before Lightning's own error."""
    cfg, straight = runs
    ckpt = straight / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"has trained 2 epochs, more than trainer.max_epochs=1 \(expected "
                                          r"trainer.max_epochs >= 2"):
        resolve_resume(cfg("trainer.max_epochs=1"), str(ckpt))
    assert resolve_resume(cfg("trainer.max_epochs=2"), str(ckpt)) == ckpt.resolve()  # finished: nothing left to do


def test_resume_with_another_network_is_refused_and_init_from_starts_from_weights(runs, tmp_path, capsys):
    cfg, straight = runs
    ckpt = straight / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"holds another network \(model.generator.ngf: 8 -> 16\).*--init-from"):
        resolve_resume(cfg("model.generator.ngf=16"), str(ckpt))
    started = train(cfg("name=init", "trainer.max_epochs=1"), init_from=ckpt)
    state = _state(started)
    assert state["fundus2video"]["video_step"] == 3  # a new run: its own counters, from the checkpoint's weights
    first = Fundus2VideoModule(to_plain(cfg("trainer.max_epochs=1")))
    init_weights_from(first, ckpt)
    for key, value in torch.load(ckpt, weights_only=True)["state_dict"].items():
        assert torch.equal(first.state_dict()[key], value), key
    with pytest.raises(ConfigError, match="does not fit this network"):
        init_weights_from(Fundus2VideoModule(to_plain(cfg("model.generator.ngf=16"))), ckpt)
    other = tmp_path / "other-net"
    with pytest.raises(ConfigError, match="does not fit this network"):  # before any run directory is made
        train(cfg("name=other", "model.generator.ngf=16", f"logging.root={other}"), init_from=ckpt)
    assert not other.exists() or not any(other.rglob("*"))
    with pytest.raises(ConfigError, match="exclude each other"):
        train(cfg("name=both"), resume=ckpt, init_from=ckpt)
    assert main(["train", "smoke", *TINY, f"logging.root={tmp_path}", "--init-from", str(tmp_path / "no.ckpt")]) == 2
    assert "--init-from: checkpoint not found" in capsys.readouterr().err and not any(tmp_path.iterdir())
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    key = next(k for k in data["state_dict"] if k.startswith("generator.") and k.endswith("weight"))
    data["state_dict"][key].view(-1)[0] = float("nan")
    torch.save(data, tmp_path / "nan.ckpt")
    nan_run = ["train", "smoke", *TINY, f"logging.root={tmp_path / 'nan'}", "--init-from", str(tmp_path / "nan.ckpt")]
    assert main(nan_run) == 2
    err = capsys.readouterr().err
    assert "nan.ckpt: 1 weight tensor(s) hold NaN or infinite values" in err and "lower optim.lr" not in err, err
    assert not (tmp_path / "nan").exists()
    weights_only = tmp_path / "weights.ckpt"  # as import-weights writes them: no training state
    full = torch.load(ckpt, weights_only=True)
    torch.save({k: full[k] for k in ("state_dict", "hyper_parameters", "epoch", "global_step")}, weights_only)
    with pytest.raises(ConfigError, match="holds weights only .* --init-from"):
        resolve_resume(cfg(), str(weights_only))
    init_weights_from(Fundus2VideoModule(to_plain(cfg())), weights_only)


def test_a_full_disk_is_named_and_leaves_no_half_file(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from fundus2video.errors import UserError

    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    def full(obj, f):
        f.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 0))
    with pytest.raises(UserError, match=r"no space left on device: .*last.ckpt \(0 MiB free"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_resume_clears_what_a_killed_write_left_and_an_empty_wandb_mode_is_ignored(runs, monkeypatch):
    cfg, straight = runs
    stale = straight / "checkpoints" / ".last.k1ll3d.ckpt"  # a checkpoint write cut off by kill -9
    stale.write_bytes(b"half a checkpoint")
    resolve_resume(cfg(), str(straight))
    assert not stale.exists() and (straight / "checkpoints" / "last.ckpt").is_file()
    monkeypatch.setenv("WANDB_MODE", "")
    from fundus2video.training import make_loggers

    loggers = make_loggers(cfg("logging.wandb=disabled"), straight)
    assert loggers and "WANDB_MODE" not in os.environ


def test_a_full_disk_anywhere_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ph" / "cf.png"))

    monkeypatch.setattr("fundus2video.data_modules.phantom_files.write_phantom", full)
    assert main(["data", "phantom", "--out", str(tmp_path / "ph"), "--cases", "1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"fundus2video: error: no space left on device: {tmp_path / 'ph' / 'cf.png'}"
