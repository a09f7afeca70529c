"""Training an experiment, as a library: `train(cfg)` builds the run directory, the loggers, the
Trainer and the module, then fits (fit.py); rundir.py says where a run writes, trainer.py how
Lightning runs it. `fundus2video train` only parses its command line and calls `train`."""

from fundus2video.training.fit import (
    Interrupted,
    build_module,
    check_one_start,
    check_resources,
    check_training,
    init_weights_from,
    resolve_resume,
    train,
)
from fundus2video.training.rundir import git, global_rank, make_loggers, make_run_dir
from fundus2video.training.trainer import build_trainer, device_count, strategy

__all__ = ["Interrupted", "build_module", "build_trainer", "check_one_start", "check_resources", "check_training",
           "device_count", "git", "global_rank", "init_weights_from", "make_loggers", "make_run_dir",
           "resolve_resume", "strategy", "train"]
