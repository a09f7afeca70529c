"""`fundus2video train`: build the run directory, loggers and callbacks, then fit.

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

import argparse
import contextlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import warnings
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from fundus2video.callbacks import AtomicCheckpointIO, KnowledgeMaskLogger, ResumableCheckpoint, SampleVideoLogger
from fundus2video.config import load_config, resolve_experiment, to_plain
from fundus2video.data_modules import Fundus2VideoDataModule
from fundus2video.errors import ConfigError
from fundus2video.io import atomic_path, read_checkpoint
from fundus2video.module import Fundus2VideoModule
from fundus2video.precision import precision_plugin

log = logging.getLogger("fundus2video")


# rank 0's run directory, handed to the DDP ranks Lightning starts by re-running the command line:
# they inherit rank 0's environment, and must not make directories (or move `latest`) of their own
RUN_DIR_ENV = "FUNDUS2VIDEO_RUN_DIR"


def global_rank() -> int:
    """This process's global rank as its launcher says it: RANK (torchrun, Lightning's own launcher),
    SLURM_PROCID (srun), else NODE_RANK (Lightning's launcher started by hand on each node: its
    process on node k > 0 is never global rank 0), else LOCAL_RANK; 0 when nothing says."""
    for key in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    node, local = os.environ.get("NODE_RANK", ""), os.environ.get("LOCAL_RANK", "")
    if node.isdigit() and int(node) > 0:
        return int(node) * 1_000 + (int(local) if local.isdigit() else 0)  # > 0 is all that matters here
    return int(local) if local.isdigit() else 0


def _slurm_run_name() -> str | None:
    """A run directory name every task of a SLURM job computes alike (no message needed): the job,
    its step and its restart count (a requeued job gets a new directory and resumes explicitly)."""
    job = os.environ.get("SLURM_JOB_ID", "")
    if not job.isdigit() or not os.environ.get("SLURM_PROCID", "").isdigit():
        return None
    name = f"slurm-{job}"
    step = os.environ.get("SLURM_STEP_ID", "")
    if step.isdigit() and int(step) > 0:
        name += f".{step}"
    restart = os.environ.get("SLURM_RESTART_COUNT", "")
    return name + (f"-r{restart}" if restart.isdigit() and int(restart) > 0 else "")


def _agent_store():
    """torchrun's own key-value store (its agent's, which the workers already use), or None."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        return None
    from datetime import timedelta

    from torch.distributed import TCPStore

    return TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                    timeout=timedelta(seconds=RUN_DIR_WAIT_S))


RUN_DIR_WAIT_S = 600  # how long a rank waits for rank 0 to name the run directory (rank 0 reads its data first)


def make_run_dir(cfg: DictConfig) -> Path:
    """A fresh, never reused run directory, made once per job; `latest` is repointed to it by global
    rank 0 alone. The other ranks use rank 0's: started from rank 0's process (Lightning's launcher)
    they inherit it (`RUN_DIR_ENV`); under torchrun rank 0 posts it in torchrun's store; under SLURM
    every task derives the same name from the job. Lightning broadcasts the checkpoint folder from
    rank 0 anyway, and only rank 0 writes checkpoints, samples and logs."""
    rank = global_rank()
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and rank > 0:
        return Path(inherited)
    base = Path(cfg.logging.root) / cfg.name
    store = _agent_store()
    key = f"fundus2video/run_dir/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if store is not None and rank > 0:
        return Path(store.get(key).decode())
    if (name := _slurm_run_name()) is not None:
        run_dir = base / name
        run_dir.mkdir(parents=True, exist_ok=True)  # every task; on a filesystem the nodes do not share, each its own
    elif rank > 0:  # a launch that names no job and shares no process with rank 0: a directory of its own
        run_dir = base / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-rank{rank}"
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir, i = base / stamp, 1
        while True:
            try:
                run_dir.mkdir(parents=True)  # exists-then-mkdir would race another job started the same second
                break
            except FileExistsError:
                run_dir, i = base / f"{stamp}-{i}", i + 1
    if store is not None:
        store.set(key, str(run_dir))
    latest = base / "latest"
    if rank == 0 and (latest.is_symlink() or not latest.exists()):
        tmp = base / f".latest.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, latest)
    return run_dir


def write_config(cfg: DictConfig, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))


def wandb_mode(setting: str) -> str:
    """online | offline | disabled. `auto`: WANDB_MODE if set, else online only with credentials."""
    if setting != "auto":
        return setting
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not has_key and netrc.is_file():
        has_key = "api.wandb.ai" in netrc.read_text(errors="ignore")
    return "online" if has_key else "offline"


def git(*args: str) -> str:
    """A git command's output in the package's checkout ("" outside one, or when git is missing)."""
    try:
        # --no-optional-locks: `git status` would otherwise refresh the index under .git/index.lock, and a
        # user's own commit at that moment fails ("Another git process seems to be running")
        out = subprocess.run(["git", "--no-optional-locks", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def run_info(cfg: DictConfig, resume: str | Path | None = None) -> dict:
    """What produced a run: the git commit of the code (and whether it had uncommitted changes), the
    command line, versions, and the checkpoint resumed from. Written to run.json and logged to wandb."""
    commit = git("rev-parse", "HEAD")
    return {"git_commit": commit or None, "git_dirty": bool(git("status", "--porcelain")) if commit else None,
            "command": " ".join(sys.argv), "fundus2video": version("fundus2video"), "torch": torch.__version__,
            "lightning": L.__version__, "host": platform.node(), "seed": cfg.seed,
            "resumed_from": str(resume) if resume else None}


def make_loggers(cfg: DictConfig, run_dir: Path, info: dict | None = None) -> list[Logger]:
    """CSV always; wandb unless disabled. A wandb that cannot start falls back to offline."""
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="", version="")]
    if "WANDB_MODE" in os.environ and not os.environ["WANDB_MODE"].strip():
        del os.environ["WANDB_MODE"]  # set but empty: wandb itself would fail on it; `auto` decides instead
    mode = wandb_mode(cfg.logging.wandb)
    if mode == "disabled":
        return loggers
    kwargs = dict(project=cfg.logging.project, name=f"{cfg.name}-{run_dir.name}",
                  group=cfg.logging.group or None, save_dir=str(run_dir),
                  config={**to_plain(cfg), "run": info or {}})
    try:
        wb = WandbLogger(mode=mode, **kwargs)
        if global_rank() == 0:  # one wandb run per job: the other ranks' loggers never start one
            wb.experiment  # start now, so a broken server shows here and not mid-training  # noqa: B018
    except Exception as err:  # wandb raises many types; training must go on regardless
        if mode == "offline":
            log.warning("wandb could not start (%s); logging to CSV only", err)
            return loggers
        log.warning("wandb could not start online (%s); logging offline", err)
        wb = WandbLogger(mode="offline", **kwargs)
    return loggers + [wb]


DDP_START = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}


def device_count(t) -> int:
    """How many devices per node `trainer.accelerator` and `trainer.devices` resolve to."""
    devices = t.devices
    if isinstance(devices, str) and devices != "auto":
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()])
        devices = int(devices)
    if not isinstance(devices, (int, str)):  # a list of device indices
        return len(devices)
    if devices in ("auto", -1):
        gpu = t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())
        return max(1, torch.cuda.device_count()) if gpu else 1
    return int(devices)


def strategy(name: str, t=None):
    """The Lightning strategy for `trainer.strategy`. Every DDP flavour (and `auto` when the run spans
    more than one device or node, where Lightning would pick plain DDP) gets
    `find_unused_parameters=True`: a window runs two backward passes (G's loss, then D's), and D's
    reaches only D's parameters, so under DDP each pass must tell the reducer which parameters it
    leaves out (Lightning prepares the reducer before every `manual_backward`). The aliases that
    turn it off cannot train this GAN and are refused."""
    if name.startswith("ddp") and "find_unused_parameters_false" in name:
        raise ConfigError(f"trainer.strategy={name}: this GAN's two backward passes each leave one network's "
                          "parameters unused, which DDP must be told about; use trainer.strategy=ddp")
    base = name.replace("_find_unused_parameters_true", "")
    if base == "auto" and t is not None and (device_count(t) > 1 or t.num_nodes > 1):
        base = "ddp"
    if base in DDP_START:
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=True, start_method=DDP_START[base])
    from lightning.pytorch.strategies import StrategyRegistry

    known = ["auto", *StrategyRegistry.available_strategies()]
    if name not in known:
        raise ConfigError(f"trainer.strategy={name}: not a Lightning strategy (expected one of {', '.join(known)})")
    return name


def check_accelerator(t) -> None:
    """A GPU asked for where torch has none (a CPU build, no driver, fewer devices): said before training."""
    if t.accelerator in ("gpu", "cuda"):
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        build = "a CPU build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        if found == 0:
            raise ConfigError(f"trainer.accelerator={t.accelerator}: torch {torch.__version__} ({build}) sees no "
                              "CUDA GPU here; use trainer.accelerator=cpu (or auto)")
        if isinstance(t.devices, int) and t.devices > found:
            raise ConfigError(f"trainer.devices={t.devices}: only {found} CUDA GPU(s) here (expected 1 to {found}, "
                              "or auto)")
    if t.accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps: no Apple GPU (MPS) here; use trainer.accelerator=cpu (or auto)")


def check_deterministic_on_cuda(t, padding: str) -> None:
    """`trainer.deterministic=true` on a GPU: CUDA has no deterministic backward of reflection (or
    replication) padding, and the generator's 7x7 stem and head pad by reflection whatever
    model.generator.padding says (as pix2pixHD's do), so G's first backward would raise. Said before
    training, with the way out."""
    cuda = t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())
    if t.deterministic is True and cuda:
        raise ConfigError("trainer.deterministic=true: CUDA has no deterministic backward of the generator's "
                          f"reflection padding (its 7x7 stem and head, and the residual blocks with "
                          f"model.generator.padding={padding}); use trainer.deterministic=warn (deterministic where "
                          "CUDA can be, a warning where not)")


def precision_settings(precision: str, accelerator: str) -> tuple[str | None, list]:
    """(Trainer's `precision`, extra plugins). 16-mixed always through `ScalerAwareMixedPrecision`, so a
    step the GradScaler skips does not advance the schedules; with `trainer.accelerator=cpu` that is
    float16 autocast and a CPU GradScaler (Lightning would turn 16-mixed on a CPU into bf16-mixed), so
    the GPU recipe can be exercised here."""
    plugin = precision_plugin(precision, accelerator)
    return (None, [plugin]) if plugin is not None else (precision, [])


def build_trainer(cfg: DictConfig, run_dir: Path | None, callbacks: list | None = None,
                  loggers: list[Logger] | bool = False) -> L.Trainer:
    t = cfg.trainer
    precision, plugins = precision_settings(t.precision, t.accelerator)
    if t.deterministic is True:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' condition for determinism
    return L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=strategy(t.strategy, t),
        precision=precision, max_epochs=max_epochs(cfg), limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches, check_val_every_n_epoch=t.check_val_every_n_epoch,
        log_every_n_steps=t.log_every_n_steps, fast_dev_run=t.fast_dev_run, benchmark=t.benchmark,
        enable_progress_bar=t.enable_progress_bar, num_sanity_val_steps=0,
        default_root_dir=str(run_dir) if run_dir else None, logger=loggers,
        callbacks=callbacks or [], enable_checkpointing=run_dir is not None,
        deterministic=t.deterministic, plugins=[AtomicCheckpointIO(), *plugins],
        # the data module's SeededSampler shards across ranks itself (exact resume under DDP)
        use_distributed_sampler=False,
    )


def quiet_known_warnings() -> None:
    """Lightning's advice that does not apply here (small CPU demo datasets)."""
    for pattern in (".*does not have many workers.*", ".*smaller than the logging interval.*",
                    ".*LeafSpec.*", ".*treespec.*",
                    # the run directory holds config.yaml already; the CSV logger only writes metrics.csv
                    ".*exists and is not empty.*",
                    # mid-epoch resume is exact here: the data module's state skips the videos already seen
                    ".*resuming from a checkpoint that ended before the epoch ended.*"):
        warnings.filterwarnings("ignore", message=pattern)


# the generator's loss weights: with all of them 0 nothing trains G
G_TERMS = ("gan", "feat", "vgg", "gv", "nce", "kad", "att", "l1")


def check_training(cfg: DictConfig) -> None:
    """Settings that are each valid but together train nothing, or less than they seem to."""
    if not any(cfg.loss[k] > 0 for k in G_TERMS):
        raise ConfigError(f"loss: every generator term is 0 ({', '.join(f'loss.{k}' for k in G_TERMS)}): nothing "
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
        from fundus2video.pretrained import resolve

        try:  # auto ("" too) or a name: the cached file, fetched and verified here, before the run starts
            path = resolve(cfg.loss.vgg_weights or "auto", "loss.vgg_weights", auto=("vgg19",))
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


def max_epochs(cfg: DictConfig) -> int:
    """trainer.max_epochs, with -1 meaning the learning-rate schedule's epochs."""
    t = cfg.trainer
    return t.max_epochs if t.max_epochs >= 0 else cfg.optim.epochs_constant + cfg.optim.epochs_decay


# settings that change the networks' shapes: a checkpoint of other values cannot be resumed
ARCHITECTURE_KEYS = ("model.window", "model.generator.", "model.discriminator.", "loss.nce_layers", "loss.nce_dim")


def init_weights_from(module: Fundus2VideoModule, path: str | Path) -> None:
    """Start from the weights of a checkpoint (G, D and the PatchNCE projector, where the module has
    them), nothing else: optimizers, schedules and counters start afresh. For fine-tuning, e.g. a
    checkpoint of `import-weights`. Every weight must fit; the module's own that the file lacks
    (KBA heads a release never had) keep their initialisation and are listed."""
    path = Path(path)
    state = read_checkpoint(path, "--init-from")["state_dict"]
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


def _one_start(resume, init_from) -> None:
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
    _one_start(resume, init_from)
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


def _config_from(args: argparse.Namespace):
    return load_config(resolve_experiment(args.experiment), args.overrides)


def cmd_config(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    print(OmegaConf.to_yaml(_config_from(args), resolve=True), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _config_from(args)
    if args.dry_run:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        return 0
    _one_start(args.resume, args.init_from)  # before --resume's checks, which may warn
    resume = resolve_resume(cfg, args.resume) if args.resume else None
    try:
        run_dir = train(cfg, resume, init_from=args.init_from)
    except Interrupted as stop:
        again = f"--resume {stop.checkpoint}" if stop.checkpoint else "(from the start: nothing was saved)"
        print(f"\n{stop}\nresume with: fundus2video train {args.experiment} {again}")
        return 130 if stop.signal == "SIGINT" else 143  # 128 + the signal: the status a killed job would have
    print(f"\nrun directory: {run_dir}\n  {written(run_dir)}")
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        print("  no checkpoint: trainer.fast_dev_run only checks the loop, it saves nothing"
              if cfg.trainer.fast_dev_run else "  no checkpoint was written")
    return 0


def written(run_dir: Path) -> str:
    """The run's outputs that exist, in the order a reader looks for them."""
    names = ["config.yaml", "checkpoints/last.ckpt", "metrics.csv", "knowledge_masks.png", "samples/last.mp4",
             "samples/last.gif"]
    found = [n for n in names if (run_dir / n).is_file()]
    samples = " (CF | real FFA | generated FFA)" if any(n.startswith("samples/") for n in found) else ""
    return ", ".join(found) + samples
