"""The MLflow Deployment's start script, run for real on loopback: basic-auth is enforced,
the in-cluster service name is an allowed host, and artifacts are proxied to
ARTIFACTS_DESTINATION. (SQLite stands in for PostgreSQL, which this machine does not run.)"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ADMIN, PASSWORD = "admin", "s3cret-for-tests-only-4f1c"


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
    for e in container["env"]:
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[(ref["name"], ref["key"])]
        else:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
    return env


@pytest.mark.slow
def test_mlflow_deployment_script_serves_with_basic_auth(built, tmp_path, monkeypatch):
    # The image installs mlflow[auth]; a development environment may not have the extra.
    pytest.importorskip("flask_wtf", reason="mlflow's basic-auth app needs Flask-WTF (pip install 'mlflow[auth]')")
    docs = built["cpu"]
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    secrets = {("flanscale-postgres", "username"): "mlflow", ("flanscale-postgres", "password"): "pgpass",
               ("flanscale-mlflow-auth", "username"): ADMIN, ("flanscale-mlflow-auth", "password"): PASSWORD,
               ("flanscale-mlflow-auth", "flask-secret-key"): "flask-key-for-tests"}
    env = _container_env(container, configmaps, secrets)
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://mlflow:pgpass@postgresql:5432/mlflow"
    # Loopback stand-ins for what the pod has: PostgreSQL -> SQLite, volumes -> tmp_path.
    env.update(
        MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        MLFLOW_AUTH_DATABASE_URI=f"sqlite:///{tmp_path / 'auth.db'}",
        MLFLOW_AUTH_CONFIG_PATH=str(tmp_path / "basic_auth.ini"),
        ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"),
        HOME=str(tmp_path),
    )
    port = _free_port()
    script = container["args"][0].replace("--host 0.0.0.0 --port 5000 --workers 2", f"--host 127.0.0.1 --port {port} --workers 1")
    assert f"--port {port}" in script
    full_env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env}
    proc = subprocess.Popen(container["command"] + [script], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                if requests.get(f"{base}/health", timeout=10).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            assert time.monotonic() < deadline, "mlflow server did not become healthy"
            time.sleep(0.5)
        ini = (tmp_path / "basic_auth.ini").read_text()
        assert "default_permission = NO_PERMISSIONS" in ini and "auth_cache_ttl_seconds = 60" in ini and oct((tmp_path / "basic_auth.ini").stat().st_mode)[-3:] == "600"
        search = f"{base}/api/2.0/mlflow/experiments/search"
        assert requests.post(search, json={"max_results": 1}, timeout=60).status_code == 401
        ok = requests.post(search, json={"max_results": 1}, auth=(ADMIN, PASSWORD), timeout=60,
                           headers={"Host": "mlflow.flanscale.svc:5000"})
        assert ok.status_code == 200, ok.text
        rebinding = requests.post(search, json={"max_results": 1}, auth=(ADMIN, PASSWORD), timeout=60,
                                  headers={"Host": "attacker.example.com"})
        assert rebinding.status_code in (400, 403)
        # The Ray pods' client path: credentials from the environment, artifacts via the server.
        from mlflow.tracking import MlflowClient

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        client = MlflowClient(tracking_uri=base)
        run = client.create_run(client.create_experiment("k8s-smoke"))
        client.log_metric(run.info.run_id, "train/loss", 1.5, step=1)
        (tmp_path / "cell.json").write_text("{}")
        client.log_artifact(run.info.run_id, str(tmp_path / "cell.json"))
        assert client.get_metric_history(run.info.run_id, "train/loss")[0].value == 1.5
        assert list((tmp_path / "artifacts").rglob("cell.json")), "artifact was not proxied to ARTIFACTS_DESTINATION"
        wrong = requests.post(search, json={"max_results": 1}, auth=(ADMIN, "wrong"), timeout=60)
        assert wrong.status_code == 401
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
