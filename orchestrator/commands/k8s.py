"""`flanscale k8s render|submit|status`: run a sweep on Kubernetes as a KubeRay RayJob.

render prints the objects (a RayJob whose Ray cluster is sized from the plan, and a
ConfigMap with the composed sweep); submit creates them; status reads the RayJob and the
cells' progress from MLflow. The namespace must hold k8s/base (MLflow, Secrets, RBAC).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from orchestrator.k8s_render import CONFIGMAP_UPLOAD_LIMIT

DEFAULT_NAMESPACE = "flanscale"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "k8s", help="render, submit and watch a sweep as a KubeRay RayJob",
        description="Run a sweep on a Kubernetes cluster prepared with `kubectl apply -k k8s/overlays/<overlay>`: "
        "the RayJob's Ray cluster is sized from the plan (hosts, devices per host, accelerator) and its "
        "driver runs `flanscale sweep run` against the in-cluster MLflow.",
    )
    sub = p.add_subparsers(dest="k8s_command", required=True, metavar="ACTION")

    render = sub.add_parser("render", help="print the RayJob and ConfigMap of a sweep as YAML")
    _job_args(render)
    render.set_defaults(func=_render)

    submit = sub.add_parser("submit", help="create the RayJob and ConfigMap of a sweep in the cluster")
    _job_args(submit)
    _cluster_args(submit)
    submit.set_defaults(func=_submit)

    status = sub.add_parser("status", help="a RayJob's state and its sweep's cells (from MLflow)")
    status.add_argument("name", metavar="NAME", help="RayJob name (printed by submit)")
    status.add_argument("--namespace", "-n", default=DEFAULT_NAMESPACE, help=f"namespace (default: {DEFAULT_NAMESPACE})")
    status.add_argument("--tracking-uri", default=None,
                        help="MLflow of the cluster, e.g. http://localhost:5000 after `kubectl port-forward -n "
                        "flanscale svc/mlflow 5000` (default: $MLFLOW_TRACKING_URI; without one, cells are not shown)")
    status.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    _cluster_args(status)
    status.set_defaults(func=_status)


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="sweep file (Hydra YAML), e.g. sweeps/demo.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides, e.g. accelerator=h100-80g")
    p.add_argument("--overlay", choices=("gpu", "tpu", "cpu"), default=None,
                   help="the k8s/overlays/ the cluster was set up with (default: the kind of the sweep's accelerator)")
    p.add_argument("--namespace", "-n", default=DEFAULT_NAMESPACE, help=f"namespace (default: {DEFAULT_NAMESPACE})")
    p.add_argument("--image", default="", metavar="NAME[:TAG][@sha256:DIGEST]",
                   help="flanscale image; pin it with a digest, e.g. REGISTRY/flanscale@sha256:<64 hex> "
                   "(default: flanscale/flanscale:<version>-<cuda|tpu|cpu>, a tag)")
    p.add_argument("--name", default="", help="RayJob name (default: the sweep's name)")
    p.add_argument("--backoff-limit", type=int, default=2, metavar="N",
                   help="times KubeRay retries the whole job on a new cluster (default 2; finished cells are kept)")
    p.add_argument("--home-pvc", default="", metavar="CLAIM",
                   help="ReadWriteMany PVC mounted at /data in every Ray pod (FLANSCALE_HOME=/data/flanscale), so "
                   "checkpoints outlive preempted pods (default: pod-local scratch)")
    p.add_argument("--data-pvc", default="", metavar="CLAIM[:PATH]",
                   help="PVC with datasets (e.g. Flan exports), mounted read-only at PATH (default /datasets) in "
                   "every Ray pod; point data.paths there")
    p.add_argument("--upload", action="append", default=[], metavar="PATH",
                   help="a file or folder the spec names, put beside the composed spec in the job's working "
                   "directory, the spec's fields rewritten to point there (repeatable; at most "
                   f"{CONFIGMAP_UPLOAD_LIMIT >> 10} KiB in all, they travel in the ConfigMap; larger inputs go on "
                   "--data-pvc; default: only the composed spec is sent)")
    p.add_argument("--skip-infeasible", action="store_true",
                   help="run the cells that fit and record the others as infeasible (default: refuse the sweep)")
    p.add_argument("--retry-failed", action="store_true", help="passed on to `flanscale sweep run`")
    p.add_argument("--register-models", action="store_true", help="passed on to `flanscale sweep run`")


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config; "
                   "in a pod without one: its service account)")
    p.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")


def _documents(args: argparse.Namespace) -> list[dict] | None:
    """The objects of the job; None when infeasible cells stop it (the reasons are printed)."""
    from orchestrator import k8s_render
    from orchestrator.commands.sweep import refuse_infeasible
    from orchestrator.planner import check_budget, plan
    from orchestrator.spec import load_spec
    from trainers.accounting import get_accelerator
    from trainers.spec import UserError

    if args.backoff_limit < 0:
        raise UserError(f"--backoff-limit: must be >= 0, got {args.backoff_limit}")
    spec = load_spec(args.spec, args.overrides)
    overlay = args.overlay or get_accelerator(spec.accelerator).kind
    data_claim, _, data_mount = args.data_pvc.partition(":")
    storage = k8s_render.Storage(home_claim=args.home_pvc, data_claim=data_claim, data_mount=data_mount or "/datasets")
    run_flags = tuple(flag for flag, on in (("--retry-failed", args.retry_failed),
                                            ("--register-models", args.register_models),
                                            ("--skip-infeasible", args.skip_infeasible)) if on)
    options = k8s_render.RenderOptions(
        overlay=overlay, namespace=args.namespace, image=args.image, name=args.name, backoff_limit=args.backoff_limit,
        storage=storage, uploads=_uploads(spec, args.upload), run_flags=run_flags,
    )
    cells = plan(spec)
    # Refused here, before a cluster is created for a sweep the cluster would refuse too.
    check_budget(spec, cells)
    if refuse_infeasible(spec, cells, args.skip_infeasible):
        return None
    from orchestrator.commands.sweep import uploaded_spec

    # Planned from the paths here; shipped with the uploads' paths in the job's working directory.
    return k8s_render.render(uploaded_spec(spec, args.upload), cells, options)


def _uploads(spec, paths: list[str]) -> tuple[tuple[str, bytes], ...]:
    """(path in the working directory, content) of each --upload file, checked and laid out
    as `flanscale sweep submit` lays them out."""
    import tempfile
    from pathlib import Path

    from orchestrator.commands.sweep import SPEC_FILE, fill_working_dir

    if not paths:
        return ()
    with tempfile.TemporaryDirectory(prefix="flanscale-k8s-") as tmp:
        root = Path(tmp)
        fill_working_dir(root, spec, paths, CONFIGMAP_UPLOAD_LIMIT)
        return tuple((f.relative_to(root).as_posix(), f.read_bytes())
                     for f in sorted(root.rglob("*")) if f.is_file() and f.relative_to(root).as_posix() != SPEC_FILE)


def _render(args: argparse.Namespace) -> int:
    from orchestrator.k8s_render import to_yaml

    docs = _documents(args)
    if docs is None:
        return 2
    sys.stdout.write(to_yaml(docs))
    return 0


def _submit(args: argparse.Namespace) -> int:
    from orchestrator import k8s_client

    docs = _documents(args)
    if docs is None:
        return 2
    api = k8s_client.api_client(args.kubeconfig, args.context)
    for line in k8s_client.submit(api, docs):
        print(line)
    name = next(d for d in docs if d["kind"] == "RayJob")["metadata"]["name"]
    print(f"watch it with: flanscale k8s status {name} -n {args.namespace}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from orchestrator import k8s_client
    from trainers.spec import UserError

    api = k8s_client.api_client(args.kubeconfig, args.context)
    obj = k8s_client.get_rayjob(api, args.namespace, args.name)
    if obj is None:
        raise UserError(f"RayJob {args.namespace}/{args.name}: not found (kubectl get rayjobs -n {args.namespace} lists them)")
    job = k8s_client.job_status(obj)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    rows = k8s_client.cell_rows(job.sweep, uri) if uri and job.sweep else None
    if args.format == "json":
        from dataclasses import asdict

        out = {"rayjob": job.to_json(), "cells": None if rows is None else [asdict(r) for r in rows]}
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    print(f"RayJob {job.namespace}/{job.name} (sweep {job.sweep or '?'}): "
          f"deployment {job.deployment_status or 'New'}, job {job.job_status or 'not submitted yet'}")
    for label, value in (("cluster", job.cluster), ("started", job.start_time), ("ended", job.end_time),
                         ("message", job.message)):
        if value:
            print(f"  {label}: {value}")
    if rows is None:
        print("  cells: pass --tracking-uri (e.g. http://localhost:5000 after "
              f"`kubectl port-forward -n {args.namespace} svc/mlflow 5000`) to see them")
        return 0
    from rich.console import Console

    from orchestrator.progress import render_table, summary_line

    if not rows:
        print(f"  cells: none recorded in MLflow yet for sweep {job.sweep!r}")
        return 0
    Console().print(render_table(f"sweep {job.sweep}", rows, summary_line(rows, slots=job.max_concurrent)))
    return 0
