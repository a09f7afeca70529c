"""A sweep file: wandb's sweep format, validated against the experiment's configuration schema.

A sweep file (`experiments/sweeps/NAME.yaml`) is a plain wandb sweep configuration whose `command`
runs this package's CLI, e.g. `[${env}, ${interpreter}, -m, fundus2video, train, smoke, ${args_no_hyphens}]`:
the experiment is the element after `train`, and each parameter is a dotted config key passed as
`key=value` (`${args_no_hyphens}`) or `--key=value` (`${args}`), exactly as `fundus2video train` takes it.
`load_sweep` checks every key and every parameter's values (a range's ends) before anything runs.
"""

from __future__ import annotations

import math
import os
import platform
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fundus2video.config import load_config, resolve_experiment
from fundus2video.errors import ConfigError

# wandb's top-level keys (controller, settings: what `wandb sweep` may add); early_terminate, controller and
# settings only matter on a server
TOP_KEYS = {"program", "entity", "project", "description", "name", "method", "metric", "parameters",
            "early_terminate", "command", "run_cap", "controller", "settings"}
# the keys each wandb distribution takes (besides `distribution`); q defaults to 1, mu to 0, sigma to 1
DISTRIBUTIONS = {
    "constant": {"value"}, "categorical": {"values", "probabilities"}, "int_uniform": {"min", "max"},
    "uniform": {"min", "max"}, "q_uniform": {"min", "max", "q"}, "log_uniform": {"min", "max"},
    "log_uniform_values": {"min", "max"}, "q_log_uniform": {"min", "max", "q"},
    "q_log_uniform_values": {"min", "max", "q"}, "inv_log_uniform": {"min", "max"},
    "inv_log_uniform_values": {"min", "max"}, "normal": {"mu", "sigma"}, "q_normal": {"mu", "sigma", "q"},
    "log_normal": {"mu", "sigma"}, "q_log_normal": {"mu", "sigma", "q"},
}
# the command macros the CLI can take: wandb's agent replaces each by these words (see expand_command)
PARAM_MACROS = ("${args_no_hyphens}", "${args}")
MACROS = {"${env}", "${interpreter}", "${program}", *PARAM_MACROS}
ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")


@dataclass(frozen=True)
class Param:
    """One sweep parameter: a dotted config key and its wandb distribution."""

    name: str
    kind: str  # a key of DISTRIBUTIONS
    spec: dict[str, Any]

    def _quantize(self, x: float) -> float | int:
        """wandb's q_* distributions: round to a multiple of q (an integer q gives integers)."""
        q = self.spec.get("q", 1)
        return int(round(x / q) * q) if isinstance(q, int) else round(round(x / q) * q, 12)

    def _finish(self, x: float, quantize: bool = True) -> float | int:
        return self._quantize(x) if quantize and self.kind.startswith("q_") else x

    def _from_unit(self, u: float, quantize: bool = True) -> Any:
        """A bounded distribution's value at quantile `u` of its underlying uniform (u in [0, 1])."""
        lo, hi = self.spec["min"], self.spec["max"]
        k = self.kind.removeprefix("q_")
        if k == "int_uniform":
            return min(hi, lo + int(u * (hi - lo + 1)))
        if k in ("log_uniform_values", "inv_log_uniform_values"):  # log(x) uniform in [log(min), log(max)]
            x = lo * (hi / lo) ** u
        elif k == "log_uniform":  # min and max are exponents: x = e^U(min, max)
            x = math.exp(lo + u * (hi - lo))
        elif k == "inv_log_uniform":  # x = e^-U(min, max)
            x = math.exp(-(lo + u * (hi - lo)))
        else:
            x = lo + u * (hi - lo)
        return self._finish(x, quantize)

    def _from_normal(self, z: float) -> Any:
        """normal family: z drawn from N(mu, sigma); log_normal takes e^z."""
        return self._finish(math.exp(z) if "log" in self.kind else z)

    def sample(self, rng: random.Random) -> Any:
        """One draw, as a wandb random search makes it."""
        if self.kind == "constant":
            return self.spec["value"]
        if self.kind == "categorical":
            return rng.choices(self.spec["values"], weights=self.spec.get("probabilities"))[0]
        if "mu" in DISTRIBUTIONS[self.kind]:
            return self._from_normal(rng.gauss(self.spec.get("mu", 0.0), self.spec.get("sigma", 1.0)))
        return self._from_unit(rng.random())

    def grid(self) -> list[Any]:
        """The values a grid search tries (wandb grids take value/values only)."""
        if self.kind == "constant":
            return [self.spec["value"]]
        if self.kind == "categorical":
            return list(self.spec["values"])
        raise ConfigError(f"parameters.{self.name}: a grid needs `value` or `values`, not distribution {self.kind}")

    def probes(self) -> list[Any]:
        """Values checked against the config schema: every listed value, a range's ends, a normal's mu."""
        if self.kind in ("constant", "categorical"):
            return self.grid()
        if "mu" in DISTRIBUTIONS[self.kind]:
            return [self._from_normal(self.spec.get("mu", 0.0))]
        return [self._from_unit(0.0), self._from_unit(1.0)]

    def to_optuna(self) -> tuple[Any, Callable[[Any], Any]]:
        """An optuna distribution for bayes, and the map from its suggestion to the parameter's value."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind in ("constant", "categorical"):  # indices: optuna's choices must be plain scalars
            values = self.grid()
            return CategoricalDistribution(list(range(len(values)))), values.__getitem__
        if "mu" in DISTRIBUTIONS[self.kind]:
            raise ConfigError(f"parameters.{self.name}: the local bayes search needs bounds (min/max), not "
                              f"distribution {self.kind}; run it on a wandb server, or use method random")
        if self.kind == "int_uniform":
            return IntDistribution(self.spec["min"], self.spec["max"]), int
        lo, hi = sorted((self._from_unit(0.0, quantize=False), self._from_unit(1.0, quantize=False)))
        return FloatDistribution(lo, hi, log="log" in self.kind), self._finish


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file."""

    path: Path
    name: str
    method: str  # grid | random | bayes
    metric: str
    goal: str  # minimize | maximize
    target: float | None
    run_cap: int | None
    params: tuple[Param, ...]
    command: tuple[str, ...]
    program: str
    experiment: Path
    spec: dict[str, Any] = field(repr=False)  # the file as read (what a wandb server gets)

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """What follows `fundus2video train EXPERIMENT` in the command, for these parameter values."""
        argv = expand_command(self.command, values, self.program)
        return argv[_train_index(argv) + 2:]

    def first_values(self) -> dict[str, Any]:
        """Each parameter's first probe value (to check overrides before anything runs)."""
        return {p.name: p.probes()[0] for p in self.params}


def _fail(path: Path | str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {msg}")


def expand_command(command: Sequence[str], values: dict[str, Any], program: str) -> list[str]:
    """The argv wandb's agent runs: whole-element macros become words, `${envvar:NAME}` the variable.

    ${env} -> /usr/bin/env (nothing on Windows), ${interpreter} -> python, ${program} -> the sweep's program,
    ${args} -> --key=value ..., ${args_no_hyphens} -> key=value ... (values as Python's str() writes them).
    """
    words = {
        "${env}": [] if platform.system() == "Windows" else ["/usr/bin/env"],
        "${interpreter}": ["python"],
        "${program}": [program],
        "${args}": [f"--{k}={v}" for k, v in values.items()],
        "${args_no_hyphens}": [f"{k}={v}" for k, v in values.items()],
    }
    argv: list[str] = []
    for chunk in map(str, command):
        chunk = ENVVAR.sub(lambda m: os.environ.get(m.group(1), m.group(1)), chunk)
        argv += words.get(chunk, [chunk])
    return argv


def _train_index(argv: list[str]) -> int:
    """Where `fundus2video train EXP` starts in a command (index of `train`), or -1."""
    for i, word in enumerate(argv[1:-1], start=1):
        if word == "train" and Path(argv[i - 1]).name == "fundus2video":
            return i
    return -1


def _param(path: Path, name: str, spec: Any) -> Param:
    where = f"parameters.{name}"
    if not isinstance(spec, dict):
        raise _fail(path, f"{where}: expected a mapping (value, values, or distribution with min/max)")
    if "parameters" in spec:
        raise _fail(path, f"{where}: nested parameters are not supported; use dotted keys (e.g. optim.lr)")
    kind = spec.get("distribution")
    if kind is None:  # wandb's inference
        if "values" in spec:
            kind = "categorical"
        elif "value" in spec:
            kind = "constant"
        elif "min" in spec and "max" in spec:
            ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
            kind = "int_uniform" if ints else "uniform"
        else:
            raise _fail(path, f"{where}: needs `value`, `values`, or `min` and `max` (or a `distribution`)")
    if kind not in DISTRIBUTIONS:
        raise _fail(path, f"{where}: unknown distribution '{kind}' (expected one of {', '.join(DISTRIBUTIONS)})")
    keys = set(spec) - {"distribution"}
    allowed = DISTRIBUTIONS[kind]
    if keys - allowed:
        raise _fail(path, f"{where}: unexpected {sorted(keys - allowed)} for distribution {kind} "
                          f"(takes {sorted(allowed)})")
    needed = {"constant": {"value"}, "categorical": {"values"}}.get(kind, allowed & {"min", "max"})
    if needed - keys:
        raise _fail(path, f"{where}: distribution {kind} needs {sorted(needed - keys)}")
    if kind == "categorical":
        values, probs = spec["values"], spec.get("probabilities")
        if not isinstance(values, list) or not values:
            raise _fail(path, f"{where}: `values` must be a non-empty list")
        if probs is not None and (len(probs) != len(values) or abs(sum(probs) - 1) > 1e-6):
            raise _fail(path, f"{where}: `probabilities` must match `values` and sum to 1")
    if "min" in needed:
        lo, hi = spec["min"], spec["max"]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi)) or lo > hi:
            raise _fail(path, f"{where}: min and max must be numbers with min <= max, got {lo!r}, {hi!r}")
        if kind.endswith("_values") and lo <= 0:
            raise _fail(path, f"{where}: distribution {kind} needs min > 0, got {lo}")
        if kind == "int_uniform" and not all(isinstance(v, int) for v in (lo, hi)):
            raise _fail(path, f"{where}: int_uniform needs integer min and max")
    for key in ("q", "sigma"):
        if key in spec and not (isinstance(spec[key], int | float) and spec[key] > 0):
            raise _fail(path, f"{where}: {key} must be a number > 0, got {spec[key]!r}")
    return Param(name, kind, dict(spec))


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; every parameter's values must load with the experiment's schema."""

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise _fail(path, f"cannot read the sweep: {str(err).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise _fail(path, "expected a mapping of sweep keys (method, metric, parameters, command, ...)")
    if set(spec) - TOP_KEYS:
        raise _fail(path, f"unknown key(s) {sorted(set(spec) - TOP_KEYS)} (wandb sweeps take {sorted(TOP_KEYS)})")
    method = spec.get("method")
    if method not in ("grid", "random", "bayes"):
        raise _fail(path, f"method: expected grid, random or bayes, got {method!r}")
    metric = spec.get("metric") or {}
    if not isinstance(metric, dict) or not metric.get("name"):
        raise _fail(path, "metric: needs a name (e.g. val/psnr) and a goal; runs are ranked by it")
    goal = metric.get("goal", "minimize")
    if goal not in ("minimize", "maximize"):
        raise _fail(path, f"metric.goal: expected minimize or maximize, got {goal!r}")
    if not spec.get("program"):
        raise _fail(path, "program: required by wandb (e.g. fundus2video; the command need not use it)")
    parameters = spec.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise _fail(path, "parameters: expected a mapping of config keys to value/values/distributions")
    params = tuple(_param(path, str(name), p) for name, p in parameters.items())

    command = spec.get("command")
    command = [str(c) for c in command] if isinstance(command, list) else []
    argv = expand_command(command, {}, spec["program"])  # without parameters: `train` precedes the experiment
    if _train_index(argv) < 0 or argv[_train_index(argv) + 1].startswith("-"):
        raise _fail(path, "command: expected a list running `fundus2video train EXPERIMENT`, e.g. "
                          "[${env}, ${interpreter}, -m, fundus2video, train, smoke, ${args_no_hyphens}]")
    macros = [c for c in command if c.startswith("${") and c.endswith("}") and not ENVVAR.fullmatch(c)]
    if set(macros) - MACROS or sum(m in PARAM_MACROS for m in macros) != 1:
        raise _fail(path, f"command: pass the parameters with exactly one of {', '.join(PARAM_MACROS)} "
                          f"(fundus2video takes key=value or --key=value); supported macros: {sorted(MACROS)}")
    if not isinstance(metric.get("target", 0), int | float):
        raise _fail(path, f"metric.target: expected a number, got {metric['target']!r}")
    if spec.get("run_cap") is not None and (not isinstance(spec["run_cap"], int) or spec["run_cap"] < 1):
        raise _fail(path, f"run_cap: expected a positive integer, got {spec['run_cap']!r}")
    try:
        experiment = resolve_experiment(argv[_train_index(argv) + 1])
    except ConfigError as err:
        raise _fail(path, f"command: {err}") from None
    sweep = Sweep(path, str(spec.get("name") or path.stem), method, str(metric["name"]), goal,
                  metric.get("target"), spec.get("run_cap"), params, tuple(command), str(spec["program"]),
                  experiment, spec)
    if method == "grid":
        for p in params:
            try:
                p.grid()
            except ConfigError as err:
                raise _fail(path, str(err)) from None
    _check_probes(sweep)
    return sweep


def _check_probes(sweep: Sweep) -> None:
    """Load the experiment with every probe value of every parameter (few loads: probes are zipped)."""
    probes = [p.probes() for p in sweep.params]
    for i in range(max(map(len, probes))):
        values = {p.name: vals[min(i, len(vals) - 1)] for p, vals in zip(sweep.params, probes)}
        try:
            load_config(sweep.experiment, sweep.overrides(values))
        except ConfigError as err:
            raise _fail(sweep.path, str(err).removeprefix("override: ")) from None
