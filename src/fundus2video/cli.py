"""Command line: `fundus2video train|config ...` (also `python -m fundus2video`).

Experiments are YAML files (`experiments/NAME.yaml`) or their names; overrides follow as
`key=value` or `--key=value`. User errors end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fundus2video.config import ConfigError, load_config


def resolve_experiment(name: str) -> Path:
    """A YAML path, or a name looked up as experiments/NAME.yaml."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return path
        candidates = [path]
    else:
        candidates = [Path("experiments") / f"{name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    folder = candidates[0].parent
    known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
    hint = f" (available in {folder}/: {', '.join(known)})" if known else ""
    raise ConfigError(f"experiment not found: {candidates[0]}{hint}")


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
    from fundus2video.train import train

    run_dir = train(cfg)
    print(f"\nrun directory: {run_dir}\n"
          f"  config.yaml, checkpoints/last.ckpt, metrics.csv, knowledge_masks.png,\n"
          f"  samples/last.mp4 and samples/last.gif (CF | real FFA | generated FFA)")
    return 0


def _split_flags(rest: list[str], flags: set[str]) -> tuple[set[str], list[str]]:
    """Separate our own `--flag`s from overrides (which may also start with `--`)."""
    found = {a for a in rest if a in flags}
    return found, [a for a in rest if a not in flags]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fundus2video", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "train an experiment"),
                            ("config", "print an experiment's resolved configuration")):
        p = sub.add_parser(name, help=help_text,
                           description=f"{help_text}. Overrides: key=value or --key=value.")
        p.add_argument("experiment", help="experiments/NAME.yaml or NAME")
        p.add_argument("overrides", nargs=argparse.REMAINDER, help="key=value ...")
        if name == "train":
            p.epilog = "--dry-run: print the resolved configuration and stop"
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    flags, args.overrides = _split_flags(args.overrides, {"--dry-run"})
    args.dry_run = "--dry-run" in flags
    try:
        return {"train": cmd_train, "config": cmd_config}[args.command](args)
    except ConfigError as err:
        print(f"fundus2video: error: {err}", file=sys.stderr)
        return 2
