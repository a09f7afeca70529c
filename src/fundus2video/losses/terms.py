"""The generator's loss terms, each declared once.

A term is its weight in the config's `loss` section (config.py declares it with `weight()`: default,
range, whether the paper has it) and one function of a window, registered here under the weight's
name with `@generator_term`, in the term's own file. The module sums the registered terms that
apply, each times its weight, in the config's order; the config check, the training's "nothing
trains G" check and the benchmarks read the same declaration. Adding a term touches its file, the
one `weight()` line, and its test (docs/DESIGN.md, "Add a loss term").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Outputs = list[list[torch.Tensor]]  # a multiscale discriminator's outputs: per scale, its layers' features


@dataclass(frozen=True)
class Window:
    """What a generator term may look at in one window (B videos, K generated frames)."""

    module: Any  # the LightningModule: its networks and loss modules (generator, projector, vgg_loss, ...)
    loss: Any  # the config's `loss` section
    cf: torch.Tensor  # (B, 3, H, W) the colour photo
    fake: torch.Tensor  # (B, K, H, W) the generated frames
    target: torch.Tensor  # (B, K, H, W) the real frames
    mask: torch.Tensor  # (B, 1, H, W) the knowledge mask, unsigned (a signed mask's views joined)
    pred_fake: Outputs  # D on (CF, fake)
    pred_real: Outputs  # D on (CF, real)
    pred_fake_km: Outputs | None  # the knowledge-aware D on the masked fake (None without KAD)
    attention: dict[str, torch.Tensor] | None  # KBA's attention maps (None without KBA or its loss)
    nce_rng: torch.Generator | None  # PatchNCE's patch sampling


# a term's value, or its value and logged-only parts ({log name: tensor}, detached by the caller)
Value = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]


@dataclass(frozen=True)
class GeneratorTerm:
    key: str  # its weight: loss.<key>
    name: str  # its log name (train/<name>)
    compute: Callable[[Window], Value]
    applies: Callable[[Window], bool]  # computed at all in this window


GENERATOR_TERMS: dict[str, GeneratorTerm] = {}


def generator_term(key: str, name: str | None = None, applies: Callable[[Window], bool] | None = None):
    """Register `fn(window)` as the term weighted by `loss.<key>`, logged as `name` (default `g_<key>`),
    computed where `applies(window)` (default: where its weight is > 0)."""
    def register(fn: Callable[[Window], Value]) -> Callable[[Window], Value]:
        if key in GENERATOR_TERMS:
            raise ValueError(f"generator term loss.{key} is registered twice")
        GENERATOR_TERMS[key] = GeneratorTerm(key, name or f"g_{key}", fn,
                                             applies or (lambda window: window.loss[key] > 0))
        return fn
    return register


def _registered(keys: tuple[str, ...]) -> list[GeneratorTerm]:
    missing = [k for k in keys if k not in GENERATOR_TERMS]
    if missing:  # a weight declared without its function: a programming error, said at the first window
        raise RuntimeError(f"loss weight(s) {', '.join(f'loss.{k}' for k in missing)} declared in config.py but no "
                           "term registered for them (@generator_term in fundus2video/losses/)")
    return [GENERATOR_TERMS[k] for k in keys]


def generator_terms(window: Window, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The terms of `keys` (the config's order) that apply, unweighted, by log name; logged-only parts
    follow their term, detached."""
    terms: dict[str, torch.Tensor] = {}
    for term in _registered(keys):
        if not term.applies(window):
            continue
        value = term.compute(window)
        if isinstance(value, tuple):
            value, logged = value
            terms[term.name] = value
            terms.update({name: part.detach() for name, part in logged.items()})
        else:
            terms[term.name] = value
    return terms


def generator_weights(loss: Any, keys: tuple[str, ...]) -> dict[str, float]:
    """Each term's weight by its log name."""
    return {term.name: float(loss[term.key]) for term in _registered(keys)}
