"""Where a cell's job reports to: a small protocol with an MLflow and an in-memory implementation.

The job never creates runs; the controller does (orchestrator/store.py) and hands the job
a run id, so a resumed cell keeps writing into the same run.

Besides params, metrics, tags and files, a tracker takes tables (columns of plain values,
shown as tables by MLflow's artifact viewer), the description of a dataset the run used
(`DatasetRecord`, an MLflow dataset input) and runs MLflow's system-metrics monitor while
the job works. Metric exporters that only watch numbers (orchestrator/metrics.py) implement
the first four methods; `FanOutTracker` passes them only what they implement.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from trainers.run_layout import TAG_SYSTEM_METRICS
from trainers.spec import UserError

ENV_SYSTEM_METRICS = "FLANSCALE_SYSTEM_METRICS"
# "1" when the controller runs a finished cell again only to evaluate it with changed eval
# settings: its eval/ metrics then replace those at the final step instead of being skipped.
ENV_REEVALUATE = "FLANSCALE_REEVALUATE"
_OFF, _ON = ("0", "false", "off", "no"), ("", "1", "true", "on", "yes")


def system_metrics_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """FLANSCALE_SYSTEM_METRICS: on unless set to 0/false/off/no."""
    value = env.get(ENV_SYSTEM_METRICS, "").strip().lower()
    if value not in _OFF + _ON:
        raise UserError(f"{ENV_SYSTEM_METRICS}: {value!r} is not allowed; use 1/true/on or 0/false/off")
    return value not in _OFF


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset as MLflow records a run's input: identity and description, not the data.
    `source_type` is one MLflow knows ("code", "local", ...) with `source` in its form;
    `schema` lists the columns of one example; `profile` is free-form, shown as the profile."""

    name: str
    digest: str
    source_type: str
    source: dict[str, Any]
    schema: tuple[tuple[str, str], ...] = ()  # (column, MLflow data type)
    profile: dict[str, Any] = field(default_factory=dict)
    context: str = "training"


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_table(self, columns: dict[str, Sequence[Any]], artifact_file: str) -> None: ...

    def log_input(self, dataset: DatasetRecord) -> None: ...

    def system_metrics(self) -> contextlib.AbstractContextManager[None]: ...


class NullTracker:
    """Discards everything (for debugging runs and benchmarks)."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_table(self, columns: dict[str, Sequence[Any]], artifact_file: str) -> None:
        pass

    def log_input(self, dataset: DatasetRecord) -> None:
        pass

    def system_metrics(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class MemoryTracker:
    """Keeps everything in lists (for tests)."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.tags: dict[str, str] = {}
        self.artifacts: list[str] = []
        self.tables: dict[str, dict[str, list[Any]]] = {}
        self.inputs: list[DatasetRecord] = []
        self.system_metrics_spans = 0  # how often the job ran under system_metrics()

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append((step, float(v)))

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.artifacts.append(str(path))

    def log_table(self, columns: dict[str, Sequence[Any]], artifact_file: str) -> None:
        table = self.tables.setdefault(artifact_file, {k: [] for k in columns})
        for k, values in columns.items():  # appended, as MLflow appends to a table logged again
            table.setdefault(k, []).extend(values)

    def log_input(self, dataset: DatasetRecord) -> None:
        self.inputs.append(dataset)

    @contextlib.contextmanager
    def system_metrics(self) -> Iterator[None]:
        self.system_metrics_spans += 1
        yield


class FanOutTracker:
    """Sends every call to several trackers (MLflow plus, say, a console printer or a metrics
    exporter); a tracker without a method (an exporter has no tables) is skipped for it."""

    def __init__(self, trackers: Sequence[Any]) -> None:
        self.trackers = list(trackers)

    def _each(self, method: str, *args: Any) -> None:
        for t in self.trackers:
            fn = getattr(t, method, None)
            if fn is not None:
                fn(*args)

    def log_params(self, params: dict[str, Any]) -> None:
        self._each("log_params", params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._each("log_metrics", metrics, step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._each("set_tags", tags)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._each("log_artifact", path, artifact_path)

    def log_table(self, columns: dict[str, Sequence[Any]], artifact_file: str) -> None:
        self._each("log_table", columns, artifact_file)

    def log_input(self, dataset: DatasetRecord) -> None:
        self._each("log_input", dataset)

    @contextlib.contextmanager
    def system_metrics(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for t in self.trackers:
                if hasattr(t, "system_metrics"):
                    stack.enter_context(t.system_metrics())
            yield


class MLflowTracker:
    """Writes into an existing MLflow run through the client API (no global active run).

    A resumed attempt replays the steps since its checkpoint; their metrics are in the run
    already, so each metric skips the steps up to the last one the run holds for it (read once,
    when the tracker starts): a metric's history has every step once, however often the cell
    was resumed. The values kept are the first attempt's; a replayed step computes the same.
    A re-evaluation (ENV_REEVALUATE) logs its eval/ metrics at the final step again.
    """

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id
        run = self.client.get_run(run_id)
        self._last_step = {m.key: int(m.step) for m in getattr(run.data, "_metric_objs", [])}
        self._reevaluate = os.environ.get(ENV_REEVALUATE) == "1"

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        # MLflow params are immutable: a resumed run re-logs the same values, so skip those.
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        if new:
            self.client.log_batch(self.run_id, params=new)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                 if math.isfinite(float(v)) and (step > self._last_step.get(k, -1) or (
                     self._reevaluate and k.startswith("eval/") and step == self._last_step[k]))]
        for m in batch:
            self._last_step[m.key] = step
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_table(self, columns: dict[str, Sequence[Any]], artifact_file: str) -> None:
        """MLflow's table artifact. MLflow appends to a table logged again; rows the table
        holds already are left out, so a resumed job logging the same rows adds none."""
        import json
        import tempfile

        import pandas as pd

        data = pd.DataFrame({k: list(v) for k, v in columns.items()})
        folder = artifact_file.rpartition("/")[0] or None
        if any(f.path == artifact_file for f in self.client.list_artifacts(self.run_id, folder)):
            with tempfile.TemporaryDirectory() as tmp:
                with open(self.client.download_artifacts(self.run_id, artifact_file, tmp)) as f:
                    held = {json.dumps(row) for row in json.load(f)["data"]}
            # Rows compared as MLflow writes them (pandas' "split" JSON), so types match.
            rows = json.loads(data.to_json(orient="split", index=False, date_format="iso"))["data"]
            data = data[[json.dumps(row) not in held for row in rows]]
        if len(data):
            self.client.log_table(self.run_id, data=data, artifact_file=artifact_file)

    def log_input(self, dataset: DatasetRecord) -> None:
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        schema = {"mlflow_colspec": [{"type": t, "name": n, "required": True} for n, t in dataset.schema]}
        entity = Dataset(name=dataset.name, digest=dataset.digest, source_type=dataset.source_type,
                         source=json.dumps(dataset.source), schema=json.dumps(schema) if dataset.schema else None,
                         profile=json.dumps(dataset.profile))
        # The store keeps one row per (dataset, run): a resumed job logging it again adds nothing.
        self.client.log_inputs(self.run_id, [DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, dataset.context)])])

    @contextlib.contextmanager
    def system_metrics(self) -> Iterator[None]:
        """MLflow's CPU, memory, disk, network (and GPU, with nvidia-ml-py and a GPU) metrics
        (`system/...`), sampled while the job works, continuing the steps of earlier attempts.
        Off when FLANSCALE_SYSTEM_METRICS says so or the controller tagged the run "off"."""
        tags = self.client.get_run(self.run_id).data.tags
        if not system_metrics_enabled() or tags.get(TAG_SYSTEM_METRICS) == "off":
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, resume_logging=True, tracking_uri=self.tracking_uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()
