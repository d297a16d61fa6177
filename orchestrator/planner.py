"""SweepSpec -> [Cell]: grid expansion, cell specs, resource plans and estimates.

Pure and deterministic: no JAX, no Ray, no clock, so `flanscale plan` shows a whole sweep
(its cost and its refusals) before anything is scheduled, and planning twice gives the same
cells with the same keys. Scheduling decisions are return values; the controller acts on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from orchestrator.catalog import REGISTRY, Preset
from orchestrator.measured import planning_mfu
from orchestrator.spec import COT_TASKS, FORMAT_SETS, SweepSpec, setting_axes, with_axes
from trainers import accounting, architecture
from trainers import axes as grid
from trainers.accounting import GIB, Accelerator, get_accelerator
from trainers.spec import CellSpec, DataConfig, MeshConfig, ModelConfig, OptimConfig, UserError, to_dict

# Share of a device's memory the plan may fill; the rest is left to the runtime, XLA's
# temporaries and fragmentation.
USABLE_MEMORY = 0.85
# Tensor parallelism crosses devices on every layer; on GPUs keep it inside one NVLink domain.
MAX_GPU_TENSOR = 8


@dataclass(frozen=True)
class Resources:
    devices: int
    hosts: int
    mesh: dict[str, int]
    micro_batches: int
    memory: dict[str, float]  # bytes per device, as accounting.memory_per_device
    feasible: bool
    reason: str = ""


@dataclass(frozen=True)
class Cell:
    key: str
    spec: CellSpec
    model: str
    task_count: int
    formats: str  # the format set's name
    seed: int
    params: int
    steps: int
    batch_size: int
    finetune_tokens: float  # packed positions seen: steps x batch x (input + target length)
    finetune_flops: float  # exact per-token count (accounting.train_flops)
    pretrain_flops: float
    flops_fraction: Optional[float]  # finetune / pretrain; None when the base model's cost is unknown
    # The same three figures in the paper's Table 2 convention (accounting.paper_flops):
    # {"pretrain", "finetune", "fraction"}; the physical figures above are what MFU, hours and cost use.
    paper_flops: dict[str, Optional[float]]
    step_flops: float  # analytic FLOPs per optimizer step (what MFU is measured against)
    accelerator: str
    devices: int
    hosts: int
    mesh: dict[str, int] = field(default_factory=dict)
    micro_batches: int = 1
    memory_per_device_gib: float = 0.0
    est_hours: float = 0.0
    est_device_hours: float = 0.0
    est_cost: float = 0.0
    feasible: bool = True
    reason: str = ""
    priority: int = 0
    # Set when the cell's init checkpoint holds another architecture than its preset: the
    # parameters, FLOPs, memory and cost above are the checkpoint's (Base.note).
    architecture_note: str = ""
    # The values of its setting axes ({field of a user axis, or built-in name: value},
    # trainers/axes.py), already set in `spec`.
    axes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "spec"}
        d["mesh"] = dict(self.mesh)
        d["axes"] = dict(self.axes)
        d["spec"] = to_dict(self.spec)
        return d


# ---------------------------------------------------------------------------------------------
# Cell specs
# ---------------------------------------------------------------------------------------------


def _model_config(spec: SweepSpec, preset: Preset) -> ModelConfig:
    m = spec.model
    changes: dict[str, Any] = {"dropout_rate": preset.finetune.dropout}
    for name in ("dtype", "param_dtype", "remat", "remat_policy", "scan_layers", "dropout_rate"):
        if getattr(m, name) is not None:
            changes[name] = getattr(m, name)
    return replace(preset.model, **changes)


def _optim_config(spec: SweepSpec, preset: Preset, task_count: int) -> OptimConfig:
    ft = preset.finetune
    base = OptimConfig(batch_size=ft.batch_size, learning_rate=ft.learning_rate, steps=ft.steps)
    changes = {k: v for k, v in spec.optim.__dict__.items() if v is not None}
    if task_count == 0:
        changes["steps"] = 0  # the base model: evaluated, never finetuned
    return replace(base, **changes)


def _data_config(spec: SweepSpec, preset: Preset, task_count: int, format_set: str) -> DataConfig:
    d = spec.data
    formats, with_cot = FORMAT_SETS[format_set]
    return DataConfig(
        source=d.source,
        paths=tuple(d.paths),
        task_count=task_count,
        mixture=d.mixture,
        proportions=tuple(sorted((k, float(v)) for k, v in d.proportions.items())),
        caps=tuple(sorted((k, int(v)) for k, v in d.caps.items())),
        formats=formats,
        with_cot=with_cot,
        input_length=d.input_length or preset.finetune.input_length,
        target_length=d.target_length or preset.finetune.target_length,
        tokenizer=d.tokenizer,
        examples_per_task=d.examples_per_task,
    )


@dataclass(frozen=True)
class Base:
    """The model a preset's cells train: the preset's, or the architecture of its init
    checkpoint (trainers.architecture.trained_model, as the job builds it), with a note
    saying so when that is not the preset's."""

    model: ModelConfig
    init_checkpoint: str = ""
    note: str = ""  # "" when the cells train the preset's own architecture

    @property
    def is_preset(self) -> bool:
        return not self.note


def base_model(spec: SweepSpec, preset: Preset) -> Base:
    """The preset's model with the spec's overrides, or the architecture its init checkpoint's
    model.json records. A checkpoint not readable here (no model.json) is planned as the
    preset; `sweep run` refuses it before anything is scheduled (preflight.check_inputs)."""
    model = _model_config(spec, preset)
    path = spec.init_checkpoint.get(preset.name, "")
    if not path or not (Path(path).expanduser() / architecture.BASE_CONFIG).is_file():
        return Base(model, path)
    where = f"init_checkpoint.{preset.name}"
    trained = architecture.trained_model(model, architecture.read_base_config(path, where))
    if trained == model:
        return Base(model, path)
    note = (f"{where}: {path} holds another architecture than preset {preset.name} "
            f"({', '.join(architecture.differences(model, trained))}); its cells are planned, logged and "
            f"trained as the checkpoint's {accounting.param_count(trained):,} parameters, not the preset's "
            f"{accounting.param_count(model):,}")
    return Base(trained, path, note)


def _pretrain_flops(spec: SweepSpec, preset: Preset, base: Base) -> float:
    """The base model's compute: the spec's token override, else what `flanscale pretrain`
    recorded beside the base checkpoint (pretrain.json), else the preset's pretraining (when
    the cells train the preset's architecture; unknown, 0, for another)."""
    if preset.name in spec.pretrain_tokens:
        return accounting.pretrain_flops(base.model, float(spec.pretrain_tokens[preset.name]))
    measured = accounting.measured_pretrain_flops(base.init_checkpoint) if base.init_checkpoint else 0.0
    if measured > 0:
        return measured
    return accounting.pretrain_flops(base.model, preset.pretrain_tokens if base.is_preset else 0.0)


def _paper_flops(spec: SweepSpec, preset: Preset, base: Base, positions: float) -> dict[str, Optional[float]]:
    """Table 2's convention: the paper's own pretraining for its presets, unless the spec or a
    base checkpoint says the model was pretrained otherwise; a checkpoint of another
    architecture than the preset's is counted as a model the paper does not name."""
    tokens: Optional[float] = None
    if preset.name in spec.pretrain_tokens:
        tokens = float(spec.pretrain_tokens[preset.name])
    elif base.init_checkpoint and accounting.measured_pretrain_tokens(base.init_checkpoint) > 0:
        tokens = accounting.measured_pretrain_tokens(base.init_checkpoint)
    elif base.is_preset and preset.name not in accounting.PAPER_TABLE2_BASIS and preset.pretrain_tokens > 0:
        tokens = preset.pretrain_tokens
    return accounting.paper_flops(base.model, positions, tokens, paper_basis=base.is_preset)


# ---------------------------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------------------------


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _mesh_candidates(devices: int, rows: int, cfg: ModelConfig, acc: Accelerator, fixed: Optional[tuple[int, int, int]]):
    """(data, fsdp, tensor) layouts of `devices`, most data-parallel first, then fsdp, then
    tensor: data parallelism is cheapest in communication, tensor parallelism the dearest."""
    if fixed is not None:
        if math.prod(fixed) == devices:
            yield fixed
        return
    for tensor in _divisors(devices):
        if cfg.num_heads % tensor or cfg.d_ff % tensor or (acc.kind == "gpu" and tensor > MAX_GPU_TENSOR):
            continue
        for fsdp in _divisors(devices // tensor):
            data = devices // (tensor * fsdp)
            if rows % (data * fsdp) or cfg.d_model % fsdp:
                continue
            yield (data, fsdp, tensor)


def plan_resources(spec: SweepSpec, cell: CellSpec) -> Resources:
    """The smallest slice on which the cell fits memory, with its mesh and micro-batching."""
    acc = get_accelerator(spec.accelerator)
    cfg, o, d = cell.model, cell.optim, cell.data
    training = o.steps > 0
    sizes = [s for s in acc.slice_sizes
             if (spec.min_devices is None or s >= spec.min_devices) and (spec.max_devices is None or s <= spec.max_devices)]
    if spec.mesh.fixed():
        fixed = (spec.mesh.data or 1, spec.mesh.fsdp or 1, spec.mesh.tensor or 1)
        sizes = [math.prod(fixed)]
    else:
        fixed = None
    if spec.optim.micro_batches:
        micros = [spec.optim.micro_batches]
    else:  # raised (powers of two) until activations fit
        micros = [m for m in (2**i for i in range(16)) if m <= o.batch_size and o.batch_size % m == 0]
    usable = acc.memory_gib * GIB * USABLE_MEMORY
    best: Optional[tuple[float, int, tuple[int, int, int], int]] = None
    for devices in sizes:
        for layout in _mesh_candidates(devices, o.batch_size, cfg, acc, fixed):
            data, fsdp, tensor = layout
            mesh = MeshConfig(acc.name, devices, acc.hosts(devices), data, fsdp, tensor)
            for micro in micros:
                rows = o.batch_size // micro
                if rows % (data * fsdp):
                    break  # more micro-batches only make rows smaller
                mem = accounting.memory_per_device(
                    cfg, mesh, rows, d.input_length, d.target_length, cfg.remat,
                    training=training, factored_min_dim=o.factored_min_dim, micro_batches=micro,
                )
                if mem["total"] <= usable:
                    return Resources(devices, mesh.hosts, {"data": data, "fsdp": fsdp, "tensor": tensor}, micro, mem, True)
                if best is None or mem["total"] < best[0]:
                    best = (mem["total"], devices, layout, micro)
    limit = f" (max_devices={spec.max_devices})" if spec.max_devices else ""
    if best is None:
        if fixed is not None:
            reason = (f"mesh data={fixed[0]} fsdp={fixed[1]} tensor={fixed[2]} cannot split batch {o.batch_size} "
                      f"into {' or '.join(map(str, micros))} micro-batches of whole rows per device")
        else:
            reason = (f"no {acc.name} slice{limit} has a mesh that divides batch {o.batch_size}, "
                      f"heads {cfg.num_heads} and d_ff {cfg.d_ff}")
        return Resources(sizes[-1] if sizes else 0, 0, {}, 1, {"total": 0.0}, False, reason)
    total, devices, (data, fsdp, tensor), micro = best
    reason = (f"does not fit {acc.name} memory{limit}: needs {total / GIB:,.1f} GiB per device at best "
              f"({devices} devices, data={data} fsdp={fsdp} tensor={tensor}, {micro} micro-batches) "
              f"but {acc.name} has {acc.memory_gib:g} GiB ({USABLE_MEMORY:.0%} usable)")
    mem = {"total": total}
    return Resources(devices, acc.hosts(devices), {"data": data, "fsdp": fsdp, "tensor": tensor}, micro, mem, False, reason)


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------


def _cell(spec: SweepSpec, preset: Preset, base: Base, task_count: int, format_set: str, seed: int,
          axes: dict[str, Any]) -> Cell:
    model = base.model
    pretrain = _pretrain_flops(spec, preset, base)
    cell_spec = CellSpec(
        sweep=spec.name,
        model=model,
        data=_data_config(spec, preset, task_count, format_set),
        optim=_optim_config(spec, preset, task_count),
        eval=spec.eval,
        checkpoint=spec.checkpoint,
        seed=seed,
        init_checkpoint=base.init_checkpoint,
        pretrain_flops=pretrain,
        axes=tuple(axes),
    )
    res = plan_resources(spec, cell_spec)
    if not cell_spec.data.with_cot and 0 < task_count <= COT_TASKS:
        res = replace(res, feasible=False, reason=(
            f"format set {format_set!r} has no CoT data and the first {COT_TASKS} tasks of the ladder are "
            f"the CoT datasets: {task_count} tasks leave nothing to finetune on"))
    acc = get_accelerator(spec.accelerator)
    o, d = cell_spec.optim, cell_spec.data
    if res.mesh:  # the layout it runs on, or for an infeasible cell the closest it came
        mesh = MeshConfig(acc.name, res.devices, res.hosts, res.mesh["data"], res.mesh["fsdp"], res.mesh["tensor"])
        cell_spec = replace(cell_spec, mesh=mesh, optim=replace(o, micro_batches=res.micro_batches))
    finetune_flops = accounting.train_flops(model, o.steps * o.batch_size * d.input_length, o.steps * o.batch_size * d.target_length)
    positions = float(o.steps * o.batch_size * (d.input_length + d.target_length))
    per_step = accounting.step_flops(model, o.batch_size, d.input_length, d.target_length)
    hours = 0.0
    if res.feasible and o.steps:
        mfu = planning_mfu(spec, model.family, acc.name).value
        hours = o.steps * per_step / (res.devices * accounting.peak_flops(acc.name, model.dtype) * mfu) / 3600
    price = acc.price_per_device_hour if spec.price_per_device_hour is None else spec.price_per_device_hour
    return Cell(
        key=cell_spec.key(),
        spec=cell_spec,
        model=preset.name,
        task_count=task_count,
        formats=format_set,
        seed=seed,
        params=accounting.param_count(model),
        steps=o.steps,
        batch_size=o.batch_size,
        finetune_tokens=positions,
        finetune_flops=finetune_flops,
        pretrain_flops=pretrain,
        flops_fraction=finetune_flops / pretrain if pretrain > 0 else None,
        paper_flops=_paper_flops(spec, preset, base, positions),
        step_flops=per_step,
        accelerator=acc.name,
        devices=res.devices,
        hosts=res.hosts,
        mesh=dict(res.mesh),
        micro_batches=res.micro_batches,
        memory_per_device_gib=res.memory["total"] / GIB,
        est_hours=hours,
        est_device_hours=hours * res.devices,
        est_cost=hours * res.devices * price,
        feasible=res.feasible,
        reason=res.reason,
        architecture_note=base.note,
        axes=dict(axes),
    )


def plan(spec: SweepSpec) -> list[Cell]:
    """All cells of the sweep in the order they should run (Cell.priority 0 first)."""
    user = setting_axes(spec)
    values = [(a, tuple(getattr(spec, a.spec_field))) for a in grid.CORE]
    values += [(grid.axis_named(k), vals) for k, vals in user.items()]
    cells: list[Cell] = []
    seen: set[str] = set()
    bases: dict[tuple, tuple[Preset, Base]] = {}
    for coords in grid.grid_points(values):
        mine = {k: coords[grid.axis_named(k).name] for k in user}
        at = with_axes(spec, mine)
        name = coords[grid.MODEL.name]
        if (name, *mine.values()) not in bases:
            preset = REGISTRY.get(name, field="models")
            bases[(name, *mine.values())] = (preset, base_model(at, preset))
        preset, trains = bases[(name, *mine.values())]
        cell = _cell(at, preset, trains, coords[grid.TASK_COUNT.name], coords[grid.FORMATS.name],
                     coords[grid.SEED.name], mine)
        if cell.key not in seen:
            seen.add(cell.key)
            cells.append(cell)
    if spec.priority == "spec_order":
        ordered = list(cells)
    else:
        ordered = sorted(cells, key=lambda c: (c.steps * c.step_flops, c.params, c.task_count, c.key),
                         reverse=spec.priority == "largest_first")
    ordered = [replace(c, priority=i) for i, c in enumerate(ordered)]
    check_budget(spec, ordered)
    return ordered


def check_budget(spec: SweepSpec, cells: list[Cell]) -> None:
    """Refuse a sweep whose feasible cells are estimated above the spec's budget."""
    runnable = [c for c in cells if c.feasible]
    for limit, attr, unit in ((spec.budget.max_device_hours, "est_device_hours", "device-hours"),
                              (spec.budget.max_cost, "est_cost", "cost")):
        if limit is None:
            continue
        total = sum(getattr(c, attr) for c in runnable)
        if total > limit:
            top = sorted(runnable, key=lambda c: getattr(c, attr), reverse=True)[:3]
            listed = ", ".join(f"{c.model}/{c.task_count}/{c.formats} {getattr(c, attr):,.1f}" for c in top)
            name = "max_device_hours" if attr == "est_device_hours" else "max_cost"
            raise UserError(f"budget.{name}: the sweep needs about {total:,.1f} {unit}, over the budget of {limit:,.1f}; "
                            f"most expensive cells: {listed}")


def ray_resources(cell: Cell) -> dict[str, Any]:
    """Ray resources of one host's worker of the cell (cell.hosts such workers in all)."""
    acc = get_accelerator(cell.accelerator)
    per_host = max(1, math.ceil(cell.devices / max(1, cell.hosts)))
    if acc.kind == "cpu":
        return {"num_cpus": per_host}
    if acc.kind == "gpu":
        return {"num_gpus": per_host}
    return {"resources": {"TPU": per_host}}


def totals(cells: list[Cell]) -> dict[str, float]:
    runnable = [c for c in cells if c.feasible]
    return {
        "cells": len(cells),
        "feasible": len(runnable),
        "finetune_flops": sum(c.finetune_flops for c in runnable),
        "est_device_hours": sum(c.est_device_hours for c in runnable),
        "est_cost": sum(c.est_cost for c in runnable),
    }
