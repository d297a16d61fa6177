"""Start step of the MLflow pod: the tracking server with basic-auth, and the sweep user.

Run as the container's command (k8s/base/mlflow.yaml), from a ConfigMap, with the image's
Python and nothing beyond the standard library and MLflow.

No secret reaches a command line (every argument of every process here shows in `ps`):
- PostgreSQL: the database URIs name no user or password; libpq reads PGUSER/PGPASSWORD
  from the environment itself.
- The admin: MLflow reads MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD and creates it on first start.
- The sweep user: read from the files of the Secret flanscale-mlflow-sweeps
  ($FLANSCALE_SWEEP_CREDENTIALS/username, /password).

The sweep user is what Ray pods log with. It is no admin and gets no permission by default
(default_permission = NO_PERMISSIONS); MLflow makes the creator of an experiment its
manager, so it reaches the experiments its sweeps create and nothing else. It is created
(or its password reset to the Secret's, and any admin flag removed) at every start, with the
admin's credentials over loopback: those never leave this pod.

With $FLANSCALE_MLFLOW_TLS set (a folder with tls.crt and tls.key, as a kubernetes.io/tls
Secret mounts), the server speaks HTTPS (k8s/components/tls).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

USERS = "/api/2.0/mlflow/users"
# Verified credentials are cached for a minute: every metric a cell logs is an authenticated
# request, and a password hash per request is the server's main cost. A changed password may
# keep working that long on the other worker.
AUTH_CONFIG = """[mlflow]
default_permission = NO_PERMISSIONS
database_uri = {database_uri}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
"""


class StartError(Exception):
    """A misconfiguration the operator must fix; printed as one line, exit status 1."""


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise StartError(f"environment variable {name} is not set")
    return value


def write_auth_config() -> Path:
    path = Path(_env("MLFLOW_AUTH_CONFIG_PATH"))
    old = os.umask(0o077)
    try:
        path.write_text(AUTH_CONFIG.format(database_uri=_env("MLFLOW_AUTH_DATABASE_URI")))
    finally:
        os.umask(old)
    return path


def sweep_credentials() -> tuple[str, str]:
    folder = Path(_env("FLANSCALE_SWEEP_CREDENTIALS"))
    try:
        username, password = ((folder / key).read_text().strip() for key in ("username", "password"))
    except OSError as e:
        raise StartError(f"sweep user: cannot read {e.filename} (Secret flanscale-mlflow-sweeps, keys username and "
                         f"password)") from None
    if not username or len(password) < 12:
        raise StartError("sweep user: Secret flanscale-mlflow-sweeps needs a username and a password of 12 or more "
                         "characters")
    if username == os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME"):
        raise StartError(f"sweep user: {username!r} is the admin's name; Ray pods must not log in as the admin, "
                         "pick another username in Secret flanscale-mlflow-sweeps")
    return username, password


def tls_files() -> tuple[Path, Path] | None:
    folder = os.environ.get("FLANSCALE_MLFLOW_TLS")
    if not folder:
        return None
    cert, key = Path(folder) / "tls.crt", Path(folder) / "tls.key"
    for f in (cert, key):
        if not f.is_file():
            raise StartError(f"TLS: {f} is missing (Secret mlflow-tls needs tls.crt and tls.key)")
    return cert, key


def server_command(host: str, port: int, workers: int, tls: tuple[Path, Path] | None) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", host,
           "--port", str(port), "--workers", str(workers),
           "--serve-artifacts", "--artifacts-destination", _env("ARTIFACTS_DESTINATION")]
    if tls:
        cmd += ["--uvicorn-opts", f"--ssl-certfile {tls[0]} --ssl-keyfile {tls[1]}"]
    # The backend store comes from MLFLOW_BACKEND_STORE_URI, which `mlflow server` reads.
    _env("MLFLOW_BACKEND_STORE_URI")
    return cmd


class Loopback:
    """REST calls to the server this script started, as a given user."""

    def __init__(self, host: str, port: int, tls: tuple[Path, Path] | None) -> None:
        address = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.base = f"{'https' if tls else 'http'}://{address}:{port}"
        self.context = None
        if tls:
            # Our own child on loopback: trust exactly the certificate it serves (a leaf is
            # a trust anchor with PARTIAL_CHAIN); its names are the Service's, not 127.0.0.1.
            self.context = ssl.create_default_context(cafile=str(tls[0]))
            self.context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            self.context.check_hostname = False

    def call(self, method: str, path: str, auth: tuple[str, str] | None = None,
             body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.context) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw or b"{}")
        except ValueError:
            return status, {"message": raw.decode(errors="replace")[:200]}

    def wait_healthy(self, server: subprocess.Popen, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if server.poll() is not None:
                raise StartError(f"mlflow server exited with status {server.returncode} before it was healthy")
            try:
                if self.call("GET", "/health")[0] == 200:
                    return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise StartError(f"mlflow server not healthy after {timeout_s:.0f} s")
            time.sleep(0.5)


def ensure_sweep_user(api: Loopback, admin: tuple[str, str], user: str, password: str) -> str:
    """Create the sweep user, or bring an existing one back to the Secret's password and no
    admin flag. Returns what was done."""
    quoted = urllib.parse.quote(user, safe="")
    status, body = api.call("GET", f"{USERS}/get?username={quoted}", admin)
    if status == 401:
        raise StartError("the admin's credentials are rejected: MLflow created the admin once, with the password of "
                         "that first start; Secret flanscale-mlflow-auth must hold that password (rotate it with "
                         "PATCH /api/2.0/mlflow/users/update-password, then update the Secret)")
    if status == 404:
        status, body = api.call("POST", f"{USERS}/create", admin, {"username": user, "password": password})
        done = "created"
    elif status == 200:
        if body.get("user", {}).get("is_admin"):
            status, body = api.call("PATCH", f"{USERS}/update-admin", admin, {"username": user, "is_admin": False})
            if status != 200:
                raise StartError(f"sweep user {user!r}: removing its admin flag failed ({status}: {body})")
        status, body = api.call("PATCH", f"{USERS}/update-password", admin, {"username": user, "password": password})
        done = "updated"
    if status != 200:
        raise StartError(f"sweep user {user!r}: {status}: {body.get('message', body)}")
    # What Ray pods will do: log in with the Secret's password, as a non-admin.
    status, body = api.call("GET", f"{USERS}/current", (user, password))
    if status != 200 or body.get("user", {}).get("is_admin") is not False:
        raise StartError(f"sweep user {user!r}: logging in with Secret flanscale-mlflow-sweeps gives {status}: {body}")
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--start-timeout", type=float, default=300, help="seconds to wait for the server to be healthy")
    args = p.parse_args(argv)
    try:
        user, password = sweep_credentials()
        admin = (_env("MLFLOW_AUTH_ADMIN_USERNAME"), _env("MLFLOW_AUTH_ADMIN_PASSWORD"))
        write_auth_config()
        tls = tls_files()
        cmd = server_command(args.host, args.port, args.workers, tls)
    except StartError as e:
        print(f"mlflow start: {e}", file=sys.stderr, flush=True)
        return 1
    server = subprocess.Popen(cmd)
    # This script is the container's PID 1: hand the kubelet's stop signal to the server.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: server.send_signal(signum))
    api = Loopback(args.host, args.port, tls)
    try:
        api.wait_healthy(server, args.start_timeout)
        done = ensure_sweep_user(api, admin, user, password)
    except (StartError, urllib.error.URLError, OSError) as e:
        print(f"mlflow start: {e}", file=sys.stderr, flush=True)
        server.terminate()
        server.wait()
        return 1
    print(f"mlflow start: sweep user {user!r} {done} (no admin, no default permission)", flush=True)
    return server.wait()


if __name__ == "__main__":
    sys.exit(main())
