"""What the sweep controller decides, as pure functions of what it knows (no Ray, no MLflow).

Every decision is a return value: `initial_state` (a cell's state when a session starts),
`next_actions` (which cells to start or stop), `classify` (how an attempt ended),
`after_outcome` (retried or done), `sweep_state` (the parent run's end state) and
`other_controller` (whether another live controller holds the sweep). Only
`orchestrator.controller.run_sweep`'s loop acts on them (Ray Tune's scheduler/executor split).

Failure vs preemption: an exception raised by the cell (NonFiniteLoss included) is a failure
(state failed, error tag, other cells go on, `retries.failure` retries); the death of its worker,
actor or node, or a "preempted" result, is a preemption (retried up to `retries.preemption`
times in one controller session, counted in the `flanscale.preemptions` tag). Ray's errors are
told apart by class name, so this module never imports Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

_PREEMPTION_ERRORS = ("WorkerCrashedError", "NodeDiedError", "ActorDiedError", "ActorUnavailableError",
                      "OwnerDiedError", "LocalRayletDiedError", "ObjectLostError", "OutOfMemoryError",
                      "RayActorError", "TaskCancelledError")
HEARTBEAT_S = 10.0  # a controller refreshes its claim on the sweep this often
STALE_S = 45.0  # a claim older than this belongs to a controller that is gone


@dataclass(frozen=True)
class Retries:
    failure: int = 0
    preemption: int = 3


@dataclass(frozen=True)
class CellView:
    """What the scheduler knows about one cell in this controller session."""

    key: str
    priority: float
    state: str  # pending | running | finished | failed | preempted | cancelled | infeasible
    failures: int = 0  # in this session
    preemptions: int = 0  # in this session
    stopping: bool = False


@dataclass(frozen=True)
class Start:
    key: str


@dataclass(frozen=True)
class Stop:
    key: str


def initial_state(stored: str | None, feasible: bool, retry_failed: bool) -> str:
    """A cell's state when a controller session starts, from what MLflow recorded before."""
    if not feasible:
        return "infeasible"
    if stored == "finished":
        return "finished"
    if stored == "failed" and not retry_failed:
        return "failed"
    # running (its controller died), preempted, cancelled, pending, or infeasible under an
    # older plan: all resume, run_cell picks up its checkpoint.
    return "pending"


def next_actions(views: Sequence[CellView], *, max_concurrent: int, cancel_requested: bool) -> list[Start | Stop]:
    """Which cells to start or stop now: smallest priority first, at most `max_concurrent` running."""
    running = [v for v in views if v.state == "running"]
    if cancel_requested:
        return [Stop(v.key) for v in running if not v.stopping]
    free = max(0, max_concurrent - len(running))
    pending = sorted((v for v in views if v.state == "pending"), key=lambda v: (v.priority, v.key))
    return [Start(v.key) for v in pending[:free]]


def classify(result: Any = None, error: BaseException | None = None, stop_requested: bool = False) -> tuple[str, str]:
    """(outcome, message) of one attempt: finished | preempted | failed | cancelled."""
    if error is not None:
        names = {c.__name__ for c in type(error).__mro__}
        if names & set(_PREEMPTION_ERRORS) and "RayTaskError" not in names:
            return ("cancelled" if stop_requested else "preempted"), _one_line(error)
        cause = getattr(error, "cause", None) or error
        return "failed", f"{type(cause).__name__}: {_one_line(cause)}"
    status = result.get("status", "finished") if isinstance(result, dict) else "finished"
    if status == "preempted":
        return ("cancelled" if stop_requested else "preempted"), "stopped before the last step"
    return "finished", ""


def after_outcome(view: CellView, outcome: str, retries: Retries) -> CellView:
    """The cell's next view: retried (pending) while its budget for this kind of end lasts."""
    if outcome == "failed":
        failures = view.failures + 1
        state = "pending" if failures <= retries.failure else "failed"
        return replace(view, state=state, failures=failures, stopping=False)
    if outcome == "preempted":
        preemptions = view.preemptions + 1
        state = "pending" if preemptions <= retries.preemption else "preempted"
        return replace(view, state=state, preemptions=preemptions, stopping=False)
    return replace(view, state=outcome, stopping=False)


def sweep_state(cell_states: Sequence[str], cancelled: bool) -> str:
    """The parent run's state once a session ends."""
    if cancelled:
        return "cancelled"
    if "failed" in cell_states:
        return "failed"
    if all(s in ("finished", "infeasible") for s in cell_states):
        return "finished"
    return "preempted"  # out of preemption retries (or interrupted): the next run resumes


def other_controller(claim: str | None, *, now: float, host: str, pid: int,
                     pid_alive: Callable[[int], bool]) -> str | None:
    """The live controller that holds the sweep, if another one does (two would run cells twice).

    A claim is "<host>:<pid>:<unix time>", refreshed every HEARTBEAT_S. On this host a dead pid
    frees it at once (a killed controller is rerun right away); elsewhere only staleness does.
    """
    if not claim:
        return None
    try:
        c_host, c_pid, c_time = claim.rsplit(":", 2)
        c_pid_i, c_time_f = int(c_pid), float(c_time)
    except ValueError:
        return None
    if c_host == host and (c_pid_i == pid or not pid_alive(c_pid_i)):
        return None
    if now - c_time_f > STALE_S:
        return None
    return f"{c_host}:{c_pid_i}"


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
