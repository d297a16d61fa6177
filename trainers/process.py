"""One JAX process of a cell: joining the cell's other processes (multi-host), and being
asked to stop (SIGTERM or the controller) at a step every process agrees on.

JAX is imported inside the functions, so the control plane may import the names of the
environment variables that hand a process its place (orchestrator/placement.py sets them).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainers.spec import UserError

log = logging.getLogger(__name__)

ENV_COORDINATOR = "FLANSCALE_COORDINATOR"
ENV_NUM_PROCESSES = "FLANSCALE_NUM_PROCESSES"
ENV_PROCESS_ID = "FLANSCALE_PROCESS_ID"
XLA_CACHE = "xla_cache"  # under the home: compiled programs that cells share


def init_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Joins a multi-host JAX job when a coordinator is given (args or FLANSCALE_* env).

    Must run before any other JAX call touches the backend. Returns whether it joined.
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR)
    if not coordinator:
        return False
    num = num_processes if num_processes is not None else os.environ.get(ENV_NUM_PROCESSES)
    pid = process_id if process_id is not None else os.environ.get(ENV_PROCESS_ID)
    if num is None or pid is None:
        raise UserError(f"{ENV_COORDINATOR}={coordinator} needs {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} too")
    import jax

    if jax.distributed.is_initialized():
        return True
    # CPU processes exchange collectives over gloo; accelerators use their own transport.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # The stop flag (StopFlag) needs the preemption sync point (on by default).
    jax.config.update("jax_enable_preemption_service", True)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=int(num), process_id=int(pid))
    return True


class StopFlag:
    """SIGTERM (preemption notice) and the caller's should_stop, merged into one check per step.

    With one process the check is local: nothing is exchanged. Several processes must stop
    at the same step or the collectives of the next step hang; they agree through JAX's
    preemption sync point, which the coordination service settles in the background once
    any process is told to stop, so no step waits on an exchange between hosts. JAX's
    notifier listens for SIGTERM, so a local stop request reaches it as a SIGTERM too.
    """

    def __init__(self, should_stop: Callable[[], bool] | threading.Event | None) -> None:
        self.should_stop = should_stop
        self.signalled = False
        self._previous: Any = None
        self._notified = False

    def install(self) -> None:
        import jax

        # Signal handlers can only be set from the main thread; elsewhere (a Ray actor
        # thread, a test thread) the caller's should_stop is the only stop channel. With
        # several processes SIGTERM belongs to JAX's preemption notifier.
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_term)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_term(self, signum, frame) -> None:
        log.warning("SIGTERM received: checkpointing and stopping")
        self.signalled = True

    def local(self) -> bool:
        stop = self.should_stop
        if self.signalled or stop is None:
            return self.signalled
        # A threading.Event (or anything with is_set) works as well as a callable.
        return bool(stop.is_set() if hasattr(stop, "is_set") else stop())

    def __call__(self, step: int) -> bool:
        """Whether to checkpoint and stop before running `step` (every process agrees)."""
        import jax

        if jax.process_count() == 1:
            return self.local()
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
            log.warning("preemption sync point at step %d: checkpointing and stopping", step)
            return True
        if not self._notified and self.local():
            self._notified = True
            log.warning("stop requested: notifying every process through the preemption sync point")
            os.kill(os.getpid(), signal.SIGTERM)
        return False


def use_compilation_cache(home: Path) -> None:
    """Keep XLA's compiled programs under `home`/xla_cache. The cells of a sweep compile the
    same programs over and over (a train step per model size, the evaluation's decoding and
    ranking programs, all of the same shapes), each in a process of its own; with the cache a
    cell loads what an earlier cell compiled instead of compiling it again. Entries are keyed by
    the program, the backend and the flags, so a changed program is never served stale."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(Path(home) / XLA_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
