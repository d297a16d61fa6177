"""MLflow as the durable store of a sweep: what ran, what is running, what is left.

Layout (the README's "Where state lives", names in trainers/run_layout.py): experiment = sweep name, a
model-training experiment; one parent run per sweep (tag `flanscale.sweep`, run name = sweep
name) that also carries the sweep's summary metrics (`sweep/...`); one child run per cell,
named for a person and tagged with its grid coordinates, found again by its tag
`flanscale.cell_key`, so re-running a sweep resumes the same runs instead of making new ones.
Everything goes through `MlflowClient` (never the global active run), because the controller
writes into many runs at once and Ray workers write into the same ones.

The embedded default, SQLite, is opened (and created) by orchestrator/sqlite_store.py, and
every write here retries while SQLite reports a lock (`with_retry`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.cells import (LAPSED, CellRecord, CellState, latest_steps, read_cells, run_age,
                               sweep_live_state, sweep_summary)
from orchestrator.leases import Lease
from orchestrator.sqlite_store import open_read_only_client, open_sqlite_client, with_retry
from trainers.home import flanscale_home
from trainers.home import tracking_uri as home_tracking_uri

# The names live in trainers.run_layout, which the job imports too; they are re-exported here
# for the control plane and the reports.
from trainers.run_layout import (EXPERIMENT_KIND, TAG_ATTEMPTS, TAG_BEST, TAG_CANCEL, TAG_CELL_KEY,  # noqa: F401
                                 TAG_ERROR, TAG_EVAL_HASH, TAG_EXPERIMENT_KIND, TAG_FAILURES, TAG_FAMILY, TAG_FORMATS,
                                 TAG_KIND, TAG_LEASE, TAG_MAX_CONCURRENT, TAG_MODEL, TAG_PARENT, TAG_PREEMPTIONS,
                                 TAG_SEED, TAG_STATE, TAG_SWEEP, TAG_SYSTEM_METRICS, TAG_TASK_COUNT, TAG_WORKER,
                                 run_name)
from trainers.axes import FORMATS, cell_point
from trainers.run_layout import cell_params as layout_params
from trainers.run_layout import cell_tags as layout_tags

STATES = tuple(s.value for s in CellState)
# MLflow's own run status for each state (KILLED for the others: preempted, cancelled).
_MLFLOW_STATUS = {CellState.RUNNING: "RUNNING", CellState.PENDING: "SCHEDULED", CellState.FINISHED: "FINISHED",
                  CellState.FAILED: "FAILED", CellState.INFEASIBLE: "FAILED"}


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The home directory (trainers.home.flanscale_home), created: the store writes into it."""
    path = flanscale_home(home)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def resolve_tracking_uri(explicit: str | None = None, home: str | os.PathLike[str] | None = None) -> str:
    """--tracking-uri, then MLFLOW_TRACKING_URI, then SQLite under FLANSCALE_HOME."""
    return home_tracking_uri(explicit, resolve_home(home))


def cell_name(cell: Any) -> str:
    """The run name of a planner Cell (trainers.run_layout.run_name)."""
    return run_name(cell_point(cell))


def cell_tags(cell: Any) -> dict[str, str]:
    """The tags of a planner Cell's run that people group and filter by."""
    return layout_tags(cell_point(cell), cell.spec.model.family)


def cell_params(cell: Any) -> dict[str, Any]:
    """The params of a cell's run (the README's "Where state lives"), from a planner Cell: the
    job's own (trainers.run_layout.cell_params), its key and the grid's name of its format set."""
    return {"cell_key": cell.key, **layout_params(cell.spec, cell.params), FORMATS.param: cell.formats}


class SweepStore:
    """Finds or creates the runs of a sweep and reads their state back."""

    def __init__(self, tracking_uri: str | None = None, home: str | os.PathLike[str] | None = None,
                 read_only: bool = False) -> None:
        """`read_only`: for commands that only read; the store is opened read-only
        (orchestrator.sqlite_store.read_only_uri) and nothing is created, not even the home."""
        from mlflow.tracking import MlflowClient

        self.read_only = read_only
        self.home = flanscale_home(home) if read_only else resolve_home(home)
        self.tracking_uri = home_tracking_uri(tracking_uri, self.home)
        if read_only:
            self.client = open_read_only_client(self.tracking_uri)
        elif self.tracking_uri.startswith("sqlite:///"):
            self.client = open_sqlite_client(self.tracking_uri, Path(self.tracking_uri[len("sqlite:///"):]))
        else:
            self.client = MlflowClient(tracking_uri=self.tracking_uri)

    def _artifact_location(self) -> str | None:
        # A tracking server chooses its own artifact store; an embedded store keeps them at home.
        if self.tracking_uri.startswith(("sqlite:", "file:", "/")):
            root = self.home / "mlartifacts"
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            return root.as_uri()
        return None

    # ---- experiment and parent run ----

    def experiment_id(self, sweep: str, create: bool = True) -> str | None:
        exp = with_retry(self.client.get_experiment_by_name, sweep)
        if exp is not None:
            if self.read_only:
                return exp.experiment_id if exp.lifecycle_stage != "deleted" else None
            if exp.lifecycle_stage == "deleted":
                with_retry(self.client.restore_experiment, exp.experiment_id)
            if create and TAG_EXPERIMENT_KIND not in exp.tags:  # a sweep stored before experiments had a kind
                with_retry(self.client.set_experiment_tag, exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
            return exp.experiment_id
        if not create:
            return None
        try:
            return with_retry(
                self.client.create_experiment, sweep, artifact_location=self._artifact_location(),
                tags={TAG_SWEEP: sweep, TAG_EXPERIMENT_KIND: EXPERIMENT_KIND},
            )
        except Exception as exc:  # another process created it first
            if "already exists" not in str(exc).lower() and "unique" not in str(exc).lower():
                raise
            return with_retry(self.client.get_experiment_by_name, sweep).experiment_id

    def _search(self, exp_id: str, filter_string: str) -> list[Any]:
        runs: list[Any] = []
        token = None
        while True:
            page = with_retry(
                self.client.search_runs, [exp_id], filter_string, max_results=1000,
                order_by=["attributes.start_time ASC"], page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def sweep_run(self, sweep: str, create: bool = True) -> str | None:
        exp_id = self.experiment_id(sweep, create=create)
        if exp_id is None:
            return None
        query = f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_KIND}` = 'sweep'"
        found = _oldest(self._search(exp_id, query))
        if found is not None:
            return found.info.run_id
        if not create:
            return None
        run = with_retry(
            self.client.create_run, exp_id, run_name=sweep,
            tags={TAG_SWEEP: sweep, TAG_KIND: "sweep", TAG_STATE: CellState.PENDING},
        )
        return self._keep_oldest(run.info.run_id, self._search(exp_id, query))

    def _keep_oldest(self, run_id: str, found: list[Any]) -> str:
        """Of a run just created and the runs found for the same thing right after, keep the
        oldest: two processes that created one at the same moment (controllers sharing a
        tracking server but not a home, whose leases cannot see each other) agree on it, as
        every reader does, and the younger one goes."""
        winner = _oldest(found)
        if winner is not None and winner.info.run_id != run_id:
            with_retry(self.client.delete_run, run_id)
            return winner.info.run_id
        return run_id

    # ---- cell runs ----

    def _cell_runs_by_key(self, exp_id: str, key: str | None = None) -> dict[str, Any]:
        """The cell runs of an experiment (or of one cell key) by key; of two runs of one key,
        the oldest, on which every reader agrees."""
        query = f"tags.`{TAG_KIND}` = 'cell'" + (f" and tags.`{TAG_CELL_KEY}` = '{key}'" if key else "")
        found: dict[str, Any] = {}
        for run in sorted(self._search(exp_id, query), key=run_age):  # oldest first
            found.setdefault(run.data.tags.get(TAG_CELL_KEY, ""), run)
        return found

    def cell_run(self, sweep: str, cell: Any, known: CellRecord | None = None) -> tuple[str, bool]:
        """(run_id, created) of one cell's run; see `cell_runs`."""
        return self.cell_runs(sweep, [cell], {cell.key: known} if known is not None else {})[cell.key]

    def cell_runs(self, sweep: str, cells: Sequence[Any],
                  known: Mapping[str, CellRecord] | None = None) -> dict[str, tuple[str, bool]]:
        """Find the child run of every cell by its key, or create it (tags, params, cell.json).

        Returns {key: (run_id, created)}. `known` holds the records of a `list_cells` just
        made, which need no search. The others cost one search for all of them, and, when
        runs were created, one more: a controller sharing the tracking server but not this
        home may have created a run of the same cell meanwhile, and the younger run gives
        way. The tags are written in the same transaction as the run, so a controller killed
        half-way never leaves a run that cannot be found again.
        """
        known = known or {}
        out: dict[str, tuple[str, bool]] = {}
        missing = []
        for cell in cells:
            rec = known.get(cell.key)
            if rec is None:
                missing.append(cell)
                continue
            self._relabel(rec.run_id, rec.name, rec.tags, cell)
            out[cell.key] = (rec.run_id, False)
        if not missing:
            return out
        exp_id = self.experiment_id(sweep)
        only = missing[0].key if len(missing) == 1 else None  # one cell: search for its key alone
        found = self._cell_runs_by_key(exp_id, only)
        parent, created = None, {}
        for cell in missing:
            run = found.get(cell.key)
            if run is not None:
                self.log_params(run.info.run_id, cell_params(cell), existing=run.data.params)
                self._relabel(run.info.run_id, run.info.run_name or "", run.data.tags, cell)
                out[cell.key] = (run.info.run_id, False)
                continue
            parent = parent or self.sweep_run(sweep)
            tags = {
                TAG_PARENT: parent, TAG_SWEEP: sweep, TAG_KIND: "cell", TAG_CELL_KEY: cell.key,
                TAG_STATE: CellState.PENDING, TAG_ATTEMPTS: "0", TAG_PREEMPTIONS: "0", **cell_tags(cell),
            }
            created[cell.key] = with_retry(self.client.create_run, exp_id, run_name=cell_name(cell), tags=tags)
        if not created:
            return out
        after = self._cell_runs_by_key(exp_id, only)
        for cell in missing:
            run = created.get(cell.key)
            if run is None:
                continue
            run_id = self._keep_oldest(run.info.run_id, [after[cell.key]] if cell.key in after else [])
            if run_id != run.info.run_id:
                out[cell.key] = (run_id, False)
                continue
            self.log_params(run_id, cell_params(cell), existing={})
            to_json = getattr(cell, "to_json", None)
            if to_json is not None:
                self.log_json(run_id, "cell.json", to_json())
            out[cell.key] = (run_id, True)
        return out

    def _relabel(self, run_id: str, name: str, tags: dict[str, str], cell: Any) -> None:
        """Name and tag a run stored before cell runs had people's names and tags. A name given
        by hand in the UI stays: only runs without the tags are touched."""
        if TAG_MODEL in tags:
            return
        self.set_tags(run_id, cell_tags(cell))
        if name != cell_name(cell):
            with_retry(self.client.update_run, run_id, name=cell_name(cell))

    def log_params(self, run_id: str, params: dict[str, Any], existing: Mapping[str, str] | None = None) -> None:
        """Log the params the run lacks (`existing`: its params, when just read)."""
        from mlflow.entities import Param

        if existing is None:
            existing = with_retry(self.client.get_run, run_id).data.params
        # Params are immutable in MLflow; a resumed cell (perhaps re-planned on other
        # hardware) keeps the values of its first attempt.
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        if new:
            with_retry(self.client.log_batch, run_id, params=new)

    def log_json(self, run_id: str, name: str, obj: Any) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
            with_retry(self.client.log_artifact, run_id, str(path))

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        with_retry(self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def set_state(self, run_id: str, state: str, **tags: Any) -> None:
        """Record a cell's (or sweep's) state; also mirror it in MLflow's own run status."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; allowed: {', '.join(STATES)}")
        state = str(state)
        self.set_tags(run_id, {TAG_STATE: state, **tags})
        status = _MLFLOW_STATUS.get(state, "KILLED")
        if status in ("RUNNING", "SCHEDULED"):
            with_retry(self.client.update_run, run_id, status=status)
        else:
            with_retry(self.client.set_terminated, run_id, status=status)

    def mark_started(self, run_id: str, when_ms: int | None = None) -> bool:
        """Set a cell run's start time to when its cell first starts (`when_ms`, default now).
        Its run is created with the sweep, so without this MLflow's "Duration" of every cell
        would count from the sweep's start. MLflow's API sets a run's start only when it
        creates the run, so this writes the run's row through the SQL store MLflow opened
        (the embedded SQLite store, or a database given as the tracking URI); a tracking
        server keeps the creation time (returns False)."""
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = self.client._tracking_client.store
        if not isinstance(store, SqlAlchemyStore):
            return False
        when = int(time.time() * 1000) if when_ms is None else int(when_ms)

        def update() -> None:
            with store.ManagedSessionMaker(read_only=False) as session:
                run = store._get_run(run_uuid=run_id, session=session)
                run.start_time = when
                session.add(run)

        with_retry(update)
        return True

    def delete_tag(self, run_id: str, key: str) -> None:
        run = with_retry(self.client.get_run, run_id)
        if key in run.data.tags:
            with_retry(self.client.delete_tag, run_id, key)

    # ---- reading back ----

    def list_cells(self, sweep: str) -> list[CellRecord]:
        exp_id = self.experiment_id(sweep, create=False)
        if exp_id is None:
            return []
        runs = self._search(exp_id, f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_KIND}` = 'cell'")
        return read_cells(runs)

    def cell_record(self, run_id: str) -> CellRecord:
        """One cell's record, read from its run alone."""
        return CellRecord.from_run(with_retry(self.client.get_run, run_id))

    def latest(self, run_id: str) -> tuple[dict[str, float], dict[str, int]]:
        """Latest value and its step of every metric of a run (one query, for live progress)."""
        run = with_retry(self.client.get_run, run_id)
        return dict(run.data.metrics), latest_steps(run)

    def cell_history(self, run_id: str, metric: str = "train/loss") -> list[tuple[int, float]]:
        """(step, value) sorted by step; a step logged twice (re-run after a resume) keeps the
        value logged last, which is the one of the attempt that went on."""
        history = with_retry(self.client.get_metric_history, run_id, metric)
        by_step: dict[int, tuple[int, float]] = {}
        for m in history:
            prev = by_step.get(m.step)
            if prev is None or m.timestamp >= prev[0]:
                by_step[m.step] = (m.timestamp, m.value)
        return [(step, by_step[step][1]) for step in sorted(by_step)]

    def last_point(self, run_id: str, metric: str = "train/loss") -> tuple[int, float] | None:
        history = self.cell_history(run_id, metric)
        return history[-1] if history else None

    def log_summary(self, sweep: str, parent_run_id: str,
                    records: Iterable[CellRecord] | None = None) -> dict[str, float]:
        """Write the sweep's summary (see `sweep_summary`) on its parent run, at step = cells
        finished, so the parent's charts follow the sweep as it fills in. `records`: the
        cells' records as the caller keeps them up to date (else read from the store)."""
        from mlflow.entities import Metric, RunTag

        metrics, best = sweep_summary(self.list_cells(sweep) if records is None else records)
        step, now = int(metrics["sweep/cells_finished"]), int(time.time() * 1000)
        with_retry(self.client.log_batch, parent_run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()],
                   tags=[RunTag(TAG_BEST + k, v) for k, v in best.items()])
        return metrics

    # ---- cancel requests (written by `flanscale sweep cancel`, polled by the controller) ----

    def request_cancel(self, sweep: str) -> str | None:
        parent = self.sweep_run(sweep, create=False)
        if parent is not None:
            self.set_tags(parent, {TAG_CANCEL: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return parent

    def cancel_requested(self, parent_run_id: str) -> bool:
        return TAG_CANCEL in self.run_tags(parent_run_id)

    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(with_retry(self.client.get_run, run_id).data.tags)

    def sweep_tags(self, sweep: str) -> dict[str, str]:
        parent = self.sweep_run(sweep, create=False)
        return dict(with_retry(self.client.get_run, parent).data.tags) if parent else {}

    def sweep_lease(self, sweep: str) -> tuple[str, Lease | None]:
        """The sweep's state as a person should read it (LAPSED for "running" whose
        controller's lease lapsed) and that lease."""
        return sweep_live_state(self.sweep_tags(sweep))

    def settle_lapsed(self, sweep: str) -> list[str]:
        """Record the sweep, and its cells that say running, as cancelled: their controller is
        gone (its lease lapsed), so nothing runs them. Returns the keys of those cells."""
        keys = []
        for rec in self.list_cells(sweep):
            if rec.live_state() == LAPSED:
                self.set_state(rec.run_id, CellState.CANCELLED)
                keys.append(rec.key)
        parent = self.sweep_run(sweep, create=False)
        if parent is not None:
            self.set_state(parent, CellState.CANCELLED)
        return keys


def _oldest(runs: list[Any]) -> Any | None:
    return min(runs, key=run_age, default=None)
