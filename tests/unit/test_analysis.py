"""Scaling analysis over cell rows: curves, law selection, bootstrap intervals, forecasts, tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dashboards import analysis, tables
from dashboards.runs import CellRun, _as_tuple

PARAMS = [5e5, 2e6, 8e6, 3.2e7, 1.28e8, 5.12e8]


def cell(model: str, params: float, tasks: int, metrics: dict, cot: bool = True, state: str = "finished",
         formats=("zs_opt",), **kw) -> CellRun:
    return CellRun(key=f"{model}-{tasks}-{int(cot)}-{'+'.join(formats)}", run_id="r", model=model, params=int(params),
                   task_count=tasks, formats=tuple(formats), with_cot=cot, mixture="A", state=state, metrics=metrics,
                   **kw)


def power(x, a=1.5, b=0.9, c=0.35, scale=8e6):
    return a - b * (np.asarray(x) / scale) ** -c


def test_curves_one_series_per_task_count_and_per_size():
    cells = [cell(f"m{i}", p, t, {"train/loss": 3 - 0.1 * i - 0.01 * t}) for i, p in enumerate(PARAMS[:3])
             for t in (0, 9, 89)]
    by_params = analysis.curves(cells, "train/loss", "params")
    assert [s.label for s in by_params] == ["0 tasks", "9 tasks", "89 tasks"]
    assert by_params[1].x == tuple(float(p) for p in PARAMS[:3])
    by_tasks = analysis.curves(cells, "train/loss", "task_count")
    assert [s.label for s in by_tasks] == ["m0", "m1", "m2"]
    assert by_tasks[2].x == (0.0, 9.0, 89.0) and by_tasks[2].y[1] == pytest.approx(3 - 0.2 - 0.09)


def test_curves_split_cot_only_when_the_sweep_varies_it_and_skip_unfinished():
    cells = [cell("m", 1e6, 9, {"x": 1.0}, cot=True), cell("m", 1e6, 9, {"x": 2.0}, cot=False),
             cell("n", 4e6, 9, {"x": 3.0}, cot=False), cell("n", 4e6, 0, {"x": 0.5}),
             cell("n", 4e6, 89, {"x": 9.0}, state="running")]
    labels = [s.label for s in analysis.curves(cells, "x", "params")]
    assert labels == ["0 tasks", "9 tasks, with CoT", "9 tasks, no CoT"]
    a = analysis.analyse(cells, "x", "params", n_boot=10)
    assert any("1 unfinished" in n for n in a.notes)


def test_saturating_law_is_recovered_and_preferred_on_power_law_data():
    y = power(PARAMS) + np.random.default_rng(0).normal(0, 1e-3, len(PARAMS))
    s = analysis.Series("s", (), tuple(PARAMS), tuple(y), tuple("k" * len(PARAMS)))
    fit = analysis.fit_series(s, seed=0, n_boot=100)
    assert isinstance(fit, analysis.FitResult)
    assert fit.law.kind == "saturating"
    assert {c.kind for c in fit.candidates} == {"log-linear", "saturating"}
    assert fit.law.predict(540e9) == pytest.approx(power(540e9), abs=0.02)
    loo = dict(zip([c.kind for c in fit.candidates], fit.loo_rmse))
    assert loo["saturating"] < loo["log-linear"]  # held-out error agrees with AICc here
    lo, hi = fit.interval([540e9])
    assert lo[0] <= power(540e9) <= hi[0] and hi[0] - lo[0] < 0.2


def test_log_linear_is_kept_when_the_extra_parameter_does_not_pay():
    x = np.array(PARAMS)
    y = 30 + 4 * np.log(x) + np.random.default_rng(1).normal(0, 0.3, len(x))
    fit = analysis.fit_series(analysis.Series("s", (), tuple(x), tuple(y), ("k",) * len(x)), n_boot=50)
    assert fit.law.kind == "log-linear"
    assert fit.law.coef[1] == pytest.approx(4, abs=0.3)


def test_bootstrap_is_seeded():
    y = power(PARAMS[:4]) + np.array([0.01, -0.02, 0.015, -0.01])
    s = analysis.Series("s", (), tuple(PARAMS[:4]), tuple(y), ("k",) * 4)
    a = analysis.fit_series(s, seed=3, n_boot=80).interval([1e10])
    b = analysis.fit_series(s, seed=3, n_boot=80).interval([1e10])
    c = analysis.fit_series(s, seed=4, n_boot=80).interval([1e10])
    assert a[0][0] == b[0][0] and a[1][0] == b[1][0]
    assert (a[0][0], a[1][0]) != (c[0][0], c[1][0])


def test_sparse_series_are_skipped_with_a_reason_not_a_crash():
    one = analysis.Series("9 tasks", (), (1e6,), (2.0,), ("k",))
    r = analysis.fit_series(one)
    assert isinstance(r, analysis.Skipped) and "1 point" in r.reason
    two = analysis.Series("9 tasks", (), (1e6, 4e6), (2.0, 1.8), ("a", "b"))
    fit = analysis.fit_series(two, n_boot=50)
    assert fit.interval([1e7]) is None and "no interval" in fit.note
    assert isinstance(analysis.backtest(two), analysis.Skipped)
    cells = [cell("m", 1e6, 9, {"train/loss": 2.0})]
    a = analysis.analyse(cells, "train/loss", "params", forecast_at=[1e9])
    assert a.fits == () and len(a.skipped) == 1 and a.forecasts == ()
    assert analysis.analyse([], "train/loss").notes == ("no finished cell has logged train/loss",)


def test_flat_series_is_skipped_not_fitted():
    flat = analysis.Series("9 tasks", (), tuple(PARAMS[:4]), (-25.0,) * 4, ("a", "b", "c", "d"))
    r = analysis.fit_series(flat)
    assert isinstance(r, analysis.Skipped) and "same value" in r.reason
    cells = [cell(f"m{i}", p, 9, {"eval/normalized_average": -25.0}) for i, p in enumerate(PARAMS[:4])]
    a = analysis.analyse(cells, "eval/normalized_average", "params", forecast_at=[1e9])
    assert a.fits == () and a.forecasts == () and a.backtests == () and len(a.series) == 1


def test_task_count_fit_leaves_out_the_base_model():
    x = (0.0, 9.0, 89.0, 282.0)
    y = (10.0, 20 + 0.0, 20 + 3 * math.log(89 / 9), 20 + 3 * math.log(282 / 9))
    fit = analysis.fit_series(analysis.Series("m", (), x, y, ("k",) * 4), n_boot=50)
    assert fit.law.n == 3 and "base model left out" in fit.note
    assert fit.law.predict(1836) == pytest.approx(20 + 3 * math.log(1836 / 9))


def test_backtest_holds_out_the_largest_size():
    y = power(PARAMS)
    s = analysis.Series("s", (), tuple(PARAMS), tuple(y), ("k",) * len(PARAMS))
    bt = analysis.backtest(s, n_boot=80)
    assert bt.held_out_x == PARAMS[-1] and bt.fitted_points == 5 and bt.actual == pytest.approx(y[-1])
    assert bt.law == "saturating" and abs(bt.error) < 1e-3


def test_forecast_interval_widens_with_extrapolation():
    y = 2.0 - 0.1 * np.log(PARAMS[:4]) + np.array([0.02, -0.03, 0.01, 0.0])
    fit = analysis.fit_series(analysis.Series("s", (), tuple(PARAMS[:4]), tuple(y), ("k",) * 4), n_boot=200)
    near, far = analysis.forecast(fit, 1e8), analysis.forecast(fit, 540e9)
    assert near.low < near.value < near.high
    assert far.high - far.low > near.high - near.low


def test_flops_table_fraction_and_planned_fallback():
    cells = [cell("s", 1e6, 0, {"flops/pretrain": 1e15}),
             cell("s", 1e6, 9, {"flops/pretrain": 1e15, "flops/finetune": 2e12}),
             cell("s", 1e6, 89, {"flops/pretrain": 1e15, "flops/finetune": 3e12}),
             cell("xxl", 1.1e10, 9, {}, state="infeasible", plan={"pretrain_flops": 6e22, "finetune_flops": 1.2e20})]
    t = tables.flops_table(cells)
    assert t.rows[0] == ("s", 1_000_000, 1e15, 3e12, pytest.approx(0.3), "logged")
    assert t.rows[1][4] == pytest.approx(0.2) and t.rows[1][5] == "planned"


def test_results_table_gain_over_base_of_the_same_size():
    def ev(v):
        return {m: v for _, m in tables.EVAL_COLUMNS}

    cells = [cell("s", 1e6, 0, ev(10.0)), cell("s", 1e6, 89, ev(14.5)), cell("l", 4e6, 89, ev(30.0)),
             cell("l", 4e6, 282, ev(31.0), state="running")]
    t = tables.results_table(cells)
    assert t.columns[4:11] == tuple(n for n, _ in tables.EVAL_COLUMNS)
    gains = {(r[0], r[2]): r[-1] for r in t.rows}
    assert gains == {("s", 0): None, ("s", 89): pytest.approx(4.5), ("l", 89): None}
    assert "gain in Norm. avg" in t.columns[-1]
    partial = tables.results_table([cell("s", 1e6, 0, {"eval/mmlu/direct": 30.0}),
                                    cell("s", 1e6, 9, {"eval/mmlu/direct": 33.0})])
    assert partial.columns[4] == "MMLU Direct" and partial.rows[1][-1] == pytest.approx(3.0)


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
