"""The MLflow layout of a sweep, as names: tags, run names, and the experiment's kind.

One module for every name, JAX- and MLflow-free, so the controller (orchestrator/store.py),
the job, the reports and the metrics exporter read and write the same tags.

Layout: experiment = sweep name (a model-training experiment); one parent run per sweep, run
name = sweep name; one child run per cell, found again by its cell key and named for a
person (`tiny-2 · 89 tasks · mixed · seed 0`). The `flanscale.*` tags are the store's
bookkeeping; the short ones (`model`, `task_count`, `formats`, `seed`, `family`) are for
people: the MLflow UI groups, filters and draws parallel coordinates by tags.
"""

from __future__ import annotations

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

TAG_MODEL = "model"
TAG_TASK_COUNT = "task_count"
TAG_FORMATS = "formats"  # the grid's name of the format set ("mixed"), not the template list
TAG_SEED = "seed"
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


def run_name(model: str, task_count: int, formats: str, seed: int) -> str:
    """A cell's run name as a person reads it: `tiny-2 · 89 tasks · mixed · seed 0`. A base
    model's cell (no finetuning, so no format set) is `tiny-2 · base model · seed 0`."""
    if int(task_count) == 0:
        return f"{model} · base model · seed {seed}"
    return f"{model} · {task_count} tasks · {formats} · seed {seed}"


def cell_tags(model: str, task_count: int, formats: str, seed: int, family: str) -> dict[str, str]:
    """The tags people group and filter a sweep's runs by."""
    return {TAG_MODEL: str(model), TAG_TASK_COUNT: str(task_count), TAG_FORMATS: str(formats),
            TAG_SEED: str(seed), TAG_FAMILY: str(family)}


def ui_runs_url(base_url: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs, in the model-training view, every cell
    listed, the lowest held-out loss first."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_RUNS_QUERY}"
