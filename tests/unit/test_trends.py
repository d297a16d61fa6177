"""Pooled trend tests on constructed sweeps: a clear trend with one seed per point is found
from all of a metric's cells, a difference of two items with identical seeds is no trend and
gets no law, noise alone is called a trend at about the nominal rate, and "flat" comes only
from the equivalence test."""

from __future__ import annotations

import numpy as np
import pytest

from dashboards import analysis, trends
from dashboards.kinds import domain_for
from dashboards.runs import CellRun

SIZES = {"tiny-1": 591_232, "tiny-2": 1_870_208, "tiny-3": 8_067_072}
LOSS = domain_for("eval/loss")
UNSEEN = "eval/unseen/normalized_average"


def cell(model: str, tasks: int, metrics: dict, seed: int = 0) -> CellRun:
    return CellRun(key=f"{model}-{tasks}-s{seed}", run_id="r", model=model, params=SIZES[model], task_count=tasks,
                   formats=("zs",), with_cot=True, mixture="A", state="finished", seed=seed, metrics=metrics)


# The demo's held-out loss: one seed for each base model, two for each finetuned cell.
DEMO_LOSS = {("tiny-1", 0): 4.588, ("tiny-1", 9): 3.278, ("tiny-1", 89): 2.950, ("tiny-1", 282): 2.945,
             ("tiny-2", 0): 4.206, ("tiny-2", 9): 3.219, ("tiny-2", 89): 2.862, ("tiny-2", 282): 2.830,
             ("tiny-3", 0): 3.855, ("tiny-3", 9): 3.083, ("tiny-3", 89): 2.824, ("tiny-3", 282): 2.754}


def demo_cells(spread: float = 0.01) -> list[CellRun]:
    return [cell(m, t, {"eval/loss": v + (spread if s else -spread) * (t > 0)}, seed=s)
            for (m, t), v in DEMO_LOSS.items() for s in ((0,) if t == 0 else (0, 1))]


def test_a_monotone_fall_with_one_seed_per_point_is_found_by_pooling():
    # Series by series the base models' 4.588 -> 4.206 -> 3.855 had one degree of freedom;
    # pooled over all 21 cells the size effect is plain.
    cells = demo_cells()
    t = trends.for_cells(cells, "eval/loss", "params", LOSS)
    assert t.direction == "falling" and t.verdict == "falling"
    assert t.cells == 21 and t.series == 4 and t.df == 21 - 1 - 4
    assert t.low < t.slope < t.high < 0 and t.p < 1e-3
    assert t.consistent and {name for name, _ in t.series_slopes} == {"0 tasks (base)", "9 tasks", "89 tasks",
                                                                       "282 tasks"}
    words = trends.describe(t)
    assert words.startswith("falls with model size, -0.") and "per e-fold of parameters [" in words
    assert f"df {t.df}, p < 0.001" in words
    # Against task count only the 18 finetuned cells are on the ln axis, the model a factor.
    k = trends.for_cells(cells, "eval/loss", "task_count", LOSS)
    assert k.direction == "falling" and k.cells == 18 and k.df == 18 - 1 - 3
    # The base models alone (one seed, three sizes) leave one degree of freedom: the pooling matters.
    base = trends.for_cells([c for c in cells if c.task_count == 0], "eval/loss", "params", LOSS)
    assert base.df == 1


def test_compute_proportional_to_size_is_the_size_test_told_once():
    cells = [CellRun(**{**c.__dict__, "metrics": {**c.metrics, "flops/pretrain": 6e7 * c.params}}) for c in demo_cells()]
    assert trends.compute_is_size(cells, "eval/loss")
    assert [t.against for t in trends.sweep_trends(cells, "eval/loss", LOSS)] == ["params", "task_count"]
    skewed = [CellRun(**{**c.__dict__, "metrics": {**c.metrics, "flops/pretrain": 6e7 * c.params ** 1.2}})
              for c in cells]
    assert [t.against for t in trends.sweep_trends(skewed, "eval/loss", LOSS)] == ["params", "task_count", "flops"]


def test_two_identical_seeds_two_items_apart_are_no_trend_and_get_no_law():
    # The demo's unseen average against task count: -34.26 -> -33.80, two of 72 items, and for
    # tiny-2 both seeds identical at every point.
    d = domain_for(UNSEEN)
    values = {9: -34.26, 89: -33.80, 282: -33.80}
    cells = [cell("tiny-2", t, {UNSEEN: v}, seed=s) for t, v in values.items() for s in (0, 1)]
    t = trends.for_cells(cells, UNSEEN, "task_count", d)
    assert t.direction == "none" and "zero noise" in t.reason and not t.flat
    (series,) = analysis.curves(cells, UNSEEN, "task_count")
    r = analysis.fit_series(series, d, "task_count")
    assert isinstance(r, analysis.Skipped) and "resolution" in r.reason
    # With a little noise elsewhere in the sweep the change is still below the resolution.
    cells += [cell("tiny-1", k, {UNSEEN: v + 0.01 * s}, seed=s) for k, v in values.items() for s in (0, 1)]
    t = trends.for_cells(cells, UNSEEN, "task_count", d)
    assert t.direction == "none" and "below the metric's resolution (0.5)" in t.reason
    a = analysis.analyse(cells, UNSEEN, "task_count", forecast_at=[1836], n_boot=10,
                         no_trend=t.verdict)
    assert a.fits == () and a.forecasts == ()


def test_noise_alone_is_called_a_trend_at_about_the_nominal_rate():
    """A seeded simulation: 3 sizes x 3 task counts x 2 seeds of pure noise, 400 times."""
    rng = np.random.default_rng(0)
    d = domain_for("eval/mmlu/direct")
    called = 0
    runs = 400
    for _ in range(runs):
        cells = [cell(m, t, {"eval/mmlu/direct": 40.0 + rng.normal(0, 2.0)}, seed=s)
                 for m in SIZES for t in (9, 89, 282) for s in (0, 1)]
        called += trends.for_cells(cells, "eval/mmlu/direct", "params", d).direction != "none"
    assert 0.02 <= called / runs <= 0.09, called


def test_flat_only_from_the_equivalence_test():
    d = domain_for("eval/mmlu/direct")
    rng = np.random.default_rng(1)
    # Many tight seeds, no slope: the change across the data is shown to be within +-0.5 points.
    tight = [cell(m, t, {"eval/mmlu/direct": 40.0 + rng.normal(0, 0.05)}, seed=s)
             for m in SIZES for t in (9, 89) for s in range(4)]
    t = trends.for_cells(tight, "eval/mmlu/direct", "params", d)
    assert t.direction == "none" and t.flat and t.verdict.startswith("flat: the change across the data is within +-0.5")
    # Wide seeds, no slope at all: nothing shown either way.
    wide = [cell(m, t, {"eval/mmlu/direct": 40.0 + (3.0 if s else -3.0)}, seed=s)
            for m in SIZES for t in (9, 89) for s in range(2)]
    w = trends.for_cells(wide, "eval/mmlu/direct", "params", d)
    assert w.direction == "none" and not w.flat and w.verdict.startswith("no detectable trend (")
    assert "flat" not in w.verdict


@pytest.mark.parametrize("values, reason", [
    ([(1e6, 30.0)] * 3, "1 size only"),
    ([(1e6, 30.0), (1e7, 32.0)], "leave no degrees of freedom"),
])
def test_what_the_pooled_test_cannot_tell(values, reason):
    u = [np.log(x) for x, _ in values]
    y = [v for _, v in values]
    t = trends.pooled(u, y, ["s"] * len(y), domain_for("eval/mmlu/direct"))
    assert t.direction == "none" and reason in t.reason and t.to_json()["direction"] == "none"
