"""Kubernetes objects for one sweep: a KubeRay RayJob whose cluster is sized from the plan
(worker shapes from orchestrator/k8s.py), and the ConfigMap holding the sweep it runs.

Pure: (SweepSpec, planned cells, options) -> list of plain dicts, so `flanscale k8s render`
and `flanscale k8s submit` send exactly the same objects, and tests validate them against
the KubeRay CRD schemas. The pods follow k8s/base (same Secrets, ServiceAccounts, security
contexts, non-preemptible head, API token for the autoscaler sidecar only), which must be
applied to the namespace first; they take MLflow's address from its ConfigMap flanscale-env,
so a namespace with k8s/components/tls gets HTTPS RayJobs too.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from orchestrator.k8s import NODE_POOLS, WorkerShape, k8s_name, worker_shapes
from trainers.spec import UserError

DEFAULT_NAMESPACE = "flanscale"
DEFAULT_IMAGE_REPO = "flanscale/flanscale"
RAY_VERSION = "2.60.0"
OVERLAYS = ("gpu", "tpu", "cpu")
# Image tag suffix per overlay (the Dockerfile's ACCELERATOR build argument).
IMAGE_VARIANT = {"gpu": "cuda", "tpu": "tpu", "cpu": "cpu"}

# Names created by k8s/base (and the Secrets its README creates). Ray pods log to MLflow as
# the sweep user; the admin's Secret (flanscale-mlflow-auth) stays with the MLflow pod.
RAY_AUTH_SECRET = "flanscale-ray-auth"
MLFLOW_SWEEP_SECRET = "flanscale-mlflow-sweeps"
MLFLOW_TLS_SECRET = "mlflow-tls"
MLFLOW_CA_MOUNT = "/etc/flanscale/mlflow-ca"
ENV_CONFIGMAP = "flanscale-env"
HEAD_SERVICE_ACCOUNT = "flanscale-ray-head"
WORKLOAD_SERVICE_ACCOUNT = "flanscale-workload"
SWEEP_LABEL = "flanscale.io/sweep"
SPEC_MOUNT = "/config"  # the submitter's copy of the job's working directory
SPEC_FILE = "sweep.yaml"  # the composed spec in a job's working directory
RUN_AS = 1000  # the image's numeric user
METRICS_PORT = 8080  # Ray's metrics agent, KubeRay's default; k8s/components/prometheus scrapes it


SPOT_TOLERATION = {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
# Head sizes per overlay: the head runs the controller (no JAX), not cells.
HEAD_SIZE = {"cpu": (1, 3), "gpu": (4, 16), "tpu": (4, 16)}


@dataclass(frozen=True)
class Storage:
    """Volumes every Ray pod of a job mounts besides its scratch space."""

    home_claim: str = ""  # ReadWriteMany PVC at /data (FLANSCALE_HOME=/data/flanscale); "" = pod-local
    data_claim: str = ""  # read-only PVC with datasets (e.g. Flan exports); "" = none
    data_mount: str = "/datasets"


@dataclass(frozen=True)
class RenderOptions:
    overlay: str
    namespace: str = DEFAULT_NAMESPACE
    image: str = ""  # "" = flanscale/flanscale:<version>-<variant>
    name: str = ""  # "" = the sweep's name, made a valid Kubernetes name
    backoff_limit: int = 2  # whole-job retries; a resubmitted sweep resumes its cells
    ttl_seconds: int = 3600  # keep the finished cluster's status around this long
    storage: Storage = field(default_factory=Storage)
    # Files for the job's working directory besides the composed spec: (path under it, bytes).
    uploads: tuple[tuple[str, bytes], ...] = ()
    # `flanscale sweep run` flags the driver passes on (e.g. --retry-failed, --register-models).
    run_flags: tuple[str, ...] = ()


# ---- pod pieces (mirroring k8s/base) ----

def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}}


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _resources(cpu: int | str, memory_gib: int, extra: dict[str, str] | None = None) -> dict[str, Any]:
    amounts = {"cpu": str(cpu), "memory": f"{memory_gib}Gi", **(extra or {})}
    # Requests equal limits: Ray sizes itself from the limits, the scheduler from requests.
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _ray_env() -> list[dict[str, Any]]:
    return [
        {"name": "HOME", "value": "/tmp"},
        _secret_env("MLFLOW_TRACKING_USERNAME", MLFLOW_SWEEP_SECRET, "username"),
        _secret_env("MLFLOW_TRACKING_PASSWORD", MLFLOW_SWEEP_SECRET, "password"),
    ]


def _mlflow_ca_volume() -> dict[str, Any]:
    """The CA of MLflow's certificate where k8s/components/tls is on; nothing otherwise. Only
    ca.crt of the Secret is projected, never its key."""
    return {"name": "mlflow-ca", "secret": {"secretName": MLFLOW_TLS_SECRET, "optional": True,
                                            "items": [{"key": "ca.crt", "path": "ca.crt"}]}}


def _api_token_volume() -> dict[str, Any]:
    """What automounting the service account would give, mounted by the autoscaler alone."""
    return {"name": "kube-api-access", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
    ]}}


def _volumes(scratch_gib: int, shm_gib: int, storage: Storage) -> list[dict[str, Any]]:
    home: dict[str, Any] = ({"persistentVolumeClaim": {"claimName": storage.home_claim}} if storage.home_claim
                            else {"emptyDir": {"sizeLimit": f"{scratch_gib}Gi"}})
    volumes = [
        {"name": "tmp", "emptyDir": {"sizeLimit": f"{scratch_gib}Gi"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_gib}Gi"}},
        {"name": "flanscale-home", **home},
        _mlflow_ca_volume(),
    ]
    if storage.data_claim:
        volumes.append({"name": "datasets", "persistentVolumeClaim": {"claimName": storage.data_claim, "readOnly": True}})
    return volumes


def _mounts(storage: Storage) -> list[dict[str, Any]]:
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"},
              {"name": "flanscale-home", "mountPath": "/data"},
              {"name": "mlflow-ca", "mountPath": MLFLOW_CA_MOUNT, "readOnly": True}]
    if storage.data_claim:
        mounts.append({"name": "datasets", "mountPath": storage.data_mount, "readOnly": True})
    return mounts


def _pod_labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "flanscale-ray", "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": "flanscale"}


def non_preemptible_affinity() -> dict[str, Any]:
    """Keep a pod off spot/preemptible capacity of GKE, EKS and AKS (absent labels match)."""
    exprs = [("cloud.google.com/gke-spot", "true"), ("cloud.google.com/gke-preemptible", "true"),
             ("eks.amazonaws.com/capacityType", "SPOT"), ("kubernetes.azure.com/scalesetpriority", "spot")]
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": k, "operator": "NotIn", "values": [v]} for k, v in exprs]}]}}}


def head_group(overlay: str, image: str, storage: Storage = Storage()) -> dict[str, Any]:
    cpu, memory = HEAD_SIZE[overlay]
    container = {
        "name": "ray-head", "image": image,
        "ports": [{"name": "gcs", "containerPort": 6379}, {"name": "dashboard", "containerPort": 8265},
                  {"name": "client", "containerPort": 10001}, {"name": "metrics", "containerPort": METRICS_PORT}],
        "envFrom": [{"configMapRef": {"name": ENV_CONFIGMAP}}],
        "env": _ray_env() + [{"name": "RAY_enable_autoscaler_v2", "value": "1"}],
        "resources": _resources(cpu, memory),
        "securityContext": _container_security(),
        "volumeMounts": _mounts(storage),
    }
    return {
        "serviceType": "ClusterIP",
        # No cell on the head: cells ask for CPUs or accelerators and it offers none (the
        # controller's own actor asks for 0 CPUs).
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
        "template": {
            "metadata": {"labels": _pod_labels("ray-head")},
            "spec": {
                "serviceAccountName": HEAD_SERVICE_ACCOUNT,
                # The token goes to the autoscaler sidecar only (_autoscaler_options).
                "automountServiceAccountToken": False,
                "restartPolicy": "Never",
                "securityContext": _pod_security(),
                "affinity": non_preemptible_affinity(),
                "containers": [container],
                "volumes": [_api_token_volume()] + _volumes(max(4, memory), max(1, memory // 8), storage),
            },
        },
    }


def worker_group(shape: WorkerShape, image: str, storage: Storage = Storage()) -> dict[str, Any]:
    extra: dict[str, str] = {}
    pod: dict[str, Any] = {
        "serviceAccountName": WORKLOAD_SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",
        "securityContext": _pod_security(),
    }
    if shape.kind != "cpu":
        pool = NODE_POOLS[shape.accelerator]
        extra[pool.resource] = str(shape.devices_per_host)
        selector = {pool.selector_key: pool.selector_value}
        if shape.topology:
            selector["cloud.google.com/gke-tpu-topology"] = shape.topology
        pod["nodeSelector"] = selector
        # Accelerator nodes are tainted for their resource; workers may run on spot capacity.
        pod["tolerations"] = [{"key": pool.resource, "operator": "Exists", "effect": "NoSchedule"}, SPOT_TOLERATION]
    pod["containers"] = [{
        "name": "ray-worker", "image": image,
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
        "envFrom": [{"configMapRef": {"name": ENV_CONFIGMAP}}],
        "env": _ray_env(),
        "resources": _resources(shape.cpu, shape.memory_gib, extra),
        "securityContext": _container_security(),
        "volumeMounts": _mounts(storage),
    }]
    pod["volumes"] = _volumes(max(8, shape.memory_gib // 4), max(1, shape.memory_gib // 8), storage)
    start: dict[str, str] = {}
    if shape.custom_resources:
        # KubeRay pastes the value into a shell command line: quote the JSON for the shell.
        start["resources"] = '"' + _json(dict(shape.custom_resources)).replace('"', '\\"') + '"'
    tpu = shape.kind == "tpu"
    return {
        "groupName": shape.group_name,
        # A TPU replica is a whole slice of numOfHosts pods; a GPU/CPU cell takes `hosts` replicas.
        "replicas": 1 if tpu else shape.hosts,
        "minReplicas": 0,
        "maxReplicas": shape.max_cells if tpu else shape.hosts * shape.max_cells,
        "numOfHosts": shape.hosts if tpu else 1,
        "rayStartParams": start,
        "template": {
            "metadata": {"labels": _pod_labels("ray-worker")},
            "spec": pod,
        },
    }


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# Paths the pods already use; a dataset mount must not shadow them.
_RESERVED_MOUNTS = ("/tmp", "/dev/shm", "/data", SPEC_MOUNT, MLFLOW_CA_MOUNT)


def _check_storage(storage: Storage) -> None:
    for flag, claim in (("--home-pvc", storage.home_claim), ("--data-pvc", storage.data_claim)):
        if claim and k8s_name(claim, 253) != claim:
            raise UserError(f"{flag}: {claim!r} is not a valid PersistentVolumeClaim name (lowercase letters, digits, '-')")
    path = storage.data_mount
    if storage.data_claim and (not path.startswith("/") or any(
            path == r or path.startswith(r + "/") or r.startswith(path.rstrip("/") + "/") for r in _RESERVED_MOUNTS)):
        raise UserError(f"--data-pvc: mount path {path!r} must be absolute and apart from {', '.join(_RESERVED_MOUNTS)}")


def _autoscaler_options() -> dict[str, Any]:
    return {
        "version": "v2", "upscalingMode": "Default", "idleTimeoutSeconds": 600,
        # Root filesystem is read-only; KubeRay mounts its log volume at /tmp/ray here.
        "env": [{"name": "HOME", "value": "/tmp/ray"}],
        # The one process of the cluster that talks to the API server.
        "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                          "readOnly": True}],
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "securityContext": {**_container_security(), "seccompProfile": {"type": "RuntimeDefault"}},
    }


def _submitter_template(image: str, spec_volume: dict[str, Any]) -> dict[str, Any]:
    """The pod KubeRay starts to run `ray job submit` (it fills in the command). It mounts the
    job's ConfigMap at SPEC_MOUNT, the runtime environment's working_dir, which `ray job
    submit` uploads from here to the Ray cluster: the driver and every cell then start in a
    copy of it, as with `flanscale sweep submit`. Its labels are what k8s/base's egress
    policy for submitters selects."""
    return {"metadata": {"labels": _pod_labels("ray-job-submitter")}, "spec": {
        "restartPolicy": "Never",
        "serviceAccountName": WORKLOAD_SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(),
        "containers": [{
            "name": "ray-job-submitter", "image": image,
            "env": [{"name": "HOME", "value": "/tmp"}, {"name": "RAY_AUTH_MODE", "value": "token"},
                    _secret_env("RAY_AUTH_TOKEN", RAY_AUTH_SECRET, "auth_token")],
            "resources": _resources("500m", 1),
            "securityContext": _container_security(),
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                             {"name": spec_volume["name"], "mountPath": SPEC_MOUNT, "readOnly": True}],
        }],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}, spec_volume],
    }}


def default_image(overlay: str) -> str:
    try:
        from importlib.metadata import version

        tag = version("flanscale")
    except Exception:  # running from a source tree that was never installed
        tag = "0.1.0"
    return f"{DEFAULT_IMAGE_REPO}:{tag}-{IMAGE_VARIANT[overlay]}"


# NAME[:TAG][@sha256:DIGEST] as `docker pull` and kustomize's `images:` take it: an optional
# registry host (with port), lowercase path components, a tag, a digest.
_IMAGE_REF = re.compile(
    r"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?")


def check_image(ref: str) -> str:
    """`ref` if it is an image reference; a digest pins the image, a tag alone does not."""
    if not _IMAGE_REF.fullmatch(ref):
        raise UserError(f"--image: {ref!r} is not an image reference; expected NAME[:TAG] or NAME[:TAG]@sha256:<64 hex "
                        "digits>, e.g. REGISTRY/flanscale@sha256:...")
    return ref


def spec_document(spec: Any) -> dict[str, Any]:
    """The composed sweep (overrides applied) as the cluster will load it.

    Shipping the composed spec rather than the user's file means Hydra defaults and
    command-line overrides resolve here, once, and the cluster plans the very same cells.
    Its tracking URI is dropped: in the cluster, MLflow's address (http or https) comes from
    the pods' environment (ConfigMap flanscale-env), never from the user's machine.
    """
    doc = spec.to_dict()
    doc.pop("tracking_uri", None)
    return doc


def render(spec: Any, cells: list[Any], options: RenderOptions) -> list[dict[str, Any]]:
    """[ConfigMap, RayJob] for `spec`, its RayJob cluster sized from the planned `cells`."""
    import yaml

    if options.overlay not in OVERLAYS:
        raise UserError(f"--overlay: unknown {options.overlay!r}; allowed: {', '.join(OVERLAYS)}")
    namespace = k8s_name(options.namespace, 63)
    if namespace != options.namespace:
        raise UserError(f"--namespace: {options.namespace!r} is not a valid namespace (lowercase letters, digits, '-')")
    shapes = worker_shapes(cells, int(getattr(spec, "max_concurrent", 0) or 0))
    for s in shapes:
        if s.kind != options.overlay:
            raise UserError(
                f"--overlay {options.overlay}: the plan runs on {s.accelerator}, a {s.kind} accelerator; use --overlay {s.kind}"
            )
    _check_storage(options.storage)
    name = k8s_name(options.name or spec.name)
    if options.name and name != options.name:
        raise UserError(f"--name: {options.name!r} is not a valid name; try {name!r}")
    image = check_image(options.image) if options.image else default_image(options.overlay)
    labels = {"app.kubernetes.io/part-of": "flanscale", "app.kubernetes.io/managed-by": "flanscale",
              SWEEP_LABEL: k8s_name(spec.name, 63)}
    annotations = {"flanscale.io/sweep-name": spec.name,
                   "flanscale.io/max-concurrent": str(int(getattr(spec, "max_concurrent", 0) or 1))}
    config_name = f"{name}-sweep"
    configmap, spec_volume = _spec_configmap(config_name, spec, options.uploads)
    configmap["metadata"] = {"name": config_name, "namespace": namespace, "labels": labels, "annotations": annotations}
    # No --tracking-uri: the driver takes MLFLOW_TRACKING_URI (and the CA) from flanscale-env.
    entrypoint = shlex.join(("flanscale", "sweep", "run", SPEC_FILE, "--ray-address", "auto", "--no-progress",
                             *options.run_flags))
    rayjob = {
        "apiVersion": "ray.io/v1", "kind": "RayJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations},
        "spec": {
            "entrypoint": entrypoint,
            "submissionMode": "K8sJobMode",
            "submitterPodTemplate": _submitter_template(image, spec_volume),
            # The ConfigMap's own bookkeeping entries (..data, ..<timestamp>) stay behind.
            "runtimeEnvYAML": yaml.safe_dump({"working_dir": SPEC_MOUNT, "excludes": ["..*"]}, sort_keys=False),
            "backoffLimit": options.backoff_limit,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": options.ttl_seconds,
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": _autoscaler_options(),
                "authOptions": {"mode": "token", "secretName": RAY_AUTH_SECRET},
                "headGroupSpec": head_group(options.overlay, image, options.storage),
                "workerGroupSpecs": [worker_group(s, image, options.storage) for s in shapes],
            },
        },
    }
    return [configmap, rayjob]


# A ConfigMap holds at most 1 MiB; binaryData grows by a third in base64, and the spec
# and the object's metadata need room too.
CONFIGMAP_UPLOAD_LIMIT = 700 * 2**10


def _spec_configmap(name: str, spec: Any, uploads: tuple[tuple[str, bytes], ...]) -> tuple[dict, dict]:
    """The ConfigMap with the composed spec and the uploads, and the volume that lays them
    out as a folder. ConfigMap keys cannot hold '/', so each upload gets a flat key and the
    volume's items put it back at its path."""
    import base64

    import yaml

    items = [{"key": SPEC_FILE, "path": SPEC_FILE}]
    binary: dict[str, str] = {}
    for i, (path, content) in enumerate(sorted(uploads)):
        key = f"upload-{i}"
        binary[key] = base64.b64encode(content).decode()
        items.append({"key": key, "path": path})
    configmap: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {},
                                 "data": {SPEC_FILE: yaml.safe_dump(spec_document(spec), sort_keys=False)}}
    if binary:
        configmap["binaryData"] = binary
    return configmap, {"name": "sweep-spec", "configMap": {"name": name, "items": items}}


def _dump(obj: Any) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> Any:
        # Embedded files (the sweep spec) stay readable as literal blocks.
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(obj, Dumper=Dumper, sort_keys=False)


def to_yaml(docs: list[dict[str, Any]]) -> str:
    return "---\n".join(_dump(d) for d in docs)
