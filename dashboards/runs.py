"""Read one sweep's MLflow runs into a flat table: one row per cell.

The layout is the sweep store's (the README's "Where state lives"): experiment = sweep name, a parent run
tagged `flanscale.sweep`, a child run per cell tagged `flanscale.cell_key` / `flanscale.state`
with the cell's params and metrics. This module only reads; it never creates a store, an
experiment or a run, so pointing it at the wrong place cannot damage anything.
"""

from __future__ import annotations

import difflib
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from orchestrator.cells import CellRecord, CellState, read_cells, run_age
from orchestrator.store import TAG_CELL_KEY, TAG_PARENT, TAG_STATE, TAG_SWEEP
from trainers import axes as grid
from trainers.home import tracking_uri as home_tracking_uri
from trainers.spec import UserError


@dataclass(frozen=True)
class CellRun:
    """One cell as a report reads it: its store record (orchestrator.cells.CellRecord, the one
    reader of cell runs) with the planned facts parsed. `metrics` holds the last logged value
    of each metric."""

    key: str
    run_id: str
    model: str
    params: int
    task_count: int
    formats: tuple[str, ...]
    with_cot: bool
    mixture: str
    state: str
    seed: int = 0
    attempts: int = 0
    preemptions: int = 0
    error: str = ""
    accelerator: str = ""
    devices: int = 0
    steps: int = 0
    start_time: float | None = None  # when the job first reported (seconds since the epoch), not when queued
    end_time: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)  # the planner's cell.json, when logged
    # Benchmarks this cell scored on flanscale's shipped synthetic stand-in data rather than the
    # real benchmark files (run param `eval_standins`, comma-separated): their metrics are not
    # the benchmark's, and a report says so.
    standins: tuple[str, ...] = ()
    format_set: str = ""  # the grid's name of the format set ("mixed"); "" in runs stored before it was logged
    # The values of its setting axes, {user axis field or built-in name: value} (trainers/axes.py).
    axes: dict[str, Any] = field(default_factory=dict)

    @property
    def coords(self) -> dict[str, Any]:
        """The cell's grid coordinates, {axis name: value} (trainers.axes.point)."""
        return grid.point(self.model, self.task_count, self.format_set or ",".join(self.formats), self.seed, self.axes)

    def axis_value(self, name: str) -> Any:
        """The cell's value on an axis (a built-in name, a user axis's field or name)."""
        return self.coords.get(grid.axis_named(name).name)

    def metric(self, name: str) -> float | None:
        v = self.metrics.get(name)
        return v if v is not None and math.isfinite(v) else None

    @property
    def finetune_flops(self) -> float | None:
        return self.metric("flops/finetune")

    @property
    def pretrain_flops(self) -> float | None:
        return self.metric("flops/pretrain")

    def wall_hours(self, now: float | None = None) -> float:
        """Hours this cell has held its devices (until now if still running)."""
        if self.start_time is None:
            return 0.0
        end = self.end_time if self.end_time is not None else (now if self.state == CellState.RUNNING else None)
        if end is None:
            return 0.0
        return max(0.0, end - self.start_time) / 3600.0


@dataclass(frozen=True)
class SweepRuns:
    sweep: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None
    cells: tuple[CellRun, ...]
    read_at: float
    parent_params: dict[str, str] = field(default_factory=dict)  # what the controller logged about the sweep
    parent_tags: dict[str, str] = field(default_factory=dict)  # flanscale.* tags of the sweep's run (state, ...)

    @property
    def state(self) -> str:
        return self.parent_tags.get(TAG_STATE, "unknown")

    @property
    def metric_names(self) -> list[str]:
        return sorted({m for c in self.cells for m in c.metrics})


def _check_store_exists(uri: str) -> None:
    # MLflow would silently create an empty SQLite database; a report must not.
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.exists():
            raise UserError(f"--tracking-uri: no MLflow store at {path}; run a sweep first or pass --tracking-uri")
    elif uri.startswith("file:") or "://" not in uri:
        path = Path(uri[len("file:"):] if uri.startswith("file:") else uri)
        if not path.exists():
            raise UserError(f"--tracking-uri: no MLflow store at {path}; run a sweep first or pass --tracking-uri")


def client_for(uri: str):
    """A client that reads the store at `uri`, opened read-only: a report reads an archived
    or read-only home as well as a live one (it writes through a client of its own)."""
    from orchestrator.sqlite_store import open_read_only_client

    _check_store_exists(uri)
    return open_read_only_client(uri)


def load_sweep(sweep: str, tracking_uri: str | None = None, with_plans: bool = True) -> SweepRuns:
    """All cells of `sweep`; raises UserError (with the closest sweep names) if there is none."""
    uri = home_tracking_uri(tracking_uri)
    client = client_for(uri)
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        close = difflib.get_close_matches(sweep, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else (
            f"known sweeps: {', '.join(names)}" if names else "the store holds no sweeps yet")
        raise UserError(f"sweep {sweep!r}: no such experiment in {uri}; {hint}")

    if exp.lifecycle_stage == "deleted":
        raise UserError(f"sweep {sweep!r}: its experiment in {uri} is deleted; restore it in MLflow to report on it")
    runs = _all_runs(client, exp.experiment_id)
    parent = _parent_run(runs, sweep)
    records = read_cells(r for r in runs if TAG_CELL_KEY in r.data.tags and r.data.tags.get(TAG_SWEEP, sweep) == sweep)
    # The controller logs the whole plan once on the sweep's run; older stores only per cell.
    plans = _read_plan_list(client, parent.info.run_id) if with_plans and parent is not None else {}
    cells = [_to_cell(client, rec, plans.get(rec.key) if plans else None, with_plans) for rec in records]
    cells.sort(key=lambda c: (c.params, c.model, c.task_count, c.with_cot, sorted(map(str, c.axes.items())), c.seed,
                              c.key))
    return SweepRuns(
        sweep=sweep,
        tracking_uri=uri,
        experiment_id=exp.experiment_id,
        parent_run_id=parent.info.run_id if parent is not None else None,
        cells=tuple(cells),
        read_at=time.time(),
        parent_params=dict(parent.data.params) if parent is not None else {},
        parent_tags={k: v for k, v in parent.data.tags.items() if k.startswith("flanscale.")} if parent is not None else {},
    )


def load_history(tracking_uri: str, cells: Sequence[CellRun], metric: str) -> dict[str, list[tuple[int, float]]]:
    """`metric` at every logged step, per cell key (for training-curve figures)."""
    client = client_for(tracking_uri)
    return {c.key: [(m.step, m.value) for m in client.get_metric_history(c.run_id, metric) if math.isfinite(m.value)]
            for c in cells}


def _all_runs(client, experiment_id: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _parent_run(runs: list, sweep: str):
    parents = [r for r in runs if TAG_CELL_KEY not in r.data.tags and TAG_PARENT not in r.data.tags
               and r.data.tags.get(TAG_SWEEP) == sweep]
    # The oldest parent is the sweep's own; later ones could only come from a manual re-creation.
    return min(parents, key=run_age) if parents else None


def _to_cell(client, rec: CellRecord, plan: dict[str, Any] | None, with_plan: bool) -> CellRun:
    p = rec.params

    def where(name: str) -> str:
        return f"run {rec.run_id} (cell {rec.key}): param {name}"

    if plan is None:
        plan = _read_json(client, rec.run_id, "cell.json") if with_plan else {}
    plan = plan if isinstance(plan, dict) else {}
    state = str(rec.state)
    end = rec.end_time_ms / 1000.0 if rec.end_time_ms else None
    return CellRun(
        key=rec.key,
        run_id=rec.run_id,
        model=p.get("model") or plan.get("model", "?"),
        params=_as_int(p.get("params", plan.get("params")), where("params")),
        task_count=_as_int(p.get("task_count", plan.get("task_count")), where("task_count")),
        formats=_as_tuple(p.get("formats", plan.get("formats", ()))),
        with_cot=_as_bool(p.get("with_cot", "true"), where("with_cot")),
        mixture=p.get("mixture", ""),
        state=state,
        seed=_as_int(p.get("seed", plan.get("seed")), where("seed")),
        attempts=rec.attempts,
        preemptions=rec.preemptions,
        error=rec.error,
        accelerator=p.get("accelerator") or plan.get("accelerator", ""),
        devices=_as_int(p.get("devices", plan.get("devices")), where("devices")),
        steps=_as_int(p.get("steps"), where("steps")),
        start_time=_job_start(client, rec.run_id) if state not in (CellState.PENDING, CellState.INFEASIBLE) else None,
        end_time=end if state != CellState.RUNNING else None,
        metrics=dict(rec.metrics),
        plan=plan,
        standins=_as_tuple(p.get("eval_standins", "")),
        format_set=p.get(grid.FORMATS.param) or plan.get("formats", ""),
        axes=grid.read_values(p),
    )


def _job_start(client, run_id: str) -> float | None:
    """The first metric the job logged. The run itself is created when the sweep is planned,
    so its start time includes the wait in the queue, which costs nothing."""
    for name in ("flops/finetune", "train/loss"):
        stamps = [m.timestamp for m in client.get_metric_history(run_id, name)]
        if stamps:
            return min(stamps) / 1000.0
    return None


def _read_plan_list(client, parent_run_id: str) -> dict[str, dict[str, Any]]:
    cells = _read_json(client, parent_run_id, "plan.json")
    if not isinstance(cells, list):
        return {}
    return {c["key"]: c for c in cells if isinstance(c, dict) and "key" in c}


def _read_json(client, run_id: str, name: str) -> Any:
    try:
        if not any(a.path == name for a in client.list_artifacts(run_id)):
            return {}
        with tempfile.TemporaryDirectory() as d:
            path = client.download_artifacts(run_id, name, d)
            return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        # A cell without a readable plan still reports its metrics.
        return {}


def _as_int(v: Any, where: str) -> int:
    """A count flanscale logged as a param; 0 where it was not logged (a run stored before it
    was). Anything else is not a value flanscale writes, and is said so rather than read as 0."""
    if v is None or v == "":
        return 0
    try:
        number = float(v)
    except (TypeError, ValueError):
        number = math.nan
    if not number.is_integer():
        raise UserError(f"{where} is {v!r}; flanscale logs a whole number there")
    return int(number)


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _as_bool(v: Any, where: str) -> bool:
    text = str(v).strip().lower()
    if text not in _TRUE | _FALSE:
        raise UserError(f"{where} is {v!r}; flanscale logs true or false there")
    return text in _TRUE


def _as_tuple(v: Any) -> tuple[str, ...]:
    """Formats are logged as a JSON list, a Python repr or a comma-separated string."""
    if isinstance(v, (list, tuple)):
        return tuple(str(x) for x in v)
    s = str(v).strip()
    if not s:
        return ()
    if s.startswith("["):
        try:
            return tuple(str(x) for x in json.loads(s.replace("'", '"')))
        except ValueError:
            s = s.strip("[]")
    return tuple(x.strip().strip("'\"") for x in s.split(",") if x.strip())
