"""The declared study analysis (fundus2video/analysis.py): paired t, Holm, power, verdicts."""

import math

import numpy as np
import pytest
from scipy import stats

from fundus2video.analysis import apply, holm, paired_t, power, seeds_needed


def test_paired_t_matches_scipy():
    a, b = np.array([1.0, 2.5, 0.3, 1.9, 1.2]), np.array([0.4, 1.1, 0.5, 1.0, 0.2])
    t = paired_t(a - b, 0.05)
    assert t["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (t["lo"], t["hi"]) == pytest.approx((ci.low, ci.high))
    one = paired_t(a - b, 0.05, margin=0.3, one_sided=True)
    assert one["p"] == pytest.approx(stats.ttest_1samp(a - b + 0.3, 0, alternative="greater").pvalue)


def test_holm_steps_down_and_stops():
    out = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.2}, 0.05)
    # 0.01 <= 0.05/4 rejected; 0.03 > 0.05/3 fails, so everything after it stands
    assert out["a"][2] and not out["c"][2] and not out["b"][2] and not out["d"][2]
    assert out["a"][0] == pytest.approx(0.04) and out["c"][0] == pytest.approx(0.09)
    assert out["b"][0] == pytest.approx(0.09)  # monotone: never below an earlier step's
    assert out["d"][0] == pytest.approx(0.2)


def test_power_matches_simulation():
    rng = np.random.default_rng(0)
    sims = rng.normal(0.5, 1.0, (20000, 6))
    t = sims.mean(1) / (sims.std(1, ddof=1) / math.sqrt(6))
    simulated = (np.abs(t) > stats.t.ppf(0.975, 5)).mean()
    assert power(1.0, 6, 0.5, 0.05) == pytest.approx(simulated, abs=0.015)
    n = seeds_needed(1.0, 0.5, 0.05)
    assert power(1.0, n, 0.5, 0.05) >= 0.8 > power(1.0, n - 1, 0.5, 0.05)


ANALYSIS = {"alpha": 0.05, "correction": "holm", "primary": ["x", "y"], "secondary": ["z"],
            "margins": {"x": 0.3, "y": 0.05}, "power_targets": {"x": 0.3, "y": 0.05},
            "claims": [{"name": "beats base", "variant": "base", "kind": "superiority"},
                       {"name": "no worse than sup", "variant": "sup", "kind": "non_inferiority"},
                       {"name": "ext helps", "variant": "ext", "kind": "superiority_of_variant"}]}


def _scores(offsets: dict[str, tuple[float, float]], noise: float = 0.01, seeds: int = 5):
    rng = np.random.default_rng(1)
    out = {}
    for arm, (dx, dy) in offsets.items():
        out[arm] = {s: {"x": 20 + dx + rng.normal(0, noise), "y": 0.5 + dy + rng.normal(0, noise),
                        "z": 0.1} for s in range(seeds)}
    return out


def test_verdicts_follow_the_declared_rules():
    # ref clearly better than base, sup equal to ref (non-inferior), ext clearly better than ref
    scores = _scores({"ref": (0, 0), "base": (-1, -0.2), "sup": (0, 0), "ext": (1, 0.2)})
    got = {v["claim"]: v["verdict"] for v in apply(ANALYSIS, scores, "ref")["verdicts"]}
    assert got == {"beats base": "held", "no worse than sup": "held", "ext helps": "held"}
    # base better than ref: not held; sup far better than ref (ref inferior): not held; ext equal: not tested
    scores = _scores({"ref": (0, 0), "base": (1, 0.2), "sup": (2, 0.5), "ext": (0, 0)}, noise=0.01)
    got = {v["claim"]: v["verdict"] for v in apply(ANALYSIS, scores, "ref")["verdicts"]}
    assert got == {"beats base": "not held", "no worse than sup": "not held", "ext helps": "not tested"}


def test_noisy_seeds_are_not_tested_and_say_their_power():
    scores = _scores({"ref": (0, 0), "base": (-0.05, -0.01), "sup": (0, 0), "ext": (0, 0)}, noise=1.0)
    out = apply(ANALYSIS, scores, "ref")
    assert out["verdicts"][0]["verdict"] == "not tested"
    test = out["verdicts"][0]["tests"][0]
    assert 0 < test["power"] < 0.5 and test["seeds_for_80"] > 5
    assert out["m"] == 6 and test["level"] <= 0.05


def test_one_seed_is_not_judged():
    scores = _scores({"ref": (0, 0), "base": (-1, -1), "sup": (0, 0), "ext": (0, 0)}, seeds=1)
    assert {v["verdict"] for v in apply(ANALYSIS, scores, "ref")["verdicts"]} == {"not judged yet"}
