"""Proposing a sweep's runs here, without a wandb server: grid (the cartesian product, in file
order), random (seeded, wandb's distributions) and bayes (optuna's TPE sampler, when installed)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from typing import Any

from fundus2video.errors import UserError
from fundus2video.sweeps.spec import Sweep


class Search:
    """Proposes parameter values, one run at a time: grid, random (seeded) or bayes (optuna's TPE)."""

    def __init__(self, sweep: Sweep, seed: int = 0) -> None:
        self.sweep = sweep
        self._rng = random.Random(seed)
        names = [p.name for p in sweep.params]
        self.size: int | None = None  # grid: the number of combinations
        if sweep.method == "grid":
            grids = [p.grid() for p in sweep.params]
            self.size = math.prod(map(len, grids))
            self._grid: Iterator[dict[str, Any]] = (dict(zip(names, c)) for c in itertools.product(*grids))
        elif sweep.method == "bayes":
            try:
                import optuna
            except ImportError:
                raise UserError("method bayes runs here with optuna's TPE sampler: pip install 'optuna>=4,<6' "
                                "(or run the sweep on a wandb server, or use method random)") from None
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self._space = {p.name: p.to_optuna() for p in sweep.params}
            self._study = optuna.create_study(direction=sweep.goal, sampler=optuna.samplers.TPESampler(seed=seed))
            self._trial: Any = None

    def ask(self) -> dict[str, Any] | None:
        """The next run's values; None when a grid is exhausted."""
        if self.sweep.method == "grid":
            return next(self._grid, None)
        if self.sweep.method == "random":
            return {p.name: p.sample(self._rng) for p in self.sweep.params}
        self._trial = self._study.ask({name: dist for name, (dist, _) in self._space.items()})
        return {name: decode(self._trial.params[name]) for name, (_, decode) in self._space.items()}

    def tell(self, value: float | None) -> None:
        """The run's score (None: failed or no metric); only bayes learns from it."""
        if self.sweep.method != "bayes":
            return
        from optuna.trial import TrialState

        if value is None or not math.isfinite(value):
            self._study.tell(self._trial, state=TrialState.FAIL)
        else:
            self._study.tell(self._trial, value)
