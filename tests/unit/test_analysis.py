"""Scaling analysis over cell rows: series by lineage, seeds aggregated, what a series cannot
show, fits, forecasts and back-tests, and the report's tables."""

from __future__ import annotations

import numpy as np
import pytest

from dashboards import analysis, tables
from dashboards.kinds import domain_for
from dashboards.runs import CellRun, _as_bool, _as_int, _as_tuple
from trainers.spec import UserError

PARAMS = [5e5, 2e6, 8e6, 3.2e7, 1.28e8, 5.12e8]


def cell(model: str, params: float, tasks: int, metrics: dict, cot: bool = True, state: str = "finished",
         formats=("zs_opt",), seed: int = 0, **kw) -> CellRun:
    return CellRun(key=f"{model}-{tasks}-{int(cot)}-{'+'.join(formats)}-s{seed}", run_id="r", model=model,
                   params=int(params), task_count=tasks, formats=tuple(formats), with_cot=cot, mixture="A",
                   state=state, seed=seed, metrics=metrics, **kw)


def loss(p, t=0):
    return 1.2 + 3.0 * (p / 1e7) ** -0.3 - 0.02 * np.log1p(t)


def test_series_follow_lineage_never_equal_parameter_counts():
    # PaLM 62B and cont-PaLM 62B have the same size; they are different models.
    cells = [cell("palm-8b", 8e9, 89, {"eval/loss": 2.0}), cell("palm-62b", 62e9, 89, {"eval/loss": 1.8}),
             cell("cont-palm-62b", 62e9, 89, {"eval/loss": 1.7}), cell("palm-540b", 540e9, 89, {"eval/loss": 1.6}),
             cell("u-palm-540b", 540e9, 89, {"eval/loss": 1.55})]
    series = {s.label: s for s in analysis.curves(cells, "eval/loss", "params")}
    assert set(series) == {"palm, 89 tasks", "cont-palm, 89 tasks", "u-palm, 89 tasks"}
    assert [p.name for p in series["palm, 89 tasks"].points] == ["palm-8b", "palm-62b", "palm-540b"]
    assert series["palm, 89 tasks"].y == (2.0, 1.8, 1.6)
    assert series["cont-palm, 89 tasks"].y == (1.7,)
    by_tasks = analysis.curves(cells, "eval/loss", "task_count")
    assert sorted(s.label for s in by_tasks) == sorted(c.model for c in cells)


def test_seeds_are_aggregated_into_one_point_with_their_spread():
    cells = [cell("m", 1e6, 9, {"eval/loss": v}, seed=s) for s, v in enumerate((2.0, 2.2, 2.4))]
    cells += [cell("m", 1e6, 0, {"eval/loss": 2.5})]
    (s9,) = [s for s in analysis.curves(cells, "eval/loss", "params") if s.label == "9 tasks"]
    (p,) = s9.points
    assert (p.mean, p.n, p.low, p.high) == (pytest.approx(2.2), 3, 2.0, 2.4)
    assert p.sd == pytest.approx(0.2) and len(p.keys) == 3
    (m,) = analysis.curves(cells, "eval/loss", "task_count")
    assert m.base is not None and m.base.mean == 2.5 and m.x == (9.0,)  # the base model is a reference


def test_labels_split_cot_only_when_the_sweep_varies_it_and_skip_unfinished():
    cells = [cell("m-1", 1e6, 9, {"x": 1.0}, cot=True), cell("m-1", 1e6, 9, {"x": 2.0}, cot=False),
             cell("m-2", 4e6, 9, {"x": 3.0}, cot=False), cell("m-2", 4e6, 0, {"x": 0.5}),
             cell("m-2", 4e6, 89, {"x": 9.0}, state="running")]
    labels = [s.label for s in analysis.curves(cells, "x", "params")]
    assert labels == ["0 tasks (base)", "9 tasks, with CoT", "9 tasks, no CoT"]
    a = analysis.analyse(cells, "x", "params", n_boot=10, domain=domain_for("x", "loss"))
    assert any("1 unfinished" in n for n in a.notes)


def test_what_a_series_cannot_show_is_said_instead_of_a_fit():
    d = domain_for("eval/mmlu/direct")
    two = [cell(f"m-{i}", p, 9, {"eval/mmlu/direct": 30.0 + i}) for i, p in enumerate(PARAMS[:2])]
    a = analysis.analyse(two, "eval/mmlu/direct", "params", forecast_at=[1e9], n_boot=10)
    assert a.fits == () and a.forecasts == () and "2 sizes" in a.skipped[0].reason
    # Means that differ by less than the metric's resolution (half a point) carry no law.
    small = [cell(f"m-{i}", p, 9, {"eval/mmlu/direct": 41.0 + 0.1 * i + 0.3 * s}, seed=s)
             for i, p in enumerate(PARAMS[:4]) for s in (0, 1)]
    (r,) = analysis.analyse(small, "eval/mmlu/direct", "params", n_boot=10).skipped
    assert "less than the metric's resolution (0.5)" in r.reason
    # Seeds that agree exactly at every point measure no noise: never a trend, whatever the means do.
    same = [cell(f"m-{i}", p, 9, {"eval/mmlu/direct": 40.0 + 2.0 * i}, seed=s)
            for i, p in enumerate(PARAMS[:4]) for s in (0, 1)]
    (r,) = analysis.analyse(same, "eval/mmlu/direct", "params", n_boot=10).skipped
    assert "seeds agree exactly" in r.reason
    # The same means with seeds that differ a little are a law.
    tight = [cell(f"m-{i}", p, 9, {"eval/mmlu/direct": 40.0 + 2.0 * i + 0.01 * s}, seed=s)
             for i, p in enumerate(PARAMS[:4]) for s in (0, 1)]
    assert len(analysis.analyse(tight, "eval/mmlu/direct", "params", n_boot=10).fits) == 1
    # ... unless the pooled test found no trend along the axis: then no series is fitted.
    a = analysis.analyse(tight, "eval/mmlu/direct", "params", n_boot=10, no_trend="no detectable trend (p = 0.3)")
    assert a.fits == () and "the pooled test with size: no detectable trend (p = 0.3)" in a.skipped[0].reason
    chance = [cell(f"m-{i}", p, 9, {"eval/mmlu/direct": v}) for i, (p, v) in enumerate(zip(PARAMS, (24, 25, 23, 25.2)))]
    (r,) = analysis.analyse(chance, "eval/mmlu/direct", "params", n_boot=10).skipped
    assert "at or below chance (25)" in r.reason
    assert isinstance(analysis.fit_series(analysis.curves(chance, "eval/mmlu/direct")[0], d), analysis.Skipped)
    # Equal scores at every size and seed (the demo's unseen average stuck at its floor), though
    # their slope in ln x is 1e-14, not 0, in floating point. Never called "flat": only an
    # equivalence test may say that (dashboards/trends.py).
    stuck = [cell(f"tiny-{i}", p, 89, {"eval/unseen/normalized_average": -33.7962962962963}, seed=s)
             for i, p in enumerate((591232, 1870208, 8067072)) for s in (0, 1)]
    a = analysis.analyse(stuck, "eval/unseen/normalized_average", "params", forecast_at=[8e7], n_boot=10)
    assert a.fits == () and a.forecasts == ()
    assert a.skipped[0].reason == "the same value, -33.8, at every one of the 3 sizes: no law to fit"


def test_loss_series_fit_forecast_and_backtest():
    cells = [cell(f"tiny-{i}", p, t, {"eval/loss": loss(p, t)}) for i, p in enumerate(PARAMS) for t in (0, 9)]
    a = analysis.analyse(cells, "eval/loss", "params", forecast_at=[5e10], n_boot=60)
    assert a.domain.kind == "loss" and len(a.fits) == 2 and a.skipped == ()
    for f in a.fits:
        assert f.fit.law.name == "power+offset"
    fc = {f.series: f.prediction for f in a.forecasts}
    assert fc["0 tasks (base)"].value == pytest.approx(loss(5e10), abs=0.05)
    assert fc["0 tasks (base)"].extrapolation  # two decades beyond the largest size
    hit, judged = a.calibration()
    assert judged == 2 and hit == sum(b.holdout.within for b in a.backtests)
    assert all(b.holdout.fitted_points == 5 and b.holdout.held_out_x == PARAMS[-1] for b in a.backtests)


def test_compute_axis_adds_pretraining_and_finetuning():
    cells = [cell(f"tiny-{i}", p, 9, {"eval/loss": loss(p), "flops/pretrain": 6 * p * 1e8, "flops/finetune": 6 * p * 1e6})
             for i, p in enumerate(PARAMS[:4])]
    (s,) = analysis.curves(cells, "eval/loss", "flops")
    assert s.x == tuple(pytest.approx(6 * p * (1e8 + 1e6)) for p in PARAMS[:4])
    base = cell("tiny-0", PARAMS[0], 0, {"eval/loss": 3.0}, plan={"pretrain_flops": 1e15, "finetune_flops": 0.0})
    assert analysis.total_flops(base) == 1e15


def test_flops_table_shows_both_conventions_and_the_planned_fallback():
    paper = {"pretrain": 1.8e20, "finetune": 2.9e18, "fraction": 0.016}
    cells = [cell("s", 1e6, 0, {"flops/pretrain": 1e15}),
             cell("s", 1e6, 9, {"flops/pretrain": 1e15, "flops/finetune": 2e12}, plan={"paper_flops": paper}),
             cell("s", 1e6, 89, {"flops/pretrain": 1e15, "flops/finetune": 3e12}),
             cell("xxl", 1.1e10, 9, {}, state="infeasible", plan={"pretrain_flops": 6e22, "finetune_flops": 1.2e20})]
    t = tables.flops_table(cells)
    assert t.rows[0][:6] == ("s", 1_000_000, 1e15, 3e12, pytest.approx(0.3), "logged")
    assert t.rows[0][6:] == (1.8e20, 2.9e18, pytest.approx(100 * 2.9e18 / 1.8e20))
    assert t.rows[1][4] == pytest.approx(0.2) and t.rows[1][5] == "planned" and t.rows[1][6] is None
    assert "(paper convention)" in t.columns[-1] and "(exact)" in t.columns[2]


def test_results_average_seeds_and_gain_is_over_the_base_of_the_same_preset():
    def ev(v):
        return {m: v for _, m in tables.EVAL_COLUMNS}

    cells = [cell("s", 1e6, 0, ev(10.0)), cell("s", 1e6, 89, ev(14.0), seed=0), cell("s", 1e6, 89, ev(15.0), seed=1),
             cell("l", 4e6, 89, ev(30.0)), cell("l", 4e6, 282, ev(31.0), state="running")]
    t = tables.results_table(cells)
    assert t.columns[4] == "seeds" and t.columns[5:12] == tuple(n for n, _ in tables.EVAL_COLUMNS)
    rows = {(r[0], r[2]): r for r in t.rows}
    assert set(rows) == {("s", 0), ("s", 89), ("l", 89)}
    assert rows[("s", 89)][4] == 2 and rows[("s", 89)][-1] == pytest.approx(4.5)
    assert rows[("s", 0)][-1] is None and rows[("l", 89)][-1] is None
    assert "gain in Norm. avg" in t.columns[-1]
    g = tables.gains_table(cells, ["eval/normalized_average"])
    assert [(r[1], r[3], r[6], r[8], r[9]) for r in g.rows] == [("s", 89, 1, 2, pytest.approx(4.5))]
    partial = tables.results_table([cell("s", 1e6, 0, {"eval/mmlu/direct": 30.0}),
                                    cell("s", 1e6, 9, {"eval/mmlu/direct": 33.0})])
    assert partial.columns[5] == "MMLU Direct" and partial.rows[1][-1] == pytest.approx(3.0)


def test_cost_uses_device_hours_and_prices():
    cells = [cell("s", 1e6, 9, {"flops/finetune": 1e12}, accelerator="v4", devices=8, start_time=0.0,
                  end_time=7200.0),
             cell("s", 1e6, 89, {}, state="running", accelerator="v4", devices=8, start_time=3600.0,
                  plan={"est_cost": 10.0}),
             cell("s", 1e6, 282, {}, state="pending", accelerator="gpu-x", devices=1)]
    s = tables.cost_summary(cells, {"v4": 3.0}, now=7200.0)
    assert s["device_hours"] == pytest.approx(8 * 2 + 8 * 1)
    assert s["cost_so_far"] == pytest.approx(24 * 3.0)
    assert s["unpriced_accelerators"] == ["gpu-x"] and s["planned_cost"] == 10.0
    assert s["states"] == {"finished": 1, "pending": 1, "running": 1}
    assert s["finetune_flops_done"] == 1e12


@pytest.mark.parametrize("logged", ["zs_opt,fs_opt", "['zs_opt', 'fs_opt']", '["zs_opt","fs_opt"]', " zs_opt , fs_opt "])
def test_formats_param_spellings(logged):
    assert _as_tuple(logged) == ("zs_opt", "fs_opt")


def test_counts_and_flags_read_back_strictly():
    """A param flanscale did not log reads as 0 (a run stored before it was); one that is no
    value flanscale logs is named, never read as 0."""
    assert _as_int("8", "p") == 8 and _as_int("1e9", "p") == 10**9 and _as_int(None, "p") == 0 and _as_int("", "p") == 0
    for bad in ("eight", "2.5", "nan"):
        with pytest.raises(UserError, match=f"run r1: param devices is '{bad}'; flanscale logs a whole number there"):
            _as_int(bad, "run r1: param devices")
    assert _as_bool("True", "p") is True and _as_bool("false", "p") is False
    with pytest.raises(UserError, match="param with_cot is 'maybe'; flanscale logs true or false there"):
        _as_bool("maybe", "run r1: param with_cot")
