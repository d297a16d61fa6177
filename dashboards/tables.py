"""The sweep's tables (pure): FLOPs per model, held-out results and gains over the base model
(seeds averaged), plan and cost.

Cells hold raw values (numbers, None for "not logged"); presentation formats them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import mean
from typing import Any, Mapping, Sequence

from dashboards import standins
from dashboards.runs import CellRun
from trainers import axes as grid
from trainers.eval import benchmarks
from trainers.states import CellState

# The paper's held-out columns (the paper's Table 5 and the normalized average of its section 5):
# the members of the normalized average as the benchmark registry declares them, then the average.
EVAL_COLUMNS: tuple[tuple[str, str], ...] = (*benchmarks.average_titles("paper"),
                                             ("Norm. avg", benchmarks.average_metric("paper")))


@dataclass(frozen=True)
class Table:
    name: str  # file stem for the CSV / Markdown
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    note: str = ""


def flops_table(cells: Sequence[CellRun]) -> Table:
    """One row per model: pretraining compute, finetuning compute and the fraction (paper
    Table 2), physically (the exact per-token count MFU, hours and cost use) and in the
    paper's own coarser convention (c x N_nominal x tokens, which reproduces Table 2).

    A size finetuned on several mixtures shows its most expensive finetuning, the figure the
    paper's headline fraction is about.
    """
    rows = []
    for model in _models(cells):
        mine = [c for c in cells if c.model == model]
        pretrain, finetune, source = _flops(mine, lambda c: c.pretrain_flops, lambda c: c.finetune_flops)
        if pretrain is None and finetune is None:
            # Not run (yet, or infeasible): the planner's estimate from cell.json, when logged.
            pretrain, finetune, source = _flops(mine, lambda c: _num(c.plan.get("pretrain_flops")),
                                                lambda c: _num(c.plan.get("finetune_flops")))
            source = "planned" if source else ""
        pct = 100.0 * finetune / pretrain if pretrain and finetune is not None else None
        p_pre, p_ft, _ = _flops(mine, lambda c: _num(_paper(c).get("pretrain")), lambda c: _num(_paper(c).get("finetune")))
        p_pct = 100.0 * p_ft / p_pre if p_pre and p_ft is not None else None
        rows.append((model, mine[0].params, pretrain, finetune, pct, source, p_pre, p_ft, p_pct))
    note = "" if rows else "no cells yet"
    if rows and all(r[6] is None and r[7] is None for r in rows):
        note = "the plan logged no paper-convention figures (sweeps planned before they existed)"
    return Table("flops", "Compute: finetuning as a fraction of pretraining",
                 ("model", "params", "pretrain FLOPs (exact)", "finetune FLOPs (exact)", "finetune/pretrain % (exact)",
                  "source", "pretrain FLOPs (paper convention)", "finetune FLOPs (paper convention)",
                  "finetune/pretrain % (paper convention)"), tuple(rows), note)


def _paper(c: CellRun) -> dict:
    v = c.plan.get("paper_flops")
    return v if isinstance(v, dict) else {}


def _flops(cells, pre_of, ft_of) -> tuple[float | None, float | None, str]:
    pre = [v for v in map(pre_of, cells) if v]
    ft = [v for c in cells if c.task_count > 0 for v in [ft_of(c)] if v]
    if not pre and not ft:
        return None, None, ""
    return (max(pre) if pre else None), (max(ft) if ft else None), "logged"


def _num(v) -> float | None:
    return float(v) if finite(v) else None


@dataclass(frozen=True)
class PointKey:
    """What a point of the results is: cells that differ only by seed share it."""

    model: str
    params: int
    task_count: int
    with_cot: bool
    formats: tuple[str, ...]
    # Every other axis but the replicate one (trainers/axes.py): ((axis name, value), ...).
    axes: tuple[tuple[str, str], ...] = ()

    @property
    def user(self) -> str:
        """The setting axes' run-name fragments ("lr 0.003, steps 200"), "" when none."""
        return ", ".join(grid.axis_named(n).fragment(v) for n, v in self.axes if grid.is_setting_axis(n))


def point_key(c: CellRun) -> PointKey:
    coords = tuple((a.name, grid.format_value(v)) for a, v in grid.ordered(c.coords) if a.role != "replicate")
    return PointKey(c.model, c.params, c.task_count, c.with_cot, c.formats, coords)


def by_point(cells: Sequence[CellRun]) -> dict[PointKey, list[CellRun]]:
    out: dict[PointKey, list[CellRun]] = {}
    for c in sorted(cells, key=lambda c: (c.params, c.model, c.task_count, not c.with_cot, c.formats,
                                          sorted(map(str, c.axes.items())), c.seed)):
        out.setdefault(point_key(c), []).append(c)
    return out


def _base_of(groups: dict[PointKey, list[CellRun]], value) -> dict:
    """The base model (0 tasks) of each size, by (model, user-axis values) where it was planned
    at each (model.dtype, ...) and by model alone (a base model is not trained at a learning rate)."""
    out: dict = {}
    for k, cs in groups.items():
        if k.task_count == 0:
            out[(k.model, k.user)] = v = value(cs)
            out.setdefault(k.model, v)
    return out


def seed_mean(cells: Sequence[CellRun], metric: str) -> tuple[float | None, int]:
    vals = [v for c in cells for v in [c.metric(metric)] if v is not None]
    return (mean(vals), len(vals)) if vals else (None, 0)


def result_columns(cells: Sequence[CellRun]) -> list[tuple[str, str]]:
    """(header, metric) of the held-out columns logged by any cell: the held-out loss, the
    paper's Table 5 columns, other suites' normalized averages and rank-classification scores."""
    logged = {m for c in cells for m in c.metrics}
    cols = [("eval/loss", "eval/loss")] if "eval/loss" in logged else []
    cols += [(n, m) for n, m in EVAL_COLUMNS if m in logged]
    cols += [(m.split("/")[1] + " norm. avg", m) for m in sorted(logged)
             if m.endswith("/normalized_average") and m != "eval/normalized_average"]
    cols += [(m[len("eval/"):], m) for m in sorted(logged)
             if m.startswith("eval/") and m.endswith(("/rc", "/rc_norm"))]
    return [(f"{n} {standins.MARK}" if standins.is_standin(m, cells) else n, m) for n, m in cols]


def results_table(cells: Sequence[CellRun]) -> Table:
    """Held-out scores per point (mean over seeds) and each finetuned point's gain over the base
    model of the same preset (0 tasks, seeds averaged)."""
    present = [(n, m) for n, m in result_columns(cells) if m != "eval/loss"]
    loss = [("eval/loss", "eval/loss")] if any(c.metric("eval/loss") is not None for c in cells) else []
    done = [c for c in cells
            if c.state == CellState.FINISHED and any(c.metric(m) is not None for _, m in present + loss)]
    headline = _headline(present)
    groups = by_point(done)
    base = _base_of(groups, lambda cs: _score(cs, headline))
    rows = []
    for k, cs in groups.items():
        s = _score(cs, headline)
        b = base.get((k.model, k.user), base.get(k.model))
        gain = s - b if k.task_count > 0 and s is not None and b is not None else None
        rows.append((", ".join(filter(None, (k.model, k.user))), k.params, k.task_count, cot_data(k.task_count, k.with_cot), len(cs),
                     *[seed_mean(cs, m)[0] for _, m in loss + present], gain))
    gain_col = f"gain in {headline[0]} over base" if headline else "gain over base"
    note = ""
    if not present and not loss:
        note = "no evaluation metrics (eval/...) logged yet"
    elif not any(v is not None for v in base.values()):
        note = "no base model (0 tasks) evaluated, so no gains"
    return Table("results", "Held-out results (percent; loss in nats per token), mean over seeds",
                 ("model", "params", "tasks", "CoT data", "seeds", *[n for n, _ in loss + present], gain_col),
                 tuple(rows), note)


def _headline(present: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    """The score a gain is measured on: a normalized average, else the mean of the paper's
    columns that were evaluated."""
    for name, m in present:
        if m.endswith("normalized_average"):  # the paper's first, then another suite's
            return (name, m)
    paper = [m for _, m in EVAL_COLUMNS if any(m == p for _, p in present)]
    return ("mean of evaluated", ",".join(paper)) if paper else None


def _score(cells: Sequence[CellRun], headline: tuple[str, str] | None) -> float | None:
    if headline is None:
        return None
    per_cell = []
    for c in cells:
        vals = [c.metric(m) for m in headline[1].split(",")]
        vals = [v for v in vals if v is not None]
        if vals:
            per_cell.append(mean(vals))
    return mean(per_cell) if per_cell else None


def headline_table(cells: Sequence[CellRun], metric: str) -> Table:
    """One metric by size (rows) and task count (columns), seeds averaged, then each finetuned
    column's gain over the base model of the same row (for a loss, negative is better)."""
    done = [c for c in cells if c.state == CellState.FINISHED and c.metric(metric) is not None]
    counts = sorted({c.task_count for c in done})
    tuned = [t for t in counts if t > 0]
    # A sweep that varies CoT data or formats gets a row per variant, each beside its base model.
    variants = sorted({(c.with_cot, c.formats, point_key(c).user) for c in done if c.task_count > 0}, reverse=True)
    split = len(variants) > 1
    rows = []
    for model, params in sorted({(c.model, c.params) for c in done}, key=lambda mp: (mp[1], mp[0])):
        mine = [c for c in done if c.model == model]
        base = seed_mean([c for c in mine if c.task_count == 0], metric)[0]
        for v in variants if split else [None]:
            means = [seed_mean([c for c in mine if c.task_count == t
                                and (v is None or (c.with_cot, c.formats, point_key(c).user) == v)], metric)[0]
                     for t in tuned]
            name = model if v is None else ", ".join(filter(None, (model, f"{'with' if v[0] else 'no'} CoT",
                                                                   "+".join(v[1]), v[2])))
            gains = [m - base if m is not None and base is not None else None for m in means]
            rows.append((name, params, *([base] if 0 in counts else []), *means, *(gains if 0 in counts else [])))
    heads = [("base (0 tasks)" if t == 0 else f"{t} tasks") for t in counts]
    heads += [f"gain at {t}" for t in tuned] if 0 in counts else []
    label = standins.label(metric, cells)
    return Table(f"headline_{metric.replace('/', '_')}", f"{label}: by size and task count (mean over seeds), "
                 "and the gain of each finetuned column over the base model",
                 ("model", "params", *heads), tuple(rows), "" if rows else f"no finished cell has logged {metric}")


def gains_table(cells: Sequence[CellRun], metrics: Sequence[str]) -> Table:
    """Finetuned minus base model of the same preset, per metric, seeds averaged on both sides."""
    groups = by_point([c for c in cells if c.state == CellState.FINISHED])
    rows = []
    for metric in metrics:
        base = _base_of(groups, lambda cs: seed_mean(cs, metric))
        for k, cs in groups.items():
            b, nb = base.get((k.model, k.user)) or base.get(k.model, (None, 0))
            if k.task_count == 0 or b is None:
                continue
            ft, n = seed_mean(cs, metric)
            if ft is None:
                continue
            rows.append((standins.label(metric, cells), ", ".join(filter(None, (k.model, k.user))), k.params, k.task_count,
                         cot_data(k.task_count, k.with_cot), b, nb, ft, n, ft - b))
    note = "" if rows else "no preset has both a base model (0 tasks) and a finetuned cell with these metrics"
    return Table("gains", "Gain over the base model of the same size (finetuned minus base, means over seeds; "
                 "for a loss, negative is better)",
                 ("metric", "model", "params", "tasks", "CoT data", "base", "base seeds", "finetuned", "seeds", "gain"),
                 tuple(rows), note)


def cells_table(cells: Sequence[CellRun], prices: Mapping[str, float], now: float) -> Table:
    """Every cell of the plan, where it stands, and what it has cost so far."""
    rows = []
    for c in cells:
        hours = c.wall_hours(now)
        price = prices.get(c.accelerator)
        cost = hours * max(c.devices, 1) * price if price is not None else None
        rows.append((c.key, c.model, c.params, c.task_count, "+".join(c.formats), cot_data(c.task_count, c.with_cot),
                     c.seed, c.state, c.attempts, c.preemptions, c.metric("train/loss"), c.finetune_flops,
                     c.plan.get("est_hours"), hours, c.plan.get("est_cost"), cost, c.error or c.plan.get("reason") or ""))
    return Table("cells", "Cells: plan, state and cost so far",
                 ("key", "model", "params", "tasks", "formats", "CoT data", "seed", "state", "attempts", "preemptions",
                  "last train/loss", "finetune FLOPs", "planned hours", "hours so far", "planned cost $",
                  "cost so far $", "error / reason"), tuple(rows))


def cost_summary(cells: Sequence[CellRun], prices: Mapping[str, float], now: float) -> dict[str, Any]:
    """Totals for the report's header: cells by state, device-hours and dollars, planned vs spent."""
    states: dict[str, int] = {}
    for c in cells:
        states[c.state] = states.get(c.state, 0) + 1
    device_hours = sum(c.wall_hours(now) * max(c.devices, 1) for c in cells)
    priced = [c for c in cells if c.accelerator in prices]
    spent = sum(c.wall_hours(now) * max(c.devices, 1) * prices[c.accelerator] for c in priced)
    planned = [c.plan.get("est_cost") for c in cells if isinstance(c.plan.get("est_cost"), (int, float))]
    ft_done = sum(c.finetune_flops or 0.0 for c in cells if c.state == CellState.FINISHED)
    ft_planned = [c.plan.get("finetune_flops") for c in cells if isinstance(c.plan.get("finetune_flops"), (int, float))]
    return {
        "cells": len(cells),
        "states": dict(sorted(states.items())),
        "device_hours": device_hours,
        "cost_so_far": spent if priced or not cells else None,
        "unpriced_accelerators": sorted({c.accelerator or "?" for c in cells if c.accelerator not in prices}),
        "planned_cost": sum(planned) if planned else None,
        "finetune_flops_done": ft_done,
        "finetune_flops_planned": sum(ft_planned) if ft_planned else None,
    }


def _models(cells: Sequence[CellRun]) -> list[str]:
    seen: dict[str, int] = {}
    for c in cells:
        seen.setdefault(c.model, c.params)
    return sorted(seen, key=lambda m: (seen[m], m))


def cot_data(task_count: int, with_cot: bool) -> str:
    """The "CoT data" column: a base model (0 tasks) was finetuned on nothing."""
    return "—" if task_count == 0 else ("yes" if with_cot else "no")


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
