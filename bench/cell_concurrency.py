"""Cells on one CPU host: one at a time, or several at once?

A cell's JAX process runs XLA's thread pool over every core of its host. This measures, for
a tiny preset's training step, the aggregate steps per second of
- `one_at_a_time`: one process with every core;
- `together`: as many processes as --cells, started at once, each free to use every core;
- `pinned`: the same, each pinned to its own share of the cores (taskset), so XLA sizes its
  pool to that share;
and prints JSON, the contenders side by side. The controller's choice (a CPU cell claims its
host's cores, so cells run one after the other) follows from it.

    python bench/cell_concurrency.py [--preset tiny-1] [--cells 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

THROUGHPUT = Path(__file__).resolve().parent / "train_throughput.py"


def _command(args: argparse.Namespace) -> list[str]:
    return [sys.executable, str(THROUGHPUT), "--preset", args.preset, "--steps", str(args.steps), "--batch", "8",
            "--input-length", "256", "--target-length", "64"]


def _run(commands: list[list[str]]) -> dict:
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for c in commands]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"cell_concurrency: a training process failed: {[p.returncode for p in procs]}")
    step_s = [json.loads(o)["flanscale_jax_packed"]["step_s"] for o in outs]
    return {"processes": len(commands), "step_s": [round(s, 4) for s in step_s],
            "steps_per_s": round(sum(1.0 / s for s in step_s), 3), "wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny-1")
    p.add_argument("--cells", type=int, default=2, help="cells at once in the 'together' contenders")
    p.add_argument("--steps", type=int, default=20, help="timed steps per process")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    if args.cells < 2 or args.steps < 2:
        p.error("--cells and --steps must be >= 2")
    cmd = _command(args)
    out = {"preset": args.preset, "cores": cores, "cells": args.cells,
           "one_at_a_time": _run([cmd]), "together": _run([cmd] * args.cells)}
    share = max(1, cores // args.cells)
    if shutil.which("taskset") and cores >= args.cells:
        out["pinned"] = _run([["taskset", "-c", f"{i * share}-{(i + 1) * share - 1}", *cmd] for i in range(args.cells)])
    out["load_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
