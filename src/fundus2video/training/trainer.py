"""The Lightning Trainer of an experiment: devices, the DDP strategy and how its ranks start,
precision, and the checks that refuse a setting before any rank starts."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from fundus2video.callbacks import AtomicCheckpointIO
from fundus2video.errors import ConfigError
from fundus2video.precision import precision_plugin

log = logging.getLogger("fundus2video")


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

        backend = None if t is None or t.ddp_backend == "auto" else t.ddp_backend
        return DDPStrategy(find_unused_parameters=True, start_method=DDP_START[base], process_group_backend=backend)
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
    on_cuda = t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())
    if t.ddp_backend == "nccl" and not on_cuda:
        raise ConfigError(f"trainer.ddp_backend=nccl: NCCL runs on CUDA GPUs only, and this run trains on "
                          f"trainer.accelerator={t.accelerator} without one; use trainer.ddp_backend=gloo (or auto)")


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


def max_epochs(cfg: DictConfig) -> int:
    """trainer.max_epochs, with -1 meaning the learning-rate schedule's epochs."""
    t = cfg.trainer
    return t.max_epochs if t.max_epochs >= 0 else cfg.optim.epochs_constant + cfg.optim.epochs_decay
