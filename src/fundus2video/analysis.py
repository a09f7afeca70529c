"""A study's declared analysis, applied as written (`analysis:` in experiments/studies/NAME.yaml).

The statistical unit is the seed: for every endpoint, a seed's score is the unit's test-split value
(a mean over the test cases, or a set-level score such as a skill over the cases), and each
comparison is the paired difference between two arms over the seeds they share (seed k of both arms
saw the same data order, initialisation draws and test cases). With n seeds:

  paired t       mean difference d, standard deviation s, t = d / (s / sqrt n), df = n - 1;
                 two-sided for superiority, one-sided against -margin for non-inferiority
  Holm           every (claim, primary endpoint) test in one family: the i-th smallest p-value is
                 compared with alpha / (m - i + 1), stopping at the first that fails; adjusted
                 p-values are reported, and each interval is drawn at its own step's level
  power          for each test, the chance of detecting the declared difference (`power_targets`)
                 given the observed s, at the first Holm step's level (the most demanding), from the
                 noncentral t; and the seeds that 80 % power would need

With few seeds, s is itself uncertain, so the power is an estimate; a claim whose tests neither
reject nor exclude is *not tested*, with the power reached, never "no difference".
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

POWER_GOAL = 0.8


def paired_t(diffs, alpha: float, margin: float = 0.0, one_sided: bool = False) -> dict:
    """The paired-t summary of `diffs` (one per seed). Two-sided: H0 mean = 0. One-sided: H0
    mean <= -margin (non-inferiority), H1 mean > -margin. The interval is two-sided at level 1 - alpha
    (one-sided: its lower bound at 1 - alpha)."""
    d = np.asarray([x for x in diffs if x is not None and not math.isnan(x)], float)
    n = len(d)
    out = {"n": n, "mean": float(d.mean()) if n else math.nan, "sd": math.nan, "p": math.nan,
           "lo": math.nan, "hi": math.nan}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    out["sd"] = sd
    df = n - 1
    if se == 0:  # every seed gave the same difference: no spread to test against
        out["lo"] = out["hi"] = out["mean"]
        out["p"] = 0.0 if (out["mean"] + margin if one_sided else out["mean"]) != 0 else 1.0
        return out
    if one_sided:
        t = (out["mean"] + margin) / se
        out["p"] = float(stats.t.sf(t, df))
        out["lo"] = out["mean"] - float(stats.t.ppf(1 - alpha, df)) * se
        out["hi"] = math.inf
    else:
        t = out["mean"] / se
        out["p"] = float(2 * stats.t.sf(abs(t), df))
        half = float(stats.t.ppf(1 - alpha / 2, df)) * se
        out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    return out


def holm(pvalues: dict, alpha: float) -> dict:
    """key -> (Holm-adjusted p, the level its own step compares with, rejected?)."""
    keys = [k for k, p in sorted(pvalues.items(), key=lambda kv: (math.isnan(kv[1]), kv[1]))]
    m = len(keys)
    out, running, stopped = {}, 0.0, False
    for i, key in enumerate(keys):
        p = pvalues[key]
        level = alpha / (m - i)
        adjusted = math.nan if math.isnan(p) else min(1.0, max(running, (m - i) * p))
        if not math.isnan(adjusted):
            running = adjusted
        rejected = not stopped and not math.isnan(p) and p <= level
        stopped = stopped or not rejected
        out[key] = (adjusted, level, rejected)
    return out


def power(sd: float, n: int, delta: float, alpha: float, one_sided: bool = False) -> float:
    """Power of the paired t with n seeds to detect a true difference `delta` when the seeds'
    differences have standard deviation `sd`."""
    if n < 2 or not sd > 0 or math.isnan(sd):
        return math.nan
    df, nc = n - 1, delta / (sd / math.sqrt(n))
    if one_sided:
        return float(stats.nct.sf(stats.t.ppf(1 - alpha, df), df, nc))
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_needed(sd: float, delta: float, alpha: float, goal: float = POWER_GOAL, one_sided: bool = False,
                 most: int = 1000) -> int | None:
    """The fewest seeds giving `goal` power for `delta` (None: more than `most`, or unknown sd)."""
    if not sd > 0 or math.isnan(sd):
        return None
    for n in range(2, most + 1):
        if power(sd, n, delta, alpha, one_sided) >= goal:
            return n
    return None


def apply(analysis: dict, scores: dict[str, dict[int, dict[str, float]]], reference: str,
          name_of=lambda v: v) -> dict:
    """The declared analysis on `scores` (arm -> seed -> endpoint -> value). Returns the tests (one per
    claim and primary endpoint, with Holm), the secondary endpoints' uncorrected intervals and a
    verdict per claim: held / not held / not tested, with the power reached."""
    alpha = float(analysis.get("alpha", 0.05))
    primary, secondary = list(analysis["primary"]), list(analysis.get("secondary") or [])
    margins, targets = analysis.get("margins") or {}, analysis.get("power_targets") or {}
    ref = scores.get(reference, {})

    def diffs(arm: str, key: str, sign: float) -> list[float]:
        other = scores.get(arm, {})
        seeds = sorted(set(other) & set(ref))
        return [sign * (ref[s].get(key, math.nan) - other[s].get(key, math.nan)) for s in seeds]

    tests = {}
    claims = analysis.get("claims") or []
    for ci, claim in enumerate(claims):
        arm, kind = name_of(claim["variant"]), claim["kind"]
        # every primary endpoint is higher-better: the difference is taken so that > 0 favours the claim
        sign = -1.0 if kind == "superiority_of_variant" else 1.0
        for key in primary:
            one_sided = kind == "non_inferiority"
            t = paired_t(diffs(arm, key, sign), alpha, margins.get(key, 0.0) if one_sided else 0.0, one_sided)
            tests[(ci, key)] = {**t, "claim": ci, "endpoint": key, "one_sided": one_sided}
    m = max(1, len(tests))
    corrected = holm({k: t["p"] for k, t in tests.items()}, alpha) if analysis.get("correction", "holm") == "holm" \
        else {k: (t["p"], alpha, t["p"] <= alpha) for k, t in tests.items()}
    for key, t in tests.items():
        adjusted, level, rejected = corrected[key]
        t.update(p_adjusted=adjusted, level=level, rejected=rejected)
        claim = claims[key[0]]
        sign = -1.0 if claim["kind"] == "superiority_of_variant" else 1.0
        # the two-sided interval at the test's own Holm level: what the report prints and what shows a
        # non-inferiority claim clearly broken
        step = paired_t(diffs(name_of(claim["variant"]), key[1], sign), level)
        t["lo_step"], t["hi_step"] = step["lo"], step["hi"]
        delta = targets.get(key[1])
        first = alpha / m
        t["power"] = power(t["sd"], t["n"], delta, first, t["one_sided"]) if delta else math.nan
        t["seeds_for_80"] = seeds_needed(t["sd"], delta, first, one_sided=t["one_sided"]) if delta else None
    verdicts = []
    for ci, claim in enumerate(claims):
        mine = [tests[(ci, k)] for k in primary]
        if any(t["n"] < 2 for t in mine):
            verdict = "not judged yet"
        elif claim["kind"] == "non_inferiority":
            verdict = ("held" if all(t["rejected"] for t in mine) else
                       "not held" if any(t["hi_step"] < -margins[t["endpoint"]] for t in mine) else "not tested")
        else:
            favour = any(t["rejected"] and t["mean"] > 0 for t in mine)
            against = any(t["rejected"] and t["mean"] < 0 for t in mine)
            verdict = "not held" if against else "held" if favour else "not tested"
        verdicts.append({"claim": claim["name"], "kind": claim["kind"], "variant": name_of(claim["variant"]),
                         "verdict": verdict, "tests": mine})
    second = {}
    for claim in claims:
        arm = name_of(claim["variant"])
        sign = -1.0 if claim["kind"] == "superiority_of_variant" else 1.0
        second[arm] = {key: paired_t(diffs(arm, key, sign), alpha) for key in secondary}
    # descriptive comparisons: reference - arm on every endpoint, uncorrected, no verdict
    compared = {name_of(v): {key: paired_t(diffs(name_of(v), key, 1.0), alpha) for key in [*primary, *secondary]}
                for v in analysis.get("compare") or []}
    return {"alpha": alpha, "m": m, "tests": tests, "verdicts": verdicts, "secondary": second, "compared": compared}
