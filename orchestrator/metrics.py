"""Live metrics of running cells for Prometheus and Grafana, through Ray's metrics agent.

`RayMetricsTracker` is a Tracker (trainers/tracking.py) that the controller adds to a cell's
job inside its Ray task. Every Ray node already runs a metrics agent that Prometheus scrapes
(`ray.init(_metrics_export_port=...)`, or the KubeRay pod's metrics port), so live step time,
throughput, MFU, loss and packing efficiency need no extra server. Ray prefixes custom
metric names with `ray_`: the gauge `flanscale_loss` is scraped as `ray_flanscale_loss`.
dashboards/grafana/flanscale.json charts exactly these names.

MLflow stays the record; these series are for watching a sweep while it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.cells import CellState

STATES = tuple(s.value for s in CellState)
CELL_TAGS = ("flanscale_sweep", "flanscale_cell", "flanscale_model")

# Tracker metric name -> (gauge name, description).
GAUGES: dict[str, tuple[str, str]] = {
    "train/loss": ("flanscale_loss", "Training loss of the last optimizer step"),
    "train/step_s": ("flanscale_step_seconds", "Wall time of the last optimizer step, seconds"),
    "train/tokens_per_s": ("flanscale_tokens_per_second", "Tokens (incl. padding) processed per second"),
    "train/useful_tokens_per_s": ("flanscale_useful_tokens_per_second", "Non-padding tokens processed per second"),
    "train/mfu": ("flanscale_mfu", "Model FLOPs utilisation of the last step (0..1)"),
    "train/packing_efficiency": ("flanscale_packing_efficiency", "Non-padding fraction of the packed batch"),
}


class RayMetricsTracker:
    """Mirrors a cell's training metrics into Ray gauges/counters tagged with sweep and cell.

    Ray metric objects are created on first use, in the process that reports (the Ray task),
    and dropped when pickled, so the tracker can be built by the controller and shipped to
    the task that runs the cell.
    """

    def __init__(self, sweep: str, cell_key: str, model: str = "", state: str = "running") -> None:
        self.tags = {"flanscale_sweep": sweep, "flanscale_cell": cell_key, "flanscale_model": model}
        self.initial_state = state
        self._m: dict[str, Any] | None = None
        self._last_step = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"tags": self.tags, "initial_state": self.initial_state, "_m": None, "_last_step": self._last_step}

    def _metrics(self) -> dict[str, Any]:
        if self._m is None:
            from ray.util.metrics import Counter, Gauge

            m: dict[str, Any] = {k: Gauge(name, description=desc, tag_keys=CELL_TAGS) for k, (name, desc) in GAUGES.items()}
            m["step"] = Gauge("flanscale_step", description="Last optimizer step reported by the cell",
                              tag_keys=CELL_TAGS)
            m["steps"] = Counter("flanscale_steps", description="Optimizer steps completed", tag_keys=CELL_TAGS)
            m["tokens"] = Counter("flanscale_tokens", description="Tokens processed (step time x tokens/s)",
                                  tag_keys=CELL_TAGS)
            m["state"] = Gauge("flanscale_cell_state", description="1 for the cell's current state, 0 for the others",
                               tag_keys=(*CELL_TAGS, "flanscale_state"))
            m["eval"] = Gauge("flanscale_eval", description="Held-out evaluation score (percent)",
                              tag_keys=(*CELL_TAGS, "metric"))
            self._m = m
            self._set_state(self.initial_state)
        return self._m

    # ---- Tracker protocol ----

    def log_params(self, params: dict[str, Any]) -> None:
        # Only before the first series is written: changing a label later would split every series.
        if "model" in params and not self.tags["flanscale_model"] and self._m is None:
            self.tags["flanscale_model"] = str(params["model"])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        m = self._metrics()
        values = {k: float(v) for k, v in metrics.items() if _finite(v)}
        for name, value in values.items():
            if name in GAUGES:
                m[name].set(value, tags=self.tags)
            elif name.startswith("eval/"):
                m["eval"].set(value, tags={**self.tags, "metric": name})
        if "train/loss" in values and step > self._last_step:
            # Steps, not calls: a resumed cell re-reporting old steps must not count them twice.
            m["steps"].inc(step - self._last_step, tags=self.tags)
            m["step"].set(step, tags=self.tags)
            self._last_step = step
            if "train/step_s" in values and "train/tokens_per_s" in values:
                m["tokens"].inc(values["train/step_s"] * values["train/tokens_per_s"], tags=self.tags)

    def set_tags(self, tags: dict[str, str]) -> None:
        if "flanscale.state" in tags:
            self.set_state(str(tags["flanscale.state"]))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass  # files belong in MLflow, not in a time series

    # ---- for the controller ----

    def set_state(self, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; allowed: {', '.join(STATES)}")
        if self._m is None:
            self.initial_state = state
            self._metrics()
        else:
            self._set_state(state)

    def _set_state(self, state: str) -> None:
        g = self._m["state"]  # type: ignore[index]
        for s in STATES:
            g.set(1.0 if s == state else 0.0, tags={**self.tags, "flanscale_state": s})


def end_state(result: Any, stop_requested: Callable[[], bool]) -> str:
    """The state a cell's gauge ends in once run_cell has returned: finished, or stopped before
    its last step, by the controller (cancelled) or by a preemption notice (preempted), as
    orchestrator.scheduling.classify records it. A cell that raised ends "failed"
    (orchestrator.placement.default_cell_fn)."""
    status = result.get("status", "finished") if isinstance(result, dict) else "finished"
    if status == "finished":
        return "finished"
    return "cancelled" if stop_requested() else "preempted"


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
