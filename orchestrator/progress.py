"""What a sweep looks like right now: rows per cell, done/total, time left; rich rendering.

The estimate is pure arithmetic on what MLflow holds (steps done, steps planned, the last
measured seconds per step), so `flanscale sweep status` and the controller's live view agree.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.cells import LAPSED, CellState

TERMINAL = tuple(s.value for s in CellState if s.terminal)


@dataclass(frozen=True)
class CellRow:
    key: str
    name: str
    state: str
    step: int
    total_steps: int
    loss: float | None
    attempts: int
    run_id: str
    step_s: float | None = None  # last measured seconds per optimizer step
    error: str = ""
    axes: dict[str, str] = field(default_factory=dict)  # the user axes' values, {field: value} (trainers/axes.py)


def estimate_remaining_s(rows: Sequence[CellRow], slots: int, fallback_step_s: float | None = None) -> float | None:
    """Seconds until every non-terminal cell is done, with `slots` cells running at once.

    Work left is counted in optimizer steps; a cell without its own measured step time uses
    the mean of the measured ones (or `fallback_step_s`, e.g. the planner's estimate).
    Returns None when nothing has been measured and no fallback is given.
    """
    measured = [r.step_s for r in rows if r.step_s]
    mean_step_s = sum(measured) / len(measured) if measured else fallback_step_s
    work_s = 0.0
    for r in rows:
        if r.state in TERMINAL or r.state == CellState.CANCELLED:
            continue
        step_s = r.step_s or mean_step_s
        if step_s is None:
            return None
        work_s += max(r.total_steps - r.step, 0) * step_s
    return work_s / max(1, slots)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def summary_line(rows: Sequence[CellRow], slots: int, fallback_step_s: float | None = None) -> str:
    done = sum(r.state in TERMINAL for r in rows)
    running = sum(r.state == CellState.RUNNING for r in rows)
    eta = estimate_remaining_s(rows, slots, fallback_step_s)
    return f"{done}/{len(rows)} cells done, {running} running, about {format_duration(eta)} left"


def render_table(title: str, rows: Sequence[CellRow], caption: str = "", wide: bool = False) -> Any:
    """The cells as a table that fits the console it is printed on (orchestrator.termtable):
    the run id goes first, then attempts and loss; `wide` keeps every column. Errors of
    failed and infeasible cells follow the table as wrapped lines."""
    from rich.markup import escape

    from orchestrator.termtable import Column, FittedTable

    style = {CellState.FINISHED: "green", CellState.RUNNING: "cyan", CellState.FAILED: "red",
             CellState.PREEMPTED: "yellow", CellState.CANCELLED: "magenta", CellState.INFEASIBLE: "dim",
             LAPSED: "yellow"}
    columns = [
        Column("cell", [escape(r.name) for r in rows]),
        Column("state", [f"[{style.get(r.state, 'white')}]{r.state}[/]" for r in rows]),
        Column("step", [f"{r.step}/{r.total_steps}" for r in rows], justify="right"),
        Column("loss", ["" if r.loss is None else f"{r.loss:.4f}" for r in rows], rank=3, justify="right"),
        Column("attempts", [str(r.attempts) for r in rows], rank=2, justify="right", short="tries"),
        Column("run id", [r.run_id for r in rows], rank=1),
    ]
    notes = [f"[red]{r.state}[/] {escape(r.name)}: {escape(r.error[:500])}"
             for r in rows if r.error and r.state in (CellState.FAILED, CellState.INFEASIBLE)]
    return FittedTable(columns, wide=wide, notes=notes, title=title, caption=caption, expand=False)


class LiveProgress:
    """A rich Live table redrawn at most every `refresh_s`; silent when disabled."""

    def __init__(self, title: str, enabled: bool = True, refresh_s: float = 1.0) -> None:
        self.title = title
        self.enabled = enabled
        self.refresh_s = refresh_s
        self._live: Any = None
        self._last = 0.0

    def __enter__(self) -> "LiveProgress":
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(stderr=True), auto_refresh=False, transient=False)
            self._live.__enter__()
        return self

    def due(self) -> bool:
        return self.enabled and time.monotonic() - self._last >= self.refresh_s

    def update(self, rows: Sequence[CellRow], slots: int, fallback_step_s: float | None = None) -> None:
        if self._live is None:
            return
        self._last = time.monotonic()
        shown = [r for r in rows if r.state != CellState.FINISHED] or list(rows)
        self._live.update(render_table(self.title, shown, summary_line(rows, slots, fallback_step_s)), refresh=True)

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None
