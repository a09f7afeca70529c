"""Checks of a state dict against the network it is meant for, shared by every loader (Hub folders,
checkpoints): no torch file's numbers reach a network, or a video, before they pass."""

from __future__ import annotations

import torch


def first_mismatch(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str | None:
    """The first disagreement between the rebuilt generator and the file, in the generator's order."""
    for key, tensor in expected.items():
        if key not in got:
            return f"weight '{key}' is missing"
        if tuple(got[key].shape) != tuple(tensor.shape):
            return (f"weight '{key}' has shape {tuple(got[key].shape)}, the config's generator "
                    f"{tuple(tensor.shape)}")
        if not got[key].is_floating_point():
            return f"weight '{key}' is {got[key].dtype}, not floating point"
    unexpected = [key for key in got if key not in expected]
    return f"unexpected weight '{unexpected[0]}'" if unexpected else None


def not_finite(state: dict[str, torch.Tensor]) -> str | None:
    """Why weights cannot generate anything, when some are NaN or infinite (a diverged run's): such a
    generator writes black, white or grey videos that look like results."""
    bad = [key for key, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if not bad:
        return None
    return (f"{len(bad)} weight tensor(s) hold NaN or infinite values (first: '{bad[0]}'): the run had diverged "
            "when they were saved; use an earlier checkpoint")
