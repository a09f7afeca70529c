"""Argument helpers shared by the subcommands: options mixed in with `key=value` overrides."""

from __future__ import annotations

import argparse

from fundus2video.errors import ConfigError


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the subcommands' parsers are made of the same class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def take_option(rest: list[str], option: str) -> tuple[str | None, list[str]]:
    """Take `option VALUE` or `option=VALUE` out of the overrides."""
    for i, arg in enumerate(rest):
        if arg == option:
            if i + 1 == len(rest):
                raise ConfigError(f"{option} needs a value")
            return rest[i + 1], rest[:i] + rest[i + 2:]
        if arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
            if not value:
                raise ConfigError(f"{option}= needs a value")
            return value, rest[:i] + rest[i + 1:]
    return None, rest


def split_flags(rest: list[str], flags: set[str]) -> tuple[set[str], list[str]]:
    """Separate our own `--flag`s from overrides (which may also start with `--`)."""
    found = {a for a in rest if a in flags}
    return found, [a for a in rest if a not in flags]


# fundus2video.onnx_runtime.RUNTIMES, written out so that `--help` does not import torch (a test keeps them equal)
RUNTIME_CHOICES = ("auto", "torch", "onnxruntime", "openvino")


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    """`--runtime`, as `generate` and `demo` take it."""
    parser.add_argument(
        "--runtime", choices=RUNTIME_CHOICES, default="auto",
        help="what runs the generator: torch; onnxruntime (needs fundus2video[export]) or openvino (needs "
        "fundus2video[openvino]), on the CPU, the generator exported once per checkpoint and size and cached "
        "beside it as CKPT.onnx-cache/; or auto (default): on the CPU, the fastest of torch and the installed "
        "ones that reproduce torch's frames, timed once per checkpoint, size and machine")
