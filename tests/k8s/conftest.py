"""Shared fixtures of the Kubernetes checks: built overlays, schema validators, sweep files."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE_DIR = REPO / "k8s"
OVERLAYS = ("gpu", "tpu", "cpu")
# The KubeRay CRDs the manifests are validated against (v1.7.0, shipped with their license).
SCHEMAS = Path(__file__).resolve().parent / "schemas" / "kuberay-v1.7.0"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
CUSTOM_KINDS = set(CRD_FILES)
# Kubernetes versions the built-in kinds are validated against (kubernetes-validate ships
# these schemas): the kubectl used here and the newest release.
K8S_VERSIONS = ("1.32.0", "1.37.0")


def kubectl() -> str:
    path = shutil.which("kubectl") or ("/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None)
    if path is None:
        pytest.skip("kubectl is not installed (needed for `kubectl kustomize`)")
    return path


def build(target: Path) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", str(target)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {target} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="session")
def built() -> dict[str, list[dict[str, Any]]]:
    return {name: build(KUSTOMIZE_DIR / "overlays" / name) for name in OVERLAYS}


# Opt-in pieces under k8s/components (tls-cert-manager includes tls).
COMPONENTS = ("tls-cert-manager", "egress-object-storage", "egress-package-sources", "prometheus")


def build_with(folder: Path, overlay: str, components=(), **fields: Any) -> list[dict[str, Any]]:
    """Build an overlay of one's own, as k8s/README.md tells users to write it: a shipped
    overlay plus components (and other kustomization fields, e.g. images)."""
    folder.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(KUSTOMIZE_DIR / "overlays" / overlay, folder)],
        **({"components": [os.path.relpath(KUSTOMIZE_DIR / "components" / c, folder) for c in components]}
           if components else {}),
        **fields,
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return build(folder)


@pytest.fixture(scope="session")
def built_with_components(tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    """Every overlay with every component on."""
    root = tmp_path_factory.mktemp("with-components")
    return {name: build_with(root / name, name, COMPONENTS) for name in OVERLAYS}


def _close(schema: Any) -> Any:
    """The CRD schema with unknown fields rejected, as the API server prunes/rejects them:
    every object with declared properties gets additionalProperties: false unless it says
    x-kubernetes-preserve-unknown-fields."""
    if isinstance(schema, list):
        return [_close(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _close(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="session")
def crd_validators() -> dict[str, Any]:
    import jsonschema

    if not SCHEMAS.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {SCHEMAS}")
    validators = {}
    for kind, filename in CRD_FILES.items():
        # libyaml when present: the two CRDs are 2.3 MB of YAML.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        crd = yaml.load((SCHEMAS / filename).read_text(), Loader=loader)
        assert crd["spec"]["names"]["kind"] == kind
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        schema = _close(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
        validators[kind] = jsonschema.Draft7Validator(schema)
    return validators


def crd_errors(validators: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    """Schema violations of a RayCluster/RayJob, as 'path: message' lines."""
    assert doc["apiVersion"] == "ray.io/v1", doc["apiVersion"]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validators[doc["kind"]].iter_errors(doc)]


def builtin_errors(doc: dict[str, Any]) -> list[str]:
    import kubernetes_validate

    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{version}: {doc['kind']}/{doc['metadata'].get('name')}: {e.message} at {list(e.path)}")
    return errors


def write_sweep(path: Path, **fields: Any) -> Path:
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


@pytest.fixture
def sweep_file(tmp_path: Path):
    def make(name: str = "k8s-check", **fields: Any) -> Path:
        fields.setdefault("models", ["tiny-1", "tiny-2"])
        fields.setdefault("task_counts", [9])
        fields.setdefault("accelerator", "cpu")
        return write_sweep(tmp_path / f"{name}.yaml", name=name, **fields)

    return make


def pod_specs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod template a document carries."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [(f"{kind}/{doc['metadata']['name']}", spec["template"]["spec"])]
    if kind == "RayJob":
        out = pod_specs({"kind": "RayCluster", "metadata": doc["metadata"], "spec": spec["rayClusterSpec"]})
        if "submitterPodTemplate" in spec:
            out.append((f"RayJob/{doc['metadata']['name']}/submitter", spec["submitterPodTemplate"]["spec"]))
        return out
    if kind == "RayCluster":
        name = doc["metadata"]["name"]
        out = [(f"RayCluster/{name}/head", spec["headGroupSpec"]["template"]["spec"])]
        out += [(f"RayCluster/{name}/{g['groupName']}", g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]
        return out
    return []
