"""MLflow as the sweep store, on a real SQLite database under a temporary FLANSCALE_HOME."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from orchestrator.planner import plan
from orchestrator.spec import load_spec
from orchestrator.store import (TAG_BEST, TAG_CELL_KEY, TAG_EXPERIMENT_KIND, TAG_KIND, TAG_PARENT, TAG_STATE,
                                TAG_SWEEP, SweepStore, cell_name, cell_params, resolve_tracking_uri)


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    """One database for the module: creating MLflow's schema is the slow part of a new store."""
    return tmp_path_factory.mktemp("store-home")


def _cells(make_sweep, name="store"):
    spec = load_spec(str(make_sweep(name)), [])
    return plan(spec)


def test_tracking_uri_precedence(home, monkeypatch):
    assert resolve_tracking_uri() == f"sqlite:///{home / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_tracking_uri() == "http://mlflow:5000"
    assert resolve_tracking_uri("sqlite:////x.db") == "sqlite:////x.db"


def test_runs_are_found_again_never_duplicated(shared_home, make_sweep):
    home = shared_home
    cells = _cells(make_sweep)
    store = SweepStore(home=home)
    assert store.tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    parent = store.sweep_run("store")
    assert store.sweep_run("store") == parent
    ids = [store.cell_run("store", c) for c in cells]
    assert all(created for _, created in ids)
    again = [store.cell_run("store", c) for c in cells]
    assert [r for r, _ in again] == [r for r, _ in ids] and not any(created for _, created in again)
    # A second client (another process would do the same) sees the same runs.
    other = SweepStore(home=home)
    records = other.list_cells("store")
    assert sorted(r.key for r in records) == sorted(c.key for c in cells)
    for rec, cell in zip(sorted(records, key=lambda r: r.key), sorted(cells, key=lambda c: c.key)):
        assert rec.tags[TAG_PARENT] == parent and rec.tags[TAG_SWEEP] == "store" and rec.tags[TAG_KIND] == "cell"
        assert rec.tags[TAG_CELL_KEY] == cell.key and rec.state == "pending" and rec.attempts == 0
        assert rec.params == {k: str(v) for k, v in cell_params(cell).items()}
        assert rec.params["task_count"] == str(cell.task_count) and rec.total_steps == 12
        # Named and tagged for people: the UI groups and filters by these tags.
        assert rec.name == cell_name(cell) == f"tiny-1 · {cell.task_count} tasks · mixed · seed 0"
        assert {k: rec.tags[k] for k in ("model", "task_count", "formats", "seed", "family")} == {
            "model": "tiny-1", "task_count": str(cell.task_count), "formats": "mixed", "seed": "0", "family": "t5"}
    exp = store.client.get_experiment_by_name("store")
    assert exp.tags[TAG_EXPERIMENT_KIND] == "custom_model_development"  # MLflow's model-training kind
    assert exp.artifact_location == (home / "mlartifacts").as_uri()
    artifact = Path(store.client.download_artifacts(ids[0][0], "cell.json", str(home / "dl")))
    assert json.loads(artifact.read_text())["key"] == cells[0].key
    assert (home / "mlartifacts").is_dir()


def test_states_history_and_cancel(shared_home, make_sweep):
    cell = _cells(make_sweep, "hist")[0]
    store = SweepStore(home=shared_home)
    run_id, _ = store.cell_run("hist", cell)
    store.set_state(run_id, "running", **{"flanscale.attempts": 1})
    assert store.client.get_run(run_id).info.status == "RUNNING"
    for step, loss in [(1, 5.0), (2, 4.0), (3, 3.5), (2, 3.9), (3, 3.4), (4, 3.0)]:  # 2..3 re-run after a resume
        store.client.log_metric(run_id, "train/loss", loss, step=step)
    assert store.cell_history(run_id) == [(1, 5.0), (2, 3.9), (3, 3.4), (4, 3.0)]
    metrics, steps = store.latest(run_id)
    assert metrics["train/loss"] == 3.0 and steps["train/loss"] == 4
    store.set_state(run_id, "finished")
    rec = store.list_cells("hist")[0]
    assert rec.state == "finished" and rec.tags[TAG_STATE] == "finished"
    assert store.client.get_run(run_id).info.status == "FINISHED"
    parent = store.sweep_run("hist")
    assert not store.cancel_requested(parent)
    assert store.request_cancel("hist") == parent and store.cancel_requested(parent)
    assert store.request_cancel("no-such-sweep") is None


def _hammer(uri: str, run_id: str, worker: int, n: int) -> None:
    from mlflow.entities import Metric

    from orchestrator.sqlite_store import with_retry
    from orchestrator.store import SweepStore

    store = SweepStore(uri)
    for step in range(1, n + 1):
        with_retry(store.client.log_batch, run_id, metrics=[Metric(f"w{worker}", float(step), step, step)])
        store.set_tags(run_id, {f"flanscale.w{worker}": step})


def test_concurrent_writers_never_lose_a_write(shared_home, make_sweep):
    """Two processes and this one write into one SQLite store at once (WAL + retries)."""
    home = shared_home
    cells = _cells(make_sweep, "busy")
    store = SweepStore(home=home)
    run_id, _ = store.cell_run("busy", cells[0])
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(store.tracking_uri, run_id, w, 20)) for w in range(2)]
    for p in procs:
        p.start()
    for i in range(20):
        store.set_state(run_id, "running", **{"flanscale.attempts": i})
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    for w in range(2):
        assert [s for s, _ in store.cell_history(run_id, f"w{w}")] == list(range(1, 21))
    with sqlite3.connect(home / "mlflow.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_runs_stored_before_names_and_tags_get_them(shared_home, make_sweep):
    """A sweep stored by an earlier layout (run name = key, no people's tags, experiment
    without a kind) is relabelled when it is run again; a name given by hand stays."""
    cells = _cells(make_sweep, "old")
    store = SweepStore(home=shared_home)
    exp = store.client.create_experiment("old", tags={TAG_SWEEP: "old"})
    parent = store.client.create_run(exp, run_name="old", tags={TAG_SWEEP: "old", TAG_KIND: "sweep"}).info.run_id
    for cell in cells:
        store.client.create_run(exp, run_name=cell.key, tags={
            TAG_PARENT: parent, TAG_SWEEP: "old", TAG_KIND: "cell", TAG_CELL_KEY: cell.key, TAG_STATE: "finished"})
    assert store.sweep_run("old") == parent
    assert store.client.get_experiment(exp).tags[TAG_EXPERIMENT_KIND] == "custom_model_development"
    records = {r.key: r for r in store.list_cells("old")}
    for cell in cells:
        store.cell_run("old", cell, known=records[cell.key])
    renamed = {r.key: r for r in store.list_cells("old")}
    assert {k: r.name for k, r in renamed.items()} == {c.key: cell_name(c) for c in cells}
    assert all(r.tags["model"] == "tiny-1" for r in renamed.values())
    first = cells[0]
    store.client.update_run(renamed[first.key].run_id, name="my favourite")
    store.cell_run("old", first, known={r.key: r for r in store.list_cells("old")}[first.key])
    assert store.client.get_run(renamed[first.key].run_id).info.run_name == "my favourite"


def test_sweep_summary_on_the_parent_run(shared_home, make_sweep):
    cells = _cells(make_sweep, "summary")
    store = SweepStore(home=shared_home)
    parent = store.sweep_run("summary")
    ids = [store.cell_run("summary", c)[0] for c in cells]
    for run_id, loss, flops in zip(ids, (2.5, 1.5), (3e12, 5e12)):
        store.client.log_metric(run_id, "eval/loss", loss)
        store.client.log_metric(run_id, "flops/finetune_measured", flops)
    store.set_state(ids[0], "finished")
    first = store.log_summary("summary", parent)
    assert first["sweep/cells_finished"] == 1 and first["sweep/best/eval/loss"] == 2.5
    store.set_state(ids[1], "finished")
    store.log_summary("summary", parent)
    run = store.client.get_run(parent)
    assert run.data.metrics["sweep/cells_finished"] == 2 and run.data.metrics["sweep/cells"] == 2
    assert run.data.metrics["sweep/flops_spent"] == pytest.approx(8e12)
    assert run.data.metrics["sweep/best/eval/loss"] == 1.5
    assert run.data.tags[TAG_BEST + "eval/loss"] == cell_name(cells[1])
    # One point per cell finished: the parent's charts follow the sweep as it fills in.
    assert [(m.step, m.value) for m in store.client.get_metric_history(parent, "sweep/best/eval/loss")] == [
        (1, 2.5), (2, 1.5)]
