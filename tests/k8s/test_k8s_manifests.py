"""k8s/: every overlay builds with kustomize, validates strictly (built-in kinds against the
Kubernetes OpenAPI schemas, RayCluster against the KubeRay v1.7.0 CRD) and is locked down."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from conftest import (CUSTOM_KINDS, KUSTOMIZE_DIR, OVERLAYS, REPO, builtin_errors, crd_errors, pod_specs)


def _kinds(docs):
    return sorted(d["kind"] for d in docs)


def _one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_the_whole_stack(built, overlay):
    docs = built[overlay]
    assert _kinds(docs) == sorted([
        "Namespace", "ServiceAccount", "ServiceAccount", "Role", "RoleBinding", *["ConfigMap"] * 4,
        "Service", "Service", "PersistentVolumeClaim", "Deployment", "StatefulSet", "RayCluster",
        *["NetworkPolicy"] * 11,
    ])
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"flanscale"}
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "flanscale" for d in docs)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_kinds_validate_strictly(built, overlay):
    errors = [e for d in built[overlay] if d["kind"] not in CUSTOM_KINDS for e in builtin_errors(d)]
    assert errors == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_raycluster_matches_the_kuberay_crd(built, crd_validators, overlay):
    cluster = _one(built[overlay], "RayCluster")
    assert crd_errors(crd_validators, cluster) == []


def test_validators_reject_unknown_and_misplaced_fields(built, crd_validators):
    cluster = _one(built["gpu"], "RayCluster")
    bad = copy.deepcopy(cluster)
    bad["spec"]["autoscalerOption"] = bad["spec"].pop("autoscalerOptions")  # typo
    bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["gpus"] = 8  # not a container field
    bad["spec"]["authOptions"]["mode"] = "password"  # not in the enum
    errors = crd_errors(crd_validators, bad)
    assert any("autoscalerOption" in e for e in errors)
    assert any("gpus" in e for e in errors)
    assert any("password" in e for e in errors)
    deployment = copy.deepcopy(_one(built["cpu"], "Deployment", "mlflow"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    assert builtin_errors(deployment)


def _check_container(where: str, c: dict, pod_security: dict) -> list[str]:
    problems = []
    sc = c.get("securityContext") or {}
    if not (sc.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
        problems.append(f"{where}/{c['name']}: not runAsNonRoot")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}/{c['name']}: allowPrivilegeEscalation not false")
    if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
        problems.append(f"{where}/{c['name']}: capabilities not drop ALL")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{where}/{c['name']}: root filesystem writable")
    if sc.get("privileged"):
        problems.append(f"{where}/{c['name']}: privileged")
    res = c.get("resources") or {}
    for part in ("requests", "limits"):
        for what in ("cpu", "memory"):
            if what not in (res.get(part) or {}):
                problems.append(f"{where}/{c['name']}: no {part}.{what}")
    return problems


def locked_down_problems(docs) -> list[str]:
    problems = []
    for doc in docs:
        for where, pod in pod_specs(doc):
            ps = pod.get("securityContext") or {}
            if ps.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append(f"{where}: no RuntimeDefault seccomp profile")
            if ps.get("runAsUser") == 0:
                problems.append(f"{where}: runs as uid 0")
            for key in ("hostNetwork", "hostPID", "hostIPC"):
                if pod.get(key):
                    problems.append(f"{where}: {key}")
            if any("hostPath" in v for v in pod.get("volumes", [])):
                problems.append(f"{where}: hostPath volume")
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                problems += _check_container(where, c, ps)
        if doc["kind"] in CUSTOM_KINDS:
            spec = doc["spec"].get("rayClusterSpec", doc["spec"])
            auto = spec.get("autoscalerOptions", {})
            problems += _check_container(f"{doc['kind']}/{doc['metadata']['name']}", {"name": "autoscaler", **auto},
                                         {"runAsNonRoot": False})
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_non_root_confined_and_sized(built, overlay):
    assert locked_down_problems(built[overlay]) == []


def test_lockdown_check_catches_a_root_container(built):
    docs = copy.deepcopy(built["cpu"])
    dep = _one(docs, "Deployment", "mlflow")
    dep["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"runAsUser": 0}
    del dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    problems = locked_down_problems(docs)
    assert any("allowPrivilegeEscalation" in p for p in problems)
    assert any("no limits.cpu" in p for p in problems)


def _readme_secrets() -> dict[str, set[str]]:
    """Secret name -> keys, from the `kubectl create secret generic` commands of k8s/README.md."""
    text = (KUSTOMIZE_DIR / "README.md").read_text()
    secrets: dict[str, set[str]] = {}
    for cmd in re.findall(r"kubectl create secret generic (?:\\\n|[^\n])+", text):
        name = cmd.split()[4]
        secrets[name] = set(re.findall(r"--from-literal=([\w.-]+)=", cmd))
    return secrets


def test_secrets_are_referenced_never_committed(built):
    committed = [p for p in KUSTOMIZE_DIR.rglob("*.yaml") if re.search(r"^kind:\s*Secret\b", p.read_text(), re.M)]
    assert committed == []
    documented = _readme_secrets()
    assert set(documented) == {"flanscale-postgres", "flanscale-mlflow-auth", "flanscale-mlflow-sweeps", "flanscale-ray-auth"}
    for overlay, docs in built.items():
        assert not [d for d in docs if d["kind"] == "Secret"]
        for doc in docs:
            for where, pod in pod_specs(doc):
                for c in pod.get("containers", []):
                    for env in c.get("env", []):
                        if re.search(r"PASSWORD|TOKEN|SECRET", env["name"]) and env["name"] != "RAY_AUTH_MODE":
                            ref = env.get("valueFrom", {}).get("secretKeyRef")
                            assert ref and "value" not in env, f"{overlay} {where}: {env['name']} not from a Secret"
                            assert ref["key"] in documented[ref["name"]], f"{ref} is not created by the README"
                for v in pod.get("volumes", []):
                    if "secret" in v:  # mlflow-tls: k8s/components/tls documents it, and it is optional here
                        name = v["secret"]["secretName"]
                        assert name in documented or v["secret"].get("optional"), f"{overlay} {where}: volume of {name}"
                        if name in documented:
                            assert {i["key"] for i in v["secret"].get("items", [])} <= documented[name]
            if doc["kind"] == "RayCluster":
                auth = doc["spec"]["authOptions"]
                assert auth == {"mode": "token", "secretName": "flanscale-ray-auth"}
                assert documented["flanscale-ray-auth"] == {"auth_token"}  # the key KubeRay reads
            if doc["kind"] == "ConfigMap":
                assert not any(re.search(r"password|token", k, re.I) for k in doc.get("data", {}))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_referenced_configmaps_and_service_accounts_exist(built, overlay):
    docs = built[overlay]
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    for doc in docs:
        for where, pod in pod_specs(doc):
            assert pod.get("serviceAccountName") in accounts, where
            refs = [v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v]
            refs += [e["configMapRef"]["name"] for c in pod["containers"] for e in c.get("envFrom", []) if "configMapRef" in e]
            assert set(refs) <= configmaps, f"{where}: {set(refs) - configmaps} missing"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_head_is_non_preemptible_and_autoscales_with_v2(built, overlay):
    spec = _one(built[overlay], "RayCluster")["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]
    terms = head["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    exprs = {(e["key"], e["operator"], tuple(e["values"])) for t in terms for e in t["matchExpressions"]}
    assert ("cloud.google.com/gke-spot", "NotIn", ("true",)) in exprs
    assert ("cloud.google.com/gke-preemptible", "NotIn", ("true",)) in exprs
    assert not head.get("tolerations")
    assert head["serviceAccountName"] == "flanscale-ray-head"
    # Cells never land on the head, where the controller and the autoscaler run.
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert head["automountServiceAccountToken"] is False
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["version"] == "v2"
    env = {e["name"]: e.get("value") for e in head["containers"][0]["env"]}
    assert env["RAY_enable_autoscaler_v2"] == "1"
    # Autoscaler v2 needs pods that are not restarted in place.
    assert all(pod["restartPolicy"] == "Never" for _, pod in pod_specs({"kind": "RayCluster", "metadata": {"name": "x"}, "spec": spec}))
    for g in spec["workerGroupSpecs"]:
        assert g["minReplicas"] == 0 or overlay == "cpu"
        assert g["template"]["spec"]["serviceAccountName"] == "flanscale-workload"
        assert g["template"]["spec"]["automountServiceAccountToken"] is False


def test_gpu_overlay_requests_whole_gpu_hosts(built):
    spec = _one(built["gpu"], "RayCluster")["spec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {"h100-80g", "a100-40g", "a100-80g"} <= set(groups)
    for name in ("h100-80g", "a100-40g", "a100-80g"):
        pod = groups[name]["template"]["spec"]
        res = pod["containers"][0]["resources"]
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "8"
        assert "cloud.google.com/gke-accelerator" in pod["nodeSelector"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["containers"][0]["image"].endswith("-cuda")


def test_tpu_overlay_groups_are_whole_slices(built):
    spec = _one(built["tpu"], "RayCluster")["spec"]
    tpu_groups = [g for g in spec["workerGroupSpecs"] if g["groupName"] != "cpu"]
    assert {g["template"]["spec"]["nodeSelector"]["cloud.google.com/gke-tpu-accelerator"] for g in tpu_groups} == {
        "tpu-v4-podslice", "tpu-v5p-slice", "tpu-v6e-slice"}
    for g in tpu_groups:
        pod = g["template"]["spec"]
        chips_per_host = int(pod["containers"][0]["resources"]["limits"]["google.com/tpu"])
        dims = [int(x) for x in pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"].split("x")]
        chips = 1
        for d in dims:
            chips *= d
        assert g["numOfHosts"] * chips_per_host == chips, g["groupName"]
        assert pod["containers"][0]["image"].endswith("-tpu")


def test_cpu_overlay_is_small_and_has_no_accelerators(built):
    docs = built["cpu"]
    spec = _one(docs, "RayCluster")["spec"]
    assert [g["groupName"] for g in spec["workerGroupSpecs"]] == ["cpu"]
    for _, pod in pod_specs(_one(docs, "RayCluster")):
        limits = pod["containers"][0]["resources"]["limits"]
        assert set(limits) == {"cpu", "memory"} and int(limits["cpu"]) <= 2
        assert pod["containers"][0]["image"].endswith("-cpu")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_the_autoscalers_least(built, overlay):
    docs = built[overlay]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    cluster = _one(docs, "RayCluster")["metadata"]["name"]
    # Named like the RayCluster, so KubeRay adopts it instead of creating its own Role, which
    # would also let the head patch (and resize) every pod of the namespace.
    role = _one(docs, "Role", cluster)
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": ["ray.io"], "resources": ["rayclusters"], "resourceNames": [cluster], "verbs": ["get", "patch"]},
    ]
    binding = _one(docs, "RoleBinding", cluster)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": cluster}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "flanscale-ray-head", "namespace": "flanscale"}]
    for name in ("flanscale-workload", "flanscale-ray-head"):
        assert _one(docs, "ServiceAccount", name)["automountServiceAccountToken"] is False


def test_the_autoscaler_role_covers_what_ray_calls():
    """The Role against the requests Ray's KubeRay autoscaler (v2) sends, read from its source."""
    import inspect

    pytest.importorskip("ray")
    from ray.autoscaler.v2.instance_manager.cloud_providers.kuberay import cloud_provider

    source = inspect.getsource(cloud_provider)
    assert 'f"rayclusters/{self._cluster_name}"' in source and "self._patch(" in source  # get + patch, by name
    assert 'f"pods?labelSelector={label_selector}"' in source  # list
    assert re.search(r'self\._get\(f"pods/\{', source) or "_get_head_pod_resource_version" in source  # get
    # Deleting or suspending an idle cluster (idleTerminationOptions) and resizing pods in
    # place (ray.io/ippr) are the calls that need more; neither is used here.
    import yaml

    cluster = yaml.safe_load((KUSTOMIZE_DIR / "base" / "raycluster.yaml").read_text())
    assert "idleTerminationOptions" not in cluster["spec"] and "ray.io/ippr" not in str(cluster)


def test_ingress_comes_from_the_namespace_and_the_operator_only(built):
    policies = [d for d in built["cpu"] if d["kind"] == "NetworkPolicy"]
    deny = _one(policies, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                assert "ipBlock" not in peer, p["metadata"]["name"]
                if "namespaceSelector" in peer:  # only the KubeRay operator, only the dashboard
                    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kuberay-system"}
                    assert [x["port"] for x in rule["ports"]] == [8265]


def test_namespace_enforces_restricted_pod_security(built):
    ns = _one(built["gpu"], "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_mlflow_runs_its_start_script_on_postgresql(built):
    docs = built["gpu"]
    dep = _one(docs, "Deployment", "mlflow")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["python", "/etc/flanscale/mlflow-start/start.py"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    start = _one(docs, "ConfigMap", volumes["start"]["configMap"]["name"])
    assert start["data"]["start.py"] == (KUSTOMIZE_DIR / "base" / "mlflow" / "start.py").read_text()
    env = {e["name"]: e for e in c["env"]}
    # libpq reads the credentials from PGUSER/PGPASSWORD: the URIs name neither.
    for name in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_DATABASE_URI"):
        assert re.fullmatch(r"postgresql\+psycopg2://postgresql:5432/\w+", env[name]["value"]), env[name]
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "flanscale-postgres", "key": "password"}
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "flanscale-mlflow-auth"
    # The sweep user's credentials are files for the start script, not variables the server inherits.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    sweeps = volumes[mounts[env["FLANSCALE_SWEEP_CREDENTIALS"]["value"]]]["secret"]
    assert sweeps["secretName"] == "flanscale-mlflow-sweeps" and sweeps["defaultMode"] == 0o440
    assert pod["enableServiceLinks"] is False  # no MLFLOW_PORT=tcp://... from the Service named mlflow
    sts = _one(docs, "StatefulSet")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]


def test_every_manifest_file_is_used(built):
    # A file under k8s/ that no kustomization lists would silently never be applied.
    listed = set()
    for kfile in KUSTOMIZE_DIR.rglob("kustomization.yaml"):
        import yaml

        k = yaml.safe_load(kfile.read_text())
        for entry in k.get("resources", []) + [p["path"] for p in k.get("patches", []) if "path" in p]:
            listed.add((kfile.parent / entry).resolve())
        for gen in k.get("configMapGenerator", []):
            listed.update((kfile.parent / f).resolve() for f in gen.get("files", []))
    manifests = {p.resolve() for p in KUSTOMIZE_DIR.rglob("*.yaml") if p.name != "kustomization.yaml"}
    manifests |= {p.resolve() for p in KUSTOMIZE_DIR.rglob("*.sql")}
    # Scripts shipped in ConfigMaps (k8s/image/ belongs to the Dockerfile, not to kustomize).
    manifests |= {p.resolve() for part in ("base", "overlays", "components") for p in (KUSTOMIZE_DIR / part).rglob("*.py")}
    assert manifests - listed == set(), sorted(str(Path(p).relative_to(REPO)) for p in manifests - listed)
