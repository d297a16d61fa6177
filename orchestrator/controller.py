"""Runs a planned sweep on Ray so that no cell's work is lost or repeated.

Durable state lives in MLflow (orchestrator/store.py), never in this process: a cell is found
again by its key, a finished cell is skipped, an interrupted one (controller killed, worker
killed, node preempted) is started again and resumes from its own checkpoint inside run_cell.

Decisions are return values of pure functions (`initial_state`, `next_actions`, `classify`,
`after_outcome`); only `run_sweep`'s loop acts on them (Ray Tune's scheduler/executor split).

Failure vs preemption: an exception raised by the cell (NonFiniteLoss included) is a failure
(state failed, error tag, other cells go on, `retries.failure` retries); the death of its worker,
actor or node, or a "preempted" result, is a preemption (retried up to `retries.preemption`
times in one controller session, counted in the `flanscale.preemptions` tag).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator import progress as progress_mod
from orchestrator.store import (TAG_ATTEMPTS, TAG_CANCEL, TAG_CONTROLLER, TAG_ERROR, TAG_MAX_CONCURRENT,
                                TAG_PREEMPTIONS, TAG_WORKER, SweepStore, records_by_key, resolve_home)
from trainers.spec import UserError

# A cell function runs inside the Ray worker: (spec dict, run id, tracking uri, home, should_stop) -> result dict.
CellFn = Callable[[dict, "str | None", str, str, Callable[[], bool]], dict]

_PREEMPTION_ERRORS = ("WorkerCrashedError", "NodeDiedError", "ActorDiedError", "ActorUnavailableError",
                      "OwnerDiedError", "LocalRayletDiedError", "ObjectLostError", "OutOfMemoryError",
                      "RayActorError", "TaskCancelledError")
CANCEL_POLL_S = 2.0
STOP_POLL_S = 2.0
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:500]


@dataclass
class SweepSummary:
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


# ---------------------------------------------------------------- inside the Ray worker


def default_cell_fn(spec: dict, run_id: str | None, tracking_uri: str, home: str,
                    should_stop: Callable[[], bool]) -> dict:
    """trainers.job.run_cell, also exporting the cell's metrics as Ray metrics (Grafana)."""
    from orchestrator.metrics import RayMetricsTracker
    from trainers.job import run_cell
    from trainers.spec import CellSpec

    cell = CellSpec.from_dict(spec)
    extra = (RayMetricsTracker(sweep=cell.sweep, cell_key=cell.key(), model=cell.model.name),) if run_id else ()
    return run_cell(spec, run_id, tracking_uri, home, extra_trackers=extra, should_stop=should_stop)


class _StopPoller:
    """should_stop for run_cell: asks the sweep's signal actor, at most every STOP_POLL_S."""

    def __init__(self, signals: Any, key: str) -> None:
        self.signals, self.key, self.last, self.stopped = signals, key, 0.0, False

    def __call__(self) -> bool:
        import ray

        now = time.monotonic()
        if not self.stopped and self.signals is not None and now - self.last >= STOP_POLL_S:
            self.last = now
            try:
                self.stopped = bool(ray.get(self.signals.is_stopped.remote(self.key), timeout=10))
            except Exception:  # the controller went away: keep training, it will be resumed anyway
                self.stopped = False
        return self.stopped


def _run_in_worker(cell_fn: CellFn | None, spec: dict, run_id: str | None, tracking_uri: str, home: str,
                   signals: Any, key: str, env: dict[str, str]) -> dict:
    import ray

    os.environ.update(env)
    if run_id:
        from mlflow.tracking import MlflowClient

        from orchestrator.store import with_retry

        # Where the cell runs now, so an operator (or a test) can find the process.
        worker = f"{ray.util.get_node_ip_address()}:{os.getpid()}"
        with_retry(MlflowClient(tracking_uri).set_tag, run_id, TAG_WORKER, worker)
    return (cell_fn or default_cell_fn)(spec, run_id, tracking_uri, home, _StopPoller(signals, key))


class _HostWorker:
    """One JAX process of a multi-host cell, pinned to one bundle of the cell's placement group."""

    def coordinator(self) -> str:
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"{ray.util.get_node_ip_address()}:{port}"

    def run(self, *args: Any) -> dict:
        return _run_in_worker(*args)


class _Signals:
    """Keys of cells asked to stop; polled by their workers' should_stop."""

    def __init__(self) -> None:
        self.stopped: set[str] = set()

    def stop(self, keys: list[str]) -> None:
        self.stopped.update(keys)

    def is_stopped(self, key: str) -> bool:
        return key in self.stopped


# ---------------------------------------------------------------- placing cells on Ray


def cell_resources(cell: Any) -> dict[str, float]:
    """Per-host Ray resources of a cell (planner.ray_resources), in Ray's resource names."""
    from orchestrator.planner import ray_resources

    out: dict[str, float] = {}
    for k, v in dict(ray_resources(cell)).items():
        if k == "resources":
            out.update({rk: float(rv) for rk, rv in dict(v).items()})
        else:
            out[{"num_cpus": "CPU", "num_gpus": "GPU"}.get(k, k)] = float(v)
    return {k: v for k, v in out.items() if v}


def _options(res: dict[str, float]) -> dict[str, Any]:
    rest = {k: v for k, v in res.items() if k not in ("CPU", "GPU", "memory")}
    opts: dict[str, Any] = {"num_cpus": res.get("CPU", 0), "num_gpus": res.get("GPU", 0)}
    if "memory" in res:
        opts["memory"] = res["memory"]
    if rest:
        opts["resources"] = rest
    return opts


def worker_env(cell: Any, home: str, tracking_uri: str) -> dict[str, str]:
    env = {"FLANSCALE_HOME": home, "MLFLOW_TRACKING_URI": tracking_uri}
    accelerator = str(getattr(cell, "accelerator", "cpu"))
    if accelerator.startswith("cpu"):
        env["JAX_PLATFORMS"] = "cpu"
        per_host = max(1, int(getattr(cell, "devices", 1)) // max(1, int(getattr(cell, "hosts", 1))))
        if per_host > 1:  # a CPU mesh of several devices needs that many host devices in XLA
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={per_host}"
    return env


def placement_strategy(hosts: int, alive_nodes: int) -> str:
    """STRICT_SPREAD puts each JAX process on its own host, as a multi-host job expects. A
    one-node cluster (a laptop, a test) can never satisfy it, so there the bundles are PACKed
    onto the node: the processes still talk over the network stack, only on loopback."""
    return "STRICT_SPREAD" if alive_nodes >= hosts else "PACK"


_TPU_VERSIONS = {"tpu-v4": "v4", "tpu-v5p": "v5p", "tpu-v5e": "v5litepod", "tpu-v6e": "v6e"}


def tpu_topology(accelerator: str, chips: int) -> tuple[str, str] | None:
    """(Ray TPU version, slice topology) of `chips` chips, e.g. ("v4", "2x2x4") for 16.

    v4/v5p slices are 3-D tori grown one axis at a time (2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, ...);
    v5e/v6e slices are 2-D (1x1, 2x2, 2x4, 4x4, 4x8, ...). None for other accelerators or
    chip counts that are no slice (not a power of two).
    """
    version = _TPU_VERSIONS.get(accelerator)
    if version is None or chips < 1 or chips & (chips - 1):
        return None
    if version in ("v4", "v5p"):
        if chips < 4:
            return None
        dims = [2, 2, 1]
        while dims[0] * dims[1] * dims[2] < chips:  # double the last of the smallest axes
            dims[max(j for j in range(3) if dims[j] == min(dims))] *= 2
        return version, "x".join(map(str, dims))
    dims = [1, 1]
    while dims[0] * dims[1] < chips:
        dims[0 if dims[0] < dims[1] else 1] *= 2
    return version, "x".join(map(str, sorted(dims)))


@dataclass
class _Running:
    key: str
    run_id: str
    phase: str  # placing -> coord -> run
    hosts: int
    pg: Any = None
    tpu_slice: Any = None
    actors: list = field(default_factory=list)
    refs: dict = field(default_factory=dict)  # ObjectRef -> rank
    result: Any = None
    start_s: float = field(default_factory=time.monotonic)


class _Launcher:
    """Turns Start/Stop decisions into Ray tasks, actors and placement groups."""

    def __init__(self, cell_fn: CellFn | None, tracking_uri: str, home: str) -> None:
        import ray

        self.ray, self.cell_fn, self.tracking_uri, self.home = ray, cell_fn, tracking_uri, home
        self.signals = ray.remote(_Signals).options(num_cpus=0).remote()
        self.task = ray.remote(_run_in_worker)
        self.host_actor = ray.remote(_HostWorker)

    def _args(self, cell: Any, run_id: str | None, env: dict[str, str]) -> tuple:
        return (self.cell_fn, cell.spec.to_dict(), run_id, self.tracking_uri, self.home, self.signals, cell.key, env)

    def start(self, cell: Any, run_id: str) -> _Running:
        res = cell_resources(cell)
        hosts = max(1, int(getattr(cell, "hosts", 1)))
        env = worker_env(cell, self.home, self.tracking_uri)
        handle = _Running(cell.key, run_id, "run", hosts)
        if hosts == 1:
            ref = self.task.options(**_options(res), max_retries=0, name=f"cell:{cell.key}",
                                    runtime_env={"env_vars": env}).remote(*self._args(cell, run_id, env))
            handle.refs[ref] = 0
            return handle
        tpu = tpu_topology(str(getattr(cell, "accelerator", "")), int(getattr(cell, "devices", 0)))
        if tpu is not None and self._has_tpu_slices():
            from ray.util.tpu import SlicePlacementGroup

            # One bundle per TPU VM of one physical slice (ICI-connected), as JAX needs.
            handle.tpu_slice = SlicePlacementGroup(topology=tpu[1], accelerator_version=tpu[0])
            handle.pg = handle.tpu_slice.placement_group
        else:
            from ray.util.placement_group import placement_group

            alive = sum(1 for n in self.ray.nodes() if n.get("Alive"))
            handle.pg = placement_group([dict(res) for _ in range(hosts)], strategy=placement_strategy(hosts, alive))
        handle.phase = "placing"
        handle.refs[handle.pg.ready()] = -1
        return handle

    def _has_tpu_slices(self) -> bool:
        # Real TPU VMs advertise a "TPU-<pod type>-head" resource on each slice's first host;
        # logical "TPU" resources (a test, a CPU cluster) get a plain placement group instead.
        return any(k.startswith("TPU-") and k.endswith("-head") for k in self.ray.cluster_resources())

    def advance(self, cell: Any, handle: _Running, value: Any) -> None:
        """Next phase of a multi-host cell: bundles placed -> actors -> coordinator known -> run."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        env = worker_env(cell, self.home, self.tracking_uri)
        if handle.phase == "placing":
            bundle = cell_resources(cell)
            for rank in range(handle.hosts):
                strategy = PlacementGroupSchedulingStrategy(handle.pg, placement_group_bundle_index=rank)
                handle.actors.append(self.host_actor.options(
                    **_options(bundle), scheduling_strategy=strategy, max_restarts=0,
                    runtime_env={"env_vars": env}, name=None).remote())
            handle.phase = "coord"
            handle.refs[handle.actors[0].coordinator.remote()] = -1
            return
        handle.phase = "run"
        for rank, actor in enumerate(handle.actors):
            rank_env = dict(env, FLANSCALE_COORDINATOR=value, FLANSCALE_NUM_PROCESSES=str(handle.hosts),
                            FLANSCALE_PROCESS_ID=str(rank))
            # Only process 0 reports to MLflow; the others train their shard silently.
            ref = actor.run.remote(*self._args(cell, handle.run_id if rank == 0 else None, rank_env))
            handle.refs[ref] = rank

    def stop(self, keys: list[str]) -> None:
        self.signals.stop.remote(keys)

    def release(self, handle: _Running) -> None:
        for actor in handle.actors:
            self.ray.kill(actor, no_restart=True)
        if handle.tpu_slice is not None:
            handle.tpu_slice.shutdown()
        elif handle.pg is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(handle.pg)
        handle.refs.clear()


# ---------------------------------------------------------------- the loop


def retries_of(spec: Any) -> Retries:
    r = getattr(spec, "retries", None)
    return Retries(failure=int(getattr(r, "failure", 0)), preemption=int(getattr(r, "preemption", 3)))


def connect_ray(ray_address: str | None) -> bool:
    """Connect to `ray_address` (or RAY_ADDRESS, as inside a Ray Job), else start a private local
    Ray sized to this machine. Never attaches to some other local cluster by accident
    (address=None would). Returns whether this call started the connection."""
    import ray

    if ray.is_initialized():
        return False
    address = ray_address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        # Only plain dicts cross the object store, so it stays small on a shared machine.
        ray.init(address="local", num_cpus=os.cpu_count() or 1, object_store_memory=256 * 2**20)
    else:
        ray.init(address=address)
    return True


def run_sweep(spec: Any, cells: Sequence[Any], *, ray_address: str | None = None, tracking_uri: str | None = None,
              home: str | os.PathLike[str] | None = None, retry_failed: bool = False, progress: bool = True,
              cell_fn: CellFn | None = None, poll_s: float = 0.5) -> SweepSummary:
    """Run every feasible, unfinished cell of a planned sweep on Ray; return what happened.

    `cell_fn` (default: trainers.job.run_cell with the Ray metrics exporter) runs inside the Ray
    worker; tests and benchmarks inject small ones. Safe to call again after any interruption.
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

    running: dict[str, _Running] = {}
    if not any(v.state == "pending" for v in views.values()):
        store.set_state(parent, sweep_state([v.state for v in views.values()], False))
        store.delete_tag(parent, TAG_CONTROLLER)
        summary.states = {k: v.state for k, v in views.items()}
        summary.wall_s = time.monotonic() - t0
        return summary  # nothing to run: no need for Ray at all
    summary.setup_s = time.monotonic() - t0
    started_ray = False
    launcher: _Launcher | None = None
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

    def start(key: str) -> None:
        attempts[key] += 1
        store.set_state(run_ids[key], "running", **{TAG_ATTEMPTS: attempts[key]})
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
        launcher = _Launcher(cell_fn, store.tracking_uri, str(home_path))
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
