"""Where a run writes, and who may: the run directory (one per job, whatever the number of
ranks, nodes or restarts), its config and provenance files, and the loggers that write into it."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from fundus2video.config import to_plain
from fundus2video.io import atomic_path

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
