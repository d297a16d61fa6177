"""Places and runs sweep cells on Ray: the worker-side entry point and the launcher.

Inside the Ray worker, `_run_in_worker` runs a cell function (default `default_cell_fn`:
trainers.job.run_cell) with a `should_stop` that polls the sweep's `_Signals` actor. On the
controller's side, `Launcher` turns the scheduler's Start/Stop decisions
(orchestrator/scheduling.py) into a Ray task (one-host cell) or a placement group with one
`_HostWorker` actor per host (multi-host cell: bundles placed -> actors -> coordinator -> run).

Ray pickles these module-level functions and classes by reference, so they stay module-level
here. Ray itself is imported only inside functions, so importing this module loads neither Ray
nor JAX.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Sequence

from orchestrator.store import TAG_WORKER
from trainers.process import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID
from trainers.states import CellState
from trainers.tracking import ENV_REEVALUATE

# A cell function runs inside the Ray worker: (spec dict, run id, tracking uri, home, should_stop) -> result dict.
CellFn = Callable[[dict, "str | None", str, str, Callable[[], bool]], dict]

STOP_POLL_S = 2.0  # a running cell asks whether it should stop at most this often
# A multi-host cell's placement group that is not placed within this long fails its cell: the
# cluster lacks what it asks for (or never frees it), and waiting would block the sweep forever.
PLACEMENT_TIMEOUT_S = 600.0
SHUTDOWN_GRACE_S = 5.0  # Ray's own processes get this long to exit after ray.shutdown()


# ---------------------------------------------------------------- inside the Ray worker


def default_cell_fn(spec: dict, run_id: str | None, tracking_uri: str, home: str,
                    should_stop: Callable[[], bool]) -> dict:
    """trainers.job.run_cell, also exporting the cell's metrics as Ray metrics (Grafana),
    whose state gauge ends finished, failed, preempted or cancelled with the cell."""
    from orchestrator.metrics import RayMetricsTracker, end_state
    from trainers.job import run_cell
    from trainers.spec import CellSpec

    cell = CellSpec.from_dict(spec)
    if not run_id:  # a multi-host cell's other processes: process 0 reports
        return run_cell(spec, run_id, tracking_uri, home, should_stop=should_stop)
    tracker = RayMetricsTracker(sweep=cell.sweep, cell_key=cell.key(), model=cell.model.name)
    try:
        result = run_cell(spec, run_id, tracking_uri, home, extra_trackers=(tracker,), should_stop=should_stop)
    except Exception:
        tracker.set_state(CellState.FAILED)
        raise
    tracker.set_state(end_state(result, lambda: bool(should_stop())))
    return result


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

        from orchestrator.sqlite_store import with_retry

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


def worker_env(cell: Any, home: str, tracking_uri: str, reevaluate: bool = False) -> dict[str, str]:
    env = {"FLANSCALE_HOME": home, "MLFLOW_TRACKING_URI": tracking_uri, ENV_REEVALUATE: "1" if reevaluate else "0"}
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
class Running:
    """One started cell: its Ray handles and how far its launch has got."""

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
    asked: str = ""  # what its placement group asks of the cluster, for the error if never placed
    reevaluate: bool = False  # finished already; runs again only to be evaluated


class Launcher:
    """Turns Start/Stop decisions into Ray tasks, actors and placement groups."""

    def __init__(self, cell_fn: CellFn | None, tracking_uri: str, home: str) -> None:
        import ray

        self.ray, self.cell_fn, self.tracking_uri, self.home = ray, cell_fn, tracking_uri, home
        self.signals = ray.remote(_Signals).options(num_cpus=0).remote()
        self.task = ray.remote(_run_in_worker)
        self.host_actor = ray.remote(_HostWorker)

    def _args(self, cell: Any, run_id: str | None, env: dict[str, str]) -> tuple:
        return (self.cell_fn, cell.spec.to_dict(), run_id, self.tracking_uri, self.home, self.signals, cell.key, env)

    def start(self, cell: Any, run_id: str, reevaluate: bool = False) -> Running:
        """Start a cell; `reevaluate`: it is finished and runs again only to be evaluated with
        changed eval settings (the job resumes from its final checkpoint: nothing to train)."""
        res = cell_resources(cell)
        hosts = max(1, int(getattr(cell, "hosts", 1)))
        if hosts == 1 and self._claims_host(cell):
            # One JAX process on the host: it claims the host. A multi-host cell's processes
            # keep their per-host bundles (on a one-node cluster they share it, PACKed).
            res = dict(res, CPU=max(res.get("CPU", 1.0), self._host_cpus()))
        env = worker_env(cell, self.home, self.tracking_uri, reevaluate)
        handle = Running(cell.key, run_id, "run", hosts, reevaluate=reevaluate)
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
            strategy = placement_strategy(hosts, alive)
            handle.pg = placement_group([dict(res) for _ in range(hosts)], strategy=strategy)
            handle.asked = f"{hosts} bundles of {res} ({strategy})"
        if tpu is not None and handle.tpu_slice is not None:
            handle.asked = f"a TPU {tpu[0]} slice of topology {tpu[1]} ({hosts} hosts of {res})"
        handle.phase = "placing"
        handle.refs[handle.pg.ready()] = -1
        return handle

    def cpu_hosts(self, cells: Sequence[Any]) -> int | None:
        """How many CPU cells can run at once when every cell is one (each claims a whole
        host, see `_host_cpus`): the alive nodes with CPUs; None otherwise."""
        if not cells or not all(self._claims_host(c) for c in cells):
            return None
        return max(1, sum(1 for n in self.ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0))

    def _claims_host(self, cell: Any) -> bool:
        """A real job (not an injected cell function) on CPU, whose XLA threads use every core."""
        return self.cell_fn is None and str(getattr(cell, "accelerator", "")).startswith("cpu")

    def _host_cpus(self) -> float:
        """The cores of the smallest node. A cell's JAX process on CPU runs its XLA thread pool
        over every core of its host, so it claims them all and CPU cells run one at a time per
        host: on 2 cores a tiny-1 step took 0.27 s alone and 0.81 s beside a second cell (two
        cells at once finish 1.5x later than one after the other; bench/cell_concurrency.py)."""
        cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in self.ray.nodes() if n.get("Alive")]
        cpus = [c for c in cpus if c > 0]
        return min(cpus) if cpus else 1.0

    def _has_tpu_slices(self) -> bool:
        # Real TPU VMs advertise a "TPU-<pod type>-head" resource on each slice's first host;
        # logical "TPU" resources (a test, a CPU cluster) get a plain placement group instead.
        return any(k.startswith("TPU-") and k.endswith("-head") for k in self.ray.cluster_resources())

    def advance(self, cell: Any, handle: Running, value: Any) -> None:
        """Next phase of a multi-host cell: bundles placed -> actors -> coordinator known -> run."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        env = worker_env(cell, self.home, self.tracking_uri, handle.reevaluate)
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
            rank_env = dict(env, **{ENV_COORDINATOR: value, ENV_NUM_PROCESSES: str(handle.hosts),
                                    ENV_PROCESS_ID: str(rank)})
            # Only process 0 reports to MLflow; the others train their shard silently.
            ref = actor.run.remote(*self._args(cell, handle.run_id if rank == 0 else None, rank_env))
            handle.refs[ref] = rank

    def stop(self, keys: list[str]) -> None:
        self.signals.stop.remote(keys)

    def release(self, handle: Running) -> None:
        for actor in handle.actors:
            self.ray.kill(actor, no_restart=True)
        if handle.tpu_slice is not None:
            handle.tpu_slice.shutdown()
        elif handle.pg is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(handle.pg)
        handle.refs.clear()


# ---------------------------------------------------------------- connecting to Ray


# Ray's processes started by connect_ray in this process (gcs, raylet, ...); their descendants
# (agents, workers) are found when the connection ends.
_STARTED: list[Any] = []
_RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's name; on Linux it only turns clusters off


def connect_ray(ray_address: str | None) -> bool:
    """Connect to `ray_address` (or RAY_ADDRESS, as inside a Ray Job), else start a private local
    Ray sized to this machine, listening on loopback only. Never attaches to some other local
    cluster by accident (address=None would). Returns whether this call started the connection."""
    import psutil

    address = ray_address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        _loopback_only()
    import ray

    if ray.is_initialized():
        return False
    # Ray sets its logger's level at init; keep a quieter one chosen before (orchestrator.quiet).
    from orchestrator.quiet import ray_level

    level = ray_level()
    if address == "local":
        me = psutil.Process()
        before = {p.pid for p in me.children()}
        # Only plain dicts cross the object store, so it stays small on a shared machine. No
        # dashboard: nothing here needs it, and it would be one more listening port.
        ray.init(address="local", num_cpus=os.cpu_count() or 1, object_store_memory=256 * 2**20,
                 include_dashboard=False, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                 logging_level=level)
        _STARTED[:] = [p for p in me.children() if p.pid not in before]
    else:
        ray.init(address=address, logging_level=level)
    return True


def _loopback_only() -> None:
    """Make a Ray started here a one-node cluster on loopback: Ray resolves a node address of
    127.0.0.1 to the machine's network address (and then listens on every interface) unless
    clusters are off, which its processes read from this variable when they start; the driver
    reads it once at import, so an already imported Ray is told too."""
    os.environ[_RAY_CLUSTER_ENV] = "0"
    import sys

    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def disconnect_ray() -> None:
    """End the connection connect_ray made; for a local Ray it started, make sure none of its
    processes outlives this one by more than SHUTDOWN_GRACE_S (Ray leaves its agents behind
    for up to a minute otherwise)."""
    import psutil
    import ray

    procs: list[Any] = []
    for p in _STARTED:
        try:
            procs += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    _STARTED.clear()
    ray.shutdown()
    _, alive = psutil.wait_procs(procs, timeout=SHUTDOWN_GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=SHUTDOWN_GRACE_S)
