"""`flanscale k8s render`: the RayJob is sized from the real plan and validates against the
KubeRay v1.7.0 CRD; the ConfigMap carries the composed sweep, which plans the same cells."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest
import yaml

from conftest import builtin_errors, crd_errors, pod_specs
from orchestrator import k8s as pools
from orchestrator import k8s_render
from orchestrator.k8s import tpu_topology
from orchestrator.k8s_render import RenderOptions, render
from orchestrator.planner import plan
from orchestrator.spec import load_spec
from trainers.spec import UserError
from test_k8s_manifests import locked_down_problems


def _render(path, overlay, overrides=(), **options):
    spec = load_spec(str(path), list(overrides))
    cells = plan(spec)
    return spec, cells, render(spec, cells, RenderOptions(overlay=overlay, **options))


def _cli(argv):
    from orchestrator.commands import k8s

    parser = argparse.ArgumentParser(prog="flanscale")
    k8s.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _check(docs, crd_validators):
    configmap, rayjob = docs
    assert configmap["kind"] == "ConfigMap" and rayjob["kind"] == "RayJob"
    assert builtin_errors(configmap) == []
    assert crd_errors(crd_validators, rayjob) == []
    assert locked_down_problems(docs) == []
    return configmap, rayjob


def test_cpu_sweep_renders_a_valid_rayjob(sweep_file, crd_validators):
    path = sweep_file("Demo_Sweep", models=["tiny-1", "tiny-2"], task_counts=[9, 18], max_concurrent=3)
    spec, cells, docs = _render(path, "cpu", namespace="research")
    configmap, rayjob = _check(docs, crd_validators)
    assert rayjob["metadata"]["name"] == "demo-sweep" and rayjob["metadata"]["namespace"] == "research"
    assert rayjob["metadata"]["annotations"]["flanscale.io/sweep-name"] == "Demo_Sweep"
    job = rayjob["spec"]
    # MLflow's address (http, or https with k8s/components/tls) comes from ConfigMap flanscale-env.
    # The driver starts in the job's working directory: the submitter's copy of the ConfigMap.
    assert job["entrypoint"] == "flanscale sweep run sweep.yaml --ray-address auto --no-progress"
    assert yaml.safe_load(job["runtimeEnvYAML"]) == {"working_dir": "/config", "excludes": ["..*"]}
    assert job["shutdownAfterJobFinishes"] is True
    cluster = job["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True and cluster["autoscalerOptions"]["version"] == "v2"
    assert cluster["authOptions"] == {"mode": "token", "secretName": "flanscale-ray-auth"}
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no cell on the controller's node
    submitter = job["submitterPodTemplate"]["spec"]
    assert {"name": "sweep-spec", "configMap": {"name": configmap["metadata"]["name"], "items": [
        {"key": "sweep.yaml", "path": "sweep.yaml"}]}} in submitter["volumes"]
    assert {"name": "sweep-spec", "mountPath": "/config", "readOnly": True} in submitter["containers"][0]["volumeMounts"]
    assert "binaryData" not in configmap  # nothing else from the user's disk unless named
    assert head["affinity"] == k8s_render.non_preemptible_affinity() and not head.get("tolerations")
    [group] = cluster["workerGroupSpecs"]
    largest = max(cells, key=lambda c: c.devices)
    assert group["replicas"] == largest.hosts and group["maxReplicas"] == largest.hosts * min(3, len(cells))
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["cpu"]) >= largest.devices and set(limits) == {"cpu", "memory"}
    assert group["template"]["spec"]["containers"][0]["image"].endswith("-cpu")


def test_configmap_holds_the_composed_sweep(sweep_file, tmp_path):
    # A tracking URI of the user's machine must not follow the sweep into the cluster.
    path = sweep_file("roundtrip", models=["tiny-1"], task_counts=[9], tracking_uri="http://localhost:5000")
    spec, cells, docs = _render(path, "cpu", overrides=["task_counts=[9,18]", "optim.steps=3"])
    shipped = tmp_path / "cluster" / "sweep.yaml"
    shipped.parent.mkdir()
    shipped.write_text(docs[0]["data"]["sweep.yaml"])
    # What the cluster loads (no overrides given there) is what was planned here.
    again = load_spec(str(shipped), [])
    assert spec.tracking_uri == "http://localhost:5000" and "tracking_uri" not in yaml.safe_load(shipped.read_text())
    assert again == dataclasses.replace(spec, tracking_uri=None)
    assert [c.key for c in plan(again)] == [c.key for c in cells]
    assert len(cells) == 2


def test_uploads_travel_in_the_configmap_and_land_at_their_paths(sweep_file, tmp_path, monkeypatch, capsys,
                                                                 crd_validators):
    import base64

    path = sweep_file("Up", models=["tiny-1"], task_counts=[9])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok" / "nested").mkdir(parents=True)
    (tmp_path / "tok" / "spiece.model").write_bytes(b"\x00\xffmodel")
    (tmp_path / "tok" / "nested" / "a.txt").write_text("a")
    (tmp_path / "extra.jsonl").write_text('{"inputs": "x", "targets": "y"}\n')
    (tmp_path / "secret.key").write_text("never sent")
    assert _cli(["k8s", "render", str(path), "data.source=flan", f"data.paths=[{tmp_path / 'extra.jsonl'}]",
                 "data.tokenizer=tok/spiece.model", "--upload", "tok", "--upload", "extra.jsonl",
                 "--register-models"]) == 0
    configmap, rayjob = _check(list(yaml.safe_load_all(capsys.readouterr().out)), crd_validators)
    volume = next(v for v in rayjob["spec"]["submitterPodTemplate"]["spec"]["volumes"] if v["name"] == "sweep-spec")
    # What the submitter's /config holds: the composed spec and exactly the named uploads.
    laid_out = {item["path"]: (configmap["data"][item["key"]].encode() if item["key"] in configmap.get("data", {})
                               else base64.b64decode(configmap["binaryData"][item["key"]]))
                for item in volume["configMap"]["items"]}
    assert set(laid_out) == {"sweep.yaml", "tok/spiece.model", "tok/nested/a.txt", "extra.jsonl"}
    assert laid_out["tok/spiece.model"] == b"\x00\xffmodel" and laid_out["extra.jsonl"].startswith(b'{"inputs"')
    shipped = yaml.safe_load(laid_out["sweep.yaml"])["data"]  # each field names its upload's place there
    assert (shipped["paths"], shipped["tokenizer"]) == (["extra.jsonl"], "tok/spiece.model")
    assert rayjob["spec"]["entrypoint"].endswith("--no-progress --register-models")
    assert builtin_errors(configmap) == []


def test_uploads_over_what_a_configmap_holds_are_one_line(sweep_file, tmp_path, monkeypatch):
    path = sweep_file("Big", models=["tiny-1"], task_counts=[9])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "big.bin").write_bytes(b"x" * (k8s_render.CONFIGMAP_UPLOAD_LIMIT + 1))
    with pytest.raises(UserError, match=r"^--upload big.bin: the uploads come to more than .*storage the cluster mounts"):
        _cli(["k8s", "render", str(path), "--upload", "big.bin"])
    (tmp_path / "hostname").write_text("h")
    with pytest.raises(UserError, match=r"^--upload hostname: no spec field names it"):
        _cli(["k8s", "render", str(path), "--upload", "hostname"])
    with pytest.raises(UserError, match="--upload nope: no such file or directory"):
        _cli(["k8s", "render", str(path), "--upload", "nope"])


def test_multi_host_tpu_slice_is_one_group_of_hosts(sweep_file, crd_validators):
    path = sweep_file("palm-v5p", models=["palm-62b"], task_counts=[1836], accelerator="tpu-v5p", min_devices=64)
    _, cells, docs = _render(path, "tpu")
    _, rayjob = _check(docs, crd_validators)
    [cell] = [c for c in cells if c.feasible]
    assert cell.hosts > 1
    [group] = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    pod = group["template"]["spec"]
    assert group["numOfHosts"] == cell.hosts and group["replicas"] == 1
    per_host = cell.devices // cell.hosts
    assert pod["containers"][0]["resources"]["limits"]["google.com/tpu"] == str(per_host)
    topology = pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"]
    assert math.prod(int(x) for x in topology.split("x")) == cell.devices
    assert pod["nodeSelector"]["cloud.google.com/gke-tpu-accelerator"] == "tpu-v5p-slice"
    assert {"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_gpu_cells_get_their_devices_per_host(sweep_file, crd_validators, built):
    path = sweep_file("t5-h100", models=["t5-large", "t5-xxl"], task_counts=[1836], accelerator="h100-80g")
    _, cells, docs = _render(path, "gpu", image="registry.example/flanscale:dev")
    _, rayjob = _check(docs, crd_validators)
    [group] = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    big = max(cells, key=lambda c: c.devices)
    pod = group["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == str(big.devices // big.hosts)
    assert group["numOfHosts"] == 1 and group["replicas"] == big.hosts
    assert all(c["image"] == "registry.example/flanscale:dev" for _, p in pod_specs(rayjob) for c in p["containers"])
    # The RayJob's GPU pods land on the same node pools as the gpu overlay's RayCluster.
    [cluster] = [d for d in built["gpu"] if d["kind"] == "RayCluster"]
    overlay = {g["groupName"]: g["template"]["spec"].get("nodeSelector") for g in cluster["spec"]["workerGroupSpecs"]}
    assert pod["nodeSelector"] == overlay["h100-80g"]


def test_tpu_overlay_node_pools_agree_with_the_renderer(built):
    [cluster] = [d for d in built["tpu"] if d["kind"] == "RayCluster"]
    for g in cluster["spec"]["workerGroupSpecs"]:
        sel = g["template"]["spec"].get("nodeSelector")
        if not sel:
            continue
        acc = "-".join(g["groupName"].split("-")[:2])  # tpu-v4-16 -> tpu-v4
        pool = pools.NODE_POOLS[acc]
        chips = g["numOfHosts"] * pool.devices_per_host
        assert sel["cloud.google.com/gke-tpu-accelerator"] == pool.selector_value
        assert sel["cloud.google.com/gke-tpu-topology"] == tpu_topology(acc, chips, pool.topology_dims)


@pytest.mark.parametrize("acc,chips,expected", [
    ("tpu-v4", 4, "2x2x1"), ("tpu-v4", 8, "2x2x2"), ("tpu-v4", 16, "2x2x4"), ("tpu-v4", 32, "2x4x4"),
    ("tpu-v5p", 64, "4x4x4"), ("tpu-v5p", 128, "4x4x8"), ("tpu-v6e", 1, "1x1"), ("tpu-v6e", 4, "2x2"),
    ("tpu-v6e", 8, "2x4"), ("tpu-v6e", 16, "4x4"), ("tpu-v6e", 256, "16x16"),
])
def test_tpu_topologies_follow_gke_shapes(acc, chips, expected):
    assert tpu_topology(acc, chips, pools.NODE_POOLS[acc].topology_dims) == expected


def test_tpu_topology_refuses_impossible_slices():
    with pytest.raises(UserError, match="not a GKE slice size"):
        tpu_topology("tpu-v4", 12, 3)


def test_overlay_must_match_the_accelerator(sweep_file):
    path = sweep_file("mismatch", models=["t5-large"], accelerator="tpu-v4")
    with pytest.raises(UserError, match="--overlay gpu: the plan runs on tpu-v4, a tpu accelerator; use --overlay tpu"):
        _render(path, "gpu")


def test_bad_names_are_refused_with_the_fix(sweep_file):
    path = sweep_file("ok")
    with pytest.raises(UserError, match="--name: 'My_Job' is not a valid name; try 'my-job'"):
        _render(path, "cpu", name="My_Job")
    with pytest.raises(UserError, match="--namespace"):
        _render(path, "cpu", namespace="Bad NS")


def test_long_sweep_names_fit_kuberay_limits(sweep_file):
    path = sweep_file("a" * 30 + "_" + "b" * 30)
    _, _, docs = _render(path, "cpu")
    name = docs[1]["metadata"]["name"]
    assert len(name) <= pools.MAX_NAME and name == pools.k8s_name(name)


def test_render_command_prints_yaml_documents(sweep_file, capsys, crd_validators):
    path = sweep_file("cli-render")
    assert _cli(["k8s", "render", str(path), "optim.steps=2", "-n", "team-a"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayJob"]
    assert crd_errors(crd_validators, docs[1]) == []
    assert "steps: 2" in docs[0]["data"]["sweep.yaml"]
    assert docs[1]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"].endswith("-cpu")


def test_render_command_reports_bad_input_as_user_error(sweep_file, tmp_path):
    with pytest.raises(UserError, match="no such sweep file"):
        _cli(["k8s", "render", str(tmp_path / "missing.yaml")])
    with pytest.raises(UserError, match="backoff-limit"):
        _cli(["k8s", "render", str(sweep_file("x")), "--backoff-limit", "-1"])
    with pytest.raises(UserError, match="budget.max_device_hours"):
        _cli(["k8s", "render", str(sweep_file("pricey", models=["t5-xxl"], accelerator="h100-80g")),
              "budget.max_device_hours=0.001"])


def test_paper_sweep_with_hydra_defaults_ships_composed(tmp_path, crd_validators):
    from conftest import REPO

    paper = REPO / "sweeps" / "paper" / "flan_t5.yaml"
    if not paper.is_file():
        pytest.skip(f"{paper} is not in this checkout")
    spec, cells, docs = _render(paper, "gpu", overrides=["accelerator=h100-80g"])
    _check(docs, crd_validators)
    # The file pulls data/eval groups through Hydra defaults; the cluster gets them resolved.
    shipped = tmp_path / "sweep.yaml"
    shipped.write_text(docs[0]["data"]["sweep.yaml"])
    assert "defaults" not in yaml.safe_load(shipped.read_text())
    again = load_spec(str(shipped), [])
    assert again == dataclasses.replace(spec, tracking_uri=again.tracking_uri)
    assert [c.key for c in plan(again)] == [c.key for c in cells]


def test_shared_home_and_dataset_volumes_reach_every_ray_pod(sweep_file, capsys, crd_validators):
    path = sweep_file("with-volumes")
    assert _cli(["k8s", "render", str(path), "--home-pvc", "flanscale-home", "--data-pvc", "flan-exports:/datasets/flan"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    _check(docs, crd_validators)
    ray_pods = [(w, p) for w, p in pod_specs(docs[1]) if not w.endswith("/submitter")]
    assert len(ray_pods) == 2
    for where, pod in ray_pods:
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["flanscale-home"] == {"name": "flanscale-home", "persistentVolumeClaim": {"claimName": "flanscale-home"}}
        assert volumes["datasets"]["persistentVolumeClaim"] == {"claimName": "flan-exports", "readOnly": True}
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["flanscale-home"]["mountPath"] == "/data"
        assert mounts["datasets"] == {"name": "datasets", "mountPath": "/datasets/flan", "readOnly": True}


@pytest.mark.parametrize("flag,value,message", [
    ("--data-pvc", "flan:/tmp/flan", "apart from /tmp"),
    ("--data-pvc", "flan:relative", "must be absolute"),
    ("--data-pvc", "flan:/", "must be absolute and apart"),
    ("--data-pvc", "flan:/etc/flanscale", "apart from"),
    ("--home-pvc", "Home_PVC", "not a valid PersistentVolumeClaim name"),
])
def test_bad_volume_flags_are_refused(sweep_file, flag, value, message):
    with pytest.raises(UserError, match=message):
        _cli(["k8s", "render", str(sweep_file("vol")), flag, value])


DIGEST = "sha256:" + "89abcdef01234567" * 4


def test_render_pins_every_container_to_an_image_digest(sweep_file, capsys, crd_validators):
    image = f"europe-docker.pkg.dev/proj/repo/flanscale@{DIGEST}"
    assert _cli(["k8s", "render", str(sweep_file("pinned")), "--image", image]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    _check(docs, crd_validators)
    images = {c["image"] for _, p in pod_specs(docs[1]) for c in p["containers"]}
    assert images == {image}
    tagged_and_pinned = f"localhost:5000/flanscale:0.1.0-cpu@{DIGEST}"
    _, _, docs = _render(sweep_file("both"), "cpu", image=tagged_and_pinned)
    assert {c["image"] for _, p in pod_specs(docs[1]) for c in p["containers"]} == {tagged_and_pinned}


@pytest.mark.parametrize("image", ["Flanscale:latest", "flanscale@sha256:abc", "flanscale:", "flan scale:1",
                                   "flanscale@" + DIGEST.replace("sha256", "md5")])
def test_render_refuses_what_is_no_image_reference(sweep_file, image):
    with pytest.raises(UserError, match=r"--image: .* is not an image reference; expected NAME\[:TAG\]"):
        _cli(["k8s", "render", str(sweep_file("bad-image")), "--image", image])


def _security_view(pod: dict, autoscaler: dict | None) -> dict:
    """What the base RayCluster and a rendered RayJob must agree on, per pod."""
    c = pod["containers"][0]
    keep = ("mlflow-ca", "kube-api-access")
    return {
        "serviceAccountName": pod["serviceAccountName"],
        "automountServiceAccountToken": pod.get("automountServiceAccountToken"),
        "secrets": sorted((e["name"], e["valueFrom"]["secretKeyRef"]["name"]) for e in c["env"] if "valueFrom" in e),
        "envFrom": c["envFrom"],
        "volumes": sorted((v for v in pod["volumes"] if v["name"] in keep), key=lambda v: v["name"]),
        "mounts": sorted((m for m in c["volumeMounts"] if m["name"] in keep), key=lambda m: m["name"]),
        "metrics": [p for p in c.get("ports", []) if p["name"] == "metrics"],
        "securityContext": (pod["securityContext"], c["securityContext"]),
        "autoscalerMounts": (autoscaler or {}).get("volumeMounts"),
    }


def test_rayjob_pods_mirror_the_base_cluster(sweep_file, built):
    _, _, docs = _render(sweep_file("mirror"), "cpu")
    job = docs[1]["spec"]["rayClusterSpec"]
    [base] = [d["spec"] for d in built["cpu"] if d["kind"] == "RayCluster"]
    for cluster in (base, job):
        assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert _security_view(job["headGroupSpec"]["template"]["spec"], job["autoscalerOptions"]) == _security_view(
        base["headGroupSpec"]["template"]["spec"], base["autoscalerOptions"])
    assert _security_view(job["workerGroupSpecs"][0]["template"]["spec"], None) == _security_view(
        base["workerGroupSpecs"][0]["template"]["spec"], None)


def test_infeasible_cells_stop_the_render_unless_skipped(sweep_file, capsys):
    path = sweep_file("Too_Big", models=["tiny-1", "palm-540b"], task_counts=[9])
    assert _cli(["k8s", "render", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "1 of 2 cells cannot run, nothing was started" in captured.err
    assert "palm-540b" in captured.err
    assert _cli(["k8s", "render", str(path), "--skip-infeasible"]) == 0
    rayjob = list(yaml.safe_load_all(capsys.readouterr().out))[1]
    assert rayjob["spec"]["entrypoint"].endswith("--no-progress --skip-infeasible")
