"""Reading built manifests the way the cluster would: NetworkPolicy verdicts, Secret
references, command lines and service-account tokens of every pod."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from conftest import pod_specs

NAMESPACE = "flanscale"
ADMIN_SECRET = "flanscale-mlflow-auth"
SWEEP_SECRET = "flanscale-mlflow-sweeps"
POSTGRES_SECRET = "flanscale-postgres"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def matches(selector: dict, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels + In/NotIn/Exists/DoesNotExist)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace + labels) or an address outside the cluster (namespace None)."""

    name: str
    ip: str
    namespace: str | None = None
    labels: dict = field(default_factory=dict, hash=False)


def _peer_admits(peer: dict, other: Endpoint, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        # Some CNIs (Calico) match pod addresses against ipBlocks too: treat them alike.
        block = peer["ipBlock"]
        ip = ipaddress.ip_address(other.ip)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(x) for x in block.get("except", []))
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        if not matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": other.namespace}):
            return False
    elif other.namespace != policy_ns:
        return False
    return matches(peer.get("podSelector") or {}, other.labels)


def _port_admits(rule: dict, port: int, protocol: str) -> bool:
    ports = rule.get("ports") or []
    return not ports or any(p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in ports)


def _side_allows(policies: list[dict], pod: Endpoint, other: Endpoint, port: int, protocol: str, kind: str) -> bool:
    if pod.namespace is None:
        return True  # outside the cluster: not ours to police
    mine = [p for p in policies if p["metadata"].get("namespace") == pod.namespace
            and kind in p["spec"].get("policyTypes", []) and matches(p["spec"]["podSelector"], pod.labels)]
    if not mine:
        return True
    key, peers_key = ("egress", "to") if kind == "Egress" else ("ingress", "from")
    for p in mine:
        for rule in p["spec"].get(key, []):
            peers = rule.get(peers_key)
            if _port_admits(rule, port, protocol) and (
                    not peers or any(_peer_admits(x, other, p["metadata"]["namespace"]) for x in peers)):
                return True
    return False


def connects(docs: list[dict], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """Whether src may open a connection to dst:port under the NetworkPolicies in docs."""
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    return (_side_allows(policies, src, dst, port, protocol, "Egress")
            and _side_allows(policies, dst, src, port, protocol, "Ingress"))


def ray_pod_labels(doc: dict) -> dict[str, dict]:
    """Labels of the head and first worker pods of a RayCluster/RayJob, as KubeRay sets them."""
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    cluster = {"ray.io/cluster": doc["metadata"]["name"]}
    head = {**spec["headGroupSpec"]["template"]["metadata"]["labels"], **cluster, "ray.io/node-type": "head"}
    worker = {**spec["workerGroupSpecs"][0]["template"]["metadata"]["labels"], **cluster, "ray.io/node-type": "worker"}
    return {"head": head, "worker": worker}


# ---- Secrets, command lines, tokens ----

def pods(docs: list[dict]) -> list[tuple[str, dict, list[dict]]]:
    """(where, pod spec, containers) of every pod, the autoscaler sidecar KubeRay adds included."""
    out = []
    for doc in docs:
        for where, pod in pod_specs(doc):
            containers = list(pod.get("containers", [])) + list(pod.get("initContainers", []))
            if doc["kind"] in ("RayCluster", "RayJob") and where.endswith("/head"):
                spec = doc["spec"].get("rayClusterSpec", doc["spec"])
                if spec.get("enableInTreeAutoscaling"):
                    containers.append({"name": "autoscaler", **spec.get("autoscalerOptions", {})})
            out.append((where, pod, containers))
    return out


def secret_refs(pod: dict, containers: list[dict]) -> list[tuple[str, str]]:
    """(container or 'volume:NAME', Secret name) for every way the pod reaches a Secret."""
    refs = []
    for c in containers:
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                refs.append((c["name"], ref["name"]))
        refs += [(c["name"], e["secretRef"]["name"]) for e in c.get("envFrom", []) if "secretRef" in e]
    for v in pod.get("volumes", []):
        if "secret" in v:
            refs.append((f"volume:{v['name']}", v["secret"]["secretName"]))
        for src in (v.get("projected") or {}).get("sources", []):
            if "secret" in src:
                refs.append((f"volume:{v['name']}", src["secret"]["name"]))
    return refs


_SECRETISH = [re.compile(p, re.I) for p in (
    r"://[^/\s:@]+:[^/\s@]+@",  # user:password@ in a URI
    r"--(?:password|passwd|token|secret)\b", r"\b(?:password|passwd|token|secret)=",
)]


def command_line_problems(where: str, c: dict, extra: list[str] = ()) -> list[str]:
    """Secrets that would show in `ps`: a Secret-sourced variable expanded into command/args
    (or copied into another variable), or credentials written into an argument."""
    secret_vars = [e["name"] for e in c.get("env", []) if (e.get("valueFrom") or {}).get("secretKeyRef")]
    words = [str(w) for w in list(c.get("command") or []) + list(c.get("args") or []) + list(extra)]
    values = [str(e.get("value", "")) for e in c.get("env", [])]
    problems = []
    for name in secret_vars:
        ref = re.compile(rf"\$\({name}\)|\$\{{{name}\}}|\${name}\b")
        problems += [f"{where}/{c['name']}: ${name} on the command line" for w in words if ref.search(w)]
        problems += [f"{where}/{c['name']}: ${name} copied into another variable" for v in values if ref.search(v)]
    problems += [f"{where}/{c['name']}: {w[:60]!r} looks like a credential" for w in words
                 if any(p.search(w) for p in _SECRETISH)]
    return problems


def automounted(pod: dict, accounts: dict[str, dict]) -> bool:
    """Whether the kubelet mounts the service-account token into every container of the pod."""
    if "automountServiceAccountToken" in pod:
        return bool(pod["automountServiceAccountToken"])
    account = accounts.get(pod.get("serviceAccountName", "default"), {})
    return bool(account.get("automountServiceAccountToken", True))


def token_volumes(pod: dict) -> set[str]:
    return {v["name"] for v in pod.get("volumes", [])
            if any("serviceAccountToken" in s for s in (v.get("projected") or {}).get("sources", []))}
