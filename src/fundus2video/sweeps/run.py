"""Running a sweep (`fundus2video sweep`): hyperparameter sweeps in wandb's sweep format, on a wandb server or here.

The sweep file and its checks are `fundus2video.sweeps.spec`; the local search is `fundus2video.sweeps.search`.

- `create_and_agent`: creates the sweep on the wandb server and runs an agent (`wandb agent`'s loop).
- `run_local`: runs the same file here without a server: grid (the cartesian product, in file order),
  random (seeded), bayes (optuna's TPE sampler, when optuna is installed). Each run is an ordinary
  training run, logged offline to wandb, named `<sweep>-<i>` and grouped under the sweep's name. A
  run's score is the metric's last logged value in its metrics.csv, as in the wandb run summary a
  server-side sweep reads. `<out>/sweep.csv` and `<out>/sweep.md` list the runs sorted by it (best
  first); they are rewritten after every run, so an interrupted sweep keeps its table.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fundus2video.config import load_config, parse_overrides
from fundus2video.errors import ConfigError, UserError
from fundus2video.io import file_in_the_way
from fundus2video.sweeps.search import Search
from fundus2video.sweeps.spec import Sweep, load_sweep

log = logging.getLogger("fundus2video")


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

    from fundus2video.training import check_resources, train

    sweep = path if isinstance(path, Sweep) else load_sweep(path)
    out = Path(out_root) if out_root is not None else default_out(sweep)
    extra = parse_overrides(list(extra_overrides))
    base = [f"logging.group={sweep.name}", "logging.wandb=offline", f"logging.root={out}"]
    # bad extras, or files every run needs (VGG weights), stop the sweep before its first run
    check_resources(load_config(sweep.experiment, [*base, *sweep.overrides(sweep.first_values()), *extra]))
    blocking = file_in_the_way(out)
    if blocking is not None:  # found before the first run, not as each run fails
        raise ConfigError(f"--out {out}: {blocking} is a file, not a folder")
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

    from fundus2video.training import check_resources

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
