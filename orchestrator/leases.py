"""Claims on a sweep and on a cell, as leases: a holder, renewed by a heartbeat, that lapses.

MLflow has no compare-and-set, so a claim read from a run's tags and then written is
check-then-set: two controllers can both find it free. The claim is therefore a small JSON
file, and every read-decide-write of it happens under an exclusive `fcntl.flock` of a lock
file beside it, which makes taking a lease atomic among all processes that see the file,
and the kernel drops the lock of a process that dies inside the critical section.

Where the files live is what makes them the right arbiter:

- a sweep's lease is `<home>/leases/sweep-<name>.json`: controllers of one sweep share the
  home (it holds the checkpoints they resume from);
- a cell's lease is `<home>/checkpoints/<cell key>.lease`, beside the checkpoint directory:
  two sweeps that contain the same cell key train into that one directory, so they take
  turns through this one file, whatever their sweep names.

A lease names its holder (`<host>:<pid>:<nonce>`) and when it expires. The holder renews it
every HEARTBEAT_S; one not renewed for TTL_S has lapsed and is free to take, and on the
holder's own host a holder whose process is gone frees it at once (a controller killed with
SIGKILL is rerun right away). A controller that dies takes its Ray tasks with it (Ray ends a
driver's tasks with the driver), so a lapsed cell lease never hides a cell still training.
The holder and expiry are mirrored into the store's tags by the controller so that
`sweep status` and `sweep cancel` can tell a live claim from a lapsed one without the home.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT_S = 10.0  # a holder renews its leases this often
TTL_S = 45.0  # a lease not renewed for this long has lapsed


@dataclass(frozen=True)
class Lease:
    """Who holds a claim and until when (unix seconds)."""

    holder: str  # "<host>:<pid>:<nonce>"
    expires: float

    @property
    def host(self) -> str:
        return self.holder.split(":", 1)[0]

    @property
    def pid(self) -> int:
        try:
            return int(self.holder.split(":")[1])
        except (IndexError, ValueError):
            return -1

    @property
    def who(self) -> str:
        """The holder as people read it: host:pid."""
        return f"{self.host}:{self.pid}"

    def lapsed(self, now: float | None = None, pid_alive: Callable[[int], bool] | None = None) -> bool:
        """Expired, or (on this host) its process is gone."""
        if (time.time() if now is None else now) > self.expires:
            return True
        if pid_alive is not None and self.host == socket.gethostname():
            return not pid_alive(self.pid)
        return False

    def to_text(self) -> str:
        return json.dumps({"holder": self.holder, "expires": round(self.expires, 3)}, sort_keys=True)

    @staticmethod
    def from_text(text: str | None) -> "Lease | None":
        """The lease in a file or tag; None for none, and for text that is no lease (a file torn
        by a crash mid-write cannot happen, see `_write`; anything else is a lease nobody holds)."""
        if not text:
            return None
        try:
            d = json.loads(text)
            return Lease(str(d["holder"]), float(d["expires"]))
        except (ValueError, KeyError, TypeError):
            return None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        return True
    return True


def new_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock on `path` (created owner-only), released on exit or death."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


class LeaseFile:
    """One claim, kept in `path` and changed only under the lock file `path + .lock`."""

    def __init__(self, path: Path, holder: str, ttl_s: float = TTL_S) -> None:
        self.path, self.holder, self.ttl_s = Path(path), holder, ttl_s
        self._lock = self.path.with_name(self.path.name + ".lock")

    def read(self) -> Lease | None:
        try:
            return Lease.from_text(self.path.read_text())
        except FileNotFoundError:
            return None

    def _write(self, lease: Lease) -> None:
        # rename is atomic: a reader sees the old lease or the new one, never half of one
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(lease.to_text())
        os.replace(tmp, self.path)

    def acquire(self) -> Lease | None:
        """Take (or renew) the lease. Returns None when taken, else the live lease of another."""
        with file_lock(self._lock):
            held = self.read()
            if held is not None and held.holder != self.holder and not held.lapsed(pid_alive=pid_alive):
                return held
            self._write(Lease(self.holder, time.time() + self.ttl_s))
            return None

    def renew(self) -> bool:
        """Extend the lease; False when it was lost (it lapsed and another took it)."""
        with file_lock(self._lock):
            held = self.read()
            if held is not None and held.holder != self.holder:
                return False
            self._write(Lease(self.holder, time.time() + self.ttl_s))
            return True

    def release(self) -> None:
        with file_lock(self._lock):
            held = self.read()
            if held is not None and held.holder == self.holder:
                self.path.unlink(missing_ok=True)

    def current(self) -> Lease:
        return Lease(self.holder, time.time() + self.ttl_s)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:120]


def sweep_lease(home: Path, sweep: str, holder: str) -> LeaseFile:
    return LeaseFile(Path(home) / "leases" / f"sweep-{_safe(sweep)}.json", holder)


def cell_lease(home: Path, key: str, holder: str) -> LeaseFile:
    return LeaseFile(Path(home) / "checkpoints" / f"{_safe(key)}.lease", holder)
