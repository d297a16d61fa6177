"""Runs a planned sweep on Ray so that no cell's work is lost or repeated.

Durable state lives in MLflow (orchestrator/store.py), never in this process: a cell is found
again by its key, a finished cell is skipped, an interrupted one (controller killed, worker
killed, node preempted) is started again and resumes from its own checkpoint inside run_cell.

The work is split by concept. Decisions are return values of pure functions in
orchestrator/scheduling.py (`initial_state`, `next_actions`, `classify`, `after_outcome`,
`sweep_state`, `other_controller`); placing and running cells on Ray is orchestrator/placement.py
(`Launcher`, the worker entry point). Only `run_sweep`'s loop, here, acts on the decisions
(Ray Tune's scheduler/executor split): it starts and stops cells through the launcher and
records every state change in MLflow.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from orchestrator import progress as progress_mod
from orchestrator.placement import CellFn, Launcher, Running, connect_ray
from orchestrator.scheduling import (HEARTBEAT_S, CellView, Retries, Start, SweepSummary, after_outcome, classify,
                                     initial_state, next_actions, other_controller, sweep_state)
from orchestrator.store import (TAG_ATTEMPTS, TAG_CANCEL, TAG_CONTROLLER, TAG_ERROR, TAG_MAX_CONCURRENT,
                                TAG_PREEMPTIONS, TAG_SYSTEM_METRICS, SweepStore, records_by_key, resolve_home)
from trainers.spec import UserError

CANCEL_POLL_S = 2.0


def retries_of(spec: Any) -> Retries:
    r = getattr(spec, "retries", None)
    return Retries(failure=int(getattr(r, "failure", 0)), preemption=int(getattr(r, "preemption", 3)))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim() -> str:
    """This controller's claim on a sweep, as scheduling.other_controller reads it."""
    return f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}"


def run_sweep(spec: Any, cells: Sequence[Any], *, ray_address: str | None = None, tracking_uri: str | None = None,
              home: str | os.PathLike[str] | None = None, retry_failed: bool = False, progress: bool = True,
              cell_fn: CellFn | None = None, poll_s: float = 0.5, system_metrics: bool = True) -> SweepSummary:
    """Run every feasible, unfinished cell of a planned sweep on Ray; return what happened.

    `cell_fn` (default: trainers.job.run_cell with the Ray metrics exporter) runs inside the Ray
    worker; tests and benchmarks inject small ones. Safe to call again after any interruption.
    `system_metrics=False` asks the cells started now not to log MLflow's system metrics.
    """
    t0 = time.monotonic()
    home_path = resolve_home(home)
    store = SweepStore(tracking_uri or getattr(spec, "tracking_uri", None) or None, home_path)
    name = spec.name
    parent = store.sweep_run(name)
    holder = other_controller(store.run_tags(parent).get(TAG_CONTROLLER), now=time.time(),
                              host=socket.gethostname(), pid=os.getpid(), pid_alive=_pid_alive)
    if holder:
        raise UserError(f"sweep {name!r}: controller {holder} is running it; wait for it, or stop it with "
                        f"`flanscale sweep cancel {name}`")
    store.set_tags(parent, {TAG_CONTROLLER: _claim()})
    store.delete_tag(parent, TAG_CANCEL)  # a cancel belongs to the session it stopped
    max_concurrent = max(1, int(getattr(spec, "max_concurrent", 0) or len(cells) or 1))
    store.set_state(parent, "running", **{TAG_MAX_CONCURRENT: max_concurrent})
    store.log_json(parent, "plan.json", [c.to_json() for c in cells])
    summary = SweepSummary(name, store.tracking_uri, parent)
    retries = retries_of(spec)

    by_key = {c.key: c for c in cells}
    records = records_by_key(store.list_cells(name))
    views: dict[str, CellView] = {}
    run_ids: dict[str, str] = {}
    attempts: dict[str, int] = {}
    preemptions: dict[str, int] = {}
    errored = {k for k, r in records.items() if r.error}
    for cell in cells:
        rec = records.get(cell.key)
        run_ids[cell.key] = store.cell_run(name, cell, known=rec)[0]
        attempts[cell.key] = rec.attempts if rec else 0
        preemptions[cell.key] = rec.preemptions if rec else 0
        state = initial_state(rec.state if rec else None, bool(cell.feasible), retry_failed)
        views[cell.key] = CellView(cell.key, float(getattr(cell, "priority", 0) or 0), state)
        if state == "failed" and rec is not None:
            summary.errors[cell.key] = rec.error
        if state == "infeasible":
            store.set_state(run_ids[cell.key], "infeasible", **{TAG_ERROR: getattr(cell, "reason", "")})
        elif state == "pending" and rec is not None and rec.state != "pending":
            store.set_state(run_ids[cell.key], "pending")

    steps_of = {c.key: int(c.spec.optim.steps) for c in cells}
    est = [float(getattr(c, "est_hours", 0) or 0) * 3600 / max(1, steps_of[c.key]) for c in cells]
    fallback_step_s = (sum(est) / len(est)) if est and all(est) else None
    live_metrics: dict[str, tuple[int, float | None, float | None]] = {}

    def rows() -> list[progress_mod.CellRow]:
        out = []
        for cell in cells:
            v = views[cell.key]
            step, loss, step_s = live_metrics.get(cell.key, (0, None, None))
            if v.state == "finished":
                step = steps_of[cell.key]
            out.append(progress_mod.CellRow(cell.key, _cell_name(cell), v.state, step, steps_of[cell.key], loss,
                                            attempts[cell.key], run_ids[cell.key], step_s, summary.errors.get(cell.key, "")))
        return out

    running: dict[str, Running] = {}
    if not any(v.state == "pending" for v in views.values()):
        store.log_summary(name, parent)
        store.set_state(parent, sweep_state([v.state for v in views.values()], False))
        store.delete_tag(parent, TAG_CONTROLLER)
        summary.states = {k: v.state for k, v in views.items()}
        summary.wall_s = time.monotonic() - t0
        return summary  # nothing to run: no need for Ray at all
    summary.setup_s = time.monotonic() - t0
    started_ray = False
    launcher: Launcher | None = None
    inflight: dict[Any, str] = {}
    cancel = False
    last_cancel_poll = 0.0
    last_heartbeat = time.monotonic()

    def finish(key: str, outcome: str, message: str, result: Any = None) -> None:
        handle = running.pop(key)
        for ref in list(handle.refs):
            inflight.pop(ref, None)
        launcher.release(handle)
        view = after_outcome(views[key], outcome, retries)
        views[key] = view
        tags: dict[str, Any] = {}
        if outcome == "preempted":
            preemptions[key] += 1
            tags[TAG_PREEMPTIONS] = preemptions[key]
        if outcome == "failed":
            tags[TAG_ERROR] = message
            errored.add(key)
            summary.errors[key] = message
        # A cell waiting for its retry shows why it is waiting.
        store.set_state(handle.run_id, outcome if view.state == "pending" else view.state, **tags)
        if outcome == "finished":
            if key in errored:
                store.delete_tag(handle.run_id, TAG_ERROR)
            summary.errors.pop(key, None)
            summary.results[key] = result
            store.log_summary(name, parent)

    def start(key: str) -> None:
        attempts[key] += 1
        store.set_state(run_ids[key], "running", **{TAG_ATTEMPTS: attempts[key],
                                                    TAG_SYSTEM_METRICS: "on" if system_metrics else "off"})
        views[key] = replace(views[key], state="running")
        handle = launcher.start(by_key[key], run_ids[key])
        running[key] = handle
        inflight.update({ref: key for ref in handle.refs})
        summary.started.append(key)

    def on_ready(ref: Any) -> None:
        key = inflight.pop(ref)
        handle = running[key]
        rank = handle.refs.pop(ref)
        stop_requested = views[key].stopping
        try:
            value = launcher.ray.get(ref)
        except Exception as exc:  # the cell raised, or its worker/actor/node died
            finish(key, *classify(error=exc, stop_requested=stop_requested))
            return
        if handle.phase in ("placing", "coord"):
            launcher.advance(by_key[key], handle, value)
            inflight.update({r: key for r in handle.refs})
            return
        if rank == 0:
            handle.result = value
        if not handle.refs:
            outcome, message = classify(result=handle.result, stop_requested=stop_requested)
            finish(key, outcome, message, handle.result)

    try:
        started_ray = connect_ray(ray_address)
        launcher = Launcher(cell_fn, store.tracking_uri, str(home_path))
        with progress_mod.LiveProgress(f"sweep {name}", enabled=progress, refresh_s=2.0) as live:
            while True:
                now = time.monotonic()
                if not cancel and now - last_cancel_poll >= CANCEL_POLL_S:
                    last_cancel_poll = now
                    cancel = store.cancel_requested(parent)
                    summary.cancelled = cancel
                if now - last_heartbeat >= HEARTBEAT_S:
                    last_heartbeat = now
                    store.set_tags(parent, {TAG_CONTROLLER: _claim()})
                for action in next_actions(list(views.values()), max_concurrent=max_concurrent, cancel_requested=cancel):
                    if isinstance(action, Start):
                        start(action.key)
                    elif running[action.key].phase == "run":
                        launcher.stop([action.key])
                        views[action.key] = replace(views[action.key], stopping=True)
                    else:  # not training yet: nothing to checkpoint
                        views[action.key] = replace(views[action.key], stopping=True)
                        finish(action.key, "cancelled", "cancelled before it started")
                if not running:
                    break
                ready, _ = launcher.ray.wait(list(inflight), num_returns=1, timeout=poll_s)
                for ref in ready:
                    on_ready(ref)
                if live.due():
                    for key in running:
                        metrics, steps = store.latest(run_ids[key])
                        live_metrics[key] = (steps.get("train/loss", 0), metrics.get("train/loss"),
                                             metrics.get("train/step_s"))
                    live.update(rows(), max_concurrent, fallback_step_s)
            live.update(rows(), max_concurrent, fallback_step_s)
    finally:
        # Interrupted (Ctrl-C, an error here): ask running cells to checkpoint and wait a little;
        # whatever is left is resumed by the next `sweep run`.
        if running and launcher is not None and launcher.ray.is_initialized():
            try:
                for key in [k for k, h in running.items() if h.phase != "run"]:
                    finish(key, "cancelled", "interrupted before it started")
                launcher.stop(list(running))
                deadline = time.monotonic() + 60
                while inflight and time.monotonic() < deadline:
                    for ref in launcher.ray.wait(list(inflight), num_returns=1, timeout=1.0)[0]:
                        views[inflight[ref]] = replace(views[inflight[ref]], stopping=True)
                        on_ready(ref)
            except Exception:  # Ray itself is going away: the next session resumes these cells
                pass
        store.log_summary(name, parent)  # failures and cancels since the last finished cell count too
        store.set_state(parent, sweep_state([v.state for v in views.values()], cancel))
        store.delete_tag(parent, TAG_CONTROLLER)
        if started_ray:
            import ray

            ray.shutdown()
    summary.states = {k: v.state for k, v in views.items()}
    summary.wall_s = time.monotonic() - t0
    return summary


def _cell_name(cell: Any) -> str:
    formats = getattr(cell, "formats", "")
    formats = formats if isinstance(formats, str) else "+".join(formats)
    return f"{getattr(cell, 'model', '?')}/{getattr(cell, 'task_count', '?')}t/{formats}"
