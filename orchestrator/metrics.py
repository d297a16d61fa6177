"""Live metrics of running cells for Prometheus and Grafana, through Ray's metrics agent.

`RayMetricsTracker` is a Tracker (trainers/tracking.py) that the controller adds to a cell's
job inside its Ray task. Every Ray node already runs a metrics agent that Prometheus scrapes
(`ray.init(_metrics_export_port=...)`, or the KubeRay pod's metrics port), so live step time,
throughput, MFU, loss and packing efficiency need no extra server. Ray prefixes custom
metric names with `ray_`: the gauge `flanscale_loss` is scraped as `ray_flanscale_loss`.
dashboards/grafana/flanscale.json charts exactly these names.

Ray's agent forgets a gauge's series that its process has not recorded again within two
report intervals (20 s at Ray's default of 10 s), as it must for the series of finished tasks; a gauge set once,
like the cell's state, would leave Prometheus while the cell still trains. So the tracker
records its gauges' current values again every `REFRESH_S` while the cell runs, and for
`LINGER_S` after its last state, so that the state a cell ends in is scraped too.

MLflow stays the record; these series are for watching a sweep while it runs.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.cells import CellState
from trainers.states import job_status

STATES = tuple(s.value for s in CellState)
ENDED = tuple(s for s in STATES if s not in (CellState.PENDING, CellState.RUNNING))
REFRESH_S = 1.0  # under Ray's gauge lifetime of 2 report intervals (>= 1 s each)
LINGER_S = 30.0  # how long a cell's last values stay after it ends
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

    def __init__(self, sweep: str, cell_key: str, model: str = "", state: str = CellState.RUNNING) -> None:
        self.tags = {"flanscale_sweep": sweep, "flanscale_cell": cell_key, "flanscale_model": model}
        self.initial_state = state
        self._m: dict[str, Any] | None = None
        self._last_step = 0
        self._init_refresh()

    def _init_refresh(self) -> None:
        # The gauges' current values, (gauge key, tags) -> value, recorded again by a thread.
        self._current: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()
        self._ended_at: float | None = None
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"tags": self.tags, "initial_state": self.initial_state, "_m": None, "_last_step": self._last_step}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_refresh()

    def _set(self, key: str, value: float, tags: dict[str, str]) -> None:
        """Set a gauge and keep its value for the refresh thread."""
        self._metrics()[key].set(value, tags=tags)
        with self._lock:
            self._current[(key, tuple(sorted(tags.items())))] = value
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._refresh, daemon=True, name="flanscale-metrics")
            self._thread.start()

    def _refresh(self) -> None:
        """Record every gauge's current value again each REFRESH_S, until LINGER_S after the
        cell's last state."""
        while self._ended_at is None or time.monotonic() - self._ended_at < LINGER_S:
            time.sleep(REFRESH_S)
            with self._lock:
                current = list(self._current.items())
            for (key, tags), value in current:
                self._m[key].set(value, tags=dict(tags))  # type: ignore[index]

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
                self._set(name, value, self.tags)
            elif name.startswith("eval/"):
                self._set("eval", value, {**self.tags, "metric": name})
        if "train/loss" in values and step > self._last_step:
            # Steps, not calls: a resumed cell re-reporting old steps must not count them twice.
            m["steps"].inc(step - self._last_step, tags=self.tags)
            self._set("step", step, self.tags)
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
        for s in STATES:
            self._set("state", 1.0 if s == state else 0.0, {**self.tags, "flanscale_state": s})
        self._ended_at = time.monotonic() if state in ENDED else None


def end_state(result: Any, stop_requested: Callable[[], bool]) -> str:
    """The state a cell's gauge ends in once run_cell has returned: finished, or stopped before
    its last step, by the controller (cancelled) or by a preemption notice (preempted), as
    orchestrator.scheduling.classify records it. A cell that raised ends "failed"
    (orchestrator.placement.default_cell_fn)."""
    if job_status(result) == CellState.FINISHED:
        return CellState.FINISHED
    return CellState.CANCELLED if stop_requested() else CellState.PREEMPTED


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
