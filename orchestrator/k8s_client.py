"""Talking to a Kubernetes API server: create a sweep's RayJob and ConfigMap, read the RayJob
back, and read the sweep's cells from MLflow.

Uses the official `kubernetes` client (kubeconfig, or the pod's service account when running
inside a cluster). API errors become one-line UserErrors that say what to do.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from trainers.spec import UserError
from trainers.states import CellState

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
SWEEP_ANNOTATION = "flanscale.io/sweep-name"
MAX_CONCURRENT_ANNOTATION = "flanscale.io/max-concurrent"


def api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """An ApiClient from a kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) or, inside
    a pod with none of those, from the pod's service account."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    default = os.path.expanduser(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0])
    if not kubeconfig and not context and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.path.exists(default):
        try:
            config.load_incluster_config()
        except ConfigException as e:
            raise UserError(f"in-cluster Kubernetes config: {e}") from None
        return client.ApiClient()
    where = kubeconfig or default
    if not os.path.exists(where):
        raise UserError(f"--kubeconfig: {where}: no such file; pass --kubeconfig PATH or set KUBECONFIG")
    try:
        return config.new_client_from_config(config_file=where, context=context)
    except ConfigException as e:
        what = f"--context {context!r}" if context and "context" in str(e).lower() else f"--kubeconfig {where}"
        raise UserError(f"{what}: {e}") from None


def _explain(e: Exception, action: str, namespace: str) -> UserError:
    from kubernetes.client.exceptions import ApiException

    if isinstance(e, ApiException):
        reason = ""
        try:
            import json

            reason = json.loads(e.body or "{}").get("message", "")
        except ValueError:
            reason = (e.body or "")[:200]
        if e.status == 404 and "rayjob" in action.lower():
            return UserError(f"{action}: the API server does not serve ray.io/v1 RayJobs in namespace {namespace!r} "
                             f"({reason or e.reason}); install the KubeRay operator v1.7.0 (see k8s/README.md)")
        if e.status in (401, 403):
            return UserError(f"{action}: {e.reason} ({reason}); check your kubeconfig user's RBAC in namespace {namespace!r}")
        return UserError(f"{action}: HTTP {e.status} {e.reason}: {reason}")
    return UserError(f"{action}: cannot reach the Kubernetes API server: {type(e).__name__}: {str(e)[:200]}")


def _call(action: str, namespace: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn(*args, **kwargs)
    except (ApiException, HTTPError, OSError) as e:
        raise _explain(e, action, namespace) from None


def get_rayjob(api: Any, namespace: str, name: str) -> dict[str, Any] | None:
    """The RayJob object, or None when there is none of that name."""
    import json

    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    action = f"get RayJob {namespace}/{name}"
    try:
        return client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as e:
        # A missing object is a Status naming it; a missing kind (no CRD) is a bare 404 page.
        try:
            details = json.loads(e.body or "").get("details") or {}
        except ValueError:
            details = {}
        if e.status == 404 and details.get("name") == name:
            return None
        raise _explain(e, action, namespace) from None
    except Exception as e:  # connection refused, DNS, TLS
        raise _explain(e, action, namespace) from None


def submit(api: Any, docs: list[dict[str, Any]]) -> list[str]:
    """Create the RayJob, then its ConfigMap owned by it (deleting the RayJob deletes both).

    Refuses to touch an existing RayJob of the same name: its ConfigMap is its running spec.
    Returns one line per object created.
    """
    from kubernetes import client

    by_kind = {d["kind"]: d for d in docs}
    rayjob, configmap = by_kind["RayJob"], by_kind["ConfigMap"]
    ns, name = rayjob["metadata"]["namespace"], rayjob["metadata"]["name"]
    if get_rayjob(api, ns, name) is not None:
        raise UserError(f"RayJob {ns}/{name} already exists; delete it first (kubectl delete rayjob {name} -n {ns}) "
                        "or pass --name; re-running a sweep resumes its cells")
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    created = _call(f"create RayJob {ns}/{name}", ns, custom.create_namespaced_custom_object,
                    GROUP, VERSION, ns, PLURAL, rayjob)
    uid = (created or {}).get("metadata", {}).get("uid")
    body = dict(configmap, metadata=dict(configmap["metadata"]))
    if uid:
        body["metadata"]["ownerReferences"] = [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "RayJob", "name": name, "uid": uid}]
    cm_name = body["metadata"]["name"]
    try:
        _create_or_replace_configmap(core, ns, body)
    except UserError as e:
        # Without its spec the job's head pod could never start: take the RayJob back.
        try:
            custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except Exception:  # the original error is the one worth reporting
            pass
        raise UserError(f"{e}; RayJob {ns}/{name} was deleted again, nothing is left running") from None
    return [f"rayjob.ray.io/{name} created", f"configmap/{cm_name} created"]


def _create_or_replace_configmap(core: Any, ns: str, body: dict[str, Any]) -> None:
    from kubernetes.client.exceptions import ApiException

    name = body["metadata"]["name"]
    try:
        core.create_namespaced_config_map(ns, body)
    except ApiException as e:
        if e.status != 409:
            raise _explain(e, f"create ConfigMap {ns}/{name}", ns) from None
        # A leftover from an earlier job of the same name: this job's spec replaces it.
        _call(f"replace ConfigMap {ns}/{name}", ns, core.replace_namespaced_config_map, name, ns, body)
    except Exception as e:
        raise _explain(e, f"create ConfigMap {ns}/{name}", ns) from None


@dataclass(frozen=True)
class JobStatus:
    name: str
    namespace: str
    sweep: str
    job_status: str  # Ray's job state: PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED ("" before submission)
    deployment_status: str  # KubeRay's: Initializing, Running, Complete, Failed, ...
    message: str
    cluster: str
    dashboard: str
    start_time: str
    end_time: str
    max_concurrent: int = 1  # cells at once, for the time-left estimate

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def job_status(obj: dict[str, Any]) -> JobStatus:
    meta, status = obj.get("metadata", {}), obj.get("status") or {}
    sweep = (meta.get("annotations") or {}).get(SWEEP_ANNOTATION) or (meta.get("labels") or {}).get("flanscale.io/sweep", "")
    return JobStatus(
        name=meta.get("name", ""), namespace=meta.get("namespace", ""), sweep=sweep,
        job_status=status.get("jobStatus", ""), deployment_status=status.get("jobDeploymentStatus", ""),
        message=status.get("message", ""), cluster=status.get("rayClusterName", ""),
        dashboard=status.get("dashboardURL", ""), start_time=str(status.get("startTime", "") or ""),
        end_time=str(status.get("endTime", "") or ""),
        max_concurrent=_int((meta.get("annotations") or {}).get(MAX_CONCURRENT_ANNOTATION), 1),
    )


def _int(text: Any, default: int) -> int:
    try:
        return max(1, int(text))
    except (TypeError, ValueError):
        return default


def cell_rows(sweep: str, tracking_uri: str) -> list[Any]:
    """The sweep's cells as progress rows, read from MLflow (the controller's durable store)."""
    from orchestrator.progress import CellRow
    from orchestrator.store import SweepStore

    store = SweepStore(tracking_uri)
    rows = []
    for r in store.list_cells(sweep):
        if r.state == CellState.FINISHED:
            step = r.total_steps
        else:
            point = store.last_point(r.run_id) if r.metrics.get("train/loss") is not None else None
            step = point[0] if point else 0
        rows.append(CellRow(
            key=r.key, name=r.name, state=r.state, step=step, total_steps=r.total_steps,
            loss=r.metrics.get("train/loss"), attempts=r.attempts, run_id=r.run_id,
            step_s=r.metrics.get("train/step_s"), error=r.error,
        ))
    return rows
