"""Report path end to end over a real SQLite MLflow store laid out as the sweep store writes it.

The runs are written here with synthetic metric values (inputs to the analysis, shaped like a
small scaling sweep: loss falling as a power law in size, held-out scores rising with size
and task count), through the same MlflowClient calls the store and the tracker make.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from dashboards import render
from dashboards import report as report_mod
from dashboards.runs import load_sweep
from orchestrator import cli
from trainers.spec import UserError

SIZES = {"tiny-1": 480_000, "tiny-2": 1_950_000, "tiny-3": 7_900_000, "tiny-4": 31_000_000, "tiny-5": 126_000_000}
EVALS = ("eval/mmlu/direct", "eval/mmlu/cot", "eval/bbh/direct", "eval/bbh/cot", "eval/tydiqa/direct", "eval/mgsm/cot")


def true_loss(params: float, tasks: int) -> float:
    return 1.1 + 40.0 * params ** -0.3 - 0.05 * math.log1p(tasks)


def write_synthetic_sweep(uri: str, artifacts: Path, sweep: str = "demo", sizes: dict | None = None,
                          task_counts=(0, 9, 89), with_cot=(True,), evals: bool = True, extra_states=True,
                          seed: int = 0, seeds=(0,), eval_loss: bool = True) -> dict:
    """Parent run + one child per cell (per seed), tags/params/metrics as orchestrator/store.py and
    run_cell write them."""
    rng = np.random.default_rng(seed)
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment(sweep, artifact_location=artifacts.as_uri(), tags={"flanscale.sweep": sweep})
    parent = c.create_run(exp, run_name=sweep, tags={"flanscale.sweep": sweep, "flanscale.kind": "sweep",
                                                      "flanscale.state": "running"}).info.run_id
    c.log_batch(parent, params=[Param("models", ",".join(sizes or SIZES)), Param("accelerator", "cpu")])
    ids = {}
    for model, n in (sizes or SIZES).items():
        for t in task_counts:
            for cot, s in [(cot, s) for cot in (with_cot if t > 0 else (True,)) for s in seeds]:
                key = f"{model}-{t}-{int(cot)}".replace("tiny-", "k") + (f"-s{s}" if s else "")
                run = c.create_run(exp, run_name=key, tags={
                    "mlflow.parentRunId": parent, "flanscale.sweep": sweep, "flanscale.kind": "cell",
                    "flanscale.cell_key": key, "flanscale.state": "running", "flanscale.attempts": "1",
                    "flanscale.preemptions": "0"})
                rid = run.info.run_id
                c.log_batch(rid, params=[Param(k, str(v)) for k, v in {
                    "cell_key": key, "model": model, "params": n, "task_count": t, "mixture": "A",
                    "formats": "zs_opt,fs_opt,cot", "with_cot": cot, "seed": s, "batch_size": 8, "learning_rate": 5e-4,
                    "steps": 5, "dropout": 0.0, "accelerator": "cpu", "devices": 1}.items()])
                final = true_loss(n, t) + (0.0 if cot else 0.02) + rng.normal(0, 0.004)
                ts = int(time.time() * 1000)
                hist = [Metric("train/loss", final + 2.0 / s, ts, s) for s in range(1, 6)]
                once = {"flops/finetune": 6.0 * n * 5 * 8 * 96 * (1 if t else 0), "flops/pretrain": 6.0 * n * 1e7,
                        "train/mfu": 0.2, "train/tokens_per_s": 1e4}
                once["flops/fraction"] = once["flops/finetune"] / once["flops/pretrain"]
                if eval_loss:
                    # The held-out loss is measured on one fixed set: it falls with size, a little with tasks.
                    once["eval/loss"] = true_loss(n, 0) + 0.3 - 0.02 * math.log1p(t) + rng.normal(0, 0.004)
                if evals:
                    for i, m in enumerate(EVALS):
                        once[m] = 20 + 4 * math.log10(n) + 3 * math.log1p(t) + (2 if cot else -2) * (i % 2) + i + rng.normal(0, 0.3)
                    once["eval/normalized_average"] = float(np.mean([once[m] - 10 for m in EVALS]))
                c.log_batch(rid, metrics=hist + [Metric(k, v, ts, 5) for k, v in once.items()])
                c.set_tag(rid, "flanscale.state", "finished")
                c.set_terminated(rid, "FINISHED")
                ids[key] = rid
    plan = [{"key": k, "est_hours": 0.01, "est_cost": 0.5, "feasible": True, "reason": ""} for k in ids]
    if extra_states:
        plan.append({"key": "huge", "est_hours": 300.0, "est_cost": 0.0, "feasible": False,
                     "reason": "needs 900 GiB per device", "finetune_flops": 1.2e20, "pretrain_flops": 6.6e22})
        big = c.create_run(exp, run_name="huge", tags={
            "mlflow.parentRunId": parent, "flanscale.sweep": sweep, "flanscale.kind": "cell",
            "flanscale.cell_key": "huge", "flanscale.state": "infeasible", "flanscale.error": "needs 900 GiB"})
        c.log_batch(big.info.run_id, params=[Param("model", "xxl"), Param("params", "11000000000"),
                                             Param("task_count", "89"), Param("formats", "zs_opt"),
                                             Param("with_cot", "True"), Param("accelerator", "cpu")])
        c.set_terminated(big.info.run_id, "FAILED")
        running = c.create_run(exp, run_name="run", tags={
            "mlflow.parentRunId": parent, "flanscale.sweep": sweep, "flanscale.kind": "cell",
            "flanscale.cell_key": "live", "flanscale.state": "running"})
        c.log_batch(running.info.run_id, params=[Param("model", "tiny-2"), Param("params", "1950000"),
                                                 Param("task_count", "282"), Param("formats", "zs_opt"),
                                                 Param("with_cot", "True"), Param("accelerator", "cpu"),
                                                 Param("devices", "1")],
                    metrics=[Metric("train/loss", 9.9, int(time.time() * 1000), 2)])
    # The controller logs the planner's cells once on the sweep's run.
    plan_file = artifacts.parent / f"{sweep}-plan" / "plan.json"
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps(plan))
    c.log_artifact(parent, str(plan_file))
    return {"experiment": exp, "parent": parent, "cells": ids}


@pytest.fixture(autouse=True)
def only_report_command(monkeypatch):
    # The real `flanscale` entry point, with only this command group loaded, so these tests
    # do not depend on the other groups being importable.
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("report",))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # One store for the module: creating an MLflow SQLite schema takes seconds.
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    info = write_synthetic_sweep(uri, root / "mlartifacts")
    write_synthetic_sweep(uri, root / "mlartifacts-one", sweep="one", sizes={"tiny-1": 480_000}, task_counts=(9,),
                          evals=False, extra_states=False, eval_loss=False)
    write_synthetic_sweep(uri, root / "mlartifacts-seeded", sweep="seeded", sizes={"tiny-1": 480_000, "tiny-2": 1_950_000},
                          task_counts=(0, 9), seeds=(0, 1, 2), eval_loss=False, extra_states=False)
    write_synthetic_sweep(uri, root / "mlartifacts-paper", sweep="paper", extra_states=False, task_counts=(0, 1836),
                          sizes={"t5-small": 76_961_152, "t5-base": 247_577_856, "t5-large": 783_150_080})
    return uri, info


def test_load_sweep_one_row_per_cell(store):
    uri, info = store
    runs = load_sweep("demo", uri)
    assert runs.parent_run_id == info["parent"]
    keys = {c.key for c in runs.cells}
    assert keys == set(info["cells"]) | {"huge", "live"}
    cell = next(c for c in runs.cells if c.key == "k3-89-1")
    assert (cell.model, cell.params, cell.task_count, cell.with_cot) == ("tiny-3", 7_900_000, 89, True)
    assert cell.formats == ("zs_opt", "fs_opt", "cot")
    assert cell.state == "finished" and cell.devices == 1
    # Final value = the value at the last step, not the first or the smallest.
    assert cell.metric("train/loss") == pytest.approx(true_loss(7_900_000, 89) + 2.0 / 5, abs=0.02)
    assert runs.parent_params["accelerator"] == "cpu"
    huge = next(c for c in runs.cells if c.key == "huge")
    assert huge.state == "infeasible" and huge.plan["reason"] == "needs 900 GiB per device"
    assert cell.plan["est_cost"] == 0.5


def test_unknown_sweep_suggests_close_names(store):
    uri, _ = store
    with pytest.raises(UserError, match="did you mean demo"):
        load_sweep("dmeo", uri)
    with pytest.raises(UserError, match="known sweeps: demo, one"):
        load_sweep("completely-different", uri)


def test_missing_store_is_not_created(tmp_path):
    uri = f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}"
    with pytest.raises(UserError, match="no MLflow store"):
        load_sweep("demo", uri)
    assert not (tmp_path / "nope").exists()


def test_report_writes_figures_tables_html_and_logs_them(store, tmp_path):
    uri, info = store
    out = tmp_path / "report"
    rc = cli.main(["report", "demo", "--tracking-uri", uri, "--out", str(out), "--forecast-params", "540e9",
                   "--bootstrap", "30"])
    assert rc == 0
    html = (out / "report.html").read_text()
    # Self-contained: every image inline, nothing fetched from anywhere.
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    # 2 metrics (eval/loss, the normalized average) x 3 axes + the train/loss curves, each once
    # (the first page's figures are not repeated in the appendix); eval/loss was logged once
    # per cell, so it has no curve to draw.
    assert html.count("data:image/png;base64,") == 7
    assert not (out / "figures" / "eval_loss_history.png").exists()
    for stem in ("eval_loss_vs_params", "eval_loss_vs_task_count", "eval_loss_vs_flops",
                 "eval_normalized_average_vs_params", "train_loss_history"):
        png = out / "figures" / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / "figures" / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    assert "training loss on each cell&#39;s own mixture" in html and "Loss metric: <code>eval/loss</code>" in html
    with (out / "tables" / "flops.csv").open() as f:
        flops = list(csv.DictReader(f))
    assert [r["model"] for r in flops] == [*SIZES, "xxl"]
    assert float(flops[-1]["finetune FLOPs (exact)"]) == 1.2e20 and flops[-1]["source"] == "planned"  # infeasible
    with (out / "tables" / "cells.csv").open() as f:
        planned = [float(r["planned cost $"]) for r in csv.DictReader(f) if r["planned cost $"]]
    assert sum(planned) == pytest.approx(0.5 * 15)
    assert "needs 900 GiB" in html
    frac = float(flops[0]["finetune/pretrain % (exact)"])
    assert frac == pytest.approx(100 * (5 * 8 * 96) / 1e7)
    with (out / "tables" / "results.csv").open() as f:
        results = list(csv.DictReader(f))
    gains = {(r["model"], r["tasks"]): r["gain in Norm. avg over base"] for r in results}
    assert gains[("tiny-1", "0")] == ""
    assert float(gains[("tiny-1", "89")]) == pytest.approx(3 * math.log1p(89), abs=0.5)
    fits = json.loads((out / "fits.json").read_text())
    loss_fit = [f for f in fits["fits"] if f["metric"] == "eval/loss" and f["against"] == "params"]
    assert {f["series"] for f in loss_fit} == {"0 tasks (base)", "9 tasks", "89 tasks"}
    assert all(f["kind"] == "loss" and f["law"].startswith("power") and f["params"]["alpha"] > 0 for f in loss_fit)
    fc = [f for f in fits["forecasts"] if f["metric"] == "eval/loss" and f["against"] == "params"]
    assert {f["at"] for f in fc} == {540e9}
    assert all(0 <= f["low"] <= f["forecast"] <= f["high"] and f["extrapolation"] == "yes" for f in fc)
    with (out / "tables" / "gains.csv").open() as f:
        gains = {(r["metric"], r["model"], r["tasks"]): float(r["gain"]) for r in csv.DictReader(f)}
    assert gains[("eval/loss", "tiny-3", "89")] == pytest.approx(-0.02 * math.log1p(89), abs=0.02)
    assert gains[("eval/normalized_average", "tiny-1", "89")] == pytest.approx(3 * math.log1p(89), abs=0.5)
    bt = (out / "tables" / "backtests.md").read_text()
    assert "the truth fell inside" in bt and "intervals" in bt
    assert "| model | params |" in (out / "tables" / "cells.md").read_text()
    # Logged on the sweep's parent run, openable from the MLflow UI.
    client = MlflowClient(tracking_uri=uri)
    logged = {a.path for a in client.list_artifacts(info["parent"], "report")}
    assert logged == {"report/report.html", "report/report.md", "report/figures", "report/tables", "report/fits.json"}
    assert len(client.list_artifacts(info["parent"], "report/figures")) == 14  # 7 figures x PNG + SVG


def test_report_cli_errors_are_one_line(store, tmp_path, capsys):
    uri, _ = store
    assert cli.main(["report", "dem", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean demo" in err
    assert cli.main(["report", "demo", "--tracking-uri", uri, "--metric", "eval/mmlu/drect", "--no-log",
                     "--out", str(tmp_path / "r")]) == 2
    assert "did you mean eval/mmlu/direct" in capsys.readouterr().err


def test_sparse_sweep_reports_without_fits(store, tmp_path):
    uri, _ = store
    runs = load_sweep("one", uri)
    rep = report_mod.write_report(runs, tmp_path / "out", report_mod.ReportOptions(n_boot=20))
    html = rep.html.read_text()
    assert "no fit: 9 tasks" in html and "no detectable trend (1 size only)" in html
    assert "no evaluation metrics" in html
    assert rep.logged_to_run == runs.parent_run_id


def test_markdown_and_number_formatting():
    t = report_mod.Table("t", "T", ("a", "b|c"), ((1234567, 0.000123), (None, "x|y")), "")
    md = render.to_markdown(t)
    assert "| 1,234,567 | 1.230e-04 |" in md and "x\\|y" in md and "| — |" in md


def test_seeds_are_aggregated_and_the_train_loss_fallback_is_said(store, tmp_path):
    uri, _ = store
    rep = report_mod.write_report(load_sweep("seeded", uri), tmp_path / "out",
                                  report_mod.ReportOptions(n_boot=20, log_artifacts=False))
    html = rep.html.read_text()
    assert 'data-note="loss-fallback"' in html and "no eval/loss" in html
    with (rep.out_dir / "tables" / "results.csv").open() as f:
        results = list(csv.DictReader(f))
    assert [(r["model"], r["tasks"], r["seeds"]) for r in results] == [
        ("tiny-1", "0", "3"), ("tiny-1", "9", "3"), ("tiny-2", "0", "3"), ("tiny-2", "9", "3")]
    # Two sizes with three seeds each: the pooled test sees the rise with size, but no series has
    # the 3 sizes a law needs; the limits say so, and the appendix says which series.
    with (rep.out_dir / "tables" / "trends.csv").open() as f:
        trend = {(r["metric"], r["against"]): r for r in csv.DictReader(f)}
    assert trend[("eval/normalized_average", "params")]["verdict"] == "rising"
    assert trend[("eval/normalized_average", "params")]["df"] == "9"  # 12 cells - slope - 2 series
    assert 'data-list="limits"' in html and "eval/normalized_average: no detectable trend (1 task count only) with task count; no law on" in html
    assert "no fit: 9 tasks (vs model parameters): 2 sizes" in html
    with (rep.out_dir / "tables" / "series.csv").open() as f:
        series = [r for r in csv.DictReader(f) if r["against"] == "params"]
    assert {r["seeds per point"] for r in series} == {"3"} and all(r["fit"].startswith("no fit") for r in series)
    assert "(3 seeds)" in (rep.out_dir / "figures" / "train_loss_vs_params.svg").read_text()


def test_paper_presets_are_read_beside_the_paper(store, tmp_path):
    uri, _ = store
    rep = report_mod.write_report(load_sweep("paper", uri), tmp_path / "out",
                                  report_mod.ReportOptions(n_boot=20, log_artifacts=False))
    with (rep.out_dir / "tables" / "paper.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["T5-Small", "Flan-T5-Small", "T5-Base", "Flan-T5-Base", "T5-Large",
                                          "Flan-T5-Large"]
    svg = (rep.out_dir / "figures" / "eval_normalized_average_vs_params.svg").read_text()
    assert "Flan-T5-Large" in svg and "paper, Flan (1,836 tasks)" in svg
    assert "Flan-T5" not in (rep.out_dir / "figures" / "eval_loss_vs_params.svg").read_text()


def test_stand_in_benchmarks_are_labelled_and_never_beside_the_paper(tmp_path, monkeypatch):
    """Cells that scored the paper's benchmarks on shipped stand-in data: every table row and
    figure of those metrics says so, and the paper's Table 5 is not drawn beside them."""
    from dashboards.runs import CellRun, SweepRuns, _to_cell
    from orchestrator.cells import CellRecord, CellState

    class NoHistory:  # the job's start time is read from metric histories; none here
        def get_metric_history(self, run_id, name):
            return []

    rec = CellRecord("r1", "k", "k", CellState.FINISHED, 1, 0, 0, "",
                     params={"model": "t5-small", "params": "76961152", "task_count": "9", "with_cot": "true",
                             "eval_standins": "mmlu,bbh"})
    assert _to_cell(NoHistory(), rec, {}, False).standins == ("mmlu", "bbh")
    assert _to_cell(NoHistory(), CellRecord("r2", "k2", "k2", CellState.FINISHED, 1, 0, 0, "", params={}), {},
                    False).standins == ()

    sizes = {"t5-small": 76_961_152, "t5-base": 247_577_856, "t5-large": 783_150_080}
    rng = np.random.default_rng(0)
    cells = tuple(
        CellRun(key=f"{m}-{t}-{s}", run_id="r", model=m, params=n, task_count=t, formats=("zs",), with_cot=True,
                mixture="A", state="finished", seed=s, standins=("mmlu", "bbh", "tydiqa", "mgsm"),
                metrics={"eval/mmlu/direct": 30 + 3 * math.log(n / 1e7) + 2 * (t > 0) + rng.normal(0, 0.3),
                         "eval/normalized_average": 5 + 3 * math.log(n / 1e7) + rng.normal(0, 0.3),
                         "eval/loss": 4 - 0.1 * math.log(n / 1e7) + rng.normal(0, 0.01)})
        for m, n in sizes.items() for t in (0, 1836) for s in (0, 1))
    runs = SweepRuns("standin", "sqlite:///unused.db", "1", None, cells, time.time())
    monkeypatch.setattr(report_mod, "load_history", lambda uri, cells, metric: {})  # no store: no curves
    rep = report_mod.build_report(runs, tmp_path / "out", report_mod.ReportOptions(n_boot=10))
    with (rep.out_dir / "tables" / "results.csv").open() as f:
        header = next(csv.reader(f))
    assert "MMLU Direct (stand-in data)" in header and "Norm. avg (stand-in data)" in header and "eval/loss" in header
    with (rep.out_dir / "tables" / "trends.csv").open() as f:
        labels = {r["metric"] for r in csv.DictReader(f)}
    assert labels == {"eval/loss", "eval/normalized_average (stand-in data)"}
    for stem in ("eval_normalized_average_vs_params", "eval_normalized_average_vs_task_count"):
        svg = (rep.out_dir / "figures" / f"{stem}.svg").read_text()
        assert "(stand-in data)" in svg and "Flan-T5" not in svg and "paper, Flan" not in svg
    html = rep.html.read_text()
    assert "eval/normalized_average (stand-in data)" in html.split('id="appendix"')[0]
