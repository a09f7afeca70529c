"""A study spec (`experiments/studies/NAME.yaml`): the variants (experiment files), the seeds, a
`budget` merged over every variant and, where declared, the analysis; loaded and checked here."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from fundus2video.errors import ConfigError, UserError

log = logging.getLogger("fundus2video")


# the per-test-case scores the report reads first; a unit keeps every numeric column of evaluate's
# per_case.csv (the kinetics' per-kind rises among them), so later analyses need no checkpoint
CASE_KEYS = ("psnr", "ssim", "psnr_lesion", "ssim_lesion", "psnr_km", "curve_mae", "lesion_rise",
             "real_lesion_rise", "false_bright", "time_corr")
# what an `analysis:` section of a spec may declare (the report applies it as written)
ANALYSIS_KEYS = {"unit", "test", "alpha", "correction", "primary", "secondary", "claims", "margins",
                 "power_targets", "skill_reference", "compare"}
@dataclass
class StudySpec:
    name: str
    variants: list[str]
    seeds: list[int]
    budget: dict
    reference: str = "fundus2video"
    baseline: str = "pix2pixhd"
    overrides: list[str] = field(default_factory=list)
    analysis: dict = field(default_factory=dict)  # the declared analysis (empty: the first study's rules)

    def analysis_id(self) -> str:
        """A short hash of the declared analysis: every unit records the one it was trained under."""
        if not self.analysis:
            return ""
        return hashlib.sha256(json.dumps(self.analysis, sort_keys=True).encode()).hexdigest()[:12]

    def budget_overrides(self) -> list[str]:
        """The budget as `key=value` overrides (applied over each variant's experiment file)."""
        return [*_dotlist(self.budget), *self.overrides]

    def budget_id(self) -> str:
        """A short hash of everything that defines a unit's training apart from variant and seed."""
        return hashlib.sha256(json.dumps(self.budget_overrides(), sort_keys=True).encode()).hexdigest()[:12]


def _dotlist(node: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        if isinstance(value, dict):
            out += _dotlist(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def resolve_study(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"study spec not found: {path}")
        return path
    from fundus2video.config import experiments_dir

    path = experiments_dir() / "studies" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise ConfigError(f"study not found: {path}" + (f" (available: {', '.join(known)})" if known else ""))
    return path


def load_study(name: str, variants: list[str] | None = None, seeds: list[int] | None = None,
               overrides: list[str] | None = None) -> StudySpec:
    """The spec file, with the command line's variants, seeds and overrides; checked before anything runs."""
    path = resolve_study(name)
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:  # yaml errors come in many types
        raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with variants, seeds and budget, found {type(raw).__name__}")
    unknown = set(raw) - {"variants", "seeds", "budget", "reference", "baseline", "analysis"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)} (expected variants, seeds, budget, reference, "
                          "baseline, analysis)")
    for key, kind in (("variants", list), ("seeds", list), ("budget", dict), ("reference", str), ("baseline", str),
                      ("analysis", dict)):
        if key in raw and not isinstance(raw[key], kind):
            raise ConfigError(f"{path}: {key}: expected a {kind.__name__}, found {raw[key]!r}")
    spec = StudySpec(name=path.stem, variants=list(variants if variants is not None else raw.get("variants") or []),
                     seeds=list(seeds if seeds is not None else raw.get("seeds", [0])),
                     budget=raw.get("budget") or {}, reference=raw.get("reference", "fundus2video"),
                     baseline=raw.get("baseline", "pix2pixhd"), overrides=list(overrides or []),
                     analysis=_checked_analysis(path, raw.get("analysis") or {}, raw.get("variants") or []))
    where = "--variants" if variants is not None else f"{path}: variants"
    if not spec.variants or not all(isinstance(v, str) and v for v in spec.variants):
        raise ConfigError(f"{where}: expected experiment names, found {spec.variants}")
    if len(set(spec.variants)) != len(spec.variants):
        raise ConfigError(f"{where}: {spec.variants} names a variant twice")
    where = "--seeds" if seeds is not None else f"{path}: seeds"
    if not spec.seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in spec.seeds):
        raise ConfigError(f"{where}: expected non-negative integers, found {spec.seeds}")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"{where}: {spec.seeds} names a seed twice (a unit per variant and seed)")
    for key in ("reference", "baseline"):  # the report's paired differences compare them
        if key in raw and raw[key] not in (raw.get("variants") or []):
            raise ConfigError(f"{path}: {key}: '{raw[key]}' is not one of the variants {raw.get('variants')}")
    for variant in spec.variants:
        unit_config(spec, variant, spec.seeds[0], Path("runs/study-check"))  # every variant resolves
    return spec


def _checked_analysis(path: Path, analysis: dict, variants: list) -> dict:
    """The declared analysis, refused in one line where the report could not apply it as written."""
    if not analysis:
        return {}
    unknown = set(analysis) - ANALYSIS_KEYS
    if unknown:
        raise ConfigError(f"{path}: analysis: unknown keys {sorted(unknown)} "
                          f"(expected {', '.join(sorted(ANALYSIS_KEYS))})")
    if analysis.get("test", "paired_t") != "paired_t" or analysis.get("correction", "holm") not in ("holm", "none"):
        raise ConfigError(f"{path}: analysis: test {analysis.get('test')!r} / correction "
                          f"{analysis.get('correction')!r} (expected test paired_t and correction holm or none)")
    alpha = analysis.get("alpha", 0.05)
    if not isinstance(alpha, float) or not 0 < alpha < 1:
        raise ConfigError(f"{path}: analysis.alpha: expected a number in (0, 1), found {alpha!r}")
    primary = analysis.get("primary")
    if not isinstance(primary, list) or not primary or not all(isinstance(p, str) for p in primary):
        raise ConfigError(f"{path}: analysis.primary: expected a list of score names, found {primary!r}")
    compare = analysis.get("compare") or []
    if not isinstance(compare, list) or not all(v in variants for v in compare):
        raise ConfigError(f"{path}: analysis.compare: expected a list of variants among {variants}, found {compare!r}")
    kinds = ("superiority", "non_inferiority", "superiority_of_variant")
    for claim in analysis.get("claims") or []:
        if not isinstance(claim, dict) or claim.get("variant") not in variants or claim.get("kind") not in kinds:
            raise ConfigError(f"{path}: analysis.claims: {claim!r} needs a name, a variant among {variants} and "
                              f"a kind among {list(kinds)}")
        if claim["kind"] == "non_inferiority" and not all(p in (analysis.get("margins") or {}) for p in primary):
            raise ConfigError(f"{path}: analysis.margins: a non-inferiority claim needs a margin for every primary "
                              f"endpoint {primary}, found {analysis.get('margins')!r}")
    return analysis


def unit_config(spec: StudySpec, variant: str, seed: int, unit_dir: Path):
    from fundus2video.config import load_config, resolve_experiment

    try:
        path = resolve_experiment(variant)
    except UserError as err:
        raise ConfigError(f"--variants: {err}") from None
    return load_config(path, [*spec.budget_overrides(), f"seed={seed}", "name=run", f"logging.root={unit_dir}"])
