"""The grid's axes, declared once: which sweep field lists an axis's values, which setting of a
cell each value sets, the tag and param it is logged as, its fragment of the run name and its
role in a report.

A sweep is the product of its axes. The built-in ones are `models`, `task_counts`, `formats`
and `seeds`; a sweep file's `axes:` adds any training setting as one more, e.g.
`axes: {optim.learning_rate: [1e-3, 3e-3]}`. The planner, run names, tags, params, the model
registry, the run reader, the report's table keys and its series all read this module, so two
cells that differ in an axis are never one point: only the replicate axis (the seed) is
averaged.

Stdlib only: the control plane (orchestrator), the job (trainers) and the reports (dashboards)
all import it.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from trainers.spec import NOT_TRAINED, CellSpec, DataConfig, ModelConfig, OptimConfig, UserError, did_you_mean

# What an axis is in a report: "x" (a scaling axis the report plots against), "series" (its
# values are separate lines, or panels: never merged), "replicate" (averaged into one point with
# a spread: only the seed).
ROLES = ("x", "series", "replicate")


@dataclass(frozen=True)
class Axis:
    name: str  # the coordinate's name: the planner's Cell field, the tag and param, `plan --format json`'s key
    spec_field: str  # the sweep file's field that lists the values
    sets: str  # the cell's setting (CellSpec field, dotted) that a value decides
    role: str  # see ROLES
    prefix: str = ""  # run-name fragment: "<prefix> <value>" ("" = the value alone)
    builtin: bool = True
    # Its values matter only to a trained cell: the base model (0 tasks, evaluated, never
    # finetuned) is planned at the axis's first value alone.
    trained_only: bool = False
    param_name: str = ""  # the run's param, when not the axis's name

    @property
    def tag(self) -> str:
        return self.name

    @property
    def param(self) -> str:
        return self.param_name or self.name

    def fragment(self, value: Any) -> str:
        text = format_value(value)
        return f"{self.prefix} {text}" if self.prefix else text


# The built-in axes, in run-name order (the seed, the replicate, comes last). A new built-in axis
# is one entry here and the sweep field that lists its values (orchestrator/spec.py's SweepSpec).
MODEL = Axis("model", "models", "model", "x")
TASK_COUNT = Axis("task_count", "task_counts", "data.task_count", "x", prefix="tasks")
# The param `formats` is the template list the set stands for; `format_set` its grid name.
FORMATS = Axis("formats", "formats", "data.formats", "series", trained_only=True, param_name="format_set")
SEED = Axis("seed", "seeds", "seed", "replicate", prefix="seed", trained_only=True)
BUILTIN: tuple[Axis, ...] = (MODEL, TASK_COUNT, FORMATS, SEED)
BUILTIN_FIELDS = {a.spec_field: a for a in BUILTIN}
# The planner builds a cell from its preset, task count, format set and seed; any other axis
# sets its setting (`sets`, a dotted field the sweep file and the cell share) to its value.
CORE = (MODEL, TASK_COUNT, FORMATS, SEED)
SETTING: tuple[Axis, ...] = tuple(a for a in BUILTIN if a not in CORE)

# Training settings a user axis may sweep: the cell's data, optimizer and model settings that
# enter its key (what the cell trains). Everything else is refused with the reason.
TRAINING_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "model": ModelConfig}
NOT_TRAINING = {
    **{k: why for k, why in NOT_TRAINED.items() if "." in k},
    "data.version": "it is the data pipeline's version, not a setting",
    "data.task_count": "it is the built-in axis task_counts",
    "data.formats": "it is the built-in axis formats",
    "data.with_cot": "it follows the built-in axis formats",
    "model.name": "it is the built-in axis models",
}
SECTION_REASONS = {
    **{k: why for k, why in NOT_TRAINED.items() if "." not in k},
    "retries": "scheduling does not change what a cell trains",
    "budget": "the budget does not change what a cell trains",
}
# Short names in run names ("lr 0.003"); other fields read as their last component.
PREFIXES = {"learning_rate": "lr", "batch_size": "batch", "warmup_steps": "warmup", "dropout_rate": "dropout",
            "examples_per_task": "examples", "input_length": "input", "target_length": "target"}
# A run's params and tags are named for the axis's field; this prefix keeps them apart from the
# params every run logs (a swept `optim.learning_rate` is also the run's `learning_rate`).
USER_PREFIX = "axis."


def user_axis(field: str) -> Axis:
    """The axis of a training setting named by its dotted field ("optim.learning_rate")."""
    last = field.rsplit(".", 1)[-1]
    # The optimizer and the training data touch only a trained cell; the model's numerics
    # (model.dtype, ...) the base model's evaluation too.
    return Axis(USER_PREFIX + field, f"axes.{field}", field, "series", PREFIXES.get(last, last.replace("_", " ")),
                builtin=False, trained_only=field.split(".", 1)[0] in ("optim", "data"))


def axis_named(name: str) -> Axis:
    """A built-in axis by its name or sweep field, or a user axis by its name or field."""
    for a in BUILTIN:
        if name in (a.name, a.spec_field):
            return a
    return user_axis(name[len(USER_PREFIX):] if name.startswith(USER_PREFIX) else name)


def is_user_axis_name(name: str) -> bool:
    return name.startswith(USER_PREFIX)


def is_setting_axis(name: str) -> bool:
    """Whether `name` is the name of an axis that sets one setting (a user or a SETTING axis)."""
    return is_user_axis_name(name) or any(name == a.name for a in SETTING)


def format_value(value: Any) -> str:
    """One spelling of an axis value for run names, tags and params (0.003, 1e-05, true)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)  # the shortest spelling that reads back as the same number
    return str(value)


def parse_value(text: str) -> Any:
    """A logged value read back: a number where it is one (so a report can plot it), else the text."""
    try:
        number = float(text)
    except (TypeError, ValueError):
        return text
    return int(number) if number.is_integer() and "." not in str(text) and "e" not in str(text).lower() else number


def flatten(axes: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{optim: {steps: [..]}}` (what `+axes.optim.steps=[..]` composes to) as `{optim.steps: [..]}`."""
    out: dict[str, Any] = {}
    for key, value in axes.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _scalar_type(field: str) -> str:
    section, _, name = field.partition(".")
    cls = TRAINING_SECTIONS.get(section)
    tp = {f.name: str(f.type) for f in dataclasses.fields(cls)}.get(name, "") if cls else ""
    return tp if tp in SCALARS else ""


SCALARS = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,)}


def check_user_axes(axes: Mapping[str, Any], settable: Mapping[str, Iterable[str]], top_level: Iterable[str],
                    where: str) -> dict[str, tuple]:
    """The sweep's `axes:` as {field: values}, or UserError (one line) for a field that is not a
    training setting, an unknown field, an empty list or a value listed twice. `settable`: the
    sweep file's own fields of each training section (what a value can be written into);
    `top_level`: the sweep file's other fields (how the sweep runs)."""
    out: dict[str, tuple] = {}
    for field, values in flatten(axes).items():
        name = f"{where}: axes.{field}"
        section = field.split(".", 1)[0]
        if field in BUILTIN_FIELDS:
            raise UserError(f"{name}: {field!r} is a built-in axis; list its values in `{field}:` itself")
        if section in SECTION_REASONS:
            raise UserError(f"{name}: not allowed as an axis: {SECTION_REASONS[section]}; "
                            "axes are training settings (data.*, optim.*, model.*)")
        if field in NOT_TRAINING:
            raise UserError(f"{name}: not allowed as an axis: {NOT_TRAINING[field]}")
        if field in set(top_level) - set(settable):
            raise UserError(f"{name}: not allowed as an axis: it says how the sweep runs, not what a cell trains; "
                            "axes are training settings (data.*, optim.*, model.*)")
        if section in settable and field.partition(".")[2] in settable[section] and not _scalar_type(field):
            raise UserError(f"{name}: not allowed as an axis: it holds several values, not one; an axis sweeps a "
                            "setting of one number, string or boolean")
        known = [f"{s}.{f}" for s, names in settable.items() for f in names
                 if f"{s}.{f}" not in NOT_TRAINING and _scalar_type(f"{s}.{f}")]
        if field not in known:
            hint = did_you_mean(field, known)
            why = ("only training settings are axes (data.*, optim.*, model.*)" if section not in settable
                   else f"not a setting of {section}")
            raise UserError(f"{name}: unknown field{hint}; {why}; allowed: {', '.join(sorted(known))}")
        if not isinstance(values, (list, tuple)):
            raise UserError(f"{name}: {values!r} is not a list; give the values as a list, e.g. [1e-3, 3e-3]")
        if not values:
            raise UserError(f"{name}: empty; list at least one value, e.g. [1e-3, 3e-3]")
        for v in values:
            if isinstance(v, (list, tuple, dict, Mapping)) or v is None:
                raise UserError(f"{name}: {v!r} is not allowed; an axis value is one number, string or boolean")
        spelled = [format_value(v) for v in values]
        dup = next((v for v, s in zip(values, spelled) if spelled.count(s) > 1), None)
        if dup is not None:
            raise UserError(f"{name}: {dup!r} is listed twice; each grid value must be unique")
        out[field] = tuple(values)
    return out


def coerce(field: str, value: Any, where: str) -> Any:
    """An axis value as the cell's setting holds it (an int learning rate is the float one, so
    `[1, 2]` and `[1.0, 2.0]` plan the same cells)."""
    tp = _scalar_type(field)
    if tp == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, SCALARS[tp]) or (isinstance(value, bool) and tp != "bool"):
        raise UserError(f"{where}: axes.{field}: {value!r} is not allowed; {field} is a {tp}")
    return value


def set_field(obj: Any, dotted: str, value: Any) -> Any:
    """`obj` (a frozen dataclass) with its dotted field replaced."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(obj, **{head: value})
    return dataclasses.replace(obj, **{head: set_field(getattr(obj, head), rest, value)})


def get_field(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------------------------------------------
# A cell's coordinates: {axis name: value}, built-in axes first, then the user's in sweep order
# ---------------------------------------------------------------------------------------------


def grid_points(values: Sequence[tuple[Axis, Sequence[Any]]]) -> list[dict[str, Any]]:
    """Every cell's coordinates {axis name: value}: the product of the axes' values, in the
    order given (the first axis varies slowest), the base model's at each trained-only axis's
    first value."""
    out = []
    for combo in itertools.product(*(vals for _, vals in values)):
        coords = {a.name: v for (a, _), v in zip(values, combo)}
        if int(coords.get(TASK_COUNT.name, 1)) == 0 and any(
                a.trained_only and v != vals[0] for (a, vals), v in zip(values, combo)):
            continue
        out.append(coords)
    return out


def point(model: str, task_count: int, formats: str, seed: int, user: Mapping[str, Any] = ()) -> dict[str, Any]:
    """A cell's coordinates from its built-in values and `user` ({field or axis name: value})."""
    out: dict[str, Any] = {MODEL.name: model, TASK_COUNT.name: task_count, FORMATS.name: formats, SEED.name: seed}
    for name, value in dict(user).items():
        out[axis_named(name).name] = value
    return out


def cell_point(cell: Any) -> dict[str, Any]:
    """The coordinates of a planner Cell (its built-in fields and its `axes`)."""
    return point(cell.model, cell.task_count, cell.formats, cell.seed, getattr(cell, "axes", {}) or {})


def ordered(coords: Mapping[str, Any]) -> list[tuple[Axis, Any]]:
    """(axis, value) in run-name order: the built-in axes but the seed, the user's, the seed."""
    axes = [(axis_named(n), v) for n, v in coords.items()]
    return sorted(axes, key=lambda av: 2 if av[0] is SEED else (0 if av[0].builtin else 1))


def run_name(coords: Mapping[str, Any]) -> str:
    """A cell's run name as a person reads it: `tiny-2 · 89 tasks · mixed · lr 0.003 · seed 0`.
    A base model's cell (no finetuning, so no format set) reads `tiny-2 · base model · seed 0`."""
    base = int(coords.get(TASK_COUNT.name, 1)) == 0
    parts = []
    for axis, value in ordered(coords):
        if axis is TASK_COUNT:
            parts.append("base model" if base else f"{value} tasks")
        elif axis.trained_only and axis is not SEED and base:
            continue
        else:
            parts.append(axis.fragment(value))
    return " · ".join(parts)


def tags(coords: Mapping[str, Any]) -> dict[str, str]:
    """One tag per axis, named as the axis, its value spelled once (format_value)."""
    return {axis.tag: format_value(value) for axis, value in ordered(coords)}


def user_values(spec: CellSpec) -> dict[str, str]:
    """{param: value} of a cell's setting axes (the sweep's `axes:` and built-in SETTING axes),
    read from the cell's own settings: its params, and the tags of its run and its registered model."""
    return {axis_named(a).param: format_value(get_field(spec, axis_named(a).sets)) for a in spec.axes}


def read_values(params: Mapping[str, str]) -> dict[str, Any]:
    """The setting axes' values from a run's params: {field of a user axis, or built-in name: value}."""
    out: dict[str, Any] = {k[len(USER_PREFIX):]: parse_value(v) for k, v in params.items() if is_user_axis_name(k)}
    out.update({a.name: parse_value(params[a.param]) for a in SETTING if a.param in params})
    return out
