"""The states of a cell, one vocabulary for both sides of the store: stdlib only.

The controller records a cell's state in its run's state tag, the job reports how its own
run ended (`CellState.FINISHED` or `CellState.PREEMPTED`), and the reports filter runs by
state; all of them compare against these names. `CellState` is a `StrEnum`, so a member
equals the string stored in the tag.
"""

from __future__ import annotations

import enum


class CellState(enum.StrEnum):
    """What became of a cell (and, on the parent run, of a sweep session)."""

    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    PREEMPTED = "preempted"  # out of preemption retries, or waiting for its next one
    CANCELLED = "cancelled"
    INFEASIBLE = "infeasible"

    @property
    def terminal(self) -> bool:
        """Done for good until the spec (or --retry-failed) says otherwise."""
        return self in (CellState.FINISHED, CellState.FAILED, CellState.INFEASIBLE)


# Shown instead of "running" when the controller that ran a cell (or a sweep) is gone: its
# lease lapsed, so nothing runs it now and the next `sweep run` resumes it.
LAPSED = "lapsed"


def job_status(result: object) -> str:
    """How a cell's job ended, from the dict it returns: `CellState.FINISHED` or
    `CellState.PREEMPTED` (a result that says nothing, or no dict at all, finished)."""
    if isinstance(result, dict):
        return result.get("status", CellState.FINISHED)
    return CellState.FINISHED
