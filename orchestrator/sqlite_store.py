"""The embedded tracking store: MLflow on one SQLite file under the home.

SQLite allows one writer at a time. The controller and every Ray worker write into the same
file, so the database is switched to WAL journaling (readers never block the writer) and
every write retries on "database is locked" instead of failing a cell (`with_retry`).
Creating the schema is not safe to race (two processes migrating one new file corrupt it for
good), so the first client call on a SQLite store runs under an inter-process lock beside
it; the database, its journal and the home are readable by their owner only.

Commands that only read (`sweep status`, `eval`, `export`, `report --no-log`) open the file
read-only (`read_only_uri`), so an archived home, a copy on a read-only mount or a store
this user may only read serves them as well as a live one.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.leases import file_lock

T = TypeVar("T")


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text or "database is busy" in text


def with_retry(fn: Callable[..., T], *args: Any, attempts: int = 12, **kwargs: Any) -> T:
    """Call `fn`, retrying with jittered backoff while SQLite reports a lock (up to ~1 min)."""
    delay = 0.05
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MlflowException and SQLAlchemy both wrap the sqlite error
            if not _is_lock_error(exc) or attempt == attempts - 1:
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")


def open_sqlite_client(tracking_uri: str, db: Path) -> Any:
    """Create (or open) the SQLite store, one process at a time: MLflow creates or migrates
    the schema when its first client opens the file, which two processes must not do at
    once; WAL is a property of the file and sticks. The file is made owner-only before
    SQLite opens it, and SQLite gives its journal and WAL files the database's permissions."""
    from mlflow.tracking import MlflowClient

    db.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with file_lock(db.with_name(db.name + ".lock")):
        if not db.exists():
            os.close(os.open(db, os.O_WRONLY | os.O_CREAT, 0o600))
        client = MlflowClient(tracking_uri=tracking_uri)
        with_retry(client.search_experiments, max_results=1)
        _enable_wal(str(db))
    return client


def sqlite_read_uri(db: Path) -> str:
    """An SQLite URI that opens `db` read-only. A store whose file or folder this process may
    write (a live one) opens with `mode=ro`, which still takes SQLite's locks and sees the
    writers' WAL; so does one whose WAL holds pages not yet written back (a copy taken while
    a sweep ran), which SQLite reads through the WAL index beside it. Otherwise a store it may
    not write (a read-only mount, an archived copy) cannot get the WAL index SQLite would
    create, and nothing writes it through here: it opens `immutable=1`, which reads the file
    as it is, without locks."""
    db = db.resolve()
    writable = os.access(db, os.W_OK) and os.access(db.parent, os.W_OK | os.X_OK)
    wal = db.with_name(db.name + "-wal")
    pending = wal.is_file() and wal.stat().st_size > 0
    return f"{db.as_uri()}?{'mode=ro' if writable or pending else 'immutable=1'}"


def read_only_uri(tracking_uri: str) -> str:
    """The tracking URI MLflow opens read-only: for the embedded SQLite store, its file as a
    read-only SQLite URI (`sqlite_read_uri`); any other store as it is (a server or another
    database decides who may write)."""
    if not tracking_uri.startswith("sqlite:///") or tracking_uri.startswith("sqlite:///file:"):
        return tracking_uri
    path = tracking_uri[len("sqlite:///"):]
    if not path or path == ":memory:":
        return tracking_uri
    return f"sqlite:///{sqlite_read_uri(Path(path))}&uri=true"


def _skip_parent_dirs_of_sqlite_uris() -> None:
    """MLflow makes the parent folder of an SQLite store's path before each engine it opens
    (`mlflow.store.db.utils._make_parent_dirs_if_sqlite`, MLflow 3.17). For an SQLite URI
    filename (`sqlite:///file:///...`, how a store is opened read-only) that "parent" is a
    relative path that begins with `file:`, so every read-only open would make a `file:/...`
    folder tree in the working directory (or fail in a read-only one). Such a URI names a file
    that exists; nothing is to be made for it. MLflow offers no option for this, hence the
    wrap, which leaves every other URI to MLflow."""
    from mlflow.store.db import utils

    make_parent_dirs = utils._make_parent_dirs_if_sqlite
    if getattr(make_parent_dirs, "skips_sqlite_uris", False):
        return

    def skip_sqlite_uris(db_uri: str) -> None:
        if not db_uri.startswith("sqlite:///file:"):
            make_parent_dirs(db_uri)

    skip_sqlite_uris.skips_sqlite_uris = True  # type: ignore[attr-defined]
    utils._make_parent_dirs_if_sqlite = skip_sqlite_uris


def open_read_only_client(tracking_uri: str) -> Any:
    """An MlflowClient that reads the store at `tracking_uri` and never writes it, nor
    anything beside it."""
    from mlflow.tracking import MlflowClient

    _skip_parent_dirs_of_sqlite_uris()
    return MlflowClient(tracking_uri=read_only_uri(tracking_uri))


def _enable_wal(db_path: str) -> None:
    def switch() -> None:
        con = sqlite3.connect(db_path, timeout=30)
        try:
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()

    with_retry(switch)
