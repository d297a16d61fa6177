"""Reading a sweep back from the embedded (SQLite) MLflow store without MLflow: for `sweep status`.

`flanscale sweep status` is what people type, again and again, while a sweep runs. Through
MLflow's client most of its time went into importing MLflow and opening the store (about
1.5 s a process on a laptop, before one row is read), and a 1,000-cell sweep took 3 s. MLflow
has no lighter reader, so for the embedded store this module reads the same rows straight
from the file, read-only, in one snapshot, and builds the same records from them
(`CellRecord.from_run`, the one parser of a cell's run). It writes nothing and creates
nothing: a store that is not there is a sweep that is not there.

It reads MLflow's tables, so it reads only a schema it knows: `SCHEMA_VERSIONS` holds the
schema revisions of the pinned MLflow (a test checks a store that MLflow creates against it
and compares the records read both ways). Any other store (a server, another database,
another schema revision) is read through MLflow's client, `orchestrator.store.SweepStore`.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.cells import CellRecord, read_cells, run_age
from orchestrator.sqlite_store import sqlite_read_uri
from trainers.home import flanscale_home
from trainers.home import tracking_uri as home_tracking_uri
from trainers.run_layout import TAG_KIND, TAG_SWEEP

# Alembic revisions of MLflow's tracking schema whose tables this module reads as they are.
SCHEMA_VERSIONS = frozenset({"dc11669786a5"})  # mlflow==3.17.2


@dataclass(frozen=True)
class _Info:
    run_id: str
    run_name: str
    start_time: int | None
    end_time: int | None


@dataclass(frozen=True)
class _Metric:
    key: str
    value: float
    step: int


@dataclass
class _Data:
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    _metric_objs: list[_Metric] = field(default_factory=list)  # as MLflow's RunData keeps them


@dataclass(frozen=True)
class _Run:
    """The part of `mlflow.entities.Run` that `CellRecord.from_run` reads."""

    info: _Info
    data: _Data


class SqliteSweepReader:
    """The sweeps of one SQLite MLflow store, read-only (the interface `SweepStore` has for
    the same reads: `tracking_uri`, `sweep_tags`, `list_cells`)."""

    def __init__(self, db: Path, tracking_uri: str) -> None:
        self.db, self.tracking_uri = db, tracking_uri

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(sqlite_read_uri(self.db), uri=True, timeout=30, isolation_level=None)
        con.execute("BEGIN")  # one snapshot for every query of a read (the writers use WAL)
        return con

    def schema_known(self) -> bool:
        con = self._connect()
        try:
            return con.execute("SELECT version_num FROM alembic_version").fetchone()[0] in SCHEMA_VERSIONS
        except sqlite3.Error:
            return False
        finally:
            con.close()

    def sweep_tags(self, sweep: str) -> dict[str, str]:
        """Tags of the sweep's run (the oldest, as every reader agrees); {} when there is none."""
        runs = self._runs(sweep, "sweep")
        return runs[0].data.tags if runs else {}

    def list_cells(self, sweep: str) -> list[CellRecord]:
        return read_cells(self._runs(sweep, "cell"))

    def _runs(self, sweep: str, kind: str) -> list[_Run]:
        """Active runs of kind `kind` of the sweep's experiment, oldest first, with their tags,
        params and latest metrics, as MLflow's search returns them."""
        # The runs the controller would find: in the experiment named for the sweep (the
        # default workspace), not deleted, tagged with the sweep's name and the kind.
        selected = f"""
            SELECT r.run_uuid FROM runs r
            JOIN experiments e ON e.experiment_id = r.experiment_id
            JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = '{TAG_KIND}' AND k.value = :kind
            JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = '{TAG_SWEEP}' AND s.value = :sweep
            WHERE e.name = :sweep AND e.workspace = 'default' AND r.lifecycle_stage = 'active'"""
        args = {"sweep": sweep, "kind": kind}
        con = self._connect()
        try:
            rows = con.execute(f"SELECT run_uuid, name, start_time, end_time FROM runs "
                               f"WHERE run_uuid IN ({selected})", args).fetchall()
            runs = {r[0]: _Run(_Info(r[0], r[1] or "", r[2], r[3]), _Data()) for r in rows}
            for run_id, key, value in con.execute(f"SELECT run_uuid, key, value FROM tags "
                                                  f"WHERE run_uuid IN ({selected})", args):
                runs[run_id].data.tags[key] = value
            for run_id, key, value in con.execute(f"SELECT run_uuid, key, value FROM params "
                                                  f"WHERE run_uuid IN ({selected})", args):
                runs[run_id].data.params[key] = value
            for run_id, key, value, step, is_nan in con.execute(
                    f"SELECT run_uuid, key, value, step, is_nan FROM latest_metrics "
                    f"WHERE run_uuid IN ({selected})", args):
                data = runs[run_id].data
                data.metrics[key] = math.nan if is_nan else float(value)
                data._metric_objs.append(_Metric(key, data.metrics[key], int(step)))
        finally:
            con.close()
        return sorted(runs.values(), key=run_age)


def open_reader(tracking_uri: str | None = None) -> Any:
    """A reader of the store at `tracking_uri` (--tracking-uri, else MLFLOW_TRACKING_URI, else
    the embedded store under FLANSCALE_HOME): `SqliteSweepReader` for an existing SQLite store
    of a known schema, else MLflow's client (`SweepStore`). None for an embedded store that
    does not exist yet (nothing was ever run there; reading must not create it)."""
    uri = home_tracking_uri(tracking_uri, flanscale_home())
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.is_file():
            return None
        reader = SqliteSweepReader(db, uri)
        if reader.schema_known():
            return reader
    from orchestrator.store import SweepStore

    return SweepStore(uri, read_only=True)
