"""Grid axes (trainers/axes.py): every axis, built-in or a sweep's own, keeps cells apart in their
keys, run names, tags, params and report points; bad `axes:` are refused in one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dashboards import analysis, tables
from dashboards.report import check_x
from dashboards.runs import CellRun, SweepRuns
from orchestrator.planner import plan
from orchestrator.spec import SETTABLE, SweepSpec, load_spec, validate
from orchestrator.store import cell_name, cell_params, cell_tags
from trainers import axes as grid
from trainers.run_layout import cell_params as job_params
from trainers.spec import UserError

BASE = SweepSpec(name="axes", models=("tiny-1",), task_counts=(9,), formats=("mixed",), seeds=(0,))

# Two values of every setting a sweep may sweep. The test below fails when a setting becomes
# sweepable without values here, so every declared axis is covered.
USER_VALUES = {
    "data.source": None,  # synthetic | flan: flan needs data files
    "data.mixture": ("A", "B"),
    "data.input_length": (64, 128),
    "data.target_length": (32, 64),
    "data.tokenizer": None,  # byte | spm: spm trains a tokenizer
    "data.examples_per_task": (20, 40),
    "optim.optimizer": ("adafactor", "adamw"),
    "optim.learning_rate": (1e-3, 3e-3),
    "optim.schedule": ("constant", "cosine"),
    "optim.warmup_steps": (0, 10),
    "optim.batch_size": (8, 16),
    "optim.steps": (50, 100),
    "optim.decay_rate": (0.8, 0.9),
    "optim.factored_min_dim": (64, 128),
    "optim.z_loss": (0.0, 1e-4),
    "optim.grad_clip": (0.0, 1.0),
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.scan_layers": (True, False),
    "model.dropout_rate": (0.0, 0.1),
}
BUILTIN_VALUES = {"models": ("tiny-1", "tiny-2"), "task_counts": (9, 89), "formats": ("mixed", "zs_cot"),
                  "seeds": (0, 1)}


def sweepable() -> set[str]:
    """What check_user_axes accepts: every scalar training setting of the sweep file."""
    ok = set()
    for section, cls in SETTABLE.items():
        for f in dataclasses.fields(cls):
            try:
                grid.check_user_axes({f"{section}.{f.name}": [1]}, {s: [x.name for x in dataclasses.fields(c)]
                                                                    for s, c in SETTABLE.items()}, [], "t")
            except UserError as e:
                if "not allowed as an axis" in str(e) or "unknown field" in str(e):
                    continue
            ok.add(f"{section}.{f.name}")
    return ok


def test_every_sweepable_setting_has_values_in_this_test():
    assert sweepable() == set(USER_VALUES)


def as_run(cell, loss: float) -> CellRun:
    """The cell as the report reads it back from its run's params (as strings, as MLflow holds them)."""
    p = {k: str(v) for k, v in cell_params(cell).items()}
    return CellRun(key=cell.key, run_id=cell.key, model=p["model"], params=int(p["params"]),
                   task_count=int(p["task_count"]), formats=tuple(p["formats"].split(",")),
                   with_cot=p["with_cot"] == "True", mixture=p["mixture"], state="finished", seed=int(p["seed"]),
                   metrics={"eval/loss": loss}, format_set=p["format_set"],
                   axes=grid.read_values(p))


def pair(spec_field: str, values) -> list:
    if spec_field in BUILTIN_VALUES:
        spec = dataclasses.replace(BASE, **{spec_field: values})
    else:
        spec = dataclasses.replace(BASE, axes={spec_field: list(values)})
    validate(spec)
    cells = plan(spec)
    assert len(cells) == 2
    return cells


AXES = [(a.spec_field, BUILTIN_VALUES[a.spec_field]) for a in grid.BUILTIN] + \
       [(f, v) for f, v in USER_VALUES.items() if v is not None]


@pytest.mark.parametrize("spec_field,values", AXES, ids=[f for f, _ in AXES])
def test_cells_differing_in_one_axis_differ_in_key_name_tags_params_and_report_point(spec_field, values):
    a, b = pair(spec_field, values)
    assert a.key != b.key
    assert cell_name(a) != cell_name(b)
    axis = grid.axis_named(spec_field)
    assert cell_tags(a)[axis.tag] != cell_tags(b)[axis.tag]
    assert str(cell_params(a)[axis.param]) != str(cell_params(b)[axis.param])
    runs = [as_run(a, 1.0), as_run(b, 2.0)]
    points = tables.by_point(runs)
    series = analysis.curves(runs, "eval/loss", "params")
    means = sorted(p.mean for s in series for p in s.points)
    if axis.role == "replicate":  # seeds: one point, their mean
        assert len(points) == 1 and means == [1.5]
    else:
        assert len(points) == 2 and means == [1.0, 2.0]


def test_the_job_logs_the_params_the_store_wrote():
    cell = pair("optim.learning_rate", (1e-3, 3e-3))[1]
    written, logged = cell_params(cell), job_params(cell.spec, cell.params)
    assert {k: str(v) for k, v in logged.items()} == {k: str(written[k]) for k in logged}
    assert written["axis.optim.learning_rate"] == "0.003" and cell.axes == {"optim.learning_rate": 0.003}
    assert cell_name(cell) == "tiny-1 · 9 tasks · mixed · lr 0.003 · seed 0"
    assert cell.to_json()["axes"] == {"optim.learning_rate": 0.003}


def test_a_sweep_without_axes_keeps_its_cell_keys():
    # Stored sweeps resume by cell key: the declaration changes none of them.
    assert [c.key for c in plan(BASE)] == ["8b2d9592a8bb"]


def test_an_integer_value_of_a_float_setting_is_the_same_cell():
    one = plan(dataclasses.replace(BASE, axes={"optim.learning_rate": [1.0]}))[0]
    assert one.key in {c.key for c in pair("optim.learning_rate", (1, 2))} and one.spec.optim.learning_rate == 1.0


def test_the_base_model_is_planned_once_at_a_training_axis():
    spec = dataclasses.replace(BASE, task_counts=(0, 9), axes={"optim.learning_rate": [1e-3, 3e-3]})
    cells = plan(spec)
    assert sorted(c.task_count for c in cells) == [0, 9, 9]
    assert cell_name(next(c for c in cells if c.task_count == 0)) == "tiny-1 · base model · seed 0"


SWEEP = "name: axes\nmodels: [tiny-1]\ntask_counts: [9]\n"


@pytest.mark.parametrize("body,override,message", [
    ("axes: {optim.learning_rate: [1e-3, 3e-3], optim.steps: [100, 200]}\n", None, None),
    ("", "+axes={optim.learning_rate:[1e-3,3e-3]}", None),
    ("", "+axes.optim.learning_rate=[1e-3,3e-3]", None),
    ("axes: {eval.batch_size: [4, 8]}\n", None,
     "axes.eval.batch_size: not allowed as an axis: evaluation settings do not change what a cell trains"),
    ("axes: {max_concurrent: [1, 2]}\n", None, "axes.max_concurrent: not allowed as an axis: it says how the sweep runs"),
    ("axes: {optim.micro_batches: [1, 2]}\n", None, "axes.optim.micro_batches: not allowed as an axis: micro-batching"),
    ("axes: {optim.learning_rat: [1e-3]}\n", None,
     "axes.optim.learning_rat: unknown field (did you mean 'optim.learning_rate'?)"),
    ("axes: {optim.learning_rate: []}\n", None, "axes.optim.learning_rate: empty"),
    ("axes: {optim.learning_rate: [1e-3, 0.001]}\n", None, "axes.optim.learning_rate: 0.001 is listed twice"),
    ("axes: {models: [tiny-2]}\n", None, "axes.models: 'models' is a built-in axis"),
    ("axes: {optim.learning_rate: [-1.0]}\n", None, "optim.learning_rate: -1.0 is not allowed; must be > 0"),
    ("axes: {optim.steps: [ten]}\n", None, "axes.optim.steps: 'ten' is not allowed; optim.steps is a int"),
])
def test_axes_in_a_sweep_file_and_on_the_command_line(tmp_path: Path, body, override, message):
    path = tmp_path / "axes.yaml"
    path.write_text(SWEEP + body)
    if message is None:
        cells = plan(load_spec(path, [override] if override else []))
        assert {c.axes["optim.learning_rate"] for c in cells} == {1e-3, 3e-3}
        return
    with pytest.raises(UserError) as e:
        load_spec(path, [override] if override else [])
    assert message in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith(str(path))


def _lr_runs() -> list[CellRun]:
    spec = dataclasses.replace(BASE, models=("tiny-1", "tiny-2"), axes={"optim.learning_rate": [1e-3, 3e-3]})
    return [as_run(c, 1.0 + i) for i, c in enumerate(plan(spec))]


def test_a_user_axis_splits_series_and_is_an_x_axis():
    runs = _lr_runs()
    by_size = analysis.curves(runs, "eval/loss", "params")
    assert sorted(s.label for s in by_size) == ["9 tasks, lr 0.001", "9 tasks, lr 0.003"]
    by_lr = analysis.curves(runs, "eval/loss", "optim.learning_rate")
    assert sorted(s.label for s in by_lr) == ["tiny-1, 9 tasks", "tiny-2, 9 tasks"]
    assert all(s.x == (1e-3, 3e-3) for s in by_lr)
    sweep = SweepRuns("axes", "sqlite:///x", "1", None, tuple(runs), 0.0)
    assert check_x(sweep, ["optim.learning_rate", "params"]) == ("optim.learning_rate",)
    with pytest.raises(UserError, match=r"--x: 'optim.steps' is not an axis of sweep 'axes'"):
        check_x(sweep, ["optim.steps"])
