"""Where a sweep's time went: installing, pretraining the base models, the cells (setting up,
training, evaluating) and the report.

What each part measures of itself:
- a cell logs `time/setup_s` (spec to first train step: data, model, checkpoint restore),
  `time/train_s` (the train loop, compilation included) and `time/eval_s` (the held-out
  evaluation at the end) into its MLflow run;
- `flanscale pretrain` writes its wall time into the base model's pretrain.json (`seconds`);
- what happens outside flanscale (installing it, writing the report) is recorded by whoever
  runs it, `make demo` for one, in `$FLANSCALE_HOME/phases.json` (`record`).

Cell times are summed over cells: with several cells at a time they add up to more than the
sweep's wall time, which is given beside them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from trainers.run_layout import run_name

PHASES_FILE = "phases.json"
CELL_PHASES = {"cells: setup": "time/setup_s", "cells: training": "time/train_s", "cells: evaluation": "time/eval_s"}
# The order a budget is printed in: the recorded phases around the sweep's own.
ORDER = ("install", "pretraining", "sweep run", *CELL_PHASES, "report")
# The phases that follow each other (the cells' own phases are a breakdown of the sweep's).
SEQUENTIAL = ("install", "pretraining", "sweep run", "report")


def record(home: Path, phase: str, seconds: float) -> None:
    """Remember how long `phase` took (replacing an earlier value)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{phase}: {seconds!r} is not a duration in seconds")
    path = Path(home) / PHASES_FILE
    phases = recorded(home)
    phases[phase] = round(float(seconds), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(phases, indent=1, sort_keys=True) + "\n")


def recorded(home: Path) -> dict[str, float]:
    """The phases recorded in `home` (nothing when none were, or the file is unreadable)."""
    try:
        data = json.loads((Path(home) / PHASES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))} if isinstance(data, dict) else {}


def pretraining_seconds(checkpoints: Sequence[str]) -> float | None:
    """The summed wall time `flanscale pretrain` recorded for these base models; None when
    none of them recorded one."""
    total, found = 0.0, False
    for ckpt in sorted(set(checkpoints)):
        try:
            seconds = json.loads((Path(ckpt) / "pretrain.json").read_text()).get("seconds")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(seconds, (int, float)):
            total, found = total + float(seconds), True
    return total if found else None


def init_checkpoints(cells: Sequence[Any]) -> list[str]:
    """The base models a sweep's cells start from (from their plans)."""
    out = []
    for c in cells:
        spec = c.plan.get("spec") if isinstance(c.plan, dict) else None
        ckpt = spec.get("init_checkpoint") if isinstance(spec, dict) else None
        if ckpt:
            out.append(str(ckpt))
    return out


def cell_rows(cells: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per cell that logged its times: name, setup, training, evaluation (seconds)."""
    rows = []
    for c in cells:
        times = {phase: c.metric(metric) for phase, metric in CELL_PHASES.items()}
        if any(v is not None for v in times.values()):
            name = run_name(c.coords)
            rows.append({"cell": name, "key": c.key, **{k: round(v, 1) if v is not None else None for k, v in times.items()}})
    return rows


def budget(cells: Sequence[Any], home: Path | None = None, sweep_wall_s: float | None = None) -> dict[str, Any]:
    """{"phases": {phase: seconds}, "sweep_wall_s", "cells": [...]}: the recorded phases (home),
    pretraining from the base models' pretrain.json, and the cells' own times summed."""
    phases: dict[str, float] = dict(recorded(home)) if home is not None else {}
    pre = pretraining_seconds(init_checkpoints(cells))
    if pre is not None:
        phases["pretraining"] = round(pre, 1)
    rows = cell_rows(cells)
    for phase in CELL_PHASES:
        values = [r[phase] for r in rows if r[phase] is not None]
        if values:
            phases[phase] = round(sum(values), 1)
    ordered = {p: phases[p] for p in ORDER if p in phases}
    ordered.update({p: v for p, v in phases.items() if p not in ordered})
    return {"phases": ordered, "sweep_wall_s": None if sweep_wall_s is None else round(sweep_wall_s, 1), "cells": rows}


def sweep_wall_s(cells: Sequence[Any]) -> float | None:
    """From the first cell's start to the last one's end."""
    spans = [(c.start_time, c.end_time) for c in cells if c.start_time is not None and c.end_time is not None]
    return max(e for _, e in spans) - min(s for s, _ in spans) if spans else None


def total_s(out: dict[str, Any]) -> float:
    """Install + pretraining + the sweep (as run, else its cells' wall time) + report."""
    phases = out["phases"]
    sweep = phases.get("sweep run", out.get("sweep_wall_s") or 0.0)
    return round(sum(phases.get(p, 0.0) for p in SEQUENTIAL if p != "sweep run") + sweep, 1)


def time_table(cells: Sequence[Any], home: Path | None = None):
    """The budget as a report table: phase, seconds."""
    from dashboards.tables import Table

    out = budget(cells, home, sweep_wall_s(cells))
    rows = [(phase, seconds) for phase, seconds in out["phases"].items()]
    if out["sweep_wall_s"] is not None:
        rows.append(("cells (wall, first start to last end)", out["sweep_wall_s"]))
    rows.append(("total", total_s(out)))
    note = ("cell phases are summed over cells (several may run at a time, so they can add up to more than "
            "the sweep's wall time); install and report times are those recorded in "
            f"$FLANSCALE_HOME/{PHASES_FILE}, pretraining those of the base models' pretrain.json")
    return Table("time", "Where the time went (seconds)", ("phase", "seconds"), tuple(rows),
                 note if rows else "no cell logged its times")
