"""Runs a planned sweep on Ray so that no cell's work is lost, repeated or run twice at once.

Durable state lives in MLflow (orchestrator/store.py), never in this process: a cell is found
again by its key, a finished cell is skipped, an interrupted one (controller killed, worker
killed, node preempted) is started again and resumes from its own checkpoint inside run_cell.

Decisions are return values of pure functions in orchestrator/scheduling.py; placing and
running cells on Ray is orchestrator/placement.py (`Launcher`). `SweepController` acts on the
decisions (Ray Tune's scheduler/executor split): it holds the sweep's lease and each running
cell's lease (orchestrator/leases.py), starts and stops cells through the launcher, and
records every state change and count in the cell's run, where the next session reads them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from orchestrator import progress as progress_mod
from orchestrator.cells import CellRecord, CellState, eval_hash
from orchestrator.leases import HEARTBEAT_S, Lease, LeaseFile, cell_lease, new_holder, pid_alive, sweep_lease
from orchestrator.placement import PLACEMENT_TIMEOUT_S, CellFn, Launcher, Running, connect_ray, disconnect_ray
from orchestrator.planner import Cell
from orchestrator.scheduling import (CellView, Outcome, Start, SweepSummary, after_outcome, classify, initial_state,
                                     next_actions, sweep_state)
from orchestrator.spec import SweepSpec
from orchestrator.store import (TAG_ATTEMPTS, TAG_CANCEL, TAG_ERROR, TAG_EVAL_HASH, TAG_FAILURES, TAG_LEASE,
                                TAG_MAX_CONCURRENT, TAG_PREEMPTIONS, TAG_SYSTEM_METRICS, SweepStore, cell_name,
                                resolve_home)
from trainers.spec import UserError

CANCEL_POLL_S = 2.0
STOP_GRACE_S = 60.0  # how long an interrupted controller waits for its cells to checkpoint
EXIT_SIGTERM = 143  # 128 + SIGTERM, as a shell reports a process ended by it


def run_sweep(spec: SweepSpec, cells: Sequence[Cell], **options: Any) -> SweepSummary:
    """Run every feasible, unfinished cell of a planned sweep on Ray; return what happened.
    Safe to call again after any interruption; see `SweepController` for the options."""
    return SweepController(spec, cells, **options).run()


@dataclass
class _Totals:
    """A cell's counts as its run records them, over every session."""

    attempts: int = 0
    failures: int = 0
    preemptions: int = 0


class SweepController:
    """One controller session of one sweep.

    `cell_fn` (default: trainers.job.run_cell with the Ray metrics exporter) runs inside the
    Ray worker; tests and benchmarks inject small ones. `system_metrics=False` asks the cells
    started now not to log MLflow's system metrics. A placement group not placed within
    `placement_timeout_s` fails its cell, naming what it asked for.
    """

    def __init__(self, spec: SweepSpec, cells: Sequence[Cell], *, ray_address: str | None = None,
                 tracking_uri: str | None = None, home: str | os.PathLike[str] | None = None,
                 retry_failed: bool = False, progress: bool = True, cell_fn: CellFn | None = None,
                 poll_s: float = 0.5, system_metrics: bool = True,
                 placement_timeout_s: float = PLACEMENT_TIMEOUT_S) -> None:
        self.spec, self.cells = spec, list(cells)
        self.by_key = {c.key: c for c in self.cells}
        self.ray_address, self.retry_failed, self.progress = ray_address, retry_failed, progress
        self.cell_fn, self.poll_s, self.system_metrics = cell_fn, poll_s, system_metrics
        self.placement_timeout_s = placement_timeout_s
        self.home = resolve_home(home)
        self.store = SweepStore(tracking_uri or spec.tracking_uri or None, self.home)
        self.name = spec.name
        self.max_concurrent = max(1, spec.max_concurrent or len(self.cells) or 1)
        self.holder = new_holder()
        self.lease = sweep_lease(self.home, self.name, self.holder)
        self.parent = ""
        self.summary = SweepSummary(self.name, self.store.tracking_uri, "")
        self.views: dict[str, CellView] = {}
        self.run_ids: dict[str, str] = {}
        self.totals: dict[str, _Totals] = {}
        self.errored: set[str] = set()
        self.records: dict[str, CellRecord] = {}  # as the store had them, updated as cells finish
        self.reevaluate: set[str] = set()  # finished cells to evaluate again (eval settings changed)
        self.cell_leases: dict[str, LeaseFile] = {}
        self.waiting: dict[str, float] = {}  # key -> when to ask again for a cell lease another holds
        self.running: dict[str, Running] = {}
        self.inflight: dict[Any, str] = {}  # Ray ref -> cell key
        self.live_metrics: dict[str, tuple[int, float | None, float | None]] = {}
        self.launcher: Launcher | None = None
        self.started_ray = False
        self.last_heartbeat = time.monotonic()
        self.cancel = False
        self.terminated = False

    # ---------------------------------------------------------------- the session

    def run(self) -> SweepSummary:
        t0 = time.monotonic()
        self._claim_sweep()
        try:
            self._open_parent()
            self._load()
            self.summary.setup_s = time.monotonic() - t0
            if any(v.state == CellState.PENDING for v in self.views.values()):  # else no need for Ray at all
                self._run_cells()
        finally:
            self._end()
        self.summary.states = {k: str(v.state) for k, v in self.views.items()}
        self.summary.wall_s = time.monotonic() - t0
        if self.terminated:
            print(f"flanscale: sweep {self.name}: terminated; running cells checkpointed, "
                  "`flanscale sweep run` resumes them", file=sys.stderr)
            raise SystemExit(EXIT_SIGTERM)
        return self.summary

    def _claim_sweep(self) -> None:
        """Take the sweep's lease before anything is written, so two controllers never both
        create the parent run or a cell's run."""
        other = self.lease.acquire()
        if other is None:
            parent = self.store.sweep_run(self.name, create=False)
            # A controller sharing the tracking server but not this home shows only in the tag.
            other = Lease.from_text(self.store.run_tags(parent).get(TAG_LEASE)) if parent else None
            if other is not None and (other.holder == self.holder or other.lapsed(pid_alive=pid_alive)):
                other = None
            if other is not None:
                self.lease.release()
        if other is not None:
            raise UserError(f"sweep {self.name!r}: controller {other.who} is running it (its lease runs to "
                            f"{time.strftime('%H:%M:%S', time.localtime(other.expires))}, renewed while it lives); "
                            f"wait for it, or stop it with `flanscale sweep cancel {self.name}`")

    def _open_parent(self) -> None:
        """Find or create the sweep's run and mark this session on it."""
        self.parent = self.summary.parent_run_id = self.store.sweep_run(self.name)
        self.store.set_tags(self.parent, {TAG_LEASE: self.lease.current().to_text()})
        self.store.delete_tag(self.parent, TAG_CANCEL)  # a cancel belongs to the session it stopped
        self.store.set_state(self.parent, CellState.RUNNING, **{TAG_MAX_CONCURRENT: self.max_concurrent})
        self.store.log_json(self.parent, "plan.json", [c.to_json() for c in self.cells])

    def _load(self) -> None:
        """Find or create every cell's run and take up its state and counts."""
        self.records = {r.key: r for r in self.store.list_cells(self.name)}
        runs = self.store.cell_runs(self.name, self.cells, self.records)
        budget = self.spec.retries
        for cell in self.cells:
            rec = self.records.get(cell.key)
            self.run_ids[cell.key] = runs[cell.key][0]
            totals = _Totals(rec.attempts, rec.failures, rec.preemptions) if rec else _Totals()
            self.totals[cell.key] = totals
            if rec is not None and rec.error:
                self.errored.add(cell.key)
            exhausted = totals.preemptions > budget.preemption
            state = initial_state(rec.state if rec else None, cell.feasible, self.retry_failed, exhausted)
            if state == CellState.FINISHED and self._needs_evaluation(cell, rec):
                state = CellState.PENDING
                self.reevaluate.add(cell.key)
            # --retry-failed gives the cells it restarts a fresh budget; otherwise the stored
            # counts are spent budget.
            fresh = self.retry_failed and rec is not None and rec.state in (CellState.FAILED, CellState.PREEMPTED)
            self.views[cell.key] = CellView(cell.key, float(cell.priority), state,
                                            failures=0 if fresh else totals.failures,
                                            preemptions=0 if fresh else totals.preemptions)
            self._record_initial(cell, rec, state)
            if rec is None:  # created now: nothing measured yet
                self.records[cell.key] = CellRecord(self.run_ids[cell.key], cell.key, cell_name(cell), CellState(state),
                                                    0, 0, 0, "")

    def _needs_evaluation(self, cell: Cell, rec: CellRecord) -> bool:
        """Finished with other eval settings than the spec's now, and its final checkpoint is
        there to evaluate (without it the job would train the cell again)."""
        if not rec.eval_hash or rec.eval_hash == eval_hash(cell.spec.eval):
            return False
        return (self.home / "checkpoints" / cell.key / str(cell.spec.optim.steps)).is_dir()

    def _record_initial(self, cell: Cell, rec: CellRecord | None, state: str) -> None:
        run_id = self.run_ids[cell.key]
        if state == CellState.FAILED and rec is not None:
            self.summary.errors[cell.key] = rec.error
        if state == CellState.INFEASIBLE:
            self.store.set_state(run_id, CellState.INFEASIBLE, **{TAG_ERROR: cell.reason})
        elif state == CellState.PENDING and rec is not None and rec.state != CellState.PENDING:
            self.store.set_state(run_id, CellState.PENDING)

    def _run_cells(self) -> None:
        previous = self._on_sigterm_install()
        try:
            try:
                self.started_ray = connect_ray(self.ray_address)
            except SystemExit as e:  # ray.init's own SIGTERM handler exits while Ray starts
                if e.code != signal.SIGTERM:
                    raise
                self.started_ray = self.terminated = True
                return
            self._on_sigterm_install()  # ray.init installed its own, which exits mid-call
            self.launcher = Launcher(self.cell_fn, self.store.tracking_uri, str(self.home))
            hosts = self.launcher.cpu_hosts([self.by_key[k] for k in self.views if k in self.by_key])
            if hosts is not None:  # CPU cells claim whole hosts: start no more than there are
                self.max_concurrent = min(self.max_concurrent, hosts)
            try:
                with progress_mod.LiveProgress(f"sweep {self.name}", enabled=self.progress, refresh_s=2.0) as live:
                    self._loop(live)
                    live.update(self._rows(), self.max_concurrent, self._fallback_step_s())
            finally:
                # Interrupted (Ctrl-C, SIGTERM, an error here): ask running cells to checkpoint
                # and wait a little; whatever is left is resumed by the next `sweep run`.
                self._stop_all()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _loop(self, live: progress_mod.LiveProgress) -> None:
        last_cancel_poll = time.monotonic()
        self.cancel = self.summary.cancelled = self.store.cancel_requested(self.parent)
        while not self.terminated:
            now = time.monotonic()
            if not self.cancel and now - last_cancel_poll >= CANCEL_POLL_S:
                last_cancel_poll = now
                self.cancel = self.summary.cancelled = self.store.cancel_requested(self.parent)
            self._heartbeat()
            self._check_placement()
            # a pending cell whose lease another controller holds is asked for again later
            views = [v for v in self.views.values() if self.waiting.get(v.key, 0.0) <= now]
            for action in next_actions(views, max_concurrent=self.max_concurrent, cancel_requested=self.cancel):
                if isinstance(action, Start):
                    self._start(action.key)
                else:
                    self._stop(action.key)
            if not self.running and not any(v.state == CellState.PENDING for v in self.views.values()):
                return
            if self.cancel and not self.running:
                return
            if self.inflight:
                ready, _ = self.launcher.ray.wait(list(self.inflight), num_returns=1, timeout=self.poll_s)
                for ref in ready:
                    self._on_ready(ref)
            else:  # every pending cell waits for a lease another controller holds
                time.sleep(self.poll_s)
            if live.due():
                self._refresh_live()
                live.update(self._rows(), self.max_concurrent, self._fallback_step_s())

    # ---------------------------------------------------------------- cells

    def _start(self, key: str) -> None:
        lease = self.cell_leases.get(key) or cell_lease(self.home, key, self.holder)
        other = lease.acquire()
        if other is not None:  # another sweep trains this cell (same key, same checkpoints) now
            self.waiting[key] = time.monotonic() + HEARTBEAT_S
            return
        self.waiting.pop(key, None)
        self.cell_leases[key] = lease
        totals = self.totals[key]
        totals.attempts += 1
        if totals.attempts == 1:  # its run's start is the cell's first start (a resume keeps it)
            self.store.mark_started(self.run_ids[key])
        self.store.set_state(self.run_ids[key], CellState.RUNNING, **{
            TAG_ATTEMPTS: totals.attempts, TAG_LEASE: lease.current().to_text(),
            TAG_SYSTEM_METRICS: "on" if self.system_metrics else "off"})
        self.views[key] = replace(self.views[key], state=CellState.RUNNING)
        handle = self.launcher.start(self.by_key[key], self.run_ids[key], reevaluate=key in self.reevaluate)
        self.running[key] = handle
        self.inflight.update({ref: key for ref in handle.refs})
        self.summary.started.append(key)

    def _stop(self, key: str) -> None:
        self.views[key] = replace(self.views[key], stopping=True)
        if self.running[key].phase == "run":
            self.launcher.stop([key])
        else:  # not training yet: nothing to checkpoint
            self._finish(key, Outcome(CellState.CANCELLED, "cancelled before it started"))

    def _on_ready(self, ref: Any) -> None:
        key = self.inflight.pop(ref)
        handle = self.running[key]
        rank = handle.refs.pop(ref)
        stop_requested = self.views[key].stopping
        try:
            value = self.launcher.ray.get(ref)
        except Exception as exc:  # the cell raised, or its worker/actor/node died
            self._finish(key, classify(error=exc, stop_requested=stop_requested))
            return
        if handle.phase in ("placing", "coord"):
            self.launcher.advance(self.by_key[key], handle, value)
            self.inflight.update({r: key for r in handle.refs})
            return
        if rank == 0:
            handle.result = value
        if not handle.refs:
            self._finish(key, classify(result=handle.result, stop_requested=stop_requested), handle.result)

    def _finish(self, key: str, outcome: Outcome, result: Any = None) -> None:
        handle = self.running.pop(key)
        for ref in list(handle.refs):
            self.inflight.pop(ref, None)
        self.launcher.release(handle)
        lease = self.cell_leases.pop(key, None)
        if lease is not None:
            lease.release()
        view = self.views[key] = after_outcome(self.views[key], outcome, self.spec.retries)
        totals = self.totals[key]
        tags: dict[str, Any] = {}
        if outcome.kind == CellState.PREEMPTED:
            totals.preemptions += 1
            tags[TAG_PREEMPTIONS] = totals.preemptions
        if outcome.kind == CellState.FAILED:
            totals.failures += 1
            tags.update({TAG_ERROR: outcome.message, TAG_FAILURES: totals.failures})
            self.errored.add(key)
            self.summary.errors[key] = outcome.message
        if outcome.kind == CellState.FINISHED:
            self.reevaluate.discard(key)
            tags[TAG_EVAL_HASH] = eval_hash(self.by_key[key].spec.eval)
        # A cell waiting for its retry shows why it is waiting.
        state = outcome.kind if view.state == CellState.PENDING else view.state
        self.store.set_state(handle.run_id, state, **tags)
        if outcome.kind == CellState.FINISHED:
            if key in self.errored:
                self.store.delete_tag(handle.run_id, TAG_ERROR)
            self.summary.errors.pop(key, None)
            self.summary.results[key] = result
            self.records[key] = self.store.cell_record(handle.run_id)  # with the metrics the job wrote
            self._log_summary()

    def _log_summary(self) -> None:
        """The sweep's summary on its parent run, from the records this session keeps (read
        at its start, each finished cell's read again when it finishes) with the states it
        knows now: no search over the sweep's runs per cell."""
        records = [rec if key not in self.views or rec.state == self.views[key].state
                   else replace(rec, state=CellState(self.views[key].state)) for key, rec in self.records.items()]
        self.store.log_summary(self.name, self.parent, records)

    def _check_placement(self) -> None:
        """Fail cells whose placement group waited longer than the timeout: the cluster
        does not have (or will not free) what they asked for."""
        now = time.monotonic()
        for key, handle in list(self.running.items()):
            if handle.phase == "placing" and now - handle.start_s > self.placement_timeout_s:
                self._finish(key, Outcome(CellState.FAILED, f"placement group not placed within "
                                          f"{self.placement_timeout_s:g} s: asked for {handle.asked}", retry=False))

    def _heartbeat(self) -> None:
        """Renew the sweep's lease and every running cell's, in the files and in the store,
        once every HEARTBEAT_S."""
        now = time.monotonic()
        if now - self.last_heartbeat < HEARTBEAT_S:
            return
        self.last_heartbeat = now
        if not self.lease.renew():
            raise RuntimeError(f"sweep {self.name!r}: lost its lease to another controller "
                               f"(this one stalled more than the lease's time to live)")
        self.store.set_tags(self.parent, {TAG_LEASE: self.lease.current().to_text()})
        for key in list(self.running):
            lease = self.cell_leases.get(key)
            if lease is not None and not lease.renew():
                self.cell_leases.pop(key)
                self._stop(key)
                continue
            self.store.set_tags(self.run_ids[key], {TAG_LEASE: self.cell_leases[key].current().to_text()})

    def _stop_all(self) -> None:
        if not self.running or self.launcher is None or not self.launcher.ray.is_initialized():
            return
        try:
            for key in [k for k, h in self.running.items() if h.phase != "run"]:
                self._finish(key, Outcome(CellState.CANCELLED, "interrupted before it started"))
            self.launcher.stop(list(self.running))
            deadline = time.monotonic() + STOP_GRACE_S
            while self.inflight and time.monotonic() < deadline:
                self._heartbeat()  # the wait can outlast a lease
                for ref in self.launcher.ray.wait(list(self.inflight), num_returns=1, timeout=1.0)[0]:
                    key = self.inflight[ref]
                    self.views[key] = replace(self.views[key], stopping=True)
                    self._on_ready(ref)
        except Exception:  # Ray itself is going away: the next session resumes these cells
            pass

    def _end(self) -> None:
        """Record the session's end and let go of every claim, whatever happened."""
        try:
            if self.parent:
                self._log_summary()  # failures and cancels since the last finish count
                self.store.set_state(self.parent, sweep_state([v.state for v in self.views.values()], self.cancel))
                self.store.delete_tag(self.parent, TAG_LEASE)
        finally:
            for lease in self.cell_leases.values():
                lease.release()
            self.cell_leases.clear()
            self.lease.release()
            if self.started_ray:
                disconnect_ray()

    # ---------------------------------------------------------------- signals

    def _on_sigterm_install(self) -> Any:
        """SIGTERM ends the session as Ctrl-C does: the loop stops, cells checkpoint, states are
        written. A flag, not an exception, so it never lands inside a call into Ray's core.
        Only the main thread may install handlers (a controller run from a thread has none)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self.terminated:  # a second SIGTERM: stop waiting for checkpoints
            raise KeyboardInterrupt
        self.terminated = True

    # ---------------------------------------------------------------- live view

    def _refresh_live(self) -> None:
        for key in self.running:
            metrics, steps = self.store.latest(self.run_ids[key])
            self.live_metrics[key] = (steps.get("train/loss", 0), metrics.get("train/loss"),
                                      metrics.get("train/step_s"))

    def _rows(self) -> list[progress_mod.CellRow]:
        out = []
        for cell in self.cells:
            view = self.views[cell.key]
            step, loss, step_s = self.live_metrics.get(cell.key, (0, None, None))
            if view.state == CellState.FINISHED:
                step = cell.spec.optim.steps
            out.append(progress_mod.CellRow(cell.key, cell_name(cell), str(view.state), step, cell.spec.optim.steps,
                                            loss, self.totals[cell.key].attempts, self.run_ids[cell.key], step_s,
                                            self.summary.errors.get(cell.key, "")))
        return out

    def _fallback_step_s(self) -> float | None:
        est = [c.est_hours * 3600 / max(1, c.spec.optim.steps) for c in self.cells]
        return (sum(est) / len(est)) if est and all(est) else None
