"""A cell as the store records it: one typed, JAX-free record and its states.

The controller writes a cell's record into its MLflow run (tags and params, names in
trainers/run_layout.py), the job extends it (metrics, its own tags), and everything that
reads a sweep back (`sweep status`, the controller resuming, the reports) parses runs
through `CellRecord.from_run` alone, so a field means the same thing everywhere.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.leases import Lease, pid_alive
from trainers.run_layout import (TAG_ATTEMPTS, TAG_CELL_KEY, TAG_ERROR, TAG_EVAL_HASH, TAG_FAILURES, TAG_LEASE,
                                 TAG_PREEMPTIONS, TAG_STATE)
from trainers.spec import EvalConfig, UserError, to_dict
# Re-exported: the states live in trainers.states, which the job imports too.
from trainers.states import LAPSED as LAPSED
from trainers.states import CellState as CellState


def parse_state(text: str | None, where: str = "") -> CellState:
    try:
        return CellState(text or CellState.PENDING)
    except ValueError:
        allowed = ", ".join(s.value for s in CellState)
        raise UserError(f"{where}: state {text!r} is not one flanscale writes; allowed: {allowed}") from None


def _count(tags: dict[str, str], tag: str, where: str) -> int:
    text = tags.get(tag, "") or "0"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise UserError(f"{where}: tag {tag} is {text!r}; flanscale writes a count >= 0 there")
    return value


@dataclass(frozen=True)
class CellRecord:
    """One cell's run: what the controller and the job recorded (plain values)."""

    run_id: str
    key: str
    name: str
    state: CellState
    attempts: int  # attempts started, over every controller session
    failures: int  # attempts that ended in a failure
    preemptions: int  # attempts ended by a preemption
    error: str
    lease: Lease | None = None  # the controller holding the cell while it runs
    eval_hash: str = ""  # hash of the eval settings its final evaluation used
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each metric
    tags: dict[str, str] = field(default_factory=dict)
    metric_steps: dict[str, int] = field(default_factory=dict)  # step of each latest value
    start_time_ms: int = 0
    end_time_ms: int = 0

    @classmethod
    def from_run(cls, run: Any) -> "CellRecord":
        tags = dict(run.data.tags)
        where = f"run {run.info.run_id}"
        return cls(
            run_id=run.info.run_id,
            key=tags.get(TAG_CELL_KEY, ""),
            name=run.info.run_name or "",
            state=parse_state(tags.get(TAG_STATE), where),
            attempts=_count(tags, TAG_ATTEMPTS, where),
            failures=_count(tags, TAG_FAILURES, where),
            preemptions=_count(tags, TAG_PREEMPTIONS, where),
            error=tags.get(TAG_ERROR, ""),
            lease=Lease.from_text(tags.get(TAG_LEASE)),
            eval_hash=tags.get(TAG_EVAL_HASH, ""),
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            tags=tags,
            metric_steps=latest_steps(run),
            start_time_ms=run.info.start_time or 0,
            end_time_ms=run.info.end_time or 0,
        )

    @property
    def total_steps(self) -> int:
        text = self.params.get("steps", "")
        return int(text) if text.isdigit() else 0

    def live_state(self, now: float | None = None) -> str:
        """The state, or LAPSED for a cell recorded running whose controller's lease lapsed."""
        return live_state(self.state, self.lease, now)


def live_state(state: str, lease: Lease | None, now: float | None = None) -> str:
    """`state`, or LAPSED when it says running but no live lease backs it."""
    if state != CellState.RUNNING:
        return str(state)
    if lease is None or lease.lapsed(time.time() if now is None else now, pid_alive=pid_alive):
        return LAPSED
    return str(state)


def sweep_live_state(tags: dict[str, str]) -> tuple[str, Lease | None]:
    """The state of a sweep as a person should read it from its run's tags (LAPSED for
    "running" whose controller's lease lapsed), and that lease."""
    lease = Lease.from_text(tags.get(TAG_LEASE))
    return live_state(tags.get(TAG_STATE, CellState.PENDING), lease), lease


def run_age(run: Any) -> tuple[int, str]:
    """Sort key of runs, oldest first; runs started in the same millisecond by run id, so
    every reader and writer picks the same "oldest"."""
    return run.info.start_time or 0, run.info.run_id


def read_cells(runs: Iterable[Any]) -> list[CellRecord]:
    """One record per cell key from a sweep's cell runs. Should two runs of a cell ever exist
    (two controllers that shared a tracking server but not a home), the oldest describes the
    cell, as the controller that created the younger one decided (SweepStore.cell_runs)."""
    records: dict[str, CellRecord] = {}
    for run in sorted(runs, key=run_age):
        rec = CellRecord.from_run(run)
        records.setdefault(rec.key, rec)
    return list(records.values())


def eval_hash(eval_cfg: EvalConfig) -> str:
    """A short hash of a cell's evaluation settings. They stay out of the cell key (the same
    trained model), so a finished cell whose recorded hash differs is evaluated again."""
    blob = json.dumps(to_dict(eval_cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def latest_steps(run: Any) -> dict[str, int]:
    # The stores return each metric's latest value together with its step; RunData keeps
    # those entity objects, its public dict keeps only the values.
    return {m.key: int(m.step) for m in getattr(run.data, "_metric_objs", [])}


def _lower_is_better(metric: str) -> bool | None:
    """Direction of a held-out metric worth a sweep-level best; None for the others."""
    if metric == "eval/loss":
        return True
    return False if metric.endswith("normalized_average") else None


def sweep_summary(records: Iterable[CellRecord]) -> tuple[dict[str, float], dict[str, str]]:
    """The sweep's summary metrics from its cells' records, and the run name of the cell
    holding each best. `sweep/flops_spent` counts finished cells' finetuning compute as
    measured (planned where a cell has no measurement); the bests are over finished cells:
    the lowest `eval/loss`, the highest of each normalized average."""
    records = list(records)
    finished = [r for r in records if r.state == CellState.FINISHED]
    metrics = {
        "sweep/cells": float(len(records)),
        "sweep/cells_finished": float(len(finished)),
        "sweep/cells_failed": float(sum(r.state == CellState.FAILED for r in records)),
        "sweep/flops_spent": sum(r.metrics.get("flops/finetune_measured", r.metrics.get("flops/finetune", 0.0))
                                 for r in finished),
    }
    best: dict[str, str] = {}
    for name in sorted({m for r in finished for m in r.metrics if _lower_is_better(m) is not None}):
        sign = 1.0 if _lower_is_better(name) else -1.0
        holder = min((r for r in finished if name in r.metrics), key=lambda r: sign * r.metrics[name])
        metrics[f"sweep/best/{name}"] = holder.metrics[name]
        best[name] = holder.name or holder.key
    return metrics, best
