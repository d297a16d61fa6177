"""`flanscale train CELL.yaml`: run one cell in this process, without Ray.

For debugging a cell or running one by hand: the same run_cell a Ray worker runs, with
loss lines printed to the console (and MLflow when --run-id is given). A second call with
the same spec resumes from the cell's checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trainers.home import flanscale_home
from trainers.spec import UserError
from trainers.states import CellState


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one cell from a CellSpec YAML in this process (no Ray)",
        description="Train one cell (a CellSpec YAML: model/data/optim/mesh/eval/checkpoint "
        "sections) in this process; resumes from <home>/checkpoints/<cell key>/ when present.",
    )
    p.add_argument("cell", metavar="CELL.yaml", help="CellSpec as YAML (keys as in trainers/spec.py)")
    p.add_argument("--home", default=None, help="run-time directory (default $FLANSCALE_HOME or ./.flanscale)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--run-id", default=None, help="MLflow run to log into (default: console only)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (with --run-id)")
    p.add_argument("--every", type=int, default=1, help="print a loss line every N steps (default 1)")
    p.add_argument("--coordinator", default=None, help="multi-host: HOST:PORT of process 0 (or FLANSCALE_COORDINATOR)")
    p.add_argument("--num-processes", type=int, default=None, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, default=None, help="multi-host: this process's index")
    p.set_defaults(func=handle)


class ConsoleTracker:
    """Prints one line per logged train step and the one-off metrics (a Tracker)."""

    def __init__(self, every: int = 1, out=None) -> None:
        self.every = max(every, 1)
        self._out = out

    @property
    def out(self):
        return self._out or sys.stdout  # looked up late: the console may be swapped (tests, Ray)

    def log_params(self, params: dict[str, Any]) -> None:
        print("params " + " ".join(f"{k}={v}" for k, v in params.items()), file=self.out, flush=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if "train/loss" in metrics:
            if step % self.every == 0:
                m = metrics
                print(
                    f"step {step:>6}  loss {m['train/loss']:.4f}  step_s {m.get('train/step_s', 0):.3f}  "
                    f"tokens/s {m.get('train/tokens_per_s', 0):,.0f}  "
                    f"useful/s {m.get('train/useful_tokens_per_s', 0):,.0f}  mfu {m.get('train/mfu', 0):.4f}",
                    file=self.out,
                    flush=True,
                )
            return
        for k, v in metrics.items():
            print(f"step {step:>6}  {k} = {v:.6g}", file=self.out, flush=True)

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_artifact(self, path, artifact_path=None) -> None:
        pass


def load_cell(path: str) -> dict[str, Any]:
    """YAML file -> CellSpec dict, validated (unknown keys name the file and the key)."""
    import yaml

    from trainers.spec import CellSpec

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of CellSpec fields, got {type(raw).__name__}")
    try:
        return CellSpec.from_dict(raw).to_dict()
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except TypeError as e:
        raise UserError(f"{path}: {e}") from None


def handle(args: argparse.Namespace) -> int:
    spec = load_cell(args.cell)
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps: {args.steps} must be >= 1")
    from trainers.job import run_cell
    from trainers.process import init_distributed

    # Joins the other hosts before anything touches the JAX backend (no-op on one host).
    init_distributed(args.coordinator, args.num_processes, args.process_id)
    home = flanscale_home(args.home)
    result = run_cell(
        spec,
        run_id=args.run_id,
        tracking_uri=args.tracking_uri,
        home=home,
        extra_trackers=(ConsoleTracker(args.every),),
        steps=args.steps,
    )
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0 if result["status"] == CellState.FINISHED else 3
