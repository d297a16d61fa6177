"""`flanscale k8s submit|status` through the real `kubernetes` client against a small API
server on loopback that records requests and serves RayJob objects."""

from __future__ import annotations

import argparse
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import crd_errors
from trainers.spec import UserError

TOKEN = "fake-bearer-token"


class FakeKube:
    """Just enough of the Kubernetes API for RayJobs and ConfigMaps, with request recording."""

    def __init__(self, serve_rayjobs: bool = True, forbid_configmaps: bool = False) -> None:
        self.serve_rayjobs = serve_rayjobs
        self.forbid_configmaps = forbid_configmaps
        self.requests: list[dict[str, Any]] = []
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, ns, name) -> object
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n)) if n else None

            def _send(self, code: int, obj: Any, content_type: str = "application/json") -> None:
                data = obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                body = self._body() if method in ("POST", "PUT") else None
                with fake.lock:
                    fake.requests.append({"method": method, "path": self.path, "body": body,
                                          "authorization": self.headers.get("Authorization")})
                    code, obj, ctype = fake.route(method, self.path.split("?")[0], body)
                self._send(code, obj, ctype)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def _status(code: int, reason: str, message: str, name: str, kind: str) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                "reason": reason, "details": {"name": name, "kind": kind}, "code": code}

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any, str]:
        m = re.fullmatch(r"/(?:api/v1|apis/ray\.io/v1)/namespaces/([^/]+)/(configmaps|rayjobs)(?:/([^/]+))?", path)
        if not m:
            return 404, "404 page not found", "text/plain"
        ns, plural, name = m.groups()
        if plural == "rayjobs" and not self.serve_rayjobs:
            return 404, "404 page not found", "text/plain"  # what an API server without the CRD says
        if plural == "configmaps" and self.forbid_configmaps and method != "GET":
            return 403, self._status(403, "Forbidden", f'configmaps is forbidden: User "tester" cannot create '
                                     f'resource "configmaps" in namespace "{ns}"', name or "", plural), "application/json"
        if method == "DELETE":
            if self.objects.pop((plural, ns, name), None) is None:
                return 404, self._status(404, "NotFound", f'{plural} "{name}" not found', name, plural), "application/json"
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}, "application/json"
        if method == "GET":
            obj = self.objects.get((plural, ns, name))
            if obj is None:
                return 404, self._status(404, "NotFound", f'{plural} "{name}" not found', name, plural), "application/json"
            return 200, obj, "application/json"
        if method == "POST":
            name = body["metadata"]["name"]
            if (plural, ns, name) in self.objects:
                return 409, self._status(409, "AlreadyExists", f'{plural} "{name}" already exists', name, plural), "application/json"
            obj = json.loads(json.dumps(body))
            obj["metadata"].update(uid=str(uuid.uuid4()), namespace=ns, creationTimestamp="2026-01-01T00:00:00Z")
            self.objects[(plural, ns, name)] = obj
            return 201, obj, "application/json"
        if method == "PUT":
            self.objects[(plural, ns, name)] = body
            return 200, body, "application/json"
        return 405, "method not allowed", "text/plain"

    def set_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        with self.lock:
            self.objects[("rayjobs", ns, name)]["status"] = status

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "elsewhere",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}},
                         {"name": "unreachable", "cluster": {"server": "http://127.0.0.1:9"}}],
            "users": [{"name": "tester", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}},
                         {"name": "elsewhere", "context": {"cluster": "unreachable", "user": "tester"}}],
        }))
        return path

    def __enter__(self) -> "FakeKube":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kube(tmp_path):
    with FakeKube() as fake:
        fake.config = fake.kubeconfig(tmp_path / "kubeconfig")
        yield fake


def _cli(argv: list[str]) -> int:
    from orchestrator.commands import k8s

    parser = argparse.ArgumentParser(prog="flanscale")
    k8s.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_submit_creates_the_rayjob_then_its_configmap(kube, sweep_file, capsys, crd_validators):
    path = sweep_file("Submit_Me", max_concurrent=2)
    code = _cli(["k8s", "submit", str(path), "optim.steps=3", "-n", "team-a",
                 "--kubeconfig", str(kube.config), "--context", "fake"])
    assert code == 0
    out = capsys.readouterr().out
    assert "rayjob.ray.io/submit-me created" in out and "configmap/submit-me-sweep created" in out
    calls = [(r["method"], r["path"].split("?")[0]) for r in kube.requests]
    assert calls == [
        ("GET", "/apis/ray.io/v1/namespaces/team-a/rayjobs/submit-me"),
        ("POST", "/apis/ray.io/v1/namespaces/team-a/rayjobs"),
        ("POST", "/api/v1/namespaces/team-a/configmaps"),
    ]
    assert {r["authorization"] for r in kube.requests} == {f"Bearer {TOKEN}"}
    rayjob = kube.requests[1]["body"]
    assert crd_errors(crd_validators, rayjob) == []
    # MLflow's address (http or https) comes from the cluster's flanscale-env ConfigMap, never
    # from the submitting machine.
    assert rayjob["spec"]["entrypoint"] == "flanscale sweep run sweep.yaml --ray-address auto --no-progress"
    configmap = kube.requests[2]["body"]
    uid = kube.objects[("rayjobs", "team-a", "submit-me")]["metadata"]["uid"]
    # Owned by the RayJob: deleting the job deletes its spec.
    assert configmap["metadata"]["ownerReferences"] == [
        {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": "submit-me", "uid": uid}]
    assert "steps: 3" in configmap["data"]["sweep.yaml"]


def test_submit_refuses_to_replace_a_running_job(kube, sweep_file):
    path = sweep_file("twice")
    argv = ["k8s", "submit", str(path), "--kubeconfig", str(kube.config), "--context", "fake"]
    assert _cli(argv) == 0
    before = len(kube.requests)
    with pytest.raises(UserError, match=r"RayJob flanscale/twice already exists; delete it first"):
        _cli(argv)
    assert [r["method"] for r in kube.requests[before:]] == ["GET"]  # nothing written


def test_submit_replaces_a_leftover_configmap(kube, sweep_file):
    kube.objects[("configmaps", "flanscale", "left-sweep")] = {"metadata": {"name": "left-sweep"}, "data": {"sweep.yaml": "old"}}
    assert _cli(["k8s", "submit", str(sweep_file("left")), "--kubeconfig", str(kube.config), "--context", "fake"]) == 0
    assert [r["method"] for r in kube.requests] == ["GET", "POST", "POST", "PUT"]
    assert "name: left" in kube.objects[("configmaps", "flanscale", "left-sweep")]["data"]["sweep.yaml"]


def test_a_failed_configmap_takes_the_rayjob_back(tmp_path, sweep_file):
    with FakeKube(forbid_configmaps=True) as fake:
        config = fake.kubeconfig(tmp_path / "kubeconfig")
        with pytest.raises(UserError, match=r"Forbidden .*check your kubeconfig user's RBAC.*was deleted again"):
            _cli(["k8s", "submit", str(sweep_file("norbac")), "--kubeconfig", str(config), "--context", "fake"])
        assert [r["method"] for r in fake.requests] == ["GET", "POST", "POST", "DELETE"]
        assert fake.objects == {}


def test_missing_kuberay_is_explained(tmp_path, sweep_file):
    with FakeKube(serve_rayjobs=False) as fake:
        config = fake.kubeconfig(tmp_path / "kubeconfig")
        with pytest.raises(UserError, match="install the KubeRay operator v1.7.0"):
            _cli(["k8s", "submit", str(sweep_file("nocrd")), "--kubeconfig", str(config), "--context", "fake"])


def test_unreachable_api_server_and_bad_context_are_user_errors(kube, sweep_file, tmp_path):
    # The kubeconfig's current context points at a closed port.
    with pytest.raises(UserError, match="cannot reach the Kubernetes API server"):
        _cli(["k8s", "status", "x", "--kubeconfig", str(kube.config)])
    with pytest.raises(UserError, match="--context 'nope'"):
        _cli(["k8s", "status", "x", "--kubeconfig", str(kube.config), "--context", "nope"])
    with pytest.raises(UserError, match="no such file"):
        _cli(["k8s", "status", "x", "--kubeconfig", str(tmp_path / "none")])


def test_status_reads_the_rayjob(kube, sweep_file, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert _cli(["k8s", "submit", str(sweep_file("Watch_Me")), "--kubeconfig", str(kube.config), "--context", "fake"]) == 0
    kube.set_status("flanscale", "watch-me", {
        "jobStatus": "RUNNING", "jobDeploymentStatus": "Running", "rayClusterName": "watch-me-abcde",
        "startTime": "2026-01-01T00:01:00Z", "dashboardURL": "watch-me-abcde-head-svc.flanscale.svc:8265"})
    capsys.readouterr()
    assert _cli(["k8s", "status", "watch-me", "--kubeconfig", str(kube.config), "--context", "fake", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cells"] is None
    job = out["rayjob"]
    assert (job["sweep"], job["job_status"], job["deployment_status"], job["cluster"]) == (
        "Watch_Me", "RUNNING", "Running", "watch-me-abcde")
    assert job["max_concurrent"] == 2
    assert _cli(["k8s", "status", "watch-me", "--kubeconfig", str(kube.config), "--context", "fake"]) == 0
    text = capsys.readouterr().out
    assert "deployment Running, job RUNNING" in text and "pass --tracking-uri" in text
    with pytest.raises(UserError, match="RayJob flanscale/gone: not found"):
        _cli(["k8s", "status", "gone", "--kubeconfig", str(kube.config), "--context", "fake"])


def test_status_shows_cell_progress_from_mlflow(kube, sweep_file, tmp_path, capsys, monkeypatch):
    from orchestrator.planner import plan
    from orchestrator.spec import load_spec
    from orchestrator.store import SweepStore

    monkeypatch.setenv("FLANSCALE_HOME", str(tmp_path / "home"))
    path = sweep_file("Progress", models=["tiny-1", "tiny-2"], task_counts=[9])
    assert _cli(["k8s", "submit", str(path), "--kubeconfig", str(kube.config), "--context", "fake"]) == 0
    kube.set_status("flanscale", "progress", {"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"})
    # The controller's own store writes the runs, as it would inside the cluster.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = SweepStore(uri, home=tmp_path)
    first, second = plan(load_spec(str(path), []))
    done, _ = store.cell_run("Progress", first)
    running, _ = store.cell_run("Progress", second)
    store.set_state(done, "finished")
    store.set_state(running, "running")
    for step, loss in ((1, 5.0), (2, 4.5), (3, 4.25)):
        store.client.log_metric(running, "train/loss", loss, step=step)
    store.client.log_metric(running, "train/step_s", 0.5, step=3)
    capsys.readouterr()
    argv = ["k8s", "status", "progress", "--kubeconfig", str(kube.config), "--context", "fake", "--tracking-uri", uri]
    assert _cli(argv + ["--format", "json"]) == 0
    cells = {c["key"]: c for c in json.loads(capsys.readouterr().out)["cells"]}
    assert cells[first.key]["state"] == "finished" and cells[first.key]["step"] == first.steps
    assert (cells[second.key]["state"], cells[second.key]["step"], cells[second.key]["loss"]) == ("running", 3, 4.25)
    assert _cli(argv) == 0
    text = capsys.readouterr().out
    assert "1/2 cells done, 1 running" in text


def test_in_cluster_config_is_used_without_a_kubeconfig(monkeypatch, tmp_path):
    from orchestrator import k8s_client

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    # Outside a pod there is no service-account token: the in-cluster path says so.
    with pytest.raises(UserError, match="in-cluster Kubernetes config"):
        k8s_client.api_client()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(UserError, match="absent: no such file"):
        k8s_client.api_client()
