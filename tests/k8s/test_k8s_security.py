"""Least privilege of the built manifests (every overlay, with and without the opt-in
components, and the RayJobs `flanscale k8s render` makes): who may reach whom, which pod
holds which Secret, what shows on a command line, who holds an API token."""

from __future__ import annotations

import copy
import os

import pytest
import yaml

from conftest import (COMPONENTS, CUSTOM_KINDS, KUSTOMIZE_DIR, OVERLAYS, builtin_errors, build_with, crd_errors,
                      write_sweep)
from extra_kinds import SCHEMAS, extra_errors
from orchestrator import k8s_render
from policy import (ADMIN_SECRET, NAMESPACE, POSTGRES_SECRET, SWEEP_SECRET, TOKEN_PATH, Endpoint, automounted,
                    command_line_problems, connects, matches, pods, ray_pod_labels, secret_refs, token_volumes)
from test_k8s_manifests import locked_down_problems

# A sweep per overlay, planned and rendered as `flanscale k8s render` does.
SWEEPS = {
    "cpu": {"models": ["tiny-1", "tiny-2"], "task_counts": [9], "accelerator": "cpu"},
    "gpu": {"models": ["t5-large"], "task_counts": [1836], "accelerator": "h100-80g"},
    "tpu": {"models": ["palm-62b"], "task_counts": [1836], "accelerator": "tpu-v5p", "min_devices": 64},
}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> dict[str, list[dict]]:
    from orchestrator.planner import plan
    from orchestrator.spec import load_spec

    root = tmp_path_factory.mktemp("sweeps")
    out = {}
    for overlay, fields in SWEEPS.items():
        spec = load_spec(str(write_sweep(root / f"{overlay}.yaml", name=f"sec-{overlay}", **fields)), [])
        out[overlay] = k8s_render.render(spec, plan(spec), k8s_render.RenderOptions(overlay=overlay))
    return out


def _every_stack(built, built_with_components, jobs):
    """(label, documents) of every overlay as shipped and with all components, each with
    its RayJob beside it (RayJobs run in the namespace the overlay set up)."""
    for overlay in OVERLAYS:
        yield f"{overlay}", built[overlay] + jobs[overlay]
        yield f"{overlay}+components", built_with_components[overlay] + jobs[overlay]


# ---- Secrets ----

def secret_problems(docs: list[dict]) -> list[str]:
    """The admin's credentials only in the MLflow pod, PostgreSQL's only where needed, and
    Ray pods logging to MLflow as the sweep user."""
    allowed = {ADMIN_SECRET: {"Deployment/mlflow"}, POSTGRES_SECRET: {"Deployment/mlflow", "StatefulSet/postgresql"}}
    problems = []
    for where, pod, containers in pods(docs):
        for holder, secret in secret_refs(pod, containers):
            if secret in allowed and where not in allowed[secret]:
                problems.append(f"{where}/{holder}: reaches Secret {secret}")
        if where.startswith(("RayCluster/", "RayJob/")) and not where.endswith("/submitter"):
            for c in containers:
                for e in c.get("env", []):
                    if e["name"].startswith("MLFLOW_TRACKING_"):
                        ref = (e.get("valueFrom") or {}).get("secretKeyRef", {})
                        if ref.get("name") != SWEEP_SECRET:
                            problems.append(f"{where}/{c['name']}: {e['name']} is not the sweep user's")
    return problems


def test_admin_credentials_stay_in_the_mlflow_pod(built, built_with_components, jobs):
    for label, docs in _every_stack(built, built_with_components, jobs):
        assert secret_problems(docs) == [], label
    # Every Ray pod does log to MLflow, as the sweep user.
    for where, pod, containers in pods(built["gpu"] + jobs["gpu"]):
        if where.startswith(("RayCluster/", "RayJob/")) and not where.endswith("/submitter"):
            env = {e["name"]: e for e in containers[0]["env"]}
            assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == SWEEP_SECRET, where


def test_secret_check_catches_the_admin_in_a_worker(built):
    docs = copy.deepcopy(built["cpu"])
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    env = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]
    next(e for e in env if e["name"] == "MLFLOW_TRACKING_PASSWORD")["valueFrom"]["secretKeyRef"]["name"] = ADMIN_SECRET
    cluster["spec"]["headGroupSpec"]["template"]["spec"]["volumes"].append(
        {"name": "pg", "projected": {"sources": [{"secret": {"name": POSTGRES_SECRET}}]}})
    problems = secret_problems(docs)
    assert any("RayCluster/flanscale/cpu/ray-worker: reaches Secret flanscale-mlflow-auth" in p for p in problems)
    assert any("not the sweep user's" in p for p in problems)
    assert any("volume:pg: reaches Secret flanscale-postgres" in p for p in problems)


def _extra_words(doc: dict, where: str) -> list[str]:
    """Strings that end up on a command line besides command/args: rayStartParams (KubeRay
    writes `ray start --KEY=VALUE`) and a RayJob's entrypoint (`ray job submit -- ...`)."""
    if doc["kind"] not in CUSTOM_KINDS:
        return []
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    words = [doc["spec"].get("entrypoint", "")] if doc["kind"] == "RayJob" else []
    groups = [spec["headGroupSpec"]] + spec.get("workerGroupSpecs", [])
    return words + [f"--{k}={v}" for g in groups for k, v in g.get("rayStartParams", {}).items()]


def test_no_secret_on_a_command_line(built, built_with_components, jobs):
    for label, docs in _every_stack(built, built_with_components, jobs):
        problems = []
        for doc in docs:
            for where, pod, containers in pods([doc]):
                for c in containers:
                    problems += command_line_problems(where, c, _extra_words(doc, where))
        assert problems == [], label


def test_command_line_check_catches_a_password_in_a_uri():
    # The MLflow container as it was: the PostgreSQL password inside --backend-store-uri.
    old = {"name": "mlflow", "command": ["/bin/sh", "-c"],
           "args": ['exec mlflow server --backend-store-uri "$MLFLOW_BACKEND_STORE_URI"'],
           "env": [{"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": POSTGRES_SECRET, "key": "password"}}},
                   {"name": "MLFLOW_BACKEND_STORE_URI", "value": "postgresql://$(PGUSER):$(PGPASSWORD)@postgresql/mlflow"}]}
    assert any("copied into another variable" in p for p in command_line_problems("Deployment/mlflow", old))
    inline = {"name": "x", "args": ["--backend-store-uri", "postgresql://mlflow:hunter2@db/mlflow", "--token=abc"]}
    assert len(command_line_problems("Pod/x", inline)) == 2
    direct = {"name": "x", "command": ["sh", "-c", "login --pw $PGPASSWORD"],
              "env": [{"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    assert command_line_problems("Pod/x", direct) == ["Pod/x/x: $PGPASSWORD on the command line"]


# ---- API tokens ----

def test_only_the_autoscaler_holds_an_api_token(built, built_with_components, jobs):
    for label, docs in _every_stack(built, built_with_components, jobs):
        accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
        holders = []
        for where, pod, containers in pods(docs):
            assert not automounted(pod, accounts), f"{label} {where}: token automounted"
            tokens = token_volumes(pod)
            for c in containers:
                for m in c.get("volumeMounts", []):
                    if m["name"] in tokens:
                        holders.append((where, c["name"], m["mountPath"]))
        heads = sorted(w for w, _, _ in pods(docs) if w.endswith("/head"))
        assert sorted(holders) == [(h, "autoscaler", TOKEN_PATH) for h in heads], label


def _allows(rules: list[dict], verb: str, resource: str, name: str | None) -> bool:
    for r in rules:
        group_resource = ("ray.io" if resource == "rayclusters" else "", resource)
        if group_resource[0] in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]:
            if not r.get("resourceNames") or (name is not None and name in r["resourceNames"]):
                return True
    return False


def test_autoscaler_requests_fit_the_role(built, monkeypatch):
    """Ray's own KubeRay autoscaler (v2) through one scale-up and one scale-down, against a
    recording API: every request it sends is one the Role grants."""
    cloud_provider = pytest.importorskip("ray.autoscaler.v2.instance_manager.cloud_providers.kuberay.cloud_provider")
    from ray.autoscaler._private.kuberay.node_provider import IKubernetesHttpApiClient

    docs = built["cpu"]
    cluster = copy.deepcopy(next(d for d in docs if d["kind"] == "RayCluster"))
    cluster["metadata"]["resourceVersion"] = "7"
    name = cluster["metadata"]["name"]
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == name)

    def pod(pod_name, kind, group):
        return {"metadata": {"name": pod_name, "resourceVersion": "7",
                             "labels": {"ray.io/cluster": name, "ray.io/node-type": kind, "ray.io/group": group}},
                "status": {"containerStatuses": [{"state": {"running": {}}}]}}

    head, worker = pod(f"{name}-head-x", "head", "headgroup"), pod(f"{name}-cpu-worker-y", "worker", "cpu")
    calls = []

    class Recorder(IKubernetesHttpApiClient):
        def get(self, path):
            calls.append(("GET", path))
            if path == f"rayclusters/{name}":
                return copy.deepcopy(cluster)
            if path.startswith("pods?"):
                return {"metadata": {"resourceVersion": "7"}, "items": [head, worker]}
            return head if path == f"pods/{head['metadata']['name']}" else pytest.fail(f"unexpected GET {path}")

        def patch(self, path, payload, content_type="application/json-patch+json"):
            calls.append(("PATCH", path))
            return copy.deepcopy(cluster)

        def delete(self, path):
            calls.append(("DELETE", path))
            return {}

    monkeypatch.setattr(cloud_provider, "RAY_HEAD_POD_NAME", head["metadata"]["name"])
    provider = cloud_provider.KubeRayProvider(name, {"namespace": NAMESPACE}, gcs_client=None, k8s_api_client=Recorder())
    assert set(provider.get_non_terminated()) == {head["metadata"]["name"], worker["metadata"]["name"]}
    provider.launch({"cpu": 1}, "up-1")
    provider.get_non_terminated()
    provider.terminate([worker["metadata"]["name"]], "down-1")
    assert provider.poll_errors() == []
    assert ("PATCH", f"rayclusters/{name}") in calls and any(p.startswith("pods?") for _, p in calls)
    for method, path in calls:
        resource, _, rest = path.partition("/")
        if "?" in resource:
            verb, resource, target = "list", resource.split("?")[0], None
        else:
            verb, target = {"GET": "get", "PATCH": "patch", "DELETE": "delete"}[method], rest
        assert _allows(role["rules"], verb, resource, target), f"{method} {path} is not granted"


# ---- NetworkPolicies ----

def _endpoints(docs: list[dict], job: list[dict]) -> dict[str, Endpoint]:
    def template(kind, name):
        d = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
        return d["spec"]["template"]["metadata"]["labels"]

    cluster = ray_pod_labels(next(d for d in docs if d["kind"] == "RayCluster"))
    rayjob = next(d for d in job if d["kind"] == "RayJob")
    job_pods = ray_pod_labels(rayjob)
    pod = lambda name, ip, labels, ns=NAMESPACE: Endpoint(name, ip, ns, labels)  # noqa: E731
    return {
        "mlflow": pod("mlflow", "10.8.0.10", template("Deployment", "mlflow")),
        "postgresql": pod("postgresql", "10.8.0.11", template("StatefulSet", "postgresql")),
        "head": pod("head", "10.8.0.12", cluster["head"]),
        "worker": pod("worker", "10.8.0.13", cluster["worker"]),
        "job-head": pod("job-head", "10.8.0.14", job_pods["head"]),
        "job-worker": pod("job-worker", "10.8.0.15", job_pods["worker"]),
        "submitter": pod("submitter", "10.8.0.16", rayjob["spec"]["submitterPodTemplate"]["metadata"]["labels"]),
        "kube-dns": pod("kube-dns", "10.8.1.10", {"k8s-app": "kube-dns"}, "kube-system"),
        "operator": pod("operator", "10.8.1.20", {"app.kubernetes.io/name": "kuberay-operator"}, "kuberay-system"),
        "prometheus": pod("prometheus", "10.8.1.30", {"app.kubernetes.io/name": "prometheus"}, "monitoring"),
        "elsewhere": pod("elsewhere", "10.8.2.2", {"app": "other"}, "default"),
        "apiserver": Endpoint("apiserver", "172.16.0.2"),
        "metadata": Endpoint("metadata", "169.254.169.254"),
        "internet": Endpoint("internet", "142.250.74.91"),
    }


RAY = ("head", "worker", "job-head", "job-worker")
PORTS = (80, 443, 988, 5000, 5432, 6379, 6443, 8080, 8265, 10001, 12345)
OURS = ("mlflow", "postgresql", "submitter") + RAY


def _reach(docs, ep, src, dst, port, protocol="TCP"):
    return connects(docs, ep[src], ep[dst], port, protocol)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_pod_reaches_only_what_it_needs(built, jobs, overlay):
    docs = built[overlay]
    ep = _endpoints(docs, jobs[overlay])
    # A submitter may reach any head's job API (each still wants the Ray token).
    allowed = {("mlflow", "postgresql", 5432), ("submitter", "job-head", 8265), ("submitter", "head", 8265),
               ("operator", "head", 8265),
               ("operator", "job-head", 8265), ("head", "apiserver", 443), ("job-head", "apiserver", 443),
               ("head", "apiserver", 6443), ("job-head", "apiserver", 6443)}
    allowed |= {(r, "mlflow", 5000) for r in RAY}
    allowed |= {(a, b, port) for a in RAY for b in RAY for port in PORTS if a != b}  # Ray's many ports
    # The head's API rule names no address (it differs per cluster): any address on 443/6443,
    # until narrowed as k8s/README.md shows.
    allowed |= {(h, t, p) for h in ("head", "job-head") for t in ("internet", "metadata", "elsewhere") for p in (443, 6443)}
    outside = ("apiserver", "metadata", "internet", "elsewhere")
    for src in OURS + ("operator", "prometheus", "elsewhere"):
        # Pods of other namespaces: only what they may open to ours is ours to police.
        for dst in OURS + outside if src in OURS else OURS:
            for port in PORTS:
                if src == dst:
                    continue
                expected = (src, dst, port) in allowed
                assert _reach(docs, ep, src, dst, port) == expected, f"{src} -> {dst}:{port} should be {expected}"
    for src in OURS:  # and every pod resolves names
        assert _reach(docs, ep, src, "kube-dns", 53, "UDP") and _reach(docs, ep, src, "kube-dns", 53, "TCP")
    # Every pod of the namespace is under an egress policy: a new one starts closed.
    deny = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "default-deny-egress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Egress"]}


def test_opt_in_components_open_only_their_paths(built_with_components, jobs):
    docs = built_with_components["gpu"]
    ep = _endpoints(docs, jobs["gpu"])
    # egress-object-storage: MLflow to public HTTPS and, for Workload Identity, the metadata server.
    assert _reach(docs, ep, "mlflow", "internet", 443) and _reach(docs, ep, "mlflow", "metadata", 80)
    assert not _reach(docs, ep, "mlflow", "apiserver", 443) and not _reach(docs, ep, "mlflow", "elsewhere", 443)
    # egress-package-sources: Ray pods to public HTTPS, not to private addresses.
    for r in RAY:
        assert _reach(docs, ep, r, "internet", 443) and not _reach(docs, ep, r, "internet", 80)
    assert not _reach(docs, ep, "worker", "apiserver", 443) and not _reach(docs, ep, "worker", "metadata", 80)
    # prometheus: Prometheus scrapes every Ray pod's metrics port, and nothing else.
    for r in RAY:
        assert _reach(docs, ep, "prometheus", r, 8080) and not _reach(docs, ep, "prometheus", r, 8265)
    assert not _reach(docs, ep, "prometheus", "mlflow", 5000) and not _reach(docs, ep, "elsewhere", "worker", 8080)
    # Neither opens anything to the other pods.
    for src in ("postgresql", "submitter"):
        assert not _reach(docs, ep, src, "internet", 443)
    assert not _reach(docs, ep, "worker", "postgresql", 5432)


# ---- Opt-in components ----

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_components_build_and_validate(built, built_with_components, crd_validators, overlay):
    docs = built_with_components[overlay]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {NAMESPACE}
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "flanscale" for d in docs)
    errors = []
    for d in docs:
        if d["kind"] in CUSTOM_KINDS:
            errors += crd_errors(crd_validators, d)
        elif (d["apiVersion"], d["kind"]) in SCHEMAS:
            errors += extra_errors(d)
        else:
            errors += builtin_errors(d)
    assert errors == []
    assert locked_down_problems(docs) == []
    added = sorted((d["kind"], d["metadata"]["name"]) for d in docs if d not in built[overlay])
    assert [k for k, _ in added].count("NetworkPolicy") == 3 and ("PodMonitor", "flanscale-ray") in added
    assert sorted(n for k, n in added if k in ("Issuer", "Certificate")) == [
        "flanscale-ca", "flanscale-ca", "flanscale-selfsigned", "mlflow"]


def test_extra_schemas_reject_misspelt_fields(built_with_components):
    docs = built_with_components["cpu"]
    for kind, name, field, typo in (("PodMonitor", "flanscale-ray", "podMetricsEndpoints", "podMetricsEndpoint"),
                                    ("Certificate", "mlflow", "dnsNames", "dnsName"),
                                    ("Issuer", "flanscale-selfsigned", "selfSigned", "selfsigned")):
        doc = copy.deepcopy(next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name))
        assert extra_errors(doc) == []
        doc["spec"][typo] = doc["spec"].pop(field)
        assert any(f"'{typo}' was unexpected" in e for e in extra_errors(doc)), kind
    assert set(SCHEMAS) == {("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate"),
                            ("monitoring.coreos.com/v1", "PodMonitor")}


def _env_configmap(docs):
    return next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "flanscale-env")["data"]


def test_tls_component_switches_every_client_to_https(built, jobs, tmp_path):
    # The default says plainly that it is HTTP inside the namespace.
    assert _env_configmap(built["cpu"])["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    for overlay in OVERLAYS:
        assert "plain HTTP" in (KUSTOMIZE_DIR / "overlays" / overlay / "kustomization.yaml").read_text(), overlay
    docs = build_with(tmp_path / "tls", "cpu", ["tls"])  # a Secret mlflow-tls of the user's own
    assert not [d for d in docs if d["apiVersion"].startswith("cert-manager.io")]
    env = _env_configmap(docs)
    assert env["MLFLOW_TRACKING_URI"] == "https://mlflow:5000"
    ca_dir = os.path.dirname(env["MLFLOW_TRACKING_SERVER_CERT_PATH"])
    dep = next(d for d in docs if d["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    tls_dir = next(e["value"] for e in c["env"] if e["name"] == "FLANSCALE_MLFLOW_TLS")
    mounted = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volume = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mounted[tls_dir])
    assert volume["secret"]["secretName"] == k8s_render.MLFLOW_TLS_SECRET
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http", "scheme": "HTTPS"}
    assert c["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    # Every Ray pod, of the RayCluster and of a rendered RayJob, trusts the CA, and only it.
    for where, pod, containers in pods(docs + jobs["cpu"]):
        if where.endswith("/submitter") or not where.startswith(("RayCluster/", "RayJob/")):
            continue
        ray = containers[0]
        assert {"configMapRef": {"name": "flanscale-env"}} in ray["envFrom"], where
        [mount] = [m for m in ray["volumeMounts"] if m["mountPath"] == ca_dir]
        [ca] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert ca["secret"] == {"secretName": k8s_render.MLFLOW_TLS_SECRET, "optional": True,
                                "items": [{"key": "ca.crt", "path": "ca.crt"}]}, where
    # The rendered RayJob names no MLflow address of its own: it follows flanscale-env.
    assert "--tracking-uri" not in jobs["cpu"][1]["spec"]["entrypoint"]


def test_cert_manager_certificate_names_what_clients_dial(built_with_components):
    docs = built_with_components["gpu"]
    cert = next(d for d in docs if d["kind"] == "Certificate" and d["metadata"]["name"] == "mlflow")
    host = _env_configmap(docs)["MLFLOW_TRACKING_URI"].split("//")[1].split(":")[0]
    assert host in cert["spec"]["dnsNames"] and "localhost" in cert["spec"]["dnsNames"]
    assert f"mlflow.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["secretName"] == k8s_render.MLFLOW_TLS_SECRET
    issuers = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Issuer"}
    ca = issuers[cert["spec"]["issuerRef"]["name"]]["spec"]["ca"]["secretName"]
    ca_cert = next(d for d in docs if d["kind"] == "Certificate" and d["spec"]["secretName"] == ca)
    assert ca_cert["spec"]["isCA"] is True and "selfSigned" in issuers[ca_cert["spec"]["issuerRef"]["name"]]["spec"]


def test_podmonitor_scrapes_every_ray_pod_on_its_metrics_port(built_with_components, jobs):
    docs = built_with_components["tpu"]
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    ep = _endpoints(docs, jobs["tpu"])
    for name in RAY:
        assert matches(monitor["spec"]["selector"], ep[name].labels), name
    assert not matches(monitor["spec"]["selector"], ep["submitter"].labels)
    for where, pod, containers in pods(docs + jobs["tpu"]):
        if where.startswith(("RayCluster/", "RayJob/")) and not where.endswith("/submitter"):
            ports = {p["name"]: p["containerPort"] for p in containers[0].get("ports", [])}
            assert ports.get(endpoint["port"]) == k8s_render.METRICS_PORT, where


# ---- Images pinned by digest ----

DIGEST = "sha256:" + "0123456789abcdef" * 4


def test_shipped_overlays_use_tags_and_a_digest_pins_every_flanscale_container(built, tmp_path):
    for overlay, docs in built.items():
        images = {c["image"] for _, _, cs in pods(docs) for c in cs if "image" in c}
        assert not [i for i in images if "@" in i], overlay
    # k8s/README.md: an overlay of one's own with kustomize's `images:` and a digest.
    docs = build_with(tmp_path / "pinned", "gpu", images=[
        {"name": "flanscale/flanscale", "newName": "registry.example/flanscale", "digest": DIGEST}])
    images = {(w, c["name"]): c["image"] for w, _, cs in pods(docs) for c in cs if "image" in c}
    ours = {k: v for k, v in images.items() if not k[0].startswith("StatefulSet/")}
    assert ours and set(ours.values()) == {f"registry.example/flanscale@{DIGEST}"}
    assert images[("StatefulSet/postgresql", "postgresql")] == "postgres:17-bookworm"
    assert yaml.safe_load((tmp_path / "pinned" / "kustomization.yaml").read_text())["images"][0]["digest"] == DIGEST


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_component_builds_alone(tmp_path, component):
    docs = build_with(tmp_path / component, "cpu", [component])
    assert docs and secret_problems(docs) == []
