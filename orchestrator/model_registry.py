"""Finished cells' models in the MLflow model registry (`flanscale sweep run --register-models`).

Each finished cell's final checkpoint becomes a version of the registered model
`<sweep>-<model>` (one registered model per sweep and model size, one version per cell,
tagged with the cell's key, task count, formats and seed). The version is an MLflow model
of the `python_function` flavour (trainers/pyfunc_model.py), logged as the run's `model/`
artifacts: `mlflow.pyfunc.load_model("models:/<sweep>-<model>/<version>").predict([...])`
returns the cell's greedy answers, and the cell's export (trainers/export.py) is inside it.

Exporting needs JAX, which the control plane never imports, so `RegisteringCellFn` runs in
the Ray worker right after the cell (where its checkpoint is) and exports in a subprocess
(`python -m trainers.pyfunc_model`), which also keeps the export's memory out of the worker.
A failed registration leaves the trained cell finished and records the reason on its run.
Cells that finished before (a rerun of a sweep whose cells are done, or that ran without
--register-models) are registered after the sweep by `register_finished`, which says what it did.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.sqlite_store import with_retry
from orchestrator.store import TAG_CELL_KEY
from trainers.axes import user_values
from trainers.states import CellState, job_status

log = logging.getLogger(__name__)

TAG_REGISTERED = "flanscale.registered_model"  # "<name>/<version>" on a cell's run
TAG_REGISTER_ERROR = "flanscale.register_error"
ARTIFACT_PATH = "model"


def registered_model_name(sweep: str, model: str) -> str:
    return f"{sweep}-{model}"


def model_source(spec: dict, home: str | os.PathLike) -> Path | None:
    """The directory holding a cell's final model: its checkpoints (the layout of
    trainers.checkpoint.checkpoint_dir), else, for a cell that trains nothing, its base
    model; None for an untrained cell with no base model."""
    from trainers.spec import CellSpec

    cell = CellSpec.from_dict(spec)
    directory = Path(home).absolute() / "checkpoints" / cell.key()
    if directory.is_dir():
        return directory
    return Path(cell.init_checkpoint) if cell.init_checkpoint else None


def export_in_subprocess(source: Path, out: Path, home: str | os.PathLike, timeout_s: float = 3600) -> dict:
    """`python -m trainers.pyfunc_model SOURCE OUT` on CPU (OUT: an MLflow model holding the
    export) -> its JSON summary {format, files, step}."""
    env = {**os.environ, "FLANSCALE_HOME": str(home), "JAX_PLATFORMS": "cpu",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    proc = subprocess.run([sys.executable, "-m", "trainers.pyfunc_model", str(source), str(out)], env=env,
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(f"export of {source} failed: {lines[-1] if lines else f'exit code {proc.returncode}'}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def register_export(client: Any, run_id: str, export_dir: Path, name: str, tags: dict[str, str],
                    description: str) -> str:
    """Log `export_dir` (an MLflow model) as the run's model/ artifacts and register them as a
    new version of `name` (created if needed) -> "<name>/<version>"."""
    from mlflow.exceptions import MlflowException

    with_retry(client.log_artifacts, run_id, str(export_dir), ARTIFACT_PATH)
    try:
        with_retry(client.create_registered_model, name,
                   description="Models finetuned by a flanscale sweep: one version per cell.")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{with_retry(client.get_run, run_id).info.artifact_uri}/{ARTIFACT_PATH}"
    version = with_retry(client.create_model_version, name, source, run_id=run_id, tags=tags,
                         description=description)
    with_retry(client.set_tag, run_id, TAG_REGISTERED, f"{name}/{version.version}")
    return f"{name}/{version.version}"


def register_cell(spec: dict, run_id: str, tracking_uri: str, home: str | os.PathLike) -> str | None:
    """Export a finished cell and register it; "<name>/<version>", or None when the cell has
    no model to register (an untrained cell without a base model)."""
    from mlflow.tracking import MlflowClient

    from trainers.spec import CellSpec

    client = MlflowClient(tracking_uri)
    registered = with_retry(client.get_run, run_id).data.tags.get(TAG_REGISTERED)
    if registered:  # a retried attempt of a cell registered before
        return registered
    source = model_source(spec, home)
    if source is None:
        return None
    cell = CellSpec.from_dict(spec)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / ARTIFACT_PATH
        info = export_in_subprocess(source, out, home)
        tags = {TAG_CELL_KEY: cell.key(), "model": cell.model.name, "task_count": str(cell.data.task_count),
                "formats": ",".join(cell.data.formats), "seed": str(cell.seed), "format": str(info["format"]),
                "step": str(info.get("step")), **user_values(cell)}
        description = (f"{cell.model.name} finetuned on {cell.data.task_count} tasks ({', '.join(cell.data.formats)}),"
                       f" seed {cell.seed}; cell {cell.key()} of sweep {cell.sweep}; exported as {info['format']}.")
        return register_export(client, run_id, out, registered_model_name(cell.sweep, cell.model.name), tags,
                               description)


class RegisteringCellFn:
    """A cell function (orchestrator.placement.CellFn) that registers the model of each cell
    it finishes. Picklable, so Ray ships it to the workers like the default one."""

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner

    def __call__(self, spec: dict, run_id: str | None, tracking_uri: str, home: str, should_stop: Any) -> dict:
        from orchestrator.placement import default_cell_fn

        result = (self.inner or default_cell_fn)(spec, run_id, tracking_uri, home, should_stop)
        if run_id and isinstance(result, dict) and job_status(result) == CellState.FINISHED:
            try:
                result["registered_model"] = register_cell(spec, run_id, tracking_uri, home)
            except Exception as e:  # the cell trained and is finished; only its registration failed
                log.warning("cell %s: model not registered: %s", result.get("key"), e)
                from mlflow.tracking import MlflowClient

                with_retry(MlflowClient(tracking_uri).set_tag, run_id, TAG_REGISTER_ERROR, str(e)[:500])
        return result


def register_finished(store: Any, sweep: str, cells: list[Any]) -> dict[str, list[str]]:
    """Register the finished cells of `cells` that have no registered version yet (each a
    subprocess export, as `register_cell`). Returns {"registered": ["<name>/<version>", ...],
    "already": [...], "failed": ["<key>: <reason>", ...], "nothing": [keys without a model]}."""
    done: dict[str, list[str]] = {"registered": [], "already": [], "failed": [], "nothing": []}
    records = {r.key: r for r in store.list_cells(sweep)}
    for cell in cells:
        rec = records.get(cell.key)
        if rec is None or rec.state != CellState.FINISHED:
            continue
        tags = store.run_tags(rec.run_id)
        if tags.get(TAG_REGISTERED):
            done["already"].append(tags[TAG_REGISTERED])
            continue
        try:
            version = register_cell(cell.spec.to_dict(), rec.run_id, store.tracking_uri, store.home)
        except Exception as e:  # recorded on the run, as for a cell registered by its worker
            store.set_tags(rec.run_id, {TAG_REGISTER_ERROR: str(e)[:500]})
            done["failed"].append(f"{cell.key}: {e}")
            continue
        done["registered" if version else "nothing"].append(version or cell.key)
    return done


def describe(done: dict[str, list[str]]) -> list[str]:
    """What `register_finished` did, as lines for a person."""
    lines = []
    if done["registered"]:
        lines.append(f"registered {len(done['registered'])} model version(s): {', '.join(done['registered'])}")
    if done["already"]:
        lines.append(f"already registered: {', '.join(done['already'])}")
    if done["nothing"]:
        lines.append(f"nothing to register (no trained model): {', '.join(done['nothing'])}")
    lines += [f"not registered: {f}" for f in done["failed"]]
    return lines or ["no finished cell to register"]
