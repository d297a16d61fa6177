"""Where the demo's time went, so its budget is watched as the demo changes.

    python bench/demo_budget.py record PHASE SECONDS      # remember a phase measured outside flanscale
    python bench/demo_budget.py show [SWEEP] [--table]   # JSON: seconds per phase and per cell (--table: a table)

`show` reads the phases recorded in $FLANSCALE_HOME/phases.json (`make demo` records the
install and the report), the base models' pretraining time (their pretrain.json) and each
cell's setup, training and evaluation times from MLflow (dashboards/timing.py), and prints
them with the machine's core count and load (the load average is what tells a slow run on a
busy machine from a slow demo).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from dashboards import timing
from trainers.home import flanscale_home


def show(sweep: str) -> dict:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the plan's download, not news
    from dashboards.runs import load_sweep

    runs = load_sweep(sweep)
    wall = timing.sweep_wall_s(runs.cells)
    out = timing.budget(runs.cells, flanscale_home(), wall)
    load = os.getloadavg()
    return {"sweep": sweep, **out, "total_s": timing.total_s(out),
            "machine": {"cores": os.cpu_count(), "load_1m": round(load[0], 2), "load_5m": round(load[1], 2),
                        "load_15m": round(load[2], 2)}}


def table(result: dict) -> str:
    lines = [f"Where the time of sweep {result['sweep']!r} went (seconds):"]
    for phase, seconds in result["phases"].items():
        lines.append(f"  {phase:<20} {seconds:>8.1f}")
    if result["sweep_wall_s"] is not None:
        lines.append(f"  {'cells (wall)':<20} {result['sweep_wall_s']:>8.1f}   first cell's start to last one's end; "
                     "the cell phases above are summed over cells")
    lines.append(f"  {'total':<20} {result['total_s']:>8.1f}   install + pretraining + sweep run + report")
    m = result["machine"]
    lines.append(f"  machine: {m['cores']} cores, load {m['load_1m']} / {m['load_5m']} / {m['load_15m']} (1/5/15 min)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    rec = sub.add_parser("record", help="remember how long a phase took")
    rec.add_argument("phase")
    rec.add_argument("seconds", type=float)
    sh = sub.add_parser("show", help="JSON and a table of the phases and cells")
    sh.add_argument("sweep", nargs="?", default="demo")
    sh.add_argument("--table", action="store_true", help="a table for people instead of JSON")
    args = p.parse_args(argv)
    if args.action == "record":
        try:
            timing.record(flanscale_home(), args.phase, args.seconds)
        except ValueError as e:
            print(f"demo_budget: {e}", file=sys.stderr)
            return 2
        return 0
    from trainers.spec import UserError

    try:
        result = show(args.sweep)
    except UserError as e:
        print(f"demo_budget: {e}", file=sys.stderr)
        return 2
    print(table(result) if args.table else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
