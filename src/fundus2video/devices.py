"""Device strings, parsed in one place: what `--device` accepts, what this machine has, and the
default where none is given. The Trainer's `accelerator`/`devices` are Lightning's to parse."""

from __future__ import annotations

import torch

from fundus2video.errors import UserError

DEVICES = "cpu, cuda, cuda:N or mps"


def check_device(device: str | torch.device, flag: str = "device") -> torch.device:
    """`device` as a torch.device this machine has; otherwise a one-line UserError naming `flag` (a
    checkpoint must not be blamed for a device that does not exist)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"{flag} {device}: not a device (expected {DEVICES})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"{flag} {device}: this machine has no CUDA GPU (torch {torch.__version__}); use "
                            f"{flag} cpu")
        if dev.index is not None and dev.index >= count:
            raise UserError(f"{flag} {device}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"{flag} {device}: Apple's MPS is not available here; use {flag} cpu")
    elif dev.type != "cpu":
        raise UserError(f"{flag} {device}: not supported (expected {DEVICES})")
    return torch.device("cpu") if dev.type == "cpu" else dev  # cpu:0 is the CPU (map_location knows only cpu)


def device_type(device: str | torch.device) -> str:
    """"cpu", "cuda" or "mps" of a device or its string (what torch.autocast takes). A string torch cannot
    parse gives its part before ":", so that `check_device` is the one to refuse it, in one line."""
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError):
        return str(device).split(":")[0]


def default_device() -> str:
    """The first GPU when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"
