"""`sweep status`'s reader of the embedded store (orchestrator/store_read.py) against MLflow's
own client, on a real SQLite store that MLflow created and wrote."""

from __future__ import annotations

import json
import math
import time

import pytest

from orchestrator import store_read
from orchestrator.cells import CellState
from orchestrator.leases import Lease
from orchestrator.planner import plan
from orchestrator.spec import load_spec
from orchestrator.store import TAG_LEASE, SweepStore
from orchestrator.store_read import SqliteSweepReader, open_reader


def _comparable(records):
    """Records by key, NaN made comparable (NaN != NaN)."""
    def norm(rec):
        metrics = {k: "nan" if math.isnan(v) else v for k, v in rec.metrics.items()}
        return {**rec.__dict__, "metrics": metrics}
    return {rec.key: norm(rec) for rec in records}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A store with two sweeps: cells in several states, metrics at several steps (one NaN),
    params, a lease, a deleted duplicate run and a run of another sweep."""
    home = tmp_path_factory.mktemp("read-home")
    specs = tmp_path_factory.mktemp("read-specs")
    (specs / "readme.yaml").write_text("name: readme\nmodels: [tiny-1]\ntask_counts: [9, 89, 282]\n"
                                       "formats: [mixed]\noptim: {steps: 12}\n")
    cells = plan(load_spec(str(specs / "readme.yaml"), []))
    store = SweepStore(home=home)
    parent = store.sweep_run("readme")
    runs = {key: run_id for key, (run_id, _) in store.cell_runs("readme", cells).items()}
    first, second, third = (runs[c.key] for c in cells)
    for step in (2, 4, 6):
        store.client.log_metric(first, "train/loss", 3.0 / step, step=step)
    store.client.log_metric(first, "eval/loss", 2.5, step=12)
    store.set_state(first, CellState.FINISHED)
    store.client.log_metric(second, "train/loss", float("nan"), step=3)
    store.set_state(second, CellState.RUNNING, **{TAG_LEASE: Lease("elsewhere:1:ab", time.time() + 60).to_text()})
    store.set_state(third, CellState.FAILED, **{"flanscale.error": "ValueError: bad shard", "flanscale.failures": 1})
    store.set_tags(parent, {TAG_LEASE: Lease("elsewhere:1:ab", time.time() + 60).to_text()})
    store.set_state(parent, CellState.RUNNING)
    exp = store.experiment_id("readme")
    gone = store.client.create_run(exp, tags={"flanscale.kind": "cell", "flanscale.sweep": "readme",
                                              "flanscale.cell_key": "deadbeef"})
    store.client.delete_run(gone.info.run_id)
    store.sweep_run("other")
    store.cell_runs("other", cells[:1])
    return home, store


def test_the_reader_reads_what_mlflows_client_reads(written):
    home, store = written
    reader = SqliteSweepReader(home / "mlflow.db", store.tracking_uri)
    assert reader.schema_known()
    assert _comparable(reader.list_cells("readme")) == _comparable(store.list_cells("readme"))
    assert len(reader.list_cells("readme")) == 3  # not the deleted run, not the other sweep's
    assert reader.sweep_tags("readme") == store.sweep_tags("readme")
    assert reader.list_cells("nothing") == [] and reader.sweep_tags("nothing") == {}
    rec = {r.state: r for r in reader.list_cells("readme")}
    assert rec[CellState.FINISHED].metric_steps == {"train/loss": 6, "eval/loss": 12}
    assert math.isnan(rec[CellState.RUNNING].metrics["train/loss"])


def test_the_pinned_mlflow_writes_a_schema_the_reader_knows(written):
    """Fails when MLflow's schema moves (a new MLflow): check the reader's queries against the
    new tables, then add the revision to store_read.SCHEMA_VERSIONS."""
    home, _ = written
    import sqlite3

    con = sqlite3.connect(home / "mlflow.db")
    (version,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
    con.close()
    assert version in store_read.SCHEMA_VERSIONS, version


def test_open_reader_uses_mlflow_for_other_schemas_and_creates_nothing(written, tmp_path, monkeypatch):
    home, store = written
    monkeypatch.setenv("FLANSCALE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert isinstance(open_reader(), SqliteSweepReader)
    monkeypatch.setattr(store_read, "SCHEMA_VERSIONS", frozenset())
    assert isinstance(open_reader(), SweepStore)
    empty = tmp_path / "never-ran"
    monkeypatch.setenv("FLANSCALE_HOME", str(empty))
    assert open_reader() is None and not empty.exists()


def test_a_read_only_client_makes_no_folder_where_it_runs(written, tmp_path, monkeypatch):
    """MLflow makes an SQLite path's parent folder; for the read-only URI (file:...) that
    would be a `file:` tree in the working directory."""
    from orchestrator.sqlite_store import open_read_only_client

    home, store = written
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    client = open_read_only_client(store.tracking_uri)
    assert client.get_experiment_by_name("readme") is not None
    assert client.search_registered_models() is not None  # the registry opens its own engine
    assert list(cwd.iterdir()) == []


def test_status_prints_the_same_either_way(written, cli_runner, monkeypatch):
    home, _ = written
    monkeypatch.setenv("FLANSCALE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = cli_runner("sweep")
    code, fast, err = run("sweep", "status", "readme", "--format", "json")
    assert code == 0, err
    monkeypatch.setattr(store_read, "SCHEMA_VERSIONS", frozenset())
    code, slow, err = run("sweep", "status", "readme", "--format", "json")
    assert code == 0, err
    fast, slow = json.loads(fast), json.loads(slow)
    fast.pop("eta_s"), slow.pop("eta_s")  # an estimate from the clock
    assert fast == slow and fast["total"] == 3 and fast["state"] == "running"
    assert sorted(c["state"] for c in fast["cells"]) == ["failed", "finished", "running"]
