"""`fundus2video sweep`: hyperparameter sweeps in wandb's sweep format, on a wandb server or here.

A sweep file (`experiments/sweeps/NAME.yaml`) is a plain wandb sweep configuration whose `command`
runs this package's CLI, e.g. `[${env}, ${interpreter}, -m, fundus2video, train, smoke, ${args_no_hyphens}]`:
the experiment is the element after `train`, and each parameter is a dotted config key passed as
`key=value` (`${args_no_hyphens}`) or `--key=value` (`${args}`), exactly as `fundus2video train` takes it.

- `create_and_agent`: creates the sweep on the wandb server and runs an agent (`wandb agent`'s loop).
- `run_local`: runs the same file here without a server: grid (the cartesian product, in file order),
  random (seeded), bayes (optuna's TPE sampler, when optuna is installed). Each run is an ordinary
  training run, logged offline to wandb, named `<sweep>-<i>` and grouped under the sweep's name. A
  run's score is the metric's last logged value in its metrics.csv, as in the wandb run summary a
  server-side sweep reads. `<out>/sweep.csv` and `<out>/sweep.md` list the runs sorted by it (best
  first); they are rewritten after every run, so an interrupted sweep keeps its table.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import math
import os
import platform
import random
import re
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from fundus2video.config import load_config, parse_overrides, resolve_experiment
from fundus2video.errors import ConfigError, UserError

log = logging.getLogger("fundus2video")

__all__ = ["Param", "RunResult", "Search", "Sweep", "add_parser", "cmd_sweep", "create_and_agent", "default_out",
           "expand_command", "load_sweep", "read_metric", "resolve_sweep", "run_local", "write_table"]

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


def resolve_sweep(name: str) -> Path:
    """A sweep YAML path, or a name looked up as experiments/sweeps/NAME.yaml."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = Path("experiments") / "sweeps" / f"{name}.yaml"
    if path.is_file():
        return path
    known = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
    hint = f" (available in {path.parent}/: {', '.join(known)})" if known else ""
    raise ConfigError(f"sweep not found: {path}{hint}")


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


@dataclass
class RunResult:
    """One run of a local sweep: its values, outcome and score."""

    run: str
    params: dict[str, Any]
    status: str  # ok | no metric | failed: <reason>
    metric: float | None = None
    run_dir: str = ""


def read_metric(run_dir: Path, name: str) -> float | None:
    """The last logged value of `name` in the run's metrics.csv (the wandb summary's value); None if none."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        values = [row[name] for row in csv.DictReader(f) if row.get(name) not in (None, "")]
    return float(values[-1]) if values else None


def _rank(results: list[RunResult], goal: str) -> list[RunResult]:
    """Best first per the goal; runs without a (finite) score, then failed runs, at the end."""
    def key(r: RunResult) -> tuple[int, float]:
        if r.metric is not None and math.isfinite(r.metric):
            return 0, -r.metric if goal == "maximize" else r.metric
        return (2 if r.status.startswith("failed") else 1), 0.0
    return sorted(results, key=key)


def write_table(results: list[RunResult], sweep: Sweep, out: Path) -> str:
    """Write `<out>/sweep.csv` and `<out>/sweep.md` (atomically), sorted by the metric; returns the markdown."""
    from fundus2video.io import atomic_path

    ranked = _rank(results, sweep.goal)
    names = [p.name for p in sweep.params]
    header = ["run", "status", sweep.metric, *names, "run_dir"]
    rows = [[r.run, r.status, "" if r.metric is None else r.metric, *(r.params.get(n, "") for n in names), r.run_dir]
            for r in ranked]
    with atomic_path(out / "sweep.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    text = (f"Sweep `{sweep.name}` ({sweep.path}, {sweep.method}, experiment {sweep.experiment}): "
            f"runs sorted by the last {sweep.metric} ({sweep.goal}).\n\n" + "\n".join(lines) + "\n")
    with atomic_path(out / "sweep.md") as tmp:
        tmp.write_text(text)
    return text


def _reached(value: float | None, sweep: Sweep) -> bool:
    if value is None or sweep.target is None or not math.isfinite(value):
        return False
    return value >= sweep.target if sweep.goal == "maximize" else value <= sweep.target


def _finish_wandb() -> None:
    """Close the run's wandb run: Lightning's WandbLogger would otherwise reuse it for the next run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def default_out(sweep: Sweep) -> Path:
    """Where a local sweep goes unless told: runs/sweeps/<sweep name>."""
    return Path("runs") / "sweeps" / sweep.name


def run_local(path: str | Path | Sweep, count: int | None = None, extra_overrides: Sequence[str] = (),
              out_root: str | Path | None = None, seed: int = 0) -> list[RunResult]:
    """Run the sweep here, one training run after another; returns the results, best first.

    grid: every combination (at most `count`, or run_cap); random and bayes: `count` (or run_cap) runs.
    Overrides of each run, later ones winning: name=<sweep>-<i>, logging.group=<sweep>, logging.wandb=offline,
    logging.root=<out>, then the command's (its literal key=value words and the parameters), then
    `extra_overrides`. A run that raises is recorded as failed and the sweep goes on; it stops early once
    the metric reaches metric.target.
    """
    from tqdm import tqdm

    from fundus2video.commands.train import check_resources, train

    sweep = path if isinstance(path, Sweep) else load_sweep(path)
    out = Path(out_root) if out_root is not None else default_out(sweep)
    extra = parse_overrides(list(extra_overrides))
    base = [f"logging.group={sweep.name}", "logging.wandb=offline", f"logging.root={out}"]
    # bad extras, or files every run needs (VGG weights), stop the sweep before its first run
    check_resources(load_config(sweep.experiment, [*base, *sweep.overrides(sweep.first_values()), *extra]))
    search = Search(sweep, seed)
    caps = [n for n in (count, sweep.run_cap, search.size) if n is not None]
    if not caps:
        raise ConfigError(f"{sweep.path}: a {sweep.method} sweep needs a number of runs: --count N (or run_cap)")

    results: list[RunResult] = []
    for i in tqdm(range(min(caps)), desc=f"sweep {sweep.name}", unit="run"):
        values = search.ask()
        if values is None:
            break
        result = RunResult(f"{sweep.name}-{i}", values, "ok")
        try:
            cfg = load_config(sweep.experiment, [f"name={result.run}", *base, *sweep.overrides(values), *extra])
            run_dir = train(cfg)
            result.run_dir = str(run_dir)
            result.metric = read_metric(run_dir, sweep.metric)
            if result.metric is None:
                result.status = "no metric"
        except Exception as err:  # a broken run must not end the sweep
            result.status = f"failed: {type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
            log.error("%s %s", result.run, result.status, exc_info=not isinstance(err, UserError))
        finally:
            _finish_wandb()
        results.append(result)
        log.info("%s: %s=%s %s", result.run, sweep.metric, result.metric, values)
        search.tell(result.metric)
        write_table(results, sweep, out)
        if _reached(result.metric, sweep):
            log.info("%s reached the target %s=%s; stopping", result.run, sweep.metric, sweep.target)
            break
    return _rank(results, sweep.goal)


def _check_reachable(url: str, timeout: float = 5.0) -> None:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError as err:
        raise UserError(f"wandb server {url} is unreachable ({err}); run the sweep here instead with --local") from None


def create_and_agent(path: str | Path | Sweep, count: int | None = None, extra_overrides: Sequence[str] = ()) -> str:
    """Create the sweep on the wandb server, then run an agent here (`count` runs, or until the sweep ends).

    `extra_overrides` join the sweep as constant parameters (replacing one of the same name), so every run
    gets them. The agent runs the
    file's command, whose ${interpreter} is `python` from PATH: this interpreter's folder is put first.
    """
    import wandb

    from fundus2video.commands.train import check_resources

    sweep = path if isinstance(path, Sweep) else load_sweep(path)
    extra = parse_overrides(list(extra_overrides))
    cfg = load_config(sweep.experiment, [*sweep.overrides(sweep.first_values()), *extra])
    check_resources(cfg)  # the agent trains here: files every run needs must be here
    mode = os.environ.get("WANDB_MODE", "online").lower()
    if mode in ("offline", "disabled", "dryrun"):
        raise UserError(f"WANDB_MODE={mode}: a sweep on a server needs wandb online; run it here instead with --local")
    base_url = os.environ.get("WANDB_BASE_URL") or wandb.setup().settings.base_url
    _check_reachable(base_url)
    config = dict(sweep.spec, name=sweep.name, parameters=dict(sweep.spec["parameters"]))
    for item in extra:
        key, value = item.split("=", 1)
        config["parameters"][key] = {"value": value}
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    project = sweep.spec.get("project") or cfg.logging.project
    try:
        sweep_id = wandb.sweep(config, entity=sweep.spec.get("entity"), project=project)
    except Exception as err:  # wandb raises many types (no login, server errors)
        raise UserError(f"could not create the sweep on {base_url}: {(str(err).splitlines() or [''])[0]}; "
                        f"run it here instead with --local") from None
    wandb.agent(sweep_id, entity=sweep.spec.get("entity"), project=project, count=count)
    return sweep_id


def _add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--local", action="store_true", help="run the sweep here, without a wandb server")
    parser.add_argument("--count", type=int, default=None,
                        help="number of runs (random/bayes: required unless run_cap; grid: at most this many)")
    parser.add_argument("--seed", type=int, default=0, help="--local: seed of the random/bayes search")
    parser.add_argument("--out", default=None, help="--local: folder of the runs and sweep.csv/md "
                                                    "(default runs/sweeps/<sweep name>)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `fundus2video sweep SWEEP [--local] [--count N] [--seed N] [--out DIR] [key=value ...]`."""
    p = subparsers.add_parser(
        "sweep", help="run a hyperparameter sweep (wandb, or here with --local)",
        description="Run a wandb sweep file: create it on the wandb server and start an agent, or with --local "
                    "run it here (grid, random, bayes) and print the runs sorted by the sweep's metric. "
                    "Overrides (key=value) apply to every run. Exit status 1 when a local run failed.")
    p.add_argument("sweep", help="experiments/sweeps/NAME.yaml or NAME")
    _add_flags(p)
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="key=value ... (the flags may also come here)")
    return p


def cmd_sweep(args: argparse.Namespace) -> int:
    """The `sweep` command: flags given after SWEEP arrive among the overrides and are parsed here."""
    flags = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_flags(flags)
    args, overrides = flags.parse_known_args(args.overrides, namespace=args)
    if args.count is not None and args.count < 1:
        raise UserError(f"--count: expected a positive number, got {args.count}")
    sweep = load_sweep(resolve_sweep(args.sweep))
    if not args.local:
        create_and_agent(sweep, args.count, overrides)
        return 0
    results = run_local(sweep, args.count, overrides, args.out, args.seed)
    out = Path(args.out) if args.out else default_out(sweep)
    print((out / "sweep.md").read_text(), end="")
    print(f"table: {out / 'sweep.md'}, {out / 'sweep.csv'}")
    return 1 if any(r.status.startswith("failed") for r in results) else 0
