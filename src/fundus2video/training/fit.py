"""Training an experiment: checks, the module, resume and warm start, then fit, with a stop
(Ctrl-C, SIGTERM) that always leaves a checkpoint to resume from.

A run directory `<logging.root>/<name>/<YYYYmmdd-HHMMSS>` receives:
  config.yaml              the resolved experiment (every key, after overrides)
  run.json                 git commit (and dirty flag), command line, versions, checkpoint resumed from
  split.csv                case_id, patient_id, split (data on disk; reuse: data.split.file)
  checkpoints/last.ckpt    the latest checkpoint (plain-data hparams: loads with weights_only)
  metrics.csv              every logged scalar (CSV logger, always on)
  wandb/                   the wandb run (offline unless configured otherwise)
  knowledge_masks.png      CF | knowledge mask and field of view overlay | mask, val cases
  samples/*.mp4, *.gif     CF | real FFA | generated FFA, each validation; `last.*` the newest
`<logging.root>/<name>/latest` points at the newest run directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from fundus2video.callbacks import KnowledgeMaskLogger, ResumableCheckpoint, SampleVideoLogger
from fundus2video.config import loss_terms, to_plain
from fundus2video.data_modules import Fundus2VideoDataModule
from fundus2video.errors import ConfigError
from fundus2video.io import atomic_path, read_checkpoint
from fundus2video.module import Fundus2VideoModule
from fundus2video.state_dicts import not_finite
from fundus2video.training.rundir import RUN_DIR_ENV, global_rank, make_loggers, make_run_dir, run_info, write_config
from fundus2video.training.trainer import (
    build_trainer,
    check_accelerator,
    check_deterministic_on_cuda,
    device_count,
    max_epochs,
    quiet_known_warnings,
    strategy,
)

log = logging.getLogger("fundus2video")


def check_training(cfg: DictConfig) -> None:
    """Settings that are each valid but together train nothing, or less than they seem to."""
    if not any(cfg.loss[k] > 0 for k in loss_terms()):
        raise ConfigError(f"loss: every generator term is 0 ({', '.join(f'loss.{k}' for k in loss_terms())}): nothing "
                          "would train the generator")
    if max_epochs(cfg) == 0 and not cfg.trainer.fast_dev_run:
        why = ("trainer.max_epochs=0" if cfg.trainer.max_epochs == 0 else "trainer.max_epochs=-1 takes the schedule's "
               f"optim.epochs_constant + optim.epochs_decay = {cfg.optim.epochs_constant} + {cfg.optim.epochs_decay}")
        raise ConfigError(f"trainer.max_epochs: 0 epochs train nothing ({why}; expected at least 1)")
    if cfg.loss.att > 0 and not cfg.model.generator.kba_stages:
        log.warning("loss.att=%s has no effect: model.generator.kba_stages is empty (no attention head to train)",
                    cfg.loss.att)


def check_resources(cfg: DictConfig) -> None:
    """Files the run needs, and settings the machine cannot honour, checked before anything is created."""
    check_training(cfg)
    check_accelerator(cfg.trainer)
    check_deterministic_on_cuda(cfg.trainer, cfg.model.generator.padding)
    chosen = strategy(cfg.trainer.strategy, cfg.trainer)  # a refused DDP alias stops here
    if cfg.loss.d_pass == "shared" and (not isinstance(chosen, str) or "ddp" in chosen):
        # DDP finds the parameters a loss reaches from its graph and waits for all their gradients; the
        # shared pass's losses reach both networks, each backward only one
        raise ConfigError(f"loss.d_pass=shared runs in one process only (trainer.strategy={cfg.trainer.strategy} "
                          "is distributed here): use loss.d_pass=separate")
    if cfg.loss.vgg > 0:
        from fundus2video.errors import UserError
        from fundus2video.pretrained import weights_file

        try:  # auto ("" too) or a name: the cached file, fetched and verified here, before the run starts
            path = weights_file(cfg.loss.vgg_weights or "auto", "loss.vgg_weights", auto=("vgg19",))
        except UserError as err:
            raise ConfigError(f"{err} (loss.vgg={cfg.loss.vgg} needs torchvision's VGG19 ImageNet weights, "
                              "vgg19-dcbb9e9d.pth; or set loss.vgg=0)") from None
        from fundus2video.losses.perceptual import load_vgg19

        load_vgg19(path)  # a file that is not VGG19's weights stops here, not in setup after the run directory


def _available_bytes() -> int | None:
    """Memory the system can still give (Linux's MemAvailable plus free swap), None where unknown."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return (int(info["MemAvailable"].split()[0]) + int(info.get("SwapFree", "0 kB").split()[0])) * 1024
    except (OSError, KeyError, ValueError):
        return None


def build_module(cfg: DictConfig) -> Fundus2VideoModule:
    """The LightningModule of `cfg`; networks too large for this machine's memory stop in one line,
    measured on the meta device first (where the kernel overcommits, allocating would not fail: the
    first write would bring the OOM killer instead)."""
    g, d = cfg.model.generator, cfg.model.discriminator
    sizes = (f"model.generator.ngf={g.ngf}, n_blocks={g.n_blocks}, netg={g.netg}; model.discriminator.ndf={d.ndf}, "
             f"num_d={d.num_d}")
    with torch.device("meta"):
        shapes = Fundus2VideoModule(to_plain(cfg))
    # on the CPU the weights, their gradients and Adam's two moments live in this memory; training on a GPU
    # builds the weights here first, the rest is on the GPU
    on_cpu = cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available()
    need = (4 if on_cpu else 1) * sum(p.numel() * p.element_size() for p in shapes.parameters())
    have = _available_bytes()
    if have is not None and need > have:
        what = "their weights, gradients and optimizer state" if on_cpu else "their weights"
        raise ConfigError(f"the networks do not fit in this machine's memory ({sizes}): {what} need "
                          f"{need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB are available (the paper's generator has "
                          "ngf=64)")
    try:
        return Fundus2VideoModule(to_plain(cfg))
    except (MemoryError, RuntimeError) as err:
        if not isinstance(err, MemoryError) and "can't allocate memory" not in str(err):
            raise
        raise ConfigError(f"the networks do not fit in this machine's memory ({sizes}); the paper's generator has "
                          "ngf=64") from None


def check_mask_source(cfg: DictConfig, datamodule: Fundus2VideoDataModule) -> None:
    """`model.mask_source=lesion` needs lesion masks: without any, every mask would be empty and the
    guidance would silently do nothing."""
    if cfg.model.mask_source != "lesion":
        return
    have, total = datamodule.lesion_cases("train")
    if have == 0:
        raise ConfigError(f"model.mask_source=lesion: none of the {total} training cases has a lesion mask "
                          f"(lesion.png in a case folder); use model.mask_source=knowledge")
    if have < total:
        log.warning("model.mask_source=lesion: %d of %d training cases have no lesion mask; theirs is empty "
                    "(no guidance on those cases)", total - have, total)


def resolve_resume(cfg: DictConfig, resume: str) -> Path:
    """`last` (the newest run of this experiment) or a checkpoint path -> the checkpoint file.
    Warns about settings that differ from the checkpoint's (the run continues with `cfg`'s)."""
    if resume == "last":
        path = Path(cfg.logging.root) / cfg.name / "latest" / "checkpoints" / "last.ckpt"
        if not path.is_file():
            # `latest` moves to a run as it starts: one that failed or was killed before its first
            # checkpoint must not hide the newest run that has one
            runs = [p for p in (Path(cfg.logging.root) / cfg.name).glob("*/checkpoints/last.ckpt")
                    if p.is_file() and not p.parent.parent.is_symlink()]
            if not runs:
                raise ConfigError(f"--resume last: no checkpoint at {path} (no earlier run of '{cfg.name}' with a "
                                  f"checkpoint under {cfg.logging.root}/)")
            path = max(runs, key=lambda p: p.stat().st_mtime)
            log.info("--resume last: the newest run has no checkpoint; resuming %s", path)
    else:
        path = Path(resume)
        if path.is_dir():
            path = path / "checkpoints" / "last.ckpt" if (path / "checkpoints").is_dir() else path / "last.ckpt"
        if not path.is_file():
            raise ConfigError(f"--resume: checkpoint not found: {path}")
    checkpoint = read_checkpoint(path, "--resume")
    saved = checkpoint["hyper_parameters"]["config"]
    for stale in path.parent.glob(".last.*.ckpt"):  # half-written by a run killed mid-write: that run is over
        stale.unlink(missing_ok=True)
    if "optimizer_states" not in checkpoint:
        raise ConfigError(f"--resume: {path} holds weights only (e.g. from import-weights), no training state to "
                          "continue: start from its weights with --init-from")
    done, wanted = _epochs_done(checkpoint), max_epochs(cfg)
    if done is not None and done > wanted:
        raise ConfigError(f"--resume: {path} has trained {done} epochs, more than trainer.max_epochs={wanted} "
                          f"(expected trainer.max_epochs >= {done}, or -1 for the schedule's "
                          f"{cfg.optim.epochs_constant} + {cfg.optim.epochs_decay})")
    changed = _differences(saved, to_plain(cfg))
    structural = [c for c in changed if c.startswith(ARCHITECTURE_KEYS)]
    if structural:
        raise ConfigError(f"--resume: {path} holds another network ({'; '.join(structural)}): resume with the "
                          "checkpoint's settings, or start from its weights with --init-from")
    if changed:
        log.warning("resuming %s with settings that differ from the checkpoint's: %s", path, ", ".join(changed))
    return path.resolve()


def _epochs_done(checkpoint: dict) -> int | None:
    """The epochs a Lightning checkpoint's fit loop has started (its `current_epoch` once restored)."""
    try:
        progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]
        return int(progress["processed"])
    except (KeyError, TypeError, ValueError):
        epoch = checkpoint.get("epoch")
        return int(epoch) if isinstance(epoch, int) else None


# settings that change the networks' shapes: a checkpoint of other values cannot be resumed
ARCHITECTURE_KEYS = ("model.window", "model.generator.", "model.discriminator.", "loss.nce_layers", "loss.nce_dim")


def init_weights_from(module: Fundus2VideoModule, path: str | Path) -> None:
    """Start from the weights of a checkpoint (G, D and the PatchNCE projector, where the module has
    them), nothing else: optimizers, schedules and counters start afresh. For fine-tuning, e.g. a
    checkpoint of `import-weights`. Every weight must fit; the module's own that the file lacks
    (KBA heads a release never had) keep their initialisation and are listed."""
    path = Path(path)
    state = read_checkpoint(path, "--init-from")["state_dict"]
    if (bad := not_finite(state)) is not None:  # else the first step would say "diverged: lower optim.lr"
        raise ConfigError(f"--init-from: {path}: {bad}")
    own = module.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (here {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and own[k].shape != v.shape]
    if wrong:
        raise ConfigError(f"--init-from: {path} does not fit this network: {wrong[0]}"
                          + (f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""))
    unknown = sorted(k for k in state if k not in own)
    if unknown:
        raise ConfigError(f"--init-from: {path} has weights this network lacks, e.g. {unknown[0]} ({len(unknown)})")
    missing = sorted(k for k in own if k not in state and not k.startswith("val_metrics"))
    module.load_state_dict({**own, **state})
    log.info("initialised from %s%s", path, f" (kept their initialisation: {', '.join(missing)})" if missing else "")


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            keys.append(f"{prefix}{key}: {x!r} -> {y!r}")
    return keys


class Interrupted(Exception):
    """Training stopped on SIGTERM or Ctrl-C (SIGINT) after saving `checkpoint`."""

    def __init__(self, run_dir: Path, checkpoint: Path | None, signal_name: str = "SIGTERM"):
        super().__init__(f"stopped by {signal_name}; " + (f"checkpoint saved: {checkpoint}" if checkpoint else
                                                          "no checkpoint was written yet"))
        self.run_dir, self.checkpoint, self.signal = run_dir, checkpoint, signal_name


@contextlib.contextmanager
def _ctrl_c_saves(resumable: ResumableCheckpoint):
    """The first Ctrl-C asks for what SIGTERM does (finish the video, save, stop); a second one
    interrupts at once, as usual. Only the main thread can install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first(signum, frame):
        log.warning("Ctrl-C: saving a checkpoint after this video and stopping (Ctrl-C again to quit at once)")
        resumable.interrupt_requested = True
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def check_one_start(resume, init_from) -> None:
    if resume and init_from:
        raise ConfigError("--resume and --init-from exclude each other: resume continues a run exactly, "
                          "--init-from starts a new one from a checkpoint's weights")


def check_validation_shards(cfg: DictConfig, n_val: int) -> None:
    """Every DDP process needs a validation case: validation shards are not padded, so a process with
    none fails alone (Lightning: "zero length") while the others wait in their next collective."""
    world = device_count(cfg.trainer) * cfg.trainer.num_nodes
    if world > 1 and 0 < n_val < world and cfg.trainer.limit_val_batches != 0:
        raise ConfigError(f"{n_val} validation case(s) for {world} DDP processes (trainer.devices x "
                          f"trainer.num_nodes): each process needs at least one; add validation cases "
                          f"(data.phantom.n_val, data.split.fractions) or set trainer.limit_val_batches=0")


def train(cfg: DictConfig, resume: str | Path | None = None, extra_callbacks: list | None = None,
          init_from: str | Path | None = None) -> Path:
    """Train the experiment `cfg`; returns its run directory. `resume`: a checkpoint to continue
    from exactly (weights, optimizers, schedules, step counters, data order), in a new run directory.
    `extra_callbacks` run before the checkpointing ones (e.g. the study's learning curve).
    `init_from`: a checkpoint whose weights (only) the run starts from (`init_weights_from`)."""
    check_one_start(resume, init_from)
    if init_from and not Path(init_from).is_file():  # before a run directory is made
        raise ConfigError(f"--init-from: checkpoint not found: {init_from}")
    check_resources(cfg)
    quiet_known_warnings()
    torch.set_float32_matmul_precision(cfg.trainer.matmul_precision)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = Fundus2VideoDataModule(to_plain(cfg.data), min_frames=cfg.model.window + 1, seed=cfg.seed)
    datamodule.setup()  # lists, splits and checks the cases: bad data stops here, before a run directory exists
    check_mask_source(cfg, datamodule)
    check_validation_shards(cfg, len(datamodule.datasets["val"]))
    n_train = len(datamodule.datasets["train"])
    if cfg.data.batch_size > n_train:
        log.warning("data.batch_size=%d is more than the %d training case(s): each batch holds %d",
                    cfg.data.batch_size, n_train, n_train)
    module = build_module(cfg)
    if init_from:  # a file that is not a checkpoint of this network stops here too
        init_weights_from(module, init_from)
    run_dir = make_run_dir(cfg)
    datamodule.save_split(run_dir)
    info = run_info(cfg, resume)
    if global_rank() == 0 and os.environ.get(RUN_DIR_ENV) != str(run_dir):  # rank 0 alone: the run's own files
        write_config(cfg, run_dir / "config.yaml")
        with atomic_path(run_dir / "run.json") as tmp:
            tmp.write_text(json.dumps(info, indent=2) + "\n")
    log.info("run directory: %s%s", run_dir, f" (resuming {resume})" if resume else "")
    resumable = ResumableCheckpoint(run_dir / "checkpoints", cfg.trainer.checkpoint_every_n_batches)
    callbacks = [
        *(extra_callbacks or []),
        # the newest state as last.ckpt after every epoch, always under that one name (Lightning's
        # save_last with save_top_k=0 writes only at the very end, and versions the name to last-v1.ckpt
        # when the mid-epoch checkpoint below already wrote last.ckpt)
        ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="last", save_top_k=1, save_last=False,
                        every_n_epochs=1, enable_version_counter=False, save_on_train_epoch_end=True),
        resumable,
        KnowledgeMaskLogger(run_dir, cfg.logging.n_samples),
        SampleVideoLogger(run_dir, cfg.logging.n_samples, cfg.logging.fps),
    ]
    trainer = build_trainer(cfg, run_dir, callbacks, make_loggers(cfg, run_dir, info))
    handed = os.environ.get(RUN_DIR_ENV) is None
    if handed:
        os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        with _ctrl_c_saves(resumable):
            trainer.fit(module, datamodule=datamodule,
                        ckpt_path=str(resume) if resume else None, weights_only=True)
    except SystemExit:  # Lightning's SIGTERMException, raised after our checkpoint was written
        if not resumable.stopped_by_sigterm:
            if not trainer.received_sigterm:
                raise
            # SIGTERM outside a training video (validation, an epoch's end): Lightning stops before our
            # callback saves; the newest checkpoint is the last epoch's, an exact point to resume from
            last = resumable.path if resumable.path.is_file() else None
            log.warning("SIGTERM outside a training video: %s", f"resume from {last} (the last finished epoch)"
                        if last else "no checkpoint yet (the first epoch had not finished)")
            raise Interrupted(run_dir, last, "SIGTERM") from None
    finally:
        if handed:  # the next run in this process (a sweep, a study) makes its own
            os.environ.pop(RUN_DIR_ENV, None)
    if resumable.stopped_by_sigterm:
        raise Interrupted(run_dir, resumable.path, resumable.signal)
    if resumable.sigterm_requested:  # during the last validation or epoch end: training had no video left
        last = resumable.path if resumable.path.is_file() else None
        log.warning("SIGTERM outside a training video: %s", f"resume from {last} (the last finished epoch)"
                    if last else "no checkpoint yet")
        raise Interrupted(run_dir, last, "SIGTERM")
    return run_dir
