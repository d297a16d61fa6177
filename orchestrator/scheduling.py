"""What the sweep controller decides, as pure functions of what it knows (no Ray, no MLflow).

Every decision is a return value: `initial_state` (a cell's state when a session starts),
`next_actions` (which cells to start or stop), `classify` (how an attempt ended),
`after_outcome` (retried or done) and `sweep_state` (the parent run's end state). Only
`orchestrator.controller.SweepController` acts on them (Ray Tune's scheduler/executor split).

Failure vs preemption: an exception raised by the cell is a failure (state failed, error
tag, other cells go on, retried while `retries.failure` lasts), running out of memory (the
host's, seen by Ray's memory monitor, or the device's) included, with its reason; bad input
(trainers.spec.UserError) and a non-finite loss fail the same way on every attempt, so they
are never retried. The death of a cell's worker, actor or node, or a "preempted" result, is a
preemption (retried while `retries.preemption` lasts). Both budgets count every attempt the
cell's run records, over all controller sessions. Ray's errors are told apart by class name,
so this module never imports Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from orchestrator.cells import CellState
from orchestrator.spec import RetrySpec
from trainers.states import job_status

_PREEMPTION_ERRORS = ("WorkerCrashedError", "NodeDiedError", "ActorDiedError", "ActorUnavailableError",
                      "OwnerDiedError", "LocalRayletDiedError", "ObjectLostError", "RayActorError",
                      "TaskCancelledError")
# Raised by the job for input that fails the same way every time (class names: the job's
# exceptions reach here through Ray, and trainers.train is not importable without JAX).
_DETERMINISTIC_ERRORS = ("UserError", "NonFiniteLoss")
_DEVICE_OOM = ("RESOURCE_EXHAUSTED", "out of memory")


@dataclass(frozen=True)
class CellView:
    """What the scheduler knows about one cell in this controller session."""

    key: str
    priority: float
    state: str  # a CellState value
    failures: int = 0  # counted against retries.failure (stored, over every session)
    preemptions: int = 0  # counted against retries.preemption (stored, over every session)
    stopping: bool = False


@dataclass(frozen=True)
class Start:
    key: str


@dataclass(frozen=True)
class Stop:
    key: str


class Outcome(NamedTuple):
    """How one attempt ended: finished | preempted | failed | cancelled, and whether a failure
    may be retried at all."""

    kind: CellState
    message: str
    retry: bool = True


def initial_state(stored: str | None, feasible: bool, retry_failed: bool, exhausted: bool = False) -> str:
    """A cell's state when a controller session starts, from what MLflow recorded before.
    `exhausted`: its stored preemptions are over the budget already."""
    if not feasible:
        return CellState.INFEASIBLE
    if stored == CellState.FINISHED:
        return CellState.FINISHED
    if stored in (CellState.FAILED, CellState.PREEMPTED) and not retry_failed:
        if stored == CellState.FAILED or exhausted:
            return CellState(stored)
    # running (its controller died), preempted with budget left, cancelled, pending, or
    # infeasible under an older plan: all resume, run_cell picks up its checkpoint.
    return CellState.PENDING


def next_actions(views: Sequence[CellView], *, max_concurrent: int, cancel_requested: bool) -> list[Start | Stop]:
    """Which cells to start or stop now: smallest priority first, at most `max_concurrent` running."""
    running = [v for v in views if v.state == CellState.RUNNING]
    if cancel_requested:
        return [Stop(v.key) for v in running if not v.stopping]
    free = max(0, max_concurrent - len(running))
    pending = sorted((v for v in views if v.state == CellState.PENDING), key=lambda v: (v.priority, v.key))
    return [Start(v.key) for v in pending[:free]]


def classify(result: Any = None, error: BaseException | None = None, stop_requested: bool = False) -> Outcome:
    """How one attempt ended, from its result or the exception Ray raised for it."""
    if error is not None:
        names = {c.__name__ for c in type(error).__mro__}
        if "OutOfMemoryError" in names and "RayTaskError" not in names:
            return Outcome(CellState.FAILED, f"out of host memory: {_one_line(error)}")
        if names & set(_PREEMPTION_ERRORS) and "RayTaskError" not in names:
            return Outcome(_stopped(stop_requested), _one_line(error))
        # RayTaskError carries the cell's own exception as its cause.
        cause = getattr(error, "cause", None) or error
        cause_names = {c.__name__ for c in type(cause).__mro__}
        message = f"{type(cause).__name__}: {_one_line(cause)}"
        if any(marker.lower() in message.lower() for marker in _DEVICE_OOM):
            return Outcome(CellState.FAILED, f"out of device memory: {message}")
        return Outcome(CellState.FAILED, message, retry=not cause_names & set(_DETERMINISTIC_ERRORS))
    if job_status(result) == CellState.PREEMPTED:
        return Outcome(_stopped(stop_requested), "stopped before the last step")
    return Outcome(CellState.FINISHED, "")


def _stopped(stop_requested: bool) -> CellState:
    """A cell stopped before its last step: by the controller (cancelled) or else (preempted)."""
    return CellState.CANCELLED if stop_requested else CellState.PREEMPTED


def after_outcome(view: CellView, outcome: Outcome, retries: RetrySpec) -> CellView:
    """The cell's next view: retried (pending) while its budget for this kind of end lasts."""
    if outcome.kind == CellState.FAILED:
        failures = view.failures + 1
        retry = outcome.retry and failures <= retries.failure
        return replace(view, state=CellState.PENDING if retry else CellState.FAILED, failures=failures, stopping=False)
    if outcome.kind == CellState.PREEMPTED:
        preemptions = view.preemptions + 1
        state = CellState.PENDING if preemptions <= retries.preemption else CellState.PREEMPTED
        return replace(view, state=state, preemptions=preemptions, stopping=False)
    return replace(view, state=CellState(outcome.kind), stopping=False)


def sweep_state(cell_states: Sequence[str], cancelled: bool) -> str:
    """The parent run's state once a session ends."""
    if cancelled:
        return CellState.CANCELLED
    if CellState.FAILED in cell_states:
        return CellState.FAILED
    if all(s in (CellState.FINISHED, CellState.INFEASIBLE) for s in cell_states):
        return CellState.FINISHED
    return CellState.PREEMPTED  # out of preemption retries (or interrupted): the next run resumes


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:500]


@dataclass
class SweepSummary:
    """What one controller session did, as `run_sweep` returns it."""

    sweep: str
    tracking_uri: str
    parent_run_id: str
    states: dict[str, str] = field(default_factory=dict)  # key -> final state
    errors: dict[str, str] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)  # keys started in this session
    cancelled: bool = False
    setup_s: float = 0.0  # finding/creating runs before the first cell starts
    wall_s: float = 0.0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for state in self.states.values():
            out[state] = out.get(state, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"sweep": self.sweep, "tracking_uri": self.tracking_uri, "parent_run_id": self.parent_run_id,
                "counts": self.counts(), "states": self.states, "errors": self.errors, "started": self.started,
                "cancelled": self.cancelled, "setup_s": round(self.setup_s, 3), "wall_s": round(self.wall_s, 3)}
