"""The MLflow Deployment's start step (k8s/base/mlflow/start.py, as the built ConfigMap
ships it), run for real on loopback: basic-auth is enforced, the sweep user is created and
Ray pods' credentials (read from the rendered manifests) are its, not the admin's; a restart
rotates its password, strips an admin flag and serves HTTPS with k8s/components/tls; no
secret shows on any command line. (SQLite stands in for PostgreSQL, which this machine does
not run; a fake PostgreSQL checks what libpq sends.)"""

from __future__ import annotations

import datetime
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import build_with, write_sweep
from orchestrator import k8s_render
from policy import pods

ADMIN, PASSWORD = "admin", "s3cret-for-tests-only-4f1c"
SWEEPER, SWEEP_PASSWORD, ROTATED = "flanscale-sweeps", "sweep-pass-for-tests-9a7e", "rotated-sweep-pass-2b61"
SECRETS = {
    ("flanscale-postgres", "username"): "mlflow", ("flanscale-postgres", "password"): "pg-pass-for-tests-77d0",
    ("flanscale-mlflow-auth", "username"): ADMIN, ("flanscale-mlflow-auth", "password"): PASSWORD,
    ("flanscale-mlflow-auth", "flask-secret-key"): "flask-key-for-tests-0c3b",
    ("flanscale-mlflow-sweeps", "username"): SWEEPER, ("flanscale-mlflow-sweeps", "password"): SWEEP_PASSWORD,
    ("flanscale-ray-auth", "auth_token"): "ray-token-for-tests-5e21",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _container_env(container: dict, configmaps: dict[str, dict], secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (envFrom, then env with $(VAR))."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            env.update(configmaps[src["configMapRef"]["name"]])
        elif not src["secretRef"].get("optional"):
            raise AssertionError(f"{container['name']}: a Secret as environment: {src}")
    for e in container.get("env", []):
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[(ref["name"], ref["key"])]
        else:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
    return env


def _configmaps(docs) -> dict[str, dict]:
    return {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}


def _session_cmdlines(sid: int) -> dict[int, str]:
    """Command lines of every process of a session, as `ps` would show them."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
    return out


class StartedMlflow:
    """The MLflow container of `docs` on loopback: its start script (from the ConfigMap),
    command line and environment, with local stand-ins for PostgreSQL and the volumes."""

    def __init__(self, docs: list[dict], state: Path, secrets: dict, tls_dir: Path | None = None) -> None:
        dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        configmaps = _configmaps(docs)
        env = _container_env(c, configmaps, secrets)
        # The start script and the sweep user's files, as the volumes mount them.
        run = state / f"run-{time.monotonic_ns()}"
        script_dir, cred_dir = run / "start", run / "sweep-credentials"
        script_dir.mkdir(parents=True)
        cred_dir.mkdir()
        script_mount = os.path.dirname(c["command"][1])
        for name, text in configmaps[volumes[mounts[script_mount]]["configMap"]["name"]].items():
            (script_dir / name).write_text(text)
        secret = volumes[mounts[env["FLANSCALE_SWEEP_CREDENTIALS"]]]["secret"]["secretName"]
        for key in ("username", "password"):
            (cred_dir / key).write_text(secrets[(secret, key)])
        assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://postgresql:5432/mlflow"
        env.update(
            MLFLOW_BACKEND_STORE_URI=f"sqlite:///{state / 'mlflow.db'}",
            MLFLOW_AUTH_DATABASE_URI=f"sqlite:///{state / 'auth.db'}",
            MLFLOW_AUTH_CONFIG_PATH=str(run / "basic_auth.ini"),
            ARTIFACTS_DESTINATION=str(state / "artifacts"),
            FLANSCALE_SWEEP_CREDENTIALS=str(cred_dir),
            HOME=str(run),
        )
        if "FLANSCALE_MLFLOW_TLS" in env:
            env["FLANSCALE_MLFLOW_TLS"] = str(tls_dir)
        self.port = _free_port()
        args = list(c["args"])
        for flag, value in (("--host", "127.0.0.1"), ("--port", str(self.port)), ("--workers", "1")):
            args[args.index(flag) + 1] = value
        assert c["command"][0] == "python"
        self.cmd = [sys.executable, str(script_dir / os.path.basename(c["command"][1])), *args]
        self.env, self.run, self.secrets = env, run, secrets
        self.base = f"{'https' if tls_dir else 'http'}://127.0.0.1:{self.port}"
        self.verify = str(tls_dir / "ca.crt") if tls_dir else True
        full_env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env}
        self.log = (run / "log").open("wb")
        self.proc = subprocess.Popen(self.cmd, env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        return (self.run / "log").read_text(errors="replace")[-4000:]

    def get(self, path: str, auth=None, **kw) -> requests.Response:
        return requests.get(self.base + path, auth=auth, verify=self.verify, timeout=60, **kw)

    def call(self, method: str, path: str, auth, body: dict) -> requests.Response:
        return requests.request(method, self.base + path, json=body, auth=auth, verify=self.verify, timeout=60)

    def wait_ready(self, user: str, password: str, timeout_s: float = 240) -> None:
        """Until the start script reports the sweep user ready (it logs in as it first)."""
        deadline = time.monotonic() + timeout_s
        while "(no admin, no default permission)" not in self.output():
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, f"start script not done after {timeout_s} s:\n{self.output()}"
            time.sleep(0.5)
        assert self.proc.poll() is None, self.output()
        assert self.get("/api/2.0/mlflow/users/current", auth=(user, password)).status_code == 200

    def stop(self) -> None:
        """As the kubelet does: SIGTERM to the container's first process, which hands it on."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=60)
            deadline = time.monotonic() + 30
            while _session_cmdlines(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            left = _session_cmdlines(self.proc.pid)
            assert not left, f"still running after SIGTERM: {left}"
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.log.close()


def _ca_and_server_cert(folder: Path) -> Path:
    """A CA and a certificate it signs for mlflow / localhost / 127.0.0.1, laid out as
    cert-manager fills Secret mlflow-tls (tls.crt, tls.key, ca.crt)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject, issuer, key, signer, ca, sans=()):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        if ca:
            b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        else:
            b = (b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
                 .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                 .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False))
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("flanscale-ca", "flanscale-ca", ca_key, ca_key, True)
    leaf = cert("mlflow", "flanscale-ca", key, ca_key, False, [
        x509.DNSName("mlflow"), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    folder.mkdir(parents=True)
    pem = serialization.Encoding.PEM
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    (folder / "tls.crt").write_bytes(leaf.public_bytes(pem))
    (folder / "tls.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder


def _ray_pod_envs(docs: list[dict], configmaps: dict[str, dict], secrets: dict) -> dict[str, dict[str, str]]:
    """The environment of every Ray container (RayCluster and RayJob), as the kubelet builds it."""
    return {where: _container_env(containers[0], configmaps, secrets) for where, _, containers in pods(docs)
            if where.startswith(("RayCluster/", "RayJob/")) and not where.endswith("/submitter")}


def _planned(tmp_path: Path, name: str):
    from orchestrator.planner import plan
    from orchestrator.spec import load_spec

    spec = load_spec(str(write_sweep(tmp_path / f"{name}.yaml", name=name, models=["tiny-1"], task_counts=[9],
                                     accelerator="cpu")), [])
    return spec, plan(spec)


USERS = "/api/2.0/mlflow/users"


@pytest.mark.slow
def test_start_step_makes_the_sweep_user_ray_pods_log_with(built, tmp_path, monkeypatch):
    # The image installs mlflow[auth]; a development environment may not have the extra.
    pytest.importorskip("flask_wtf", reason="mlflow's basic-auth app needs Flask-WTF (pip install 'mlflow[auth]')")
    from mlflow.tracking import MlflowClient

    from orchestrator.store import SweepStore

    docs = built["cpu"]
    spec, cells = _planned(tmp_path, "k8s-smoke")
    job = k8s_render.render(spec, cells, k8s_render.RenderOptions(overlay="cpu"))
    state = tmp_path / "state"
    state.mkdir()
    server = StartedMlflow(docs, state, SECRETS)
    try:
        server.wait_ready(SWEEPER, SWEEP_PASSWORD)
        ini = next(server.run.glob("basic_auth.ini"))
        text = ini.read_text()
        assert "default_permission = NO_PERMISSIONS" in text and "auth_cache_ttl_seconds = 60" in text
        assert oct(ini.stat().st_mode)[-3:] == "600"
        # Nothing secret on a command line: the script, `mlflow server`, uvicorn and its workers.
        cmdlines = _session_cmdlines(server.proc.pid)
        assert len(cmdlines) >= 3 and any("uvicorn" in c for c in cmdlines.values()), cmdlines
        for (_, key), value in SECRETS.items():
            if key != "username":  # names are no secret ("mlflow" is everywhere)
                assert not [c for c in cmdlines.values() if value in c], f"{key} on a command line: {cmdlines}"

        search = "/api/2.0/mlflow/experiments/search"
        assert server.call("POST", search, None, {"max_results": 1}).status_code == 401
        ok = requests.post(server.base + search, json={"max_results": 1}, auth=(ADMIN, PASSWORD), timeout=60,
                           headers={"Host": "mlflow.flanscale.svc:5000"})
        assert ok.status_code == 200, ok.text
        rebinding = requests.post(server.base + search, json={"max_results": 1}, auth=(ADMIN, PASSWORD), timeout=60,
                                  headers={"Host": "attacker.example.com"})
        assert rebinding.status_code in (400, 403)
        user = server.get(f"{USERS}/get", auth=(ADMIN, PASSWORD), params={"username": SWEEPER}).json()["user"]
        assert user["is_admin"] is False

        # Ray pods: their credentials are the sweep user's; the admin's are nowhere in them.
        envs = _ray_pod_envs(docs + job, _configmaps(docs), SECRETS)
        assert {w.split("/")[1] for w in envs} == {"flanscale", job[1]["metadata"]["name"]} and len(envs) == 4
        for where, env in envs.items():
            assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == (SWEEPER, SWEEP_PASSWORD)
            assert PASSWORD not in env.values() and not [k for k in env if k.startswith("MLFLOW_AUTH")], where
        worker = next(env for where, env in envs.items() if where.endswith("/cpu"))

        # A sweep as a worker runs it: the parent run, a cell's run, its metric and artifact.
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.setenv(key, worker[key])
        store = SweepStore(server.base, tmp_path / "home")
        parent = store.sweep_run(spec.name)
        run_id, created = store.cell_run(spec.name, cells[0])
        assert created and parent
        store.client.log_metric(run_id, "train/loss", 1.5, step=1)
        store.set_state(run_id, "finished")
        [record] = store.list_cells(spec.name)
        assert record.run_id == run_id and record.state == "finished"
        assert list((state / "artifacts").rglob("cell.json")), "artifact was not proxied to ARTIFACTS_DESTINATION"

        # ... and nothing else: no user management, no experiment it did not create.
        sweeper = (SWEEPER, SWEEP_PASSWORD)
        assert server.get(f"{USERS}/get", auth=sweeper, params={"username": ADMIN}).status_code == 403
        assert server.call("PATCH", f"{USERS}/update-password", sweeper,
                           {"username": ADMIN, "password": "z" * 16}).status_code == 403
        assert server.call("POST", f"{USERS}/create", sweeper, {"username": "x", "password": "y" * 16}).status_code == 403
        assert server.call("PATCH", f"{USERS}/update-admin", sweeper, {"username": SWEEPER, "is_admin": True}).status_code == 403
        admin_client = MlflowClient(tracking_uri=server.base)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        legacy = admin_client.create_experiment("legacy-sweep")
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.setenv(key, worker[key])
        with pytest.raises(Exception, match="(?i)permission|403"):
            store.sweep_run("legacy-sweep")
        # k8s/README.md's grant for an experiment the admin created: then the sweep user may run in it.
        grant = server.call("POST", "/api/3.0/mlflow/users/permissions/grant", (ADMIN, PASSWORD), {
            "username": SWEEPER, "resource_type": "experiment", "resource_id": legacy, "permission": "EDIT"})
        assert grant.status_code == 200, grant.text
        assert store.sweep_run("legacy-sweep")
        # Someone made the sweep user an admin meanwhile; the next start undoes it.
        assert server.call("PATCH", f"{USERS}/update-admin", (ADMIN, PASSWORD),
                           {"username": SWEEPER, "is_admin": True}).status_code == 200
    finally:
        server.stop()

    # Restart with a rotated password in the Secret and k8s/components/tls on.
    tls_docs = build_with(tmp_path / "tls-overlay", "cpu", ["tls"])
    rotated = {**SECRETS, ("flanscale-mlflow-sweeps", "password"): ROTATED}
    server = StartedMlflow(tls_docs, state, rotated, tls_dir=_ca_and_server_cert(tmp_path / "tls"))
    try:
        server.wait_ready(SWEEPER, ROTATED)
        assert "updated" in server.output()
        assert server.get(f"{USERS}/current", auth=(SWEEPER, SWEEP_PASSWORD)).status_code == 401
        user = server.get(f"{USERS}/get", auth=(ADMIN, PASSWORD), params={"username": SWEEPER}).json()["user"]
        assert user["is_admin"] is False
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(server.base + "/health", timeout=30)  # an untrusted client is refused
        env = _ray_pod_envs(tls_docs, _configmaps(tls_docs), rotated)["RayCluster/flanscale/cpu"]
        assert env["MLFLOW_TRACKING_URI"].startswith("https://")
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.setenv(key, env[key])
        # The client trusts the CA as the Ray pods do (MLFLOW_TRACKING_SERVER_CERT_PATH).
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(tmp_path / "tls" / "ca.crt"))
        store = SweepStore(server.base, tmp_path / "home")
        [record] = store.list_cells(spec.name)
        store.client.log_metric(record.run_id, "train/loss", 1.25, step=2)
        assert [p.value for p in store.client.get_metric_history(record.run_id, "train/loss")] == [1.5, 1.25]
    finally:
        server.stop()


def _run_start(built, tmp_path, secrets) -> subprocess.CompletedProcess:
    docs = built["cpu"]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = _container_env(c, _configmaps(docs), secrets)
    cred = tmp_path / "cred"
    cred.mkdir()
    for key in ("username", "password"):
        (cred / key).write_text(secrets[("flanscale-mlflow-sweeps", key)])
    env.update(FLANSCALE_SWEEP_CREDENTIALS=str(cred), MLFLOW_AUTH_CONFIG_PATH=str(tmp_path / "auth.ini"))
    script = tmp_path / "start.py"
    script.write_text(next(d for d in docs if d["metadata"]["name"].startswith("mlflow-start"))["data"]["start.py"])
    return subprocess.run([sys.executable, str(script), *c["args"]], env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("change,message", [
    ({("flanscale-mlflow-sweeps", "username"): ADMIN}, "'admin' is the admin's name"),
    ({("flanscale-mlflow-sweeps", "password"): "short"}, "12 or more characters"),
])
def test_start_step_refuses_a_sweep_user_that_would_be_the_admin_or_weak(built, tmp_path, change, message):
    out = _run_start(built, tmp_path, {**SECRETS, **change})
    assert out.returncode == 1 and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "auth.ini").exists()  # refused before anything started


def _fake_postgres(listener: socket.socket, seen: dict) -> None:
    """Answer one libpq connection: refuse SSL/GSS encryption, ask for a cleartext password,
    record the startup parameters and the password, then fail the login."""
    def exact(conn, n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client went away")
            data += chunk
        return data

    conn, _ = listener.accept()
    with conn:
        while True:
            body = exact(conn, struct.unpack("!I", exact(conn, 4))[0] - 4)
            if struct.unpack("!I", body[:4])[0] in (80877103, 80877104):  # SSLRequest, GSSENCRequest
                conn.sendall(b"N")
                continue
            break
        words = body[4:].split(b"\0")
        seen.update({k.decode(): v.decode() for k, v in zip(words[0::2], words[1::2]) if k})
        conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
        assert exact(conn, 1) == b"p"
        seen["password"] = exact(conn, struct.unpack("!I", exact(conn, 4))[0] - 4).rstrip(b"\0").decode()
        err = b"SFATAL\0C28P01\0Mstopped by the test\0\0"
        conn.sendall(b"E" + struct.pack("!I", len(err) + 4) + err)


def test_libpq_takes_the_database_credentials_from_the_environment(built, monkeypatch):
    """The URIs of the MLflow pod name no user or password: libpq must find both in
    PGUSER/PGPASSWORD (the pod's Secret-sourced variables)."""
    pytest.importorskip("psycopg2", reason="the image's PostgreSQL driver (psycopg2-binary) is not installed here")
    import sqlalchemy
    from mlflow.store.db.utils import create_sqlalchemy_engine

    dep = next(d for d in built["cpu"] if d["kind"] == "Deployment")
    env = _container_env(dep["spec"]["template"]["spec"]["containers"][0], _configmaps(built["cpu"]), SECRETS)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    seen: dict = {}
    thread = threading.Thread(target=_fake_postgres, args=(listener, seen), daemon=True)
    thread.start()
    for name in ("PGUSER", "PGPASSWORD"):
        monkeypatch.setenv(name, env[name])
    uri = env["MLFLOW_BACKEND_STORE_URI"].replace("postgresql:5432", f"127.0.0.1:{listener.getsockname()[1]}")
    with pytest.raises(sqlalchemy.exc.OperationalError, match="stopped by the test"):
        create_sqlalchemy_engine(uri + "?connect_timeout=10").connect()  # as `mlflow server` makes it
    thread.join(timeout=10)
    listener.close()
    assert (seen["user"], seen["database"], seen["password"]) == (
        SECRETS[("flanscale-postgres", "username")], "mlflow", SECRETS[("flanscale-postgres", "password")])
