"""Trend tests that pool all of a metric's cells (pure: no I/O).

Whether a metric rises or falls with model size, task count or compute is decided by one
ordinary least squares model (statsmodels) over every finished cell of the metric, never
series by series with one to three degrees of freedom:

    y = slope * ln x + one intercept per series + noise

A series is a line of the scaling plot (dashboards/analysis.py), so the grid's other axes
(task count or preset, CoT data, formats) enter as factors, and the seeds of a cell are
replicates. The slope is per e-fold of x (x times 2.718), in the metric's own units. Against
task count only finetuned cells are on the ln axis; the base model's gain is the gains table's.

The verdict:
- rising / falling: the two-sided t test of the slope rejects zero at 5% and the change it
  implies across the data (|slope| x ln(max x / min x)) is at least the metric's resolution
  (dashboards/kinds.py: half a point of a percent, 1% of a loss);
- flat: only from an equivalence test (two one-sided t tests, TOST, at 5%) that the change
  across the data lies within +-resolution, the stated margin;
- no detectable trend, with the reason: one x, no residual degrees of freedom, zero noise
  (the seeds of every cell agree exactly, so nothing tells a change from chance), a change
  below the metric's resolution, or a p-value the data cannot push below 5%.

Beside the pooled slope each series' own slope is estimated (an interaction model) and the
interaction is F-tested: a finding says "in every series" only when all share its sign.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from dashboards import analysis
from dashboards.kinds import Domain
from dashboards.runs import CellRun

LEVEL = 0.95
TEST = "OLS of the metric on ln x with one intercept per series (seeds as replicates); t test of the slope"
AXIS_NOUN = analysis.AxisText({"params": "model size", "task_count": "task count", "flops": "compute"}, lambda f: f)
PER = analysis.AxisText({"params": "parameters", "task_count": "tasks", "flops": "FLOPs"}, lambda f: f)
# Within a series compute may only be proportional to size (the same pretraining and
# finetuning tokens at every size); its test is then the size test exactly, told once.
PROPORTIONAL = 0.01  # largest spread of ln(FLOPs / parameters) within a series


@dataclass(frozen=True)
class Trend:
    metric: str
    against: str
    direction: str  # "rising" | "falling" | "none"
    slope: float | None  # per e-fold of x, in the metric's units
    low: float | None  # its interval at `level`
    high: float | None
    t: float | None
    df: int
    p: float | None
    cells: int
    series: int
    span: float  # ln(max x / min x) of the cells tested
    resolution: float  # the metric's resolution at its mean: the equivalence margin for the change across the data
    p_flat: float | None  # TOST p-value that the change across the data is within +-resolution
    reason: str = ""  # why there is no trend (direction "none")
    series_slopes: tuple[tuple[str, float], ...] = ()  # each series' own slope, where it has 2+ x
    p_interaction: float | None = None  # F test that the series' slopes differ
    level: float = LEVEL

    @property
    def flat(self) -> bool:
        return self.direction == "none" and self.p_flat is not None and self.p_flat < 1 - self.level

    @property
    def consistent(self) -> bool:
        """Every series with its own slope has the pooled slope's sign."""
        if self.slope is None or not self.series_slopes:
            return False
        return all(math.copysign(1.0, s) == math.copysign(1.0, self.slope) for _, s in self.series_slopes)

    @property
    def verdict(self) -> str:
        if self.direction != "none":
            return self.direction
        if self.flat:
            return (f"flat: the change across the data is within +-{self.resolution:.2g} "
                    f"(equivalence test p = {self.p_flat:.2g})")
        return f"no detectable trend ({self.reason})"

    @property
    def change(self) -> float | None:
        """The change the slope implies across the data's range."""
        return None if self.slope is None else self.slope * self.span

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction, "slope": self.slope, "low": self.low, "high": self.high, "df": self.df,
                "test": TEST, "t": self.t, "p": self.p, "level": self.level, "cells": self.cells,
                "flat": self.flat, "margin": self.resolution, "p_flat": self.p_flat, "reason": self.reason,
                "verdict": self.verdict}


def pooled(u: Sequence[float], y: Sequence[float], series: Sequence[str], domain: Domain, metric: str = "",
           against: str = "params", level: float = LEVEL) -> Trend:
    """The pooled test on observations: u = ln x, y the metric, `series` each one's series."""
    import statsmodels.api as sm
    from scipy.stats import t as student_t

    u, y = np.asarray(u, dtype=float), np.asarray(y, dtype=float)
    names = list(dict.fromkeys(series))
    member = np.array([names.index(s) for s in series])
    span = float(np.ptp(u)) if len(u) else 0.0
    resolution = float(domain.resolution(float(np.mean(y)))) if len(y) else 0.0
    common = dict(metric=metric, against=against, cells=len(y), series=len(names), span=span,
                  resolution=resolution, level=level)

    def none(reason: str, **kw) -> Trend:
        fields = dict(slope=None, low=None, high=None, t=None, df=0, p=None, p_flat=None)
        fields.update(kw)
        return Trend(direction="none", reason=reason, **common, **fields)  # type: ignore[arg-type]

    if len(np.unique(u)) < 2:
        return none(f"{len(np.unique(u))} {analysis.X_NOUN[against][:-1]} only")
    onehot = (member[:, None] == np.arange(len(names))[None, :]).astype(float)
    fit = sm.OLS(y, np.column_stack([u, onehot])).fit()
    df = int(round(fit.df_resid))
    if df < 1:
        return none(f"{len(y)} cells leave no degrees of freedom to measure the noise")
    if fit.ssr <= (1e-9 * max(1.0, float(np.max(np.abs(y))))) ** 2 * len(y) or _replicates_agree(u, y, member):
        return none("zero noise: the seeds of every cell agree exactly, so nothing tells a change from chance",
                    df=df)
    slope, se = float(fit.params[0]), float(fit.bse[0])
    low, high = (float(v) for v in fit.conf_int(alpha=1 - level)[0])
    t, p = float(fit.tvalues[0]), float(fit.pvalues[0])
    margin = resolution / span
    p_flat = max(float(student_t.sf((slope + margin) / se, df)), float(student_t.cdf((slope - margin) / se, df)))
    slopes, p_int = _series_slopes(u, y, member, names, fit)
    stats = dict(slope=slope, low=low, high=high, t=t, df=df, p=p, p_flat=p_flat, series_slopes=slopes,
                 p_interaction=p_int)
    change = abs(slope) * span
    if change < resolution:
        change = change if change > 1e-9 * max(1.0, float(np.max(np.abs(y)))) else 0.0  # not a float's dust
        return none(f"the fitted change across the data, {change:.2g}, is below the metric's resolution "
                    f"({resolution:.2g})", **stats)
    if p >= 1 - level:
        return none(f"slope {slope:+.3g} per e-fold, t = {t:.2g}, df {df}, p = {p:.2g}", **stats)
    return Trend(direction="rising" if slope > 0 else "falling", **common, **stats)  # type: ignore[arg-type]


def _replicates_agree(u: np.ndarray, y: np.ndarray, member: np.ndarray) -> bool:
    """Whether the cells measured more than once (seeds) all measured exactly the same: the
    pure error, the one noise estimate free of any misfit of the line, is then zero."""
    cells: dict[tuple[int, float], list[float]] = {}
    for m, ui, yi in zip(member, u, y):
        cells.setdefault((int(m), float(ui)), []).append(float(yi))
    repeated = [v for v in cells.values() if len(v) > 1]
    return bool(repeated) and all(max(v) == min(v) for v in repeated)


def _series_slopes(u, y, member, names, additive) -> tuple[tuple[tuple[str, float], ...], float | None]:
    """Each series' own slope (series with 2+ distinct x) and the F test of their difference."""
    import statsmodels.api as sm

    own = [i for i in range(len(names)) if len(np.unique(u[member == i])) > 1]
    if not own:
        return (), None
    onehot = (member[:, None] == np.arange(len(names))[None, :]).astype(float)
    inter = sm.OLS(y, np.column_stack([onehot, onehot[:, own] * u[:, None]])).fit()
    slopes = tuple((names[i], float(inter.params[len(names) + j])) for j, i in enumerate(own))
    if len(own) < 2 or inter.df_resid < 1 or inter.ssr <= 0:
        return slopes, None
    _, p, _ = inter.compare_f_test(additive)
    return slopes, float(p)


def for_cells(cells: Sequence[CellRun], metric: str, against: str, domain: Domain, level: float = LEVEL) -> Trend:
    """The pooled test of `metric` along `against` over the sweep's finished cells."""
    value = {c.key: c.metric(metric) for c in analysis.usable(cells, metric)}
    u, y, groups = [], [], []
    for s in analysis.curves(cells, metric, against):
        for p in s.points:
            for k in p.keys:
                u.append(math.log(p.x))
                y.append(value[k])
                groups.append(s.label)
    return pooled(u, y, groups, domain, metric, against, level)


def compute_is_size(cells: Sequence[CellRun], metric: str) -> bool:
    """Whether compute is proportional to parameters within every series: its test is then
    the size test (the same slope, t and p), and is told once."""
    for members in analysis.grouped(cells, metric, "params").values():
        ratios = [math.log(analysis.total_flops(c) / c.params) for cs in members.values() for c in cs
                  if analysis.total_flops(c) > 0 and c.params > 0]
        if ratios and max(ratios) - min(ratios) > PROPORTIONAL:
            return False
    return True


def sweep_trends(cells: Sequence[CellRun], metric: str, domain: Domain, level: float = LEVEL) -> list[Trend]:
    """The metric's trends with size and task count, and with compute where that is not the
    size test again."""
    axes = ["params", "task_count"] + ([] if compute_is_size(cells, metric) else ["flops"])
    return [for_cells(cells, metric, a, domain, level) for a in axes]


def describe(t: Trend) -> str:
    """The trend in words, with its numbers: "falls with model size, -0.069 per e-fold of
    parameters [-0.089, -0.049] (t = -7.0, df 14, p < 0.001)"."""
    if t.direction == "none":
        return f"{t.verdict} with {AXIS_NOUN[t.against]}"
    verb = "rises" if t.direction == "rising" else "falls"
    p = "p < 0.001" if t.p is not None and t.p < 1e-3 else f"p = {t.p:.2g}"
    return (f"{verb} with {AXIS_NOUN[t.against]}, {_num(t.slope)} per e-fold of {PER[t.against]} "
            f"[{_num(t.low)}, {_num(t.high)}] (t = {t.t:.1f}, df {t.df}, {p})")


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:+.2g}" if abs(v) < 0.1 else f"{v:+.3g}"
