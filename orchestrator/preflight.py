"""Checks of every flag and input a command needs, before it writes or schedules anything.

Left to the client libraries, a bad Ray address or tracking URI shows up late (after the
sweep's runs were created) or never (their clients retry for minutes), and a bad data file
fails inside a cell after Ray started. Each check here reads only, answers within a bounded
time (`--connect-timeout`, else $FLANSCALE_CONNECT_TIMEOUT, else CONNECT_TIMEOUT_S) and
raises UserError with one line naming the flag, the value and what is expected.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from trainers.home import flanscale_home
from trainers.spec import UserError

CONNECT_TIMEOUT_S = 30.0
TIMEOUT_ENV = "FLANSCALE_CONNECT_TIMEOUT"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
RAY_ENV = "RAY_ADDRESS"
# Tracking stores MLflow knows without plugins, as a user writes them; database URIs take
# SQLAlchemy's dialect+driver form (postgresql+psycopg2://...).
DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
TRACKING_FORMS = ("http(s)://HOST:PORT", "sqlite:///PATH", "file:///PATH (or a folder path)",
                  "postgresql://, mysql:// or mssql://USER@HOST/DB", "databricks")
_UNCHECKED_SCHEMES = ("databricks", "databricks-uc", "uc")  # credentials live in profiles
_SQLITE_MAGIC = b"SQLite format 3\x00"
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
# The flag's meaning differs by command: `sweep run` joins a cluster through its GCS,
# `sweep submit` and `sweep logs` talk to the head's dashboard (set by their parsers).
RAY_GCS, RAY_DASHBOARD = "gcs", "dashboard"
# Under FLANSCALE_HOME: what check_inputs found valid, so a rerun on unchanged files is cheap.
PREFLIGHT_CACHE = "preflight"

T = TypeVar("T")


def connect_timeout(flag: float | None = None) -> float:
    """Seconds a reachability check may take: the flag, else the environment, else the default."""
    source, value = "--connect-timeout", flag
    if value is None and os.environ.get(TIMEOUT_ENV):
        source, text = TIMEOUT_ENV, os.environ[TIMEOUT_ENV]
        try:
            value = float(text)
        except ValueError:
            raise UserError(f"{TIMEOUT_ENV}: {text!r} is not a number of seconds; e.g. 30") from None
    if value is None:
        return CONNECT_TIMEOUT_S
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{source}: {value!r} is not allowed; give a number of seconds > 0, e.g. 30")
    return float(value)


def bounded(fn: Callable[[], T], timeout_s: float, on_timeout: str, grace_s: float = 1.0) -> T:
    """fn() in a daemon thread, so that no name lookup or connect can outlast `timeout_s`."""
    result: list[Any] = []

    def target() -> None:
        try:
            result.append((True, fn()))
        except BaseException as e:  # handed to the caller's thread
            result.append((False, e))

    worker = threading.Thread(target=target, daemon=True, name="flanscale-preflight")
    worker.start()
    worker.join(timeout_s + grace_s)  # socket timeouts fire first; this catches name lookups
    if not result:
        raise UserError(on_timeout)
    ok, value = result[0]
    if not ok:
        raise value
    return value


def check_flags(args: argparse.Namespace, spec_tracking: tuple[str, str] | None = None) -> None:
    """The Ray address and tracking store a command will use, if it takes them. The tracking
    store is the flag's, else `spec_tracking` (where, URI) from a sweep file, else the
    environment's, else the embedded default."""
    given = vars(args)
    timeout_s = connect_timeout(given.get("connect_timeout"))
    # A command that only reads the store (set_defaults(reads_store=...), a bool or a test of
    # its args) needs a store it can read: a read-only home serves it.
    reads = given.get("reads_store", False)
    reads = bool(reads(args) if callable(reads) else reads)
    if "tracking_uri" in given and not given.get("tracking_uri_checked_remotely"):
        if given["tracking_uri"]:
            check_tracking_uri(given["tracking_uri"], "--tracking-uri", timeout_s, reads)
        elif spec_tracking and spec_tracking[1]:
            check_tracking_uri(spec_tracking[1], spec_tracking[0], timeout_s, reads)
        elif os.environ.get(TRACKING_ENV):
            check_tracking_uri(os.environ[TRACKING_ENV], TRACKING_ENV, timeout_s, reads)
        else:  # the embedded default: SQLite under the home, which the command may create
            check_tracking_uri(f"sqlite:///{flanscale_home() / 'mlflow.db'}", "FLANSCALE_HOME", timeout_s, reads)
    if "ray_address" in given:
        kind = given.get("ray_address_kind", RAY_GCS)
        if given["ray_address"]:
            check_ray_address(given["ray_address"], "--ray-address", kind, timeout_s)
        elif kind == RAY_GCS and os.environ.get(RAY_ENV):
            check_ray_address(os.environ[RAY_ENV], RAY_ENV, kind, timeout_s)


# ---------------------------------------------------------------------------- tracking store


def check_tracking_uri(uri: str, source: str, timeout_s: float, reads_only: bool = False) -> None:
    """An MLflow store that exists or can be created here (`reads_only`: that can be read),
    or a server that answers, found out within `timeout_s` (and a little)."""
    bounded(lambda: _check_tracking_uri(uri, source, timeout_s, reads_only), timeout_s,
            f"{source} {uri}: no answer within {timeout_s:g} s (--connect-timeout)", grace_s=2.0)


def _check_tracking_uri(uri: str, source: str, timeout_s: float, reads_only: bool = False) -> None:
    where = f"{source} {uri!r}" if not uri or uri.strip() != uri else f"{source} {uri}"
    if not uri.strip():
        raise UserError(f"{where}: empty; give one of: {', '.join(TRACKING_FORMS)}")
    scheme = urlsplit(uri).scheme.lower() if "://" in uri or uri.startswith(("sqlite:", "file:")) else ""
    if scheme in ("http", "https"):
        _check_mlflow_server(uri, where, timeout_s)
    elif scheme == "sqlite":
        path = uri[len("sqlite://"):]
        if path and path != "/:memory:":
            _check_writable(Path(path[1:] if path.startswith("/") else path), where, "file", _SQLITE_MAGIC,
                            reads_only)
    elif scheme in ("file", ""):
        if uri == "databricks":
            return
        path = Path(urlsplit(uri).path if scheme else uri).expanduser()
        _check_writable(path, where, "folder", reads_only=reads_only)
    elif scheme.split("+")[0] in DB_PORTS:
        parts = urlsplit(uri)
        try:
            port = parts.port or DB_PORTS[scheme.split("+")[0]]
        except ValueError:
            raise UserError(f"{where}: the port is not a number in 1-65535") from None
        if parts.hostname:  # none: a local Unix socket, which the driver finds
            _check_tcp(parts.hostname, port, where, "database server", timeout_s)
    elif scheme not in _UNCHECKED_SCHEMES and scheme not in _plugin_schemes():
        raise UserError(f"{where}: unknown scheme {scheme!r}; give one of: {', '.join(TRACKING_FORMS)}")


def _plugin_schemes() -> set[str]:
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group="mlflow.tracking_store")}


def _check_writable(path: Path, where: str, kind: str, magic: bytes = b"", reads_only: bool = False) -> None:
    """`path` is a `kind` this process can read and write, or can be created (MLflow creates
    missing folders); a file must start with `magic` when it is not empty. `reads_only`: a
    `kind` this process can read is enough (a missing one is left to the command to report)."""
    if path.exists():
        if (kind == "file") != path.is_file():
            raise UserError(f"{where}: {path} is {'a folder' if path.is_dir() else 'not a regular file'}; "
                            f"the store there must be a {kind}")
        if reads_only and not os.access(path, os.R_OK):
            raise UserError(f"{where}: {path} is not readable by this user")
        if not reads_only and not os.access(path, os.R_OK | os.W_OK):
            raise UserError(f"{where}: {path} is not readable and writable by this user")
        if magic:
            try:
                with open(path, "rb") as f:
                    head = f.read(len(magic))
            except OSError as e:
                raise UserError(f"{where}: cannot read {path} ({e.strerror or e})") from None
            if head and head != magic:
                raise UserError(f"{where}: {path} is not an SQLite database; give a new file or an MLflow store")
        return
    if reads_only:
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{where}: cannot create {path}: {parent} is not a folder this user can write to")


def _check_mlflow_server(uri: str, where: str, timeout_s: float) -> None:
    parts = urlsplit(uri)
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise UserError(f"{where}: the port is not a number in 1-65535; e.g. http://HOST:5000") from None
    if not parts.hostname:
        raise UserError(f"{where}: no host; e.g. http://HOST:5000")
    _check_tcp(parts.hostname, port, where, "MLflow server", timeout_s)
    status = _http_status(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1", where, timeout_s,
                          mlflow_credentials=True)
    if status == 404:
        raise UserError(f"{where}: no MLflow tracking API there (HTTP 404 for /api/2.0/mlflow/...); "
                        "give the server's base URL, e.g. http://HOST:5000")
    if status == 401 and not os.environ.get("MLFLOW_TRACKING_AUTH"):
        raise UserError(f"{where}: the server asks for credentials (HTTP 401); set MLFLOW_TRACKING_USERNAME and "
                        "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN")
    if status == 403 and not os.environ.get("MLFLOW_TRACKING_AUTH"):
        raise UserError(f"{where}: the server refuses these credentials (HTTP 403)")
    if status >= 500:
        raise UserError(f"{where}: the MLflow server answers HTTP {status}; is its backend store up?")


def _http_status(url: str, where: str, timeout_s: float, mlflow_credentials: bool = False) -> int:
    """HTTP status of a GET, sent with the credentials and TLS settings MLflow's client reads
    when `mlflow_credentials`."""
    import requests

    env = os.environ
    headers, auth, verify = {}, None, True
    if mlflow_credentials:
        if env.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
        elif env.get("MLFLOW_TRACKING_USERNAME"):
            auth = (env["MLFLOW_TRACKING_USERNAME"], env.get("MLFLOW_TRACKING_PASSWORD", ""))
        verify = env.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
        if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            verify = False
    silent = f"{where}: the server accepts connections but sent no answer within {timeout_s:g} s (--connect-timeout)"

    def get() -> int:
        try:
            return requests.get(url, headers=headers, auth=auth, verify=verify, timeout=timeout_s).status_code
        except requests.exceptions.SSLError as e:
            raise UserError(f"{where}: TLS failed ({_reason(e)})") from None
        except requests.exceptions.Timeout:
            raise UserError(silent) from None
        except requests.exceptions.RequestException as e:
            raise UserError(f"{where}: {_reason(e)}") from None

    return bounded(get, timeout_s, silent)


def _reason(exc: BaseException) -> str:
    """The operating system's words inside a wrapped connection error, else its type."""
    m = re.search(r"\[(?:Errno|SSL: )[^\]]*\] ([^'\")(]+)", str(exc))
    return m.group(1).strip() if m else type(exc).__name__


# ---------------------------------------------------------------------------- Ray


def check_ray_address(address: str, source: str, kind: str, timeout_s: float) -> None:
    """A Ray address of the form the command needs, where that Ray service answers, found
    out within `timeout_s` (and a little)."""
    bounded(lambda: _check_ray_address(address, source, kind, timeout_s), timeout_s,
            f"{source} {address!r}: no answer within {timeout_s:g} s (--connect-timeout)", grace_s=2.0)


def _check_ray_address(address: str, source: str, kind: str, timeout_s: float) -> None:
    where = f"{source} {address!r}" if " " in address else f"{source} {address}"
    if kind == RAY_DASHBOARD:
        forms = "the head's dashboard, e.g. http://HEAD:8265"
        if address == "auto":
            return  # Ray's client looks up the local cluster's dashboard itself
        url = address if "://" in address else f"http://{address}"  # as Ray's job client reads it
        if urlsplit(url).scheme not in ("http", "https"):
            raise UserError(f"{where}: not a dashboard address; give {forms}")
        scheme = urlsplit(url).scheme
        host, port = _host_port(urlsplit(url).netloc, 443 if scheme == "https" else 80, where, forms)
        _check_tcp(host, port, where, "Ray dashboard", timeout_s)
        # Any answer but "no such page" is a dashboard: with token auth on it may say 401.
        if _http_status(url.rstrip("/") + "/api/version", where, timeout_s) == 404:
            raise UserError(f"{where}: {host}:{port} answers, but is not a Ray dashboard; give {forms}")
        return
    forms = "the cluster's GCS address HOST:PORT (port 6379 by default), ray://HOST:10001, auto or local"
    if address == "local":
        return
    if address == "auto":
        address = bounded(lambda: _local_cluster(where), timeout_s,
                          f"{where}: no running Ray cluster found within {timeout_s:g} s")
    if address.startswith(("http://", "https://")):
        raise UserError(f"{where}: that is a dashboard address (for `sweep submit`); `sweep run` needs {forms}")
    client = address.startswith("ray://")
    host, port = _host_port(address[len("ray://"):] if client else address, 10001 if client else None, where, forms)
    what = "Ray client server" if client else "Ray GCS"
    _check_tcp(host, port, where, what, timeout_s)
    if os.environ.get("RAY_USE_TLS", "").lower() not in ("1", "true"):  # TLS needs Ray's own certificates
        _check_ray_service(host, port, where, what, timeout_s)


def _local_cluster(where: str) -> str:
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError) as e:
        raise UserError(f"{where}: {str(e).splitlines()[0]}") from None
    if not found:
        raise UserError(f"{where}: no running Ray cluster on this machine; start one with `ray start --head`")
    return found


def _host_port(netloc: str, default_port: int | None, where: str, forms: str) -> tuple[str, int]:
    host, sep, port_text = netloc.rpartition(":")
    if not sep or (host.startswith("[") != host.endswith("]")):
        host, port_text = netloc, ""
    host = host.strip("[]")
    if not port_text and default_port is not None:
        port_text = str(default_port)
    ip_like = ":" in host or re.fullmatch(r"[0-9.]+", host)
    if not host or not (ip_like or _HOST.fullmatch(host)) or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UserError(f"{where}: not a host:port address; give {forms}")
    return host, int(port_text)


def _check_tcp(host: str, port: int, where: str, what: str, timeout_s: float) -> None:
    """A connection to host:port opens, or one line saying why not in the system's words."""
    silent = f"{where}: no {what} answered at {host}:{port} within {timeout_s:g} s (--connect-timeout)"

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                pass
        except socket.gaierror as e:
            raise UserError(f"{where}: cannot resolve host {host!r} ({e.strerror or e})") from None
        except TimeoutError:
            raise UserError(silent) from None
        except OSError as e:
            raise UserError(f"{where}: no {what} at {host}:{port} ({e.strerror or e})") from None

    bounded(connect, timeout_s, silent)


# A cheap read-only method of each Ray service an address can name: a port that accepts
# connections but is not that service (another program, a proxy) never answers it.
_RAY_METHODS = {"Ray GCS": "/ray.rpc.NodeInfoGcsService/GetClusterId",
                "Ray client server": "/ray.rpc.RayletDriver/ClusterInfo"}


def _check_ray_service(host: str, port: int, where: str, what: str, timeout_s: float) -> None:
    import grpc

    not_ray = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
               grpc.StatusCode.UNKNOWN)

    def call() -> None:
        with grpc.insecure_channel(f"[{host}]:{port}" if ":" in host else f"{host}:{port}") as channel:
            try:
                channel.unary_unary(_RAY_METHODS[what])(b"", timeout=timeout_s)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise UserError(f"{where}: {host}:{port} accepts connections but sent no answer within "
                                    f"{timeout_s:g} s (--connect-timeout)") from None
                # Anything else (a refused token, say) is Ray answering.
                if e.code() in not_ray:
                    raise UserError(f"{where}: {host}:{port} accepts connections but no {what} answers there "
                                    f"(gRPC: {e.code().name.lower()})") from None

    bounded(call, timeout_s, f"{where}: no {what} answered at {host}:{port} within {timeout_s:g} s")


# ---------------------------------------------------------------------------- a sweep's inputs


def check_inputs(spec: Any, where: str, cells: Sequence[Any] = ()) -> Callable[[], None]:
    """The files a sweep's cells will read, read as the cells will read them: every record of
    every Flan export (streamed), the tokenizer, each base checkpoint's model.json (the
    architecture the cells build) and the benchmark data; then what the cells ask of them:
    no more tasks than the exports hold, and no more token ids than each model embeds. A bad
    input fails here, once, instead of in every cell after Ray placed it. Nothing is written:
    the function returned remembers the exports checked (under FLANSCALE_HOME,
    trainers.data.check.ValidationCache), for the caller to call once all its other checks
    passed too. The cells' workers must see these paths where the controller does."""
    from trainers.data import check

    cache = check.ValidationCache(flanscale_home() / PREFLIGHT_CACHE)
    exports = None
    if spec.data.source == "flan":
        exports = check.flan_exports(tuple(spec.data.paths), f"{where}: data.paths", cache)
    token_ids = check.tokenizer_ids(spec.data.tokenizer, f"{where}: data.tokenizer")
    for model, path in sorted(spec.init_checkpoint.items()):
        check.base_checkpoint(path, f"{where}: init_checkpoint.{model}")
    if spec.eval.data_dir and spec.eval.benchmarks:
        check.eval_data(tuple(spec.eval.benchmarks), spec.eval.data_dir, spec.eval.mmlu_split,
                        f"{where}: eval.data_dir")
    for c in cells:
        if exports is not None and c.task_count > 0:
            _check_task_count(c, exports, where)
        vocab = c.spec.model.vocab_size  # the checkpoint's own where the cell starts from one
        if token_ids is not None and vocab < token_ids:
            ckpt = spec.init_checkpoint.get(c.model)
            field = f"init_checkpoint.{c.model}: {ckpt} has" if ckpt else f"models: {c.model} has"
            raise UserError(f"{where}: {field} vocab_size {vocab}, fewer than the {token_ids} ids of data.tokenizer "
                            f"{spec.data.tokenizer!r}; give a tokenizer of at most {vocab} ids ('spm' trains one) "
                            "or a model with its vocabulary")
    return cache.commit


def _check_task_count(cell: Any, exports: Any, where: str) -> None:
    """A cell's task count against the tasks the exports hold (trainers.data.mixtures
    selects that many of them)."""
    n = len(exports.tasks)
    if cell.task_count > n:
        counts = ", ".join(f"{sub} {k}" for sub, k in sorted(exports.counts().items()))
        raise UserError(f"{where}: task_counts: {cell.task_count} but the Flan exports under data.paths hold only "
                        f"{n} tasks ({counts}); give counts of at most {n}")


def infeasible(cells: Sequence[Any]) -> list[str]:
    """One line per distinct reason that cells cannot run, naming those cells."""
    from trainers.axes import cell_point
    from trainers.run_layout import run_name

    by_reason: dict[str, list[str]] = {}
    for c in cells:
        if not c.feasible:
            by_reason.setdefault(c.reason, []).append(run_name(cell_point(c)))
    return [f"{', '.join(dict.fromkeys(names))}: {reason}" for reason, names in by_reason.items()]


def check_out_dir(path: Path | str, flag: str) -> None:
    """An output folder: one that exists, or one this user can create; found out by creating
    (and removing) an empty folder there, since permissions alone miss read-only file systems
    and pseudo file systems (/proc), and the superuser passes every permission check."""
    path = Path(path).expanduser()
    where = f"{flag} {path}"
    if path.exists() and not path.is_dir():
        raise UserError(f"{where}: is a file; give a folder (created if missing)")
    _check_writable(path, where, "folder")
    parent = path
    while not parent.is_dir():
        parent = parent.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".flanscale-probe-", dir=parent))
    except OSError as e:
        raise UserError(f"{where}: cannot write in {parent} ({e.strerror or e}); give a folder this user can "
                        "write to") from None
