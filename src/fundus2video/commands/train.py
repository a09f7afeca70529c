"""`fundus2video train` and `fundus2video config`: parse, then hand the experiment to the library
(`fundus2video.training.train`, which documents the run directory it writes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fundus2video.config import load_config, resolve_experiment
from fundus2video.training import Interrupted, check_one_start, resolve_resume, train


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
    check_one_start(args.resume, args.init_from)  # before --resume's checks, which may warn
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
