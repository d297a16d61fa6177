"""The MFU a plan's hours and cost assume: the spec's `mfu`, else what finished cells measured.

Every finished cell logs `train/mfu`, the model FLOPs utilisation of its steps. When the
tracking store holds finished cells of the same model family on the same accelerator (in any
sweep), the planner uses the median of their last `train/mfu` instead of the assumed
`DEFAULT_MFU`; `mfu:` in the spec (or `mfu=` on the command line) always wins. The embedded
SQLite store is read directly and read-only (orchestrator/store_read.py); any other store
through MLflow's client, given `CONNECT_TIMEOUT_S` to answer: a plan never waits on a store.
"""

from __future__ import annotations

import functools
import sqlite3
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.home import tracking_uri as home_tracking_uri
from trainers.run_layout import TAG_FAMILY, TAG_KIND, TAG_STATE
from trainers.states import CellState

DEFAULT_MFU = 0.4  # assumed where neither the spec nor the store says
METRIC = "train/mfu"
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Mfu:
    """An MFU and where it comes from: "spec", "measured" (the median of `cells` finished
    cells' `train/mfu`) or "assumed"."""

    value: float
    source: str
    cells: int = 0

    def describe(self, family: str, accelerator: str) -> str:
        if self.source == "measured":
            return (f"MFU {self.value:.3g} measured: median of {self.cells} finished {family} "
                    f"cell{'s' if self.cells != 1 else ''} on {accelerator}")
        if self.source == "spec":
            return f"MFU {self.value:.3g} from the spec (mfu)"
        return f"MFU {self.value:.3g} assumed: no finished {family} cell on {accelerator} in the tracking store"


def planning_mfu(spec: Any, family: str, accelerator: str) -> Mfu:
    """The MFU the plan of `spec` uses for cells of `family` on `accelerator`."""
    if spec.mfu is not None:
        return Mfu(float(spec.mfu), "spec")
    values = measured_mfus(home_tracking_uri(spec.tracking_uri or None), family, accelerator)
    if values:
        return Mfu(statistics.median(values), "measured", len(values))
    return Mfu(DEFAULT_MFU, "assumed")


def measured_mfus(tracking_uri: str, family: str, accelerator: str) -> tuple[float, ...]:
    """The last `train/mfu` of every finished cell of `family` on `accelerator` in the store."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        if not db.is_file():
            return ()  # nothing ever ran there, and a plan must not create the store
        # The file and its WAL as they are now: a store written since is read again.
        state = tuple((s.st_mtime_ns, s.st_size) for p in (db, db.with_name(db.name + "-wal")) if p.is_file()
                      for s in [p.stat()])
        return _sqlite_mfus(db, state, family, accelerator)
    return _client_mfus(tracking_uri, family, accelerator)


@functools.lru_cache(maxsize=32)
def _sqlite_mfus(db: Path, state: tuple, family: str, accelerator: str) -> tuple[float, ...]:
    """Read once per state of the file (one plan asks once per family and accelerator)."""
    from orchestrator.sqlite_store import sqlite_read_uri
    from orchestrator.store_read import SqliteSweepReader

    if not SqliteSweepReader(db, "").schema_known():
        return _client_mfus(f"sqlite:///{db}", family, accelerator)
    query = f"""
        SELECT m.value FROM runs r
        JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = '{TAG_KIND}' AND k.value = 'cell'
        JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = '{TAG_STATE}' AND s.value = '{CellState.FINISHED}'
        JOIN tags f ON f.run_uuid = r.run_uuid AND f.key = '{TAG_FAMILY}' AND f.value = :family
        JOIN params a ON a.run_uuid = r.run_uuid AND a.key = 'accelerator' AND a.value = :accelerator
        JOIN latest_metrics m ON m.run_uuid = r.run_uuid AND m.key = :metric AND m.is_nan = 0
        WHERE r.lifecycle_stage = 'active'"""
    con = sqlite3.connect(sqlite_read_uri(db), uri=True, timeout=30)
    try:
        rows = con.execute(query, {"family": family, "accelerator": accelerator, "metric": METRIC}).fetchall()
    finally:
        con.close()
    return tuple(sorted(float(v) for (v,) in rows if 0 < float(v) <= 1))


def _client_mfus(tracking_uri: str, family: str, accelerator: str) -> tuple[float, ...]:
    from orchestrator.preflight import bounded

    def search() -> tuple[float, ...]:
        from orchestrator.sqlite_store import open_read_only_client

        client = open_read_only_client(tracking_uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        if not experiments:
            return ()
        query = (f"tags.`{TAG_KIND}` = 'cell' and tags.`{TAG_STATE}` = '{CellState.FINISHED}' and "
                 f"tags.`{TAG_FAMILY}` = '{family}' and params.accelerator = '{accelerator}'")
        values, token = [], None
        while True:
            page = client.search_runs(experiments, query, max_results=1000, page_token=token)
            values += [r.data.metrics[METRIC] for r in page if 0 < r.data.metrics.get(METRIC, 0) <= 1]
            token = page.token
            if not token:
                return tuple(sorted(values))

    try:
        return bounded(search, CONNECT_TIMEOUT_S, "no answer")
    except Exception:  # an unreachable store leaves the assumed MFU
        return ()


def mfu_notes(spec: Any, cells: list[Any]) -> list[str]:
    """One line per model family and accelerator of the cells that train: the MFU their hours
    and cost assume, and where it comes from."""
    pairs = dict.fromkeys((c.spec.model.family, c.accelerator) for c in cells if c.feasible and c.steps)
    return [planning_mfu(spec, family, acc).describe(family, acc) for family, acc in pairs]
