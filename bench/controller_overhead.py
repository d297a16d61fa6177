"""What the controller costs per cell, next to bare Ray tasks and Ray Tune's grid search.

N trivial cells (each sleeps CELL_S) run with SLOTS at once on one local Ray (started once and
shared, so its start-up is not counted) through: (1) flanscale's controller with MLflow
tracking on SQLite (run creation, state tags on every start and end, cancel polling, worker tag),
(2) bare Ray tasks, (3) Ray Tune's grid search. Ideal wall time is N * CELL_S / SLOTS;
per-cell overhead is the extra slot time each cell costs: wall * SLOTS / N - CELL_S (for the
controller also without its one-off setup of creating the N MLflow runs).

With the controller's cells in the store, it also times what a user waits for at that size:
`flanscale sweep status NAME --format json` (a fresh process, as typed), the status rows
in-process, and the report's read of the sweep (dashboards.runs.load_sweep).

    python bench/controller_overhead.py [--cells 48] [--slots 2] [--cell-s 0.5] [--skip tune] [--work DIR]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

SWEEP = """\
name: overhead
models: [tiny-1]
task_counts: {task_counts}
formats: [mixed]
max_concurrent: {slots}
data: {{input_length: 32, target_length: 16}}
optim: {{batch_size: 2, steps: 1}}
"""


def sleep_cell(spec, run_id, tracking_uri, home, should_stop, cell_s=0.5):
    time.sleep(cell_s)
    return {"status": "finished"}


def through_controller(n: int, slots: int, cell_s: float, work: Path) -> dict:
    import functools

    from orchestrator.controller import run_sweep
    from orchestrator.planner import plan
    from orchestrator.spec import load_spec

    spec_path = work / "overhead.yaml"
    spec_path.write_text(SWEEP.format(task_counts=list(range(1, n + 1)), slots=slots))
    spec = load_spec(str(spec_path), [])
    cells = plan(spec)
    assert len(cells) == n, len(cells)
    t0 = time.perf_counter()
    summary = run_sweep(spec, cells, home=work / "home", progress=False,
                        cell_fn=functools.partial(sleep_cell, cell_s=cell_s))
    wall = time.perf_counter() - t0
    assert summary.counts() == {"finished": n}, summary.counts()
    # The second call finds every cell finished in MLflow and runs nothing: the cost of a resume.
    t1 = time.perf_counter()
    again = run_sweep(spec, cells, home=work / "home", progress=False, cell_fn=sleep_cell)
    assert not again.started
    resume = time.perf_counter() - t1
    # setup_s: creating the N MLflow runs (tags, params, cell.json) before the first cell starts.
    return {"wall_s": wall, "setup_s": summary.setup_s, "resume_noop_s": resume, **reads(n, work / "home")}


def reads(n: int, home: Path) -> dict:
    """Seconds of the reads a user makes of an N-cell sweep: `sweep status` as typed (a fresh
    process; JSON and the table), its rows in-process through the SQLite reader it uses and
    through MLflow's client, and the report's read of the sweep."""
    import subprocess

    from dashboards.runs import load_sweep
    from orchestrator.commands.sweep import status_rows
    from orchestrator.store import SweepStore, resolve_tracking_uri
    from orchestrator.store_read import SqliteSweepReader

    env = dict(os.environ, FLANSCALE_HOME=str(home), COLUMNS="120")
    env.pop("MLFLOW_TRACKING_URI", None)
    out: dict = {}
    for fmt in ("json", "table"):
        t0 = time.perf_counter()
        text = subprocess.run([sys.executable, "-m", "orchestrator.cli", "sweep", "status", "overhead", "--format", fmt],
                              env=env, capture_output=True, text=True, check=True).stdout
        out[f"sweep_status_{fmt}_cli_s"] = time.perf_counter() - t0
        if fmt == "json":
            assert json.loads(text)["total"] == n
    t0 = time.perf_counter()
    reader = SqliteSweepReader(home / "mlflow.db", resolve_tracking_uri(home=home))
    assert len(status_rows(reader, "overhead")) == n
    out["status_rows_sqlite_reader_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert len(status_rows(SweepStore(home=home), "overhead")) == n
    out["status_rows_mlflow_client_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert len(load_sweep("overhead", resolve_tracking_uri(home=home)).cells) == n
    out["report_load_sweep_s"] = time.perf_counter() - t0
    return out


def through_ray_tasks(n: int, slots: int, cell_s: float) -> dict:
    import ray

    task = ray.remote(num_cpus=1)(lambda: time.sleep(cell_s) or "finished")
    t0 = time.perf_counter()
    ray.get([task.remote() for _ in range(n)])
    return {"wall_s": time.perf_counter() - t0}


def through_tune(n: int, slots: int, cell_s: float, work: Path) -> dict:
    from ray import tune

    def trainable(config):
        time.sleep(cell_s)
        tune.report({"done": 1})

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"i": tune.grid_search(list(range(n)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=slots),
        run_config=tune.RunConfig(storage_path=str(work / "tune"), name="overhead", verbose=0),
    )
    t0 = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - t0
    assert len(results) == n and not results.errors
    return {"wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=48)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--cell-s", type=float, default=0.5)
    ap.add_argument("--skip", action="append", default=[], choices=("ray", "tune"),
                    help="leave a contender out (Ray Tune takes about 1.5 s a cell)")
    ap.add_argument("--work", metavar="DIR", help="keep the stores here (a new folder) instead of a temporary one")
    args = ap.parse_args(argv)
    if args.work and Path(args.work).exists():
        ap.error(f"--work {args.work}: already exists; give a new folder (the stores of one run go there)")
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    ray.init(address="local", num_cpus=args.slots, object_store_memory=256 * 2**20, include_dashboard=False,
             log_to_driver=False)
    ideal = args.cells * args.cell_s / args.slots
    out: dict = {"cells": args.cells, "slots": args.slots, "cell_s": args.cell_s, "ideal_wall_s": ideal,
                 "ray": ray.__version__, "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}
    if args.work:
        Path(args.work).mkdir(parents=True)
    with contextlib.nullcontext(args.work) if args.work else tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = {"bare_ray_tasks": lambda: through_ray_tasks(args.cells, args.slots, args.cell_s),
                "flanscale_controller_mlflow": lambda: through_controller(args.cells, args.slots, args.cell_s, work),
                "ray_tune_grid_search": lambda: through_tune(args.cells, args.slots, args.cell_s, work)}
        skipped = {"ray": "bare_ray_tasks", "tune": "ray_tune_grid_search"}
        for name, run in runs.items():
            if name in {skipped[k] for k in args.skip}:
                continue
            try:
                r = run()
            except ImportError as e:
                out[name] = {"error": f"not installed: {e}"}
                continue
            r["per_cell_overhead_s"] = r["wall_s"] * args.slots / args.cells - args.cell_s
            if "setup_s" in r:  # the same, once the runs exist (what a resumed sweep pays)
                r["loop_per_cell_overhead_s"] = (r["wall_s"] - r["setup_s"]) * args.slots / args.cells - args.cell_s
            out[name] = {k: round(v, 3) for k, v in r.items()}
    out["load_avg_1m_after"] = os.getloadavg()[0]
    ray.shutdown()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
