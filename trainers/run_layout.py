"""The MLflow layout of a sweep, as names: tags, run names, and the experiment's kind.

One module for every name, JAX- and MLflow-free, so the controller (orchestrator/store.py),
the job, the reports and the metrics exporter read and write the same tags.

Layout: experiment = sweep name (a model-training experiment); one parent run per sweep, run
name = sweep name; one child run per cell, found again by its cell key and named for a
person (`tiny-2 · 89 tasks · mixed · seed 0`). The `flanscale.*` tags are the store's
bookkeeping; the short ones (one per grid axis, trainers/axes.py: `model`, `task_count`,
`formats`, `seed`, `axis.optim.learning_rate`, ..., and `family`) are for people: the MLflow UI
groups, filters and draws parallel coordinates by tags.
"""

from __future__ import annotations

from typing import Any, Mapping

from trainers import axes
from trainers.eval import benchmarks
from trainers.spec import CellSpec

TAG_SWEEP = "flanscale.sweep"
TAG_KIND = "flanscale.kind"  # "sweep" (parent) | "cell" (child)
TAG_CELL_KEY = "flanscale.cell_key"
TAG_STATE = "flanscale.state"
TAG_ATTEMPTS = "flanscale.attempts"
TAG_PREEMPTIONS = "flanscale.preemptions"
TAG_FAILURES = "flanscale.failures"  # attempts that failed, over every session (the retry budget reads it)
# The controller's lease (orchestrator/leases.py) as JSON {holder, expires}: on the parent run
# for the sweep, on a cell's run while it runs; renewed with every heartbeat.
TAG_LEASE = "flanscale.lease"
TAG_EVAL_HASH = "flanscale.eval_hash"  # hash of the eval settings of the cell's final evaluation
TAG_ERROR = "flanscale.error"
# On a cell's run: why its training started over from step 0 (every checkpoint was damaged).
TAG_RESTARTED = "flanscale.restarted"
TAG_WORKER = "flanscale.worker"  # "<node ip>:<pid>" of the process running the cell now
TAG_CANCEL = "flanscale.cancel_requested"  # on the parent run; polled by the controller
TAG_MAX_CONCURRENT = "flanscale.max_concurrent"  # on the parent run, for time-left estimates
# On a cell's run, written by the controller with each start: "off" when the session was
# started with --no-system-metrics, which the job reads before it starts MLflow's monitor.
TAG_SYSTEM_METRICS = "flanscale.system_metrics"
TAG_BEST = "flanscale.best."  # + metric name, on the parent run: the run name of the best cell
TAG_PARENT = "mlflow.parentRunId"

TAG_MODEL = axes.MODEL.tag
TAG_TASK_COUNT = axes.TASK_COUNT.tag
TAG_FORMATS = axes.FORMATS.tag  # the grid's name of the format set ("mixed"), not the template list
TAG_SEED = axes.SEED.tag
TAG_FAMILY = "family"  # "t5" | "decoder"

# MLflow 3 tells GenAI experiments (traces, sessions) from model-training ones (runs,
# charts) by this experiment tag; the values are those of MLflow's own kind selector.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# The UI of MLflow 3.17 opens an experiment in the view of the browser's last workflow
# (GenAI unless a user switched), whatever the experiment's kind, so links name the view.
# Sorted by anything but date, the runs table lists the cells beside the parent run instead
# of folded under it (and charts draw the visible runs): held-out loss, best first.
UI_RUNS_QUERY = "workflowType=machine_learning&orderByKey=metrics.%60eval%2Floss%60&orderByAsc=true"


def run_name(coords: Mapping[str, Any]) -> str:
    """A cell's run name from its grid coordinates (trainers.axes.run_name)."""
    return axes.run_name(coords)


def cell_tags(coords: Mapping[str, Any], family: str) -> dict[str, str]:
    """The tags people group and filter a sweep's runs by: one per grid axis, and the family."""
    return {**axes.tags(coords), TAG_FAMILY: str(family)}


def cell_params(spec: CellSpec, n_params: int) -> dict[str, Any]:
    """The params of a cell's run, from its spec alone: the controller writes them when it
    creates the run and the job when it starts, and MLflow params never change, so both write
    these. The values of the sweep's user axes are among them (trainers.axes.user_values)."""
    d, o = spec.data, spec.optim
    return {
        "model": spec.model.name,
        "params": n_params,
        "task_count": d.task_count,
        "mixture": d.mixture,
        "formats": ",".join(d.formats),
        "with_cot": d.with_cot,
        "batch_size": o.batch_size,
        "learning_rate": o.learning_rate,
        "steps": o.steps,
        "dropout": spec.model.dropout_rate,
        "optimizer": o.optimizer,
        "accelerator": spec.mesh.accelerator,
        "devices": spec.mesh.devices,
        "input_length": d.input_length,
        "target_length": d.target_length,
        "seed": spec.seed,
        **axes.user_values(spec),
        **benchmarks.standins_param(spec.eval.benchmarks, spec.eval.data_dir),
    }


def ui_runs_url(base_url: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs, in the model-training view, every cell
    listed, the lowest held-out loss first."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_RUNS_QUERY}"
