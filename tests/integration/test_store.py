"""MLflow as the sweep store, on a real SQLite database under a temporary FLANSCALE_HOME."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from orchestrator.planner import plan
from orchestrator.spec import load_spec
from orchestrator.store import (TAG_CELL_KEY, TAG_KIND, TAG_PARENT, TAG_STATE, TAG_SWEEP, SweepStore, cell_params,
                                resolve_tracking_uri)


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
    exp = store.client.get_experiment_by_name("store")
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

    from orchestrator.store import SweepStore, with_retry

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
