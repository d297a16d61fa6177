"""The sweep spec: a typed, frozen description of a grid of finetuning cells.

A sweep file is a Hydra config whose schema is `SweepSpec` (registered in Hydra's
ConfigStore as `flanscale_sweep`), so YAML and command-line overrides are type-checked
against these dataclasses and use Hydra's override grammar (`task_counts=[9,89]`,
`optim.learning_rate=1e-3`, `+init_checkpoint.tiny-1=PATH`, `eval=quick` or `data=flan` to
pick an option of a config group in orchestrator/groups/, ...; orchestrator/compose.py does
the composing). Every error a user can make is found here, before anything is planned or
scheduled, and reported as one line naming the file, the field, the bad value and what is
allowed.

Defaults live once: in these dataclasses for sweep-level settings, in the catalog for
per-model finetuning hyperparameters (Table 22), in trainers.spec for everything else. Fields
left `None` here mean "the preset's / trainers.spec's default".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass, replace
from pathlib import Path
from typing import Any, Optional, get_type_hints

from orchestrator.catalog import REGISTRY
from orchestrator.compose import compose
from trainers.accounting import ACCELERATORS, DTYPE_BYTES
from trainers.families import REMAT_POLICIES
from trainers.eval import benchmarks
from trainers import axes as grid
from trainers.spec import (OPTIMIZERS, SCHEDULES, SUBMIXTURES, TASK_LADDER, CheckpointConfig,  # noqa: F401
                           DataConfig, EvalConfig, ModelConfig, OptimConfig, UserError, did_you_mean,
                           from_dict)

# Named sets of template formats (a grid axis). Each maps to DataConfig.formats/with_cot:
# the CoT formats exist only for the 9 CoT datasets, so they come with the CoT data.
FORMAT_SETS: dict[str, tuple[tuple[str, ...], bool]] = {
    "mixed": (("zs_opt", "zs_noopt", "fs_opt", "fs_noopt", "cot"), True),
    "no_cot": (("zs_opt", "zs_noopt", "fs_opt", "fs_noopt"), False),
    "zs": (("zs_opt", "zs_noopt"), False),
    "fs": (("fs_opt", "fs_noopt"), False),
    "zs_cot": (("zs_opt", "zs_noopt", "cot"), True),
    "fs_cot": (("fs_opt", "fs_noopt", "cot"), True),
}
# The paper's nested ladder; any count up to the full collection is allowed. The ladder
# starts with the 9 CoT datasets, so a format set without CoT data needs more than 9 tasks.
MAX_TASKS = TASK_LADDER[-1]
COT_TASKS = TASK_LADDER[0]
SOURCES = ("synthetic", "flan")
MIXTURES = ("A", "B", "custom")
PRIORITIES = ("smallest_first", "largest_first", "spec_order")

_DATA = DataConfig()


@dataclass(frozen=True)
class DataSpec:
    """DataConfig settings shared by every cell (task_count and formats come from the grid)."""

    source: str = _DATA.source
    paths: tuple[str, ...] = _DATA.paths
    mixture: str = _DATA.mixture
    proportions: dict[str, float] = field(default_factory=dict)  # sub-mixture -> weight ("custom")
    caps: dict[str, int] = field(default_factory=dict)  # sub-mixture -> per-task example cap
    input_length: Optional[int] = None  # None = the preset's (2048 for the paper's models)
    target_length: Optional[int] = None  # None = the preset's (512)
    tokenizer: str = _DATA.tokenizer
    examples_per_task: int = _DATA.examples_per_task


def _overrides(name: str, config: type, names: tuple[str, ...] | None = None, doc: str = "") -> type:
    """A spec section of optional overrides of a trainers.spec config: the named fields (all by
    default) with the config's own types, each None = the preset's value. Built from the config
    so a field added there is a field here, with the same type."""
    hints = get_type_hints(config)
    chosen = names or tuple(f.name for f in fields(config))
    cls = make_dataclass(name, [(n, Optional[hints[n]], field(default=None)) for n in chosen],
                         frozen=True)
    cls.__module__, cls.__doc__ = __name__, doc
    return cls


OptimSpec = _overrides("OptimSpec", OptimConfig,
                       doc="Overrides on top of each preset's Table 22 hyperparameters (None = the preset's; "
                           "micro_batches None = the planner raises it until activations fit).")
ModelSpec = _overrides("ModelSpec", ModelConfig,
                       ("dtype", "param_dtype", "remat", "remat_policy", "scan_layers", "dropout_rate"),
                       doc="Overrides of the presets' numerics (None = the preset's).")


@dataclass(frozen=True)
class MeshSpec:
    """A fixed device layout for every cell; all None = the planner chooses per cell."""

    data: Optional[int] = None
    fsdp: Optional[int] = None
    tensor: Optional[int] = None

    def fixed(self) -> bool:
        return any(v is not None for v in (self.data, self.fsdp, self.tensor))


@dataclass(frozen=True)
class BudgetSpec:
    max_device_hours: Optional[float] = None  # planning refuses sweeps estimated above this
    max_cost: Optional[float] = None  # same, in the price unit (USD by default)


@dataclass(frozen=True)
class RetrySpec:
    preemption: int = 10  # resubmissions after a preemption (resumes from the checkpoint)
    failure: int = 2  # retries after a failure (error in the job)


@dataclass(frozen=True)
class SweepSpec:
    name: str = "sweep"
    models: tuple[str, ...] = ("tiny-1",)
    task_counts: tuple[int, ...] = (9,)
    formats: tuple[str, ...] = ("mixed",)
    accelerator: str = "cpu"
    max_devices: Optional[int] = None
    min_devices: Optional[int] = None
    mesh: MeshSpec = field(default_factory=MeshSpec)
    mfu: Optional[float] = None  # model FLOPs utilisation for time estimates; None: measured (orchestrator/measured.py)
    price_per_device_hour: Optional[float] = None  # None = the accelerator table's list price
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    max_concurrent: int = 2
    priority: str = "smallest_first"
    seeds: tuple[int, ...] = (0,)  # a grid axis: each seed is its own cell (data order, init)
    # More grid axes: a training setting (dotted field of data, optim or model) -> its values,
    # e.g. {"optim.learning_rate": [1e-3, 3e-3]}; trainers/axes.py declares every axis.
    axes: dict[str, Any] = field(default_factory=dict)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    init_checkpoint: dict[str, str] = field(default_factory=dict)  # preset -> base checkpoint
    pretrain_tokens: dict[str, float] = field(default_factory=dict)  # preset -> tokens override
    retries: RetrySpec = field(default_factory=RetrySpec)
    tracking_uri: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        from trainers.spec import to_dict

        return to_dict(self)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

SCHEMA_NAME = "flanscale_sweep"


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """Compose a sweep file with Hydra-style overrides and validate it."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such sweep file")
    if p.suffix != ".yaml":
        raise UserError(f"{path}: a sweep file must end in .yaml (Hydra config), not {p.suffix or 'no suffix'!r}")
    if _empty(p):
        raise UserError(f"{path}: the sweep file is empty; a sweep names at least its models and task counts, "
                        "e.g. `name: mine`, `models: [tiny-1]`, `task_counts: [9]`")
    for ov in overrides:
        if ov.lstrip("+~").split("=", 1)[0] == "seed":
            raise UserError(f"{path}: override {ov!r}: the seed is a grid axis; use seeds=[0,1] (one cell per seed)")
    raw = compose(p, list(overrides), SweepSpec, SCHEMA_NAME)
    try:
        spec = from_dict(SweepSpec, raw)
    except UserError as e:  # keys added with '+' that the schema does not have
        raise UserError(f"{path}: {e}") from None
    validate(spec, str(path))
    return spec


def _empty(path: Path) -> bool:
    """Nothing but blanks and comments: Hydra would run the schema's default sweep."""
    import yaml

    try:
        body = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError):  # compose reports these with their line
        return False
    return body is None or body == {}


def dump_spec(spec: SweepSpec) -> str:
    """The composed spec as a sweep file: no defaults list, every group and override already
    applied, so load_spec reads it back to an equal spec wherever it is sent."""
    import yaml

    return yaml.safe_dump(spec.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# Validation (beyond types)
# ---------------------------------------------------------------------------------------------


def _choices(where: str, name: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise UserError(f"{where}: {name}: unknown {value!r}{did_you_mean(str(value), list(allowed))}; allowed: {', '.join(allowed)}")


def _positive(where: str, name: str, value: Any, zero_ok: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise UserError(f"{where}: {name}: {value!r} is not allowed; must be {bound}")


def validate(spec: SweepSpec, where: str = "sweep", each_value: bool = True) -> None:
    """Raise UserError (one line) for the first problem found; with `each_value`, also for the
    spec at each value of each setting axis."""
    bad = _non_finite(spec)
    if bad:
        raise UserError(f"{where}: {bad[0]}: {bad[1]!r} is not allowed; must be a finite number")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.name):
        raise UserError(f"{where}: name: {spec.name!r} is not allowed; use letters, digits, '.', '_', '-'")
    if not spec.models:
        raise UserError(f"{where}: models: empty; list at least one of: {', '.join(REGISTRY.names())}")
    for name in spec.models:
        REGISTRY.get(name, field=f"{where}: models")
    if not spec.seeds:
        raise UserError(f"{where}: seeds: empty; e.g. [0] or [0, 1, 2] (one cell per seed)")
    for s in spec.seeds:
        _positive(where, "seeds", s, zero_ok=True)
    for axis in grid.BUILTIN:
        values = list(getattr(spec, axis.spec_field))
        if not values and axis in grid.SETTING:
            raise UserError(f"{where}: {axis.spec_field}: empty; list at least one value")
        dup = sorted({v for v in values if values.count(v) > 1}, key=str)
        if dup:
            raise UserError(f"{where}: {axis.spec_field}: {dup[0]!r} is listed twice; each grid value must be unique")
    if not spec.task_counts:
        raise UserError(f"{where}: task_counts: empty; e.g. {list(TASK_LADDER)} (0 = the base model)")
    for n in spec.task_counts:
        if not 0 <= n <= MAX_TASKS:
            raise UserError(f"{where}: task_counts: {n!r} is not allowed; must be between 0 and {MAX_TASKS}")
    if not spec.formats:
        raise UserError(f"{where}: formats: empty; allowed: {', '.join(FORMAT_SETS)}")
    for f in spec.formats:
        _choices(where, "formats", f, list(FORMAT_SETS))
    _choices(where, "accelerator", spec.accelerator, list(ACCELERATORS))
    acc = ACCELERATORS[spec.accelerator]
    for name in ("max_devices", "min_devices"):
        n = getattr(spec, name)
        if n is not None and n not in acc.slice_sizes:
            raise UserError(f"{where}: {name}: {n!r} is not a {acc.name} slice size; allowed: {', '.join(map(str, acc.slice_sizes))}")
    if spec.max_devices is not None and spec.min_devices is not None and spec.min_devices > spec.max_devices:
        raise UserError(f"{where}: min_devices: {spec.min_devices} is larger than max_devices {spec.max_devices}")
    if spec.mfu is not None and not 0 < spec.mfu <= 1:
        raise UserError(f"{where}: mfu: {spec.mfu!r} is not allowed; must be in (0, 1]")
    _positive(where, "price_per_device_hour", spec.price_per_device_hour, zero_ok=True)
    _positive(where, "budget.max_device_hours", spec.budget.max_device_hours)
    _positive(where, "budget.max_cost", spec.budget.max_cost)
    _positive(where, "max_concurrent", spec.max_concurrent)
    _choices(where, "priority", spec.priority, PRIORITIES)
    _positive(where, "retries.preemption", spec.retries.preemption, zero_ok=True)
    _positive(where, "retries.failure", spec.retries.failure, zero_ok=True)
    _validate_data(spec, where)
    _validate_optim(spec, where)
    _validate_model_and_eval(spec, where)
    for kind, mapping in (("init_checkpoint", spec.init_checkpoint), ("pretrain_tokens", spec.pretrain_tokens)):
        for name, value in mapping.items():
            if name not in spec.models:
                raise UserError(f"{where}: {kind}: {name!r} is not one of this sweep's models{did_you_mean(name, list(spec.models))}; allowed: {', '.join(spec.models)}")
            if kind == "pretrain_tokens":
                _positive(where, f"pretrain_tokens.{name}", value, zero_ok=True)
    _validate_mesh(spec, where)
    for one in axis_specs(spec, where) if each_value else ():  # every value passes the checks above
        validate(one, f"{where}: axes", each_value=False)


SETTABLE = {"data": DataSpec, "optim": OptimSpec, "model": ModelSpec}


def user_axes(spec: SweepSpec, where: str = "sweep") -> dict[str, tuple]:
    """The sweep's `axes:` as {field: values}, checked (trainers.axes.check_user_axes) and each
    value as its setting holds it."""
    settable = {name: [f.name for f in fields(cls)] for name, cls in SETTABLE.items()}
    checked = grid.check_user_axes(spec.axes, settable, [f.name for f in fields(SweepSpec)], where)
    return {f: tuple(grid.coerce(f, v, where) for v in values) for f, values in checked.items()}


def setting_axes(spec: SweepSpec, where: str = "sweep") -> dict[str, tuple]:
    """The axes that set one setting of a cell, {built-in axis name or user axis field: values}:
    the built-in ones beyond preset, task count, format set and seed, then the sweep's `axes:`."""
    out = {a.name: tuple(getattr(spec, a.spec_field)) for a in grid.SETTING}
    return {**out, **user_axes(spec, where)}


def with_axes(spec: SweepSpec, values: dict[str, Any]) -> SweepSpec:
    """The spec with each setting axis's setting at one of its values (and no `axes:` left)."""
    out = replace(spec, axes={})
    for key, v in values.items():
        axis = grid.axis_named(key)
        out = grid.set_field(out, axis.sets, v)
        if axis.builtin:
            out = replace(out, **{axis.spec_field: (v,)})
    return out


def axis_specs(spec: SweepSpec, where: str = "sweep") -> list[SweepSpec]:
    """The spec at each value of each setting axis alone (for validating every value)."""
    return [with_axes(spec, {k: v}) for k, values in setting_axes(spec, where).items() for v in values]


def _non_finite(obj: Any, name: str = "") -> tuple[str, float] | None:
    """(field, value) of the first NaN or infinity anywhere in a spec: no range check catches
    NaN (every comparison with it is false), and a cell would train on it."""
    if is_dataclass(obj):
        items: Any = ((f.name, getattr(obj, f.name)) for f in fields(obj))
    elif isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(obj))
    else:
        return (name, obj) if isinstance(obj, float) and not math.isfinite(obj) else None
    for key, value in items:
        key = str(key)
        found = _non_finite(value, f"{name}{key}" if key.startswith("[") or not name else f"{name}.{key}")
        if found:
            return found
    return None


def _validate_data(spec: SweepSpec, where: str) -> None:
    d = spec.data
    _choices(where, "data.source", d.source, SOURCES)
    # Paths are not checked for existence here: they are read by the workers, which may see
    # other filesystems (a cluster volume) than the machine that plans. `sweep run` checks
    # them where the controller runs (orchestrator/preflight.py), before it schedules a cell.
    if d.source == "flan" and not d.paths:
        raise UserError(f"{where}: data.paths: empty; source 'flan' needs JSONL files or directories")
    _choices(where, "data.mixture", d.mixture, MIXTURES)
    if d.mixture == "custom" and not d.proportions:
        raise UserError(f"{where}: data.proportions: empty; mixture 'custom' needs weights for: {', '.join(SUBMIXTURES)}")
    if d.mixture != "custom" and d.proportions:
        raise UserError(f"{where}: data.proportions: only used with data.mixture=custom, not {d.mixture!r}")
    for kind, mapping in (("proportions", d.proportions), ("caps", d.caps)):
        for name, value in mapping.items():
            _choices(where, f"data.{kind}", name, SUBMIXTURES)
            _positive(where, f"data.{kind}.{name}", value, zero_ok=kind == "proportions")
    _positive(where, "data.input_length", d.input_length)
    _positive(where, "data.target_length", d.target_length)
    _positive(where, "data.examples_per_task", d.examples_per_task)
    if d.tokenizer not in ("byte", "spm") and not d.tokenizer.endswith(".model"):
        raise UserError(f"{where}: data.tokenizer: {d.tokenizer!r} is not allowed; use 'byte', 'spm' or a path to a .model file")
    if d.tokenizer.endswith(".model") and not Path(d.tokenizer).is_file():
        raise UserError(f"{where}: data.tokenizer: {d.tokenizer!r} does not exist")


def _validate_optim(spec: SweepSpec, where: str) -> None:
    o = spec.optim
    if o.optimizer is not None:
        _choices(where, "optim.optimizer", o.optimizer, OPTIMIZERS)
    if o.schedule is not None:
        _choices(where, "optim.schedule", o.schedule, SCHEDULES)
    _positive(where, "optim.learning_rate", o.learning_rate)
    _positive(where, "optim.batch_size", o.batch_size)
    _positive(where, "optim.micro_batches", o.micro_batches)
    _positive(where, "optim.steps", o.steps, zero_ok=True)
    _positive(where, "optim.warmup_steps", o.warmup_steps, zero_ok=True)
    _positive(where, "optim.factored_min_dim", o.factored_min_dim)
    _positive(where, "optim.z_loss", o.z_loss, zero_ok=True)
    _positive(where, "optim.grad_clip", o.grad_clip, zero_ok=True)
    if o.decay_rate is not None and not 0 < o.decay_rate <= 1:
        raise UserError(f"{where}: optim.decay_rate: {o.decay_rate!r} is not allowed; must be in (0, 1]")
    for name in spec.models:
        batch = o.batch_size or REGISTRY.get(name).finetune.batch_size
        micro = o.micro_batches or 1
        if batch % micro:
            raise UserError(f"{where}: optim.micro_batches: {micro} does not divide the batch size {batch} of {name}")


def _validate_model_and_eval(spec: SweepSpec, where: str) -> None:
    m = spec.model
    for name in ("dtype", "param_dtype"):
        value = getattr(m, name)
        if value is not None:
            _choices(where, f"model.{name}", value, list(DTYPE_BYTES))
    if m.remat_policy is not None:
        _choices(where, "model.remat_policy", m.remat_policy, list(REMAT_POLICIES))
    if m.dropout_rate is not None and not 0 <= m.dropout_rate < 1:
        raise UserError(f"{where}: model.dropout_rate: {m.dropout_rate!r} is not allowed; must be in [0, 1)")
    e = spec.eval
    for b in e.benchmarks:
        _choices(where, "eval.benchmarks", b, benchmarks.names())
    for mode in e.modes:
        _choices(where, "eval.modes", mode, benchmarks.MODES)
        if e.benchmarks and not any(mode in benchmarks.get(b).modes for b in e.benchmarks):
            raise UserError(f"{where}: eval.modes: {mode!r} applies to none of eval.benchmarks "
                            f"({', '.join(e.benchmarks)}); rc needs a multiple-choice benchmark")
    _choices(where, "eval.mmlu_split", e.mmlu_split, benchmarks.MMLU_SPLITS)
    _positive(where, "eval.loss_examples", e.loss_examples)
    if e.data_dir and not Path(e.data_dir).is_dir():
        raise UserError(f"{where}: eval.data_dir: {e.data_dir!r} is not a directory")
    for name in ("every_steps", "max_examples", "direct_max_new_tokens"):
        _positive(where, f"eval.{name}", getattr(e, name), zero_ok=True)
    if e.shots < -1:
        raise UserError(f"{where}: eval.shots: {e.shots!r} is not allowed; 0 = zero-shot, N = N exemplars, "
                        "-1 = each benchmark's own number")
    for name in ("max_new_tokens", "sc_samples", "batch_size"):
        _positive(where, f"eval.{name}", getattr(e, name))
    _positive(where, "checkpoint.every_steps", spec.checkpoint.every_steps, zero_ok=True)
    _positive(where, "checkpoint.keep", spec.checkpoint.keep)


def _validate_mesh(spec: SweepSpec, where: str) -> None:
    mesh = spec.mesh
    if not mesh.fixed():
        return
    data, fsdp, tensor = (mesh.data or 1), (mesh.fsdp or 1), (mesh.tensor or 1)
    for name, v in (("mesh.data", data), ("mesh.fsdp", fsdp), ("mesh.tensor", tensor)):
        _positive(where, name, v)
    acc = ACCELERATORS[spec.accelerator]
    devices = data * fsdp * tensor
    if devices not in acc.slice_sizes:
        raise UserError(f"{where}: mesh: data x fsdp x tensor = {devices} is not a {acc.name} slice size; allowed: {', '.join(map(str, acc.slice_sizes))}")
    for name in spec.models:
        preset = REGISTRY.get(name)
        batch = spec.optim.batch_size or preset.finetune.batch_size
        rows = batch // (spec.optim.micro_batches or 1)
        if rows % (data * fsdp):
            raise UserError(f"{where}: optim.batch_size: {batch} (micro-batch of {rows} rows) of {name} is not divisible by the data axis data x fsdp = {data * fsdp}")
        cfg = preset.model
        for dim, size in (("num_heads", cfg.num_heads), ("d_ff", cfg.d_ff)):
            if size % tensor:
                raise UserError(f"{where}: mesh.tensor: {tensor} does not divide {name}'s {dim} = {size}")
