"""The sweep's tables (pure): FLOPs per model, held-out results with gains, plan and cost.

Cells hold raw values (numbers, None for "not logged"); presentation formats them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import mean
from typing import Any, Mapping, Sequence

from dashboards.runs import CellRun

# The paper's held-out columns (Table 5 / normalized average of section 5 of PAPER.md).
EVAL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("MMLU Direct", "eval/mmlu/direct"),
    ("MMLU CoT", "eval/mmlu/cot"),
    ("BBH Direct", "eval/bbh/direct"),
    ("BBH CoT", "eval/bbh/cot"),
    ("TyDiQA Direct", "eval/tydiqa/direct"),
    ("MGSM CoT", "eval/mgsm/cot"),
    ("Norm. avg", "eval/normalized_average"),
)


@dataclass(frozen=True)
class Table:
    name: str  # file stem for the CSV / Markdown
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    note: str = ""


def flops_table(cells: Sequence[CellRun]) -> Table:
    """One row per model: pretraining compute, finetuning compute, and the fraction (paper Table 2).

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
        rows.append((model, mine[0].params, pretrain, finetune, pct, source))
    note = "" if rows else "no cells yet"
    return Table("flops", "Compute: finetuning as a fraction of pretraining",
                 ("model", "params", "pretrain FLOPs", "finetune FLOPs", "finetune/pretrain %", "source"),
                 tuple(rows), note)


def _flops(cells, pre_of, ft_of) -> tuple[float | None, float | None, str]:
    pre = [v for v in map(pre_of, cells) if v]
    ft = [v for c in cells if c.task_count > 0 for v in [ft_of(c)] if v]
    if not pre and not ft:
        return None, None, ""
    return (max(pre) if pre else None), (max(ft) if ft else None), "logged"


def _num(v) -> float | None:
    return float(v) if finite(v) else None


def results_table(cells: Sequence[CellRun]) -> Table:
    """Held-out scores per finished cell, and each finetuned cell's gain over its size's base model."""
    present = [(name, m) for name, m in EVAL_COLUMNS if any(c.metric(m) is not None for c in cells)]
    done = [c for c in cells if c.state == "finished" and any(c.metric(m) is not None for _, m in present)]
    headline = present[-1] if present else None
    if headline and headline[1] != "eval/normalized_average":
        # Without all six benchmarks there is no normalized average; gain is then on the mean
        # of the columns that were evaluated.
        headline = ("mean of evaluated", "")
    base = {}
    for model in {c.model for c in done}:
        vals = [_score(c, present) for c in done if c.model == model and c.task_count == 0]
        vals = [v for v in vals if v is not None]
        if vals:
            base[model] = mean(vals)
    rows = []
    for c in done:
        s = _score(c, present)
        gain = s - base[c.model] if c.task_count > 0 and c.model in base and s is not None else None
        rows.append((c.model, c.params, c.task_count, "yes" if c.with_cot else "no",
                     *[c.metric(m) for _, m in present], gain))
    gain_col = f"gain in {headline[0]} over base" if headline else "gain over base"
    note = ""
    if not present:
        note = "no evaluation metrics (eval/...) logged yet"
    elif not base:
        note = "no base model (0 tasks) evaluated, so no gains"
    return Table("results", "Held-out results (percent)",
                 ("model", "params", "tasks", "CoT data", *[n for n, _ in present], gain_col), tuple(rows), note)


def _score(c: CellRun, present: Sequence[tuple[str, str]]) -> float | None:
    if not present:
        return None
    if present[-1][1] == "eval/normalized_average":
        return c.metric("eval/normalized_average")
    vals = [c.metric(m) for _, m in present]
    return mean(v for v in vals if v is not None) if any(v is not None for v in vals) else None


def cells_table(cells: Sequence[CellRun], prices: Mapping[str, float], now: float) -> Table:
    """Every cell of the plan, where it stands, and what it has cost so far."""
    rows = []
    for c in cells:
        hours = c.wall_hours(now)
        price = prices.get(c.accelerator)
        cost = hours * max(c.devices, 1) * price if price is not None else None
        rows.append((c.key, c.model, c.params, c.task_count, "+".join(c.formats), "yes" if c.with_cot else "no",
                     c.state, c.attempts, c.preemptions, c.metric("train/loss"), c.finetune_flops,
                     c.plan.get("est_hours"), hours, c.plan.get("est_cost"), cost, c.error or c.plan.get("reason") or ""))
    return Table("cells", "Cells: plan, state and cost so far",
                 ("key", "model", "params", "tasks", "formats", "CoT data", "state", "attempts", "preemptions",
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
    ft_done = sum(c.finetune_flops or 0.0 for c in cells if c.state == "finished")
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


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
