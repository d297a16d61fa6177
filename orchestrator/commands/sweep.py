"""`flanscale sweep run|status|cancel|submit|logs`: run a planned sweep on Ray, watch it, stop it.

Heavy imports (Ray, MLflow, Hydra) happen inside the handlers so `flanscale --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from orchestrator import preflight
# What a submitted job's working directory holds besides the --upload paths (one name for
# `sweep submit` and `k8s submit`).
from orchestrator.k8s_render import SPEC_FILE
from orchestrator.cells import LAPSED, CellState
from orchestrator.store import TAG_MAX_CONCURRENT, cell_name
from trainers.spec import UserError

JOB_METADATA_KEY = "flanscale_sweep"
# Ray ships the working directory through its GCS in one message; data and checkpoints belong
# on storage the cluster mounts, so this stays well below that transport's limit.
UPLOAD_LIMIT = 100 * 2**20
# Ray's packaging skips what these files list; an upload travels whole.
_IGNORE_FILES = (".gitignore", ".rayignore")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sweep", help="run, watch, cancel and submit sweeps")
    sub = p.add_subparsers(dest="sweep_command", required=True, metavar="ACTION")

    run = sub.add_parser("run", help="run a sweep's unfinished cells on Ray (resumes after any interruption)")
    _spec_args(run)
    _run_args(run)
    run.add_argument("--no-progress", action="store_true", help="no live table (for logs and CI)")
    run.add_argument("--no-system-metrics", action="store_true",
                     help="cells log no CPU/memory/GPU metrics into their MLflow runs (also: FLANSCALE_SYSTEM_METRICS=0)")
    run.add_argument("--verbose", action="store_true",
                     help="also print MLflow's and Ray's routine INFO lines (database setup, each cell's "
                          "system-metrics monitor, Ray's start and token notices)")
    # These two check their spec and input files first, then the cluster and store (which may
    # take up to --connect-timeout): a typo in the spec is reported without waiting on a network.
    run.set_defaults(func=cmd_run, flags_checked_by_command=True)

    status = sub.add_parser("status", help="state, step, loss and time left of every cell")
    status.add_argument("sweep", metavar="SPEC_OR_NAME", help="a sweep file (.yaml) or a sweep name")
    status.add_argument("overrides", nargs="*", help="Hydra overrides when SPEC is a file")
    status.add_argument("--format", choices=("table", "json"), default="table")
    status.add_argument("--wide", action="store_true",
                        help="every column (run id, attempts, loss), however wide; by default columns that do not "
                             "fit the terminal are left out")
    status.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under FLANSCALE_HOME)")
    status.set_defaults(func=cmd_status, reads_store=True)

    cancel = sub.add_parser("cancel", help="stop a running sweep's cells cleanly (they checkpoint first)")
    cancel.add_argument("name", metavar="NAME")
    cancel.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under FLANSCALE_HOME)")
    cancel.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="wait up to this long for the controller to stop every cell")
    cancel.set_defaults(func=cmd_cancel)

    submit = sub.add_parser(
        "submit", help="run the controller itself as a Ray Job on a cluster",
        description="Compose and plan the sweep here, then run `flanscale sweep run` on the composed spec as a Ray "
        "Job. The job's working directory holds that spec and the --upload paths, nothing else from this machine.")
    _spec_args(submit)
    _run_args(submit)
    submit.add_argument("--home", help="FLANSCALE_HOME on the cluster (default: the cluster's own)")
    submit.add_argument("--upload", action="append", default=[], metavar="PATH",
                        help="a file or folder the spec names (data.paths, data.tokenizer, init_checkpoint, "
                        "eval.data_dir), put under its own name in the job's working directory, with the spec's "
                        "fields rewritten to point there; repeatable; at most "
                        f"{UPLOAD_LIMIT >> 20} MiB in all (default: only the composed spec is sent)")
    # The tracking URI is the cluster's to reach (it may be an in-cluster name); the job's own
    # `sweep run` checks it there.
    submit.set_defaults(func=cmd_submit, flags_checked_by_command=True, ray_address_kind=preflight.RAY_DASHBOARD,
                        tracking_uri_checked_remotely=True)

    logs = sub.add_parser("logs", help="print (and follow) the logs of a submitted sweep")
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("--ray-address", required=True, help="Ray dashboard address, e.g. http://HEAD:8265")
    logs.add_argument("--no-follow", action="store_true", help="print what is there and exit")
    logs.set_defaults(func=cmd_logs, ray_address_kind=preflight.RAY_DASHBOARD)


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="sweep file (.yaml)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. task_counts=[9,89] optim.steps=20")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray-address", help="Ray cluster (run: GCS address or 'auto'; submit: http://HEAD:8265)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under FLANSCALE_HOME)")
    p.add_argument("--retry-failed", action="store_true", help="run cells recorded as failed again")
    p.add_argument("--skip-infeasible", action="store_true",
                   help="run the cells that fit and record the others as infeasible (default: when any cell cannot "
                        "run, print why and start nothing, exit 2)")
    p.add_argument("--max-concurrent", type=int, metavar="N", help="cells running at once (overrides the spec)")
    p.add_argument("--register-models", action="store_true",
                   help="register each finished cell's model in the MLflow model registry as <sweep>-<model>, "
                        "its export (Hugging Face T5, or flanscale's layout for decoders) as the version's files")


def load_and_plan(path: str, overrides: list[str], max_concurrent: int | None = None) -> tuple[Any, list[Any]]:
    """Spec + plan; plan() refuses a sweep over its budget before anything is touched."""
    import dataclasses

    from orchestrator.planner import plan
    from orchestrator.spec import load_spec

    spec = load_spec(path, overrides)
    if max_concurrent is not None:
        if max_concurrent < 1:
            raise UserError(f"--max-concurrent: {max_concurrent} is not allowed; give a number >= 1")
        spec = dataclasses.replace(spec, max_concurrent=max_concurrent)
    return spec, plan(spec)


def refuse_infeasible(spec: Any, cells: list[Any], skip: bool) -> bool:
    """Print why cells cannot run; True when that stops the command (nothing was started):
    a sweep runs whole unless --skip-infeasible says a part will do, and never runs empty."""
    reasons = preflight.infeasible(cells)
    runnable = sum(bool(c.feasible) for c in cells)
    if not reasons or (skip and runnable):
        return False
    what = f"{len(cells) - runnable} of {len(cells)} cells cannot run"
    hint = f"; pass --skip-infeasible to run the other {runnable}" if runnable else ""
    print(f"flanscale: error: sweep {spec.name}: {what}, nothing was started{hint}:", file=sys.stderr)
    for line in reasons:
        print(f"  {line}", file=sys.stderr)
    return True


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.controller import run_sweep
    from orchestrator.store import SweepStore
    from trainers.run_layout import ui_runs_url
    from trainers.tracking import system_metrics_enabled

    if not args.verbose:
        from orchestrator.quiet import quiet

        quiet()
    spec, cells = load_and_plan(args.spec, args.overrides, args.max_concurrent)
    remember_inputs = preflight.check_inputs(spec, args.spec, cells)
    if refuse_infeasible(spec, cells, args.skip_infeasible):
        return 2
    preflight.check_flags(args, spec_tracking=(f"{args.spec}: tracking_uri", spec.tracking_uri or ""))
    from orchestrator.measured import mfu_notes

    for note in mfu_notes(spec, cells):
        print(f"hours: {note}")
    remember_inputs()  # every check passed: the first thing written
    cell_fn = None
    if args.register_models:
        from orchestrator.model_registry import RegisteringCellFn

        cell_fn = RegisteringCellFn()
    summary = run_sweep(spec, cells, ray_address=args.ray_address, tracking_uri=args.tracking_uri,
                        retry_failed=args.retry_failed, progress=not args.no_progress, cell_fn=cell_fn,
                        system_metrics=not args.no_system_metrics and system_metrics_enabled())
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.counts().items()))
    print(f"sweep {spec.name}: {counts} ({len(summary.started)} started in {summary.wall_s:.1f}s)")
    for key, error in sorted(summary.errors.items()):
        print(f"  failed {key}: {error}")
    if args.register_models and not summary.cancelled:
        # The cells that finished now were registered by their workers; these are the others
        # (finished on an earlier run, or whose registration failed then).
        from orchestrator.model_registry import describe, register_finished

        for line in describe(register_finished(SweepStore(summary.tracking_uri), spec.name, cells)):
            print(f"models: {line}")
    print(f"MLflow: {summary.tracking_uri} (experiment {spec.name!r}, parent run {summary.parent_run_id})")
    if summary.tracking_uri.startswith("sqlite:"):
        print(f"  browse: mlflow ui --backend-store-uri {summary.tracking_uri}")
        experiment = SweepStore(summary.tracking_uri).experiment_id(spec.name, create=False)
        print(f"  then open {ui_runs_url('http://127.0.0.1:5000', experiment)}")
    if summary.cancelled:
        return 3
    return 1 if summary.errors else 0


def status_rows(store: Any, name: str, cells: list[Any] | None = None) -> list[Any]:
    """One row per cell: MLflow's record, plus planned cells that have no run yet (pending)."""
    from orchestrator.progress import CellRow
    from trainers.axes import USER_PREFIX, format_value

    rows = []
    seen = set()
    for r in (store.list_cells(name) if store is not None else []):
        total = r.total_steps
        step = total if r.state == CellState.FINISHED else r.metric_steps.get("train/loss", 0)
        # "lapsed", not "running", once the controller that ran the cell is gone
        axes = {k[len(USER_PREFIX):]: v for k, v in r.params.items() if k.startswith(USER_PREFIX)}
        rows.append(CellRow(r.key, r.name, r.live_state(), step, total, r.metrics.get("train/loss"), r.attempts,
                            r.run_id, r.metrics.get("train/step_s"), r.error, axes))
        seen.add(r.key)
    for c in cells or []:
        if c.key not in seen:
            rows.append(CellRow(c.key, cell_name(c), CellState.PENDING if c.feasible else CellState.INFEASIBLE,
                                0, int(c.spec.optim.steps), None, 0, "", None, "" if c.feasible else c.reason,
                                {f: format_value(v) for f, v in c.axes.items()}))
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.cells import sweep_live_state
    from orchestrator.progress import TERMINAL, estimate_remaining_s, render_table, summary_line
    from orchestrator.store_read import open_reader
    from trainers.home import flanscale_home
    from trainers.home import tracking_uri as home_tracking_uri

    cells = None
    name = args.sweep
    tracking_uri = args.tracking_uri
    if args.sweep.endswith(".yaml"):
        spec, cells = load_and_plan(args.sweep, args.overrides)
        name = spec.name
        tracking_uri = tracking_uri or spec.tracking_uri
    # A read needs no MLflow client where the store is the embedded one (orchestrator/store_read.py).
    uri = home_tracking_uri(tracking_uri, flanscale_home())
    reader = open_reader(uri)
    tags = reader.sweep_tags(name) if reader is not None else {}
    if not tags and not cells:
        raise UserError(f"sweep {name!r}: no such sweep in {uri}; give the sweep file or a name "
                        "that `flanscale sweep run` has used")
    rows = status_rows(reader, name, cells)
    sweep_state, _ = sweep_live_state(tags)
    slots = int(tags.get(TAG_MAX_CONCURRENT, getattr(spec, "max_concurrent", 1) if cells else 1) or 1)
    done = sum(r.state in TERMINAL for r in rows)
    if args.format == "json":
        eta = estimate_remaining_s(rows, slots)
        print(json.dumps({"sweep": name, "state": sweep_state if tags else CellState.PENDING, "done": done,
                          "total": len(rows), "eta_s": eta, "tracking_uri": uri,
                          "cells": [r.__dict__ for r in rows]}, indent=2))
        return 0
    from orchestrator.termtable import wide_console

    state = sweep_state if tags else "not started"
    if state == LAPSED:
        state = "lapsed: its controller is gone; `flanscale sweep run` resumes it"
    table = render_table(f"sweep {name} ({state})", rows, summary_line(rows, slots), wide=args.wide)
    wide_console(table).print(table)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from orchestrator.store import SweepStore
    from orchestrator.store_read import open_reader
    from trainers.home import flanscale_home
    from trainers.home import tracking_uri as home_tracking_uri

    # Looked up by a reader first: an unknown sweep, or a store never created, is answered at
    # once and creates nothing (MLflow's client would create the store to find it empty).
    reader = open_reader(args.tracking_uri)
    if reader is None or not reader.sweep_tags(args.name):
        raise UserError(f"sweep {args.name!r}: no such sweep in {home_tracking_uri(args.tracking_uri, flanscale_home())}")
    store = SweepStore(args.tracking_uri)
    parent = store.request_cancel(args.name)
    if parent is None:
        raise UserError(f"sweep {args.name!r}: no such sweep in {store.tracking_uri}")
    state, lease = store.sweep_lease(args.name)
    if state == LAPSED:
        settled = store.settle_lapsed(args.name)
        print(f"sweep {args.name}: its controller {lease.who if lease else ''} is gone (its lease lapsed); "
              f"nothing runs its cells; recorded {len(settled)} of them and the sweep as cancelled")
        return 0
    if state != CellState.RUNNING:
        print(f"sweep {args.name} is not running ({state}); nothing to cancel")
        return 0
    print(f"cancel requested for sweep {args.name}; its controller stops running cells at their next step")
    deadline = time.monotonic() + args.wait
    while args.wait and time.monotonic() < deadline:
        state, _ = store.sweep_lease(args.name)
        if state == LAPSED:  # its controller died while stopping: nothing is left to wait for
            store.settle_lapsed(args.name)
            print(f"sweep {args.name}: its controller is gone (its lease lapsed); recorded as cancelled")
            return 0
        if state != CellState.RUNNING:
            break
        time.sleep(1.0)
    if args.wait:
        running = [r.key for r in store.list_cells(args.name) if r.live_state() == CellState.RUNNING]
        print(f"still running: {', '.join(running)}" if running else "no cell is running")
        return 1 if running else 0
    return 0


def submit_entrypoint(args: argparse.Namespace) -> str:
    # The spec is composed already (overrides and --max-concurrent applied): none travel again.
    parts = ["flanscale", "sweep", "run", SPEC_FILE, "--no-progress"]
    if args.tracking_uri:
        parts += ["--tracking-uri", args.tracking_uri]
    if args.retry_failed:
        parts.append("--retry-failed")
    if getattr(args, "skip_infeasible", False):
        parts.append("--skip-infeasible")
    if getattr(args, "connect_timeout", None) is not None:
        parts += ["--connect-timeout", f"{args.connect_timeout:g}"]
    if args.register_models:
        parts.append("--register-models")
    return shlex.join(parts)


# The spec fields that name a file or folder a cell reads, which is what --upload may send.
INPUT_FIELDS = ("data.paths", "data.tokenizer", "init_checkpoint.MODEL", "eval.data_dir")


def input_paths(spec: Any) -> list[tuple[str, str]]:
    """(field, path) of every spec field (INPUT_FIELDS) that names a file or folder."""
    found = [(f"data.paths[{i}]", p) for i, p in enumerate(spec.data.paths)]
    if spec.data.tokenizer.endswith(".model"):
        found.append(("data.tokenizer", spec.data.tokenizer))
    found += [(f"init_checkpoint.{m}", p) for m, p in sorted(spec.init_checkpoint.items())]
    if spec.eval.data_dir:
        found.append(("eval.data_dir", spec.eval.data_dir))
    return found


def uploaded_spec(spec: Any, uploads: list[str]) -> Any:
    """The spec as the job reads it in its working directory: every field naming an --upload
    path, or a path inside an uploaded folder, names where that lies there (relative paths,
    which the job resolves in its working directory). An upload that no field names is
    refused (the job would never read it), and so is one that is only part of a folder a
    field names (the job would read that folder's other files from a path it does not have)."""
    import dataclasses

    fields = input_paths(spec)
    moved: dict[str, str] = {}
    for given in uploads:
        src = Path(os.path.abspath(given))
        named = False
        for field, value in fields:
            at = Path(os.path.abspath(os.path.expanduser(value)))
            if at == src or at.is_relative_to(src):
                moved[field] = (Path(src.name) / at.relative_to(src)).as_posix()
                named = True
            elif src.is_relative_to(at):
                raise UserError(f"--upload {given}: {field} names the folder {value}, of which this is only a part; "
                                f"upload {value} itself")
        if not named:
            raise UserError(f"--upload {given}: no spec field names it, so the job would not read it; point one of "
                            f"{', '.join(INPUT_FIELDS)} at it, or leave it out")
    if not moved:
        return spec
    data = dataclasses.replace(
        spec.data, paths=tuple(moved.get(f"data.paths[{i}]", p) for i, p in enumerate(spec.data.paths)),
        tokenizer=moved.get("data.tokenizer", spec.data.tokenizer))
    return dataclasses.replace(
        spec, data=data, eval=dataclasses.replace(spec.eval, data_dir=moved.get("eval.data_dir", spec.eval.data_dir)),
        init_checkpoint={m: moved.get(f"init_checkpoint.{m}", p) for m, p in spec.init_checkpoint.items()})


def fill_working_dir(workdir: Path, spec: Any, uploads: list[str], limit: int) -> int:
    """Copy the --upload paths into `workdir` and write the composed spec there, its fields
    pointing at them (uploaded_spec); returns the bytes copied. Every problem is a UserError
    before anything is sent."""
    from orchestrator.spec import dump_spec

    taken = {SPEC_FILE: "the composed spec"}
    total = 0
    for given in uploads:
        src = Path(os.path.abspath(given))  # abspath, not resolve: a symlink keeps its own name
        if not src.exists():
            raise UserError(f"--upload {given}: no such file or directory")
        if src.name in taken:
            raise UserError(f"--upload {given}: the job's working directory already has {src.name!r} "
                            f"({taken[src.name]}); rename one of them")
        taken[src.name] = f"--upload {given}"
        for path, rel in _upload_files(given, src):
            try:
                total += path.stat().st_size
                if total > limit:
                    size = f"{limit >> 20} MiB" if limit >= 2**20 else f"{limit >> 10} KiB"
                    raise UserError(f"--upload {given}: the uploads come to more than {size}; put large "
                                    "inputs (data, checkpoints) on storage the cluster mounts and point the spec there")
                dest = workdir / src.name / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
            except OSError as e:
                raise UserError(f"--upload {given}: cannot read {path} ({e.strerror or e})") from None
    (workdir / SPEC_FILE).write_text(dump_spec(uploaded_spec(spec, uploads)))
    return total


def _upload_files(given: str, src: Path) -> Iterator[tuple[Path, Path]]:
    """(file, path under the upload) for each file of an upload, which is a file or a folder."""
    if src.is_file():
        yield src, Path()
        return
    if not src.is_dir():
        raise UserError(f"--upload {given}: not a regular file or folder")

    def unreadable(e: OSError) -> None:
        raise UserError(f"--upload {given}: cannot read {e.filename} ({e.strerror or e})")

    for root, dirs, files in os.walk(src, onerror=unreadable):
        here = Path(root)
        for d in dirs:
            if (here / d).is_symlink():  # os.walk would skip it silently
                raise UserError(f"--upload {given}: {here / d} is a link to a folder; upload that folder itself")
        for f in files:
            path = here / f
            if f in _IGNORE_FILES:
                continue
            if path.exists() and not path.is_file():
                raise UserError(f"--upload {given}: {path} is not a regular file")
            yield path, path.relative_to(src)


def cmd_submit(args: argparse.Namespace) -> int:
    import tempfile

    if not args.ray_address:
        raise UserError("--ray-address: required for submit; give the Ray dashboard address, e.g. http://HEAD:8265")
    spec, cells = load_and_plan(args.spec, args.overrides, args.max_concurrent)  # refuse bad input here, not remotely
    if refuse_infeasible(spec, cells, args.skip_infeasible):
        return 2
    with tempfile.TemporaryDirectory(prefix="flanscale-submit-") as workdir:
        uploaded = fill_working_dir(Path(workdir), spec, args.upload, UPLOAD_LIMIT)
        preflight.check_flags(args)
        runtime_env: dict[str, Any] = {"working_dir": workdir}
        if args.home:
            runtime_env["env_vars"] = {"FLANSCALE_HOME": args.home}
        client = job_client(args.ray_address)
        # Ray packs and uploads the working directory before submit_job returns.
        job_id = client.submit_job(
            entrypoint=submit_entrypoint(args),
            runtime_env=runtime_env,
            submission_id=f"flanscale-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            metadata={JOB_METADATA_KEY: spec.name},
        )
    print(f"submitted sweep {spec.name} as Ray job {job_id}")
    sent = f"the composed spec ({SPEC_FILE})"
    if args.upload:
        sent += f" and {len(args.upload)} upload(s), {uploaded / 2**20:.1f} MiB"
    print(f"  sent: {sent}")
    print(f"  follow: flanscale sweep logs {spec.name} --ray-address {args.ray_address}")
    return 0


def job_client(address: str) -> Any:
    """A JobSubmissionClient that sends this machine's Ray token when there is one: like
    `ray start`, token auth is on when a token exists and RAY_AUTH_MODE does not say otherwise."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:  # a Ray without token auth
        pass
    else:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except ConnectionError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--ray-address {address}: no Ray dashboard answers there ({reason}); "
                        "give the head's dashboard address, e.g. http://HEAD:8265") from None


def latest_job(client: Any, name: str) -> Any:
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get(JOB_METADATA_KEY) == name]
    if not jobs:
        raise UserError(f"sweep {name!r}: no Ray job submitted for it on this cluster")
    return max(jobs, key=lambda j: j.start_time or 0)


def cmd_logs(args: argparse.Namespace) -> int:
    import asyncio

    from ray.job_submission import JobStatus

    client = job_client(args.ray_address)
    job = latest_job(client, args.name)
    if args.no_follow:
        sys.stdout.write(client.get_job_logs(job.submission_id))
    else:
        async def follow() -> None:
            async for chunk in client.tail_job_logs(job.submission_id):
                sys.stdout.write(chunk)
                sys.stdout.flush()

        asyncio.run(follow())
    status = client.get_job_status(job.submission_id)
    print(f"job {job.submission_id}: {status.value}", file=sys.stderr)
    return 0 if status in (JobStatus.SUCCEEDED, JobStatus.RUNNING, JobStatus.PENDING) else 1
