"""Metrics measured on stand-in data: benchmarks a cell scored on flanscale's shipped synthetic
stand-ins rather than the real benchmark files (CellRun.standins). Such a metric carries the
benchmark's name but not its meaning, so every table row and figure of it says so, and the
paper's values are never drawn beside it.
"""

from __future__ import annotations

from typing import Iterable

from dashboards import paper
from dashboards.runs import CellRun

MARK = "(stand-in data)"
# The paper's normalized average is made of its benchmarks' scores.
PAPER_BENCHMARKS = frozenset(m.split("/")[1] for m in paper.METRIC_COLUMNS if m.count("/") == 2)


def benchmarks_of(metric: str) -> frozenset[str]:
    """The benchmarks a metric is computed from: `eval/<b>/...` is b's; the paper's average is
    its benchmarks'; anything else none."""
    if metric == "eval/normalized_average":
        return PAPER_BENCHMARKS
    parts = metric.split("/")
    return frozenset({parts[1]}) if len(parts) >= 3 and parts[0] == "eval" else frozenset()


def is_standin(metric: str, cells: Iterable[CellRun]) -> bool:
    """Whether any cell that logged `metric` scored one of its benchmarks on stand-in data."""
    wanted = benchmarks_of(metric)
    return bool(wanted) and any(c.metric(metric) is not None and wanted & set(c.standins) for c in cells)


def label(metric: str, cells: Iterable[CellRun]) -> str:
    """The metric's name as a report shows it: marked when it was measured on stand-in data."""
    return f"{metric} {MARK}" if is_standin(metric, cells) else metric
