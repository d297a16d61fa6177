"""Scaling laws by metric kind: recovery of known parameters, forecasts and intervals that never
leave the domain, intervals that hold up with few points, back-tests."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dashboards import laws
from dashboards.kinds import Domain, domain_for, metric_kind

X = np.geomspace(5e5, 5e9, 8)
LOSS = domain_for("eval/loss")
MMLU = domain_for("eval/mmlu/direct")


def loss_law(x, e=1.2, a=3.0, alpha=0.3, s=1e7):
    return e + a * (np.asarray(x) / s) ** -alpha


def acc_law(x, chance=25.0, top=100.0, a=-0.5, b=0.6, s=1e8):
    return chance + (top - chance) / (1 + np.exp(-(a + b * np.log(np.asarray(x) / s))))


@pytest.mark.parametrize("name, kind", [
    ("eval/loss", "loss"), ("train/loss", "loss"), ("eval/loss/mc", "loss"), ("eval/unseen_mc/rc_logprob", "loss"),
    ("eval/mmlu/direct", "accuracy"), ("eval/bbh/cot_flex", "accuracy"), ("eval/unseen_mc/rc_norm", "accuracy"),
    ("eval/mmlu/rc", "accuracy"), ("eval/mmlu/direct/normalized", "score"), ("eval/normalized_average", "score"),
    ("eval/unseen/normalized_average", "score"), ("train/mfu", None), ("mmlu_direct", None),
])
def test_metric_kind_from_name(name, kind):
    assert metric_kind(name) == kind


def test_domains_read_chance_and_floors_from_the_registry():
    assert (MMLU.low, MMLU.high, MMLU.chance) == (25.0, 100.0, 25.0)
    assert domain_for("eval/tydiqa/direct").low == 0.0
    bbh = domain_for("eval/bbh/direct")
    assert 20 < bbh.low < 30  # the mean of the subtask baselines
    assert domain_for("eval/mmlu/direct/normalized").low == pytest.approx(-100 / 3)
    avg = domain_for("eval/normalized_average")
    assert avg.kind == "score" and avg.chance == 0.0 and -40 < avg.low < -20
    assert domain_for("eval/mmlu/rc_logprob").sign == -1.0
    assert domain_for("y", "accuracy", 10.0).low == 10.0


def test_loss_law_recovers_its_parameters():
    rng = np.random.default_rng(0)
    y = loss_law(X) * np.exp(rng.normal(0, 0.003, len(X)))
    f = laws.fit(X, y, LOSS, n_boot=50)
    assert f.law.name == "power+offset"
    p = f.law.params()
    assert p["E"] == pytest.approx(1.2, abs=0.05) and p["alpha"] == pytest.approx(0.3, abs=0.05)
    far = laws.predict(f, 5e11)
    assert far.low <= loss_law(5e11) <= far.high and far.low >= 0
    assert far.extrapolation and not laws.predict(f, 1e8).extrapolation
    # Outside the fitted range at all is an extrapolation, however near.
    near = laws.predict(f, X[-1] * 1.5)
    assert near.extrapolation and 0 < near.decades_beyond < 0.2


def test_with_few_points_the_interval_spans_both_law_forms():
    """Three points that level off (a loss against task count: 3.278, 2.950, 2.945): the pure
    power law keeps falling, but the points cannot rule out a law that levels off at E, so the
    interval one rung on holds the level already reached."""
    f = laws.fit([9, 89, 282], [3.278, 2.950, 2.945], LOSS, n_boot=100)
    assert f.law.name == "power" and "the power and power+offset laws' bootstraps pooled" in f.note
    assert all(v > 0 for v in f.law.predict(np.geomspace(1, 1e30, 50)))
    p = laws.predict(f, 1836)
    assert p.extrapolation and p.low < p.value < 2.9 < 2.94 < p.high
    # Points on a law with an irreducible term rule the pure power law out.
    g = laws.fit(X[:4], loss_law(X[:4]), LOSS, n_boot=50)
    assert g.law.name == "power+offset" and "power law is ruled out" in g.note and len(g.boot) == 1


def test_accuracy_law_recovers_slope_and_ceiling():
    rng = np.random.default_rng(1)
    y = acc_law(X) + rng.normal(0, 0.3, len(X))
    f = laws.fit(X, y, MMLU, n_boot=50)
    assert f.law.name == "sigmoid"
    assert f.law.params()["b"] == pytest.approx(0.6, abs=0.08)
    capped = acc_law(X, top=70.0, a=0.5, b=0.9) + rng.normal(0, 0.2, len(X))
    g = laws.fit(X, capped, MMLU, n_boot=50)
    assert g.law.name == "sigmoid+ceiling"
    assert g.law.params()["ceiling"] == pytest.approx(70.0, abs=2.0)


ADVERSARIAL = {
    "flat": ([1e6, 1e7, 1e8], [40.0, 40.0, 40.0]),
    "decreasing": ([1e6, 1e7, 1e8, 1e9], [60.0, 50.0, 41.0, 30.0]),
    "two points": ([1e6, 1e9], [30.0, 60.0]),
    "at the bounds": ([1e6, 1e7, 1e8], [0.0, 50.0, 100.0]),
    "below chance": ([1e6, 1e7, 1e8, 1e9, 1e10], [5.0, 12.0, 20.0, 30.0, 45.0]),
    "one outlier": ([1e6, 1e7, 1e8, 1e9, 1e10, 1e11], [30.0, 35.0, 99.0, 45.0, 50.0, 55.0]),
}


@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
@pytest.mark.parametrize("metric", ["eval/mmlu/direct", "eval/tydiqa/direct", "eval/normalized_average", "eval/loss",
                                    "eval/mmlu/rc_logprob"])
def test_no_forecast_or_interval_leaves_the_domain(case, metric):
    x, y = ADVERSARIAL[case]
    d = domain_for(metric)
    y = np.asarray(y)
    if d.kind == "loss":
        y = d.sign * (0.05 + y / 20)  # a loss-shaped version of the same pattern
    elif d.kind == "score":
        y = np.maximum(y - 40, d.low)
    f = laws.fit(x, y, d, n_boot=60)
    at = np.array([1e-3, 1.0, 1e5, 1e12, 1e20, 1e40])
    lo, hi = (d.low, d.high) if d.sign > 0 else (-d.high, -d.low)
    values = f.law.predict(at)
    assert np.isfinite(values).all() and (values >= lo).all() and (values <= hi).all(), values
    iv = f.interval(at)
    if iv is not None:
        assert (iv[0] >= lo).all() and (iv[1] <= hi).all() and (iv[0] <= iv[1]).all()


def test_intervals_do_not_collapse_with_three_points_and_are_calibrated():
    """Back-tests over many noisy synthetic series: the truth lands inside the 95% interval of a
    4-point fit most of the time, and 3-point intervals have real width."""
    rng = np.random.default_rng(2)
    x = np.geomspace(1e6, 1e9, 5)
    hits = 0
    for _ in range(40):
        y = acc_law(x) + rng.normal(0, 1.0, len(x))
        h = laws.holdout(x, y, MMLU, n_boot=100, seed=int(rng.integers(1 << 30)))
        hits += bool(h.within)
    assert hits >= 32  # >= 80% for a nominal 95%
    f = laws.fit(x[:3], acc_law(x[:3]) + np.array([0.5, -0.5, 0.4]), MMLU, n_boot=200)
    lo, hi = f.interval([1e10])
    assert hi[0] - lo[0] > 1.0


def test_two_points_have_an_interval_only_from_their_seed_spread():
    x, y = [1e6, 1e8], [30.0, 40.0]
    assert laws.fit(x, y, MMLU).interval([1e9]) is None
    f = laws.fit(x, y, MMLU, seed_sd=[1.0, 1.0], n_seeds=[3, 3], n_boot=100)
    lo, hi = f.interval([1e9])
    assert lo[0] < f.law.predict(1e9) < hi[0]


def test_points_that_agree_exactly_still_get_an_interval_of_the_metrics_resolution():
    """Scores pinned at a bound (every answer wrong) and seeds that agree leave no measured
    noise; the interval still has the width of the metric's resolution, never zero."""
    x = [1e6, 1e7, 1e8]
    pinned = laws.fit(x, [25.0, 25.3, 25.3], MMLU, seed_sd=[0.0, 0.0, 0.0], n_seeds=[2, 2, 2], n_boot=100)
    lo, hi = pinned.interval([1e9])
    assert hi[0] - lo[0] > 0.05 and 25.0 <= lo[0] <= hi[0] <= 100.0
    exact = laws.fit(x, list(loss_law(np.array(x), e=0.0)), domain_for("eval/loss"), n_boot=100)
    lo, hi = exact.interval([1e9])
    assert hi[0] - lo[0] > 0.0 and lo[0] > 0.0


def test_holdout_predicts_the_largest_point_and_needs_enough_points():
    y = loss_law(X[:5], e=0.0) * np.exp(np.array([0.01, -0.01, 0.005, 0.0, -0.005]))
    h = laws.holdout(X[:5], y, LOSS, n_boot=60)
    assert h.held_out_x == X[4] and h.fitted_points == 4 and h.actual == pytest.approx(y[4])
    assert h.within is True and abs(h.error) < 0.05
    assert laws.holdout(X[:3], y[:3], LOSS) is None


def test_bootstrap_is_seeded():
    y = acc_law(X[:4]) + np.array([0.3, -0.4, 0.2, 0.1])
    a = laws.fit(X[:4], y, MMLU, seed=3, n_boot=50).interval([1e11])
    b = laws.fit(X[:4], y, MMLU, seed=3, n_boot=50).interval([1e11])
    c = laws.fit(X[:4], y, MMLU, seed=4, n_boot=50).interval([1e11])
    assert a[0][0] == b[0][0] and (a[0][0], a[1][0]) != (c[0][0], c[1][0])


def test_rc_logprob_is_fitted_as_a_cross_entropy_and_keeps_its_sign():
    d = domain_for("eval/mmlu/rc_logprob")
    y = -loss_law(X[:5], e=0.8)
    f = laws.fit(X[:5], y, d, n_boot=40)
    assert (f.law.predict([1e12, 1e30]) < 0).all()
    assert f.law.formula().startswith("-y")


def test_score_law_runs_between_its_floor_and_100():
    d = Domain("score", -50.0, 100.0, 0.0)
    y = np.array([-20.0, -5.0, 10.0, 22.0])
    f = laws.fit([1e7, 1e8, 1e9, 1e10], y, d, n_boot=40)
    assert f.law.predict(1e-5) >= -50.0 and f.law.predict(1e40) <= 100.0
    assert math.isclose(f.law.params()["floor"], -50.0)
