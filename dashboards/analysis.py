"""Scaling curves, fits, forecasts and back-tests over a sweep's cells (pure: no I/O).

A *series* is one line of a scaling plot and follows one lineage:
- against model size or compute: one preset family (t5-*, palm-*, cont-palm-*, ...) at one
  task count, a point per preset; two presets are never merged because their parameter
  counts agree (PaLM 62B and cont-PaLM 62B are different lines);
- against task count: one preset, a point per task count; the base model (0 tasks) is drawn
  as the series' reference, not fitted (log x).
Cells that differ only by seed are one point: the mean over seeds, with the min-max spread
and the number of seeds. Laws (dashboards/laws.py) are fitted to the means.

A law is fitted to a series only where the pooled test over all of the metric's cells
(dashboards/trends.py) finds a trend along the axis, and the series itself has at least 3
distinct x, something above chance (accuracy), means that differ by more than the metric's
resolution and, where points have several seeds, seeds that do not all agree exactly (no
measured noise). Otherwise the report says which of these the data lack at this scale
instead of drawing a fit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from dashboards import laws
from dashboards.kinds import Domain, domain_for
from dashboards.runs import CellRun
from trainers import axes as grid
from trainers.states import CellState

AGAINST = ("params", "task_count", "flops")


class AxisText(dict):
    """Words for each x axis: the built-in ones given, a user axis's (`--x optim.learning_rate`)
    made from its field by `default`."""

    def __init__(self, known: dict[str, str], default) -> None:
        super().__init__(known)
        self.default = default

    def __missing__(self, against: str) -> str:
        return self.default(grid.axis_named(against).sets)


X_NOUN = AxisText({"params": "sizes", "task_count": "task counts", "flops": "compute levels"}, lambda f: f"{f} values")
SPREAD = "min-max over seeds"


@dataclass(frozen=True)
class Point:
    """One point of a curve: a cell, or the mean of the cells that differ only by seed."""

    x: float
    mean: float
    n: int  # seeds
    low: float  # smallest seed
    high: float  # largest seed
    sd: float  # sample standard deviation over seeds (0 with one seed)
    keys: tuple[str, ...]
    name: str  # the preset (against size/compute) or "<n> tasks" (against task count)


@dataclass(frozen=True)
class Series:
    label: str
    group: tuple[tuple[str, object], ...]
    points: tuple[Point, ...]  # x > 0, sorted by x
    base: Point | None = None  # the 0-task base model of a task-count series (reference only)

    @property
    def x(self) -> tuple[float, ...]:
        return tuple(p.x for p in self.points)

    @property
    def y(self) -> tuple[float, ...]:
        return tuple(p.mean for p in self.points)

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True)
class SeriesFit:
    series: Series
    fit: laws.Fit


@dataclass(frozen=True)
class Forecast:
    series: str
    prediction: laws.Prediction
    law: str


@dataclass(frozen=True)
class Backtest:
    series: str
    holdout: laws.Holdout


@dataclass(frozen=True)
class Skipped:
    """A series the data cannot fit at this scale, and why (shown instead of a fit)."""

    series: str
    reason: str


@dataclass(frozen=True)
class ScalingAnalysis:
    metric: str
    against: str
    domain: Domain
    series: tuple[Series, ...]
    fits: tuple[SeriesFit, ...]
    skipped: tuple[Skipped, ...]
    forecasts: tuple[Forecast, ...]
    backtests: tuple[Backtest, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def calibration(self) -> tuple[int, int]:
        """(back-tests whose interval held the truth, back-tests with an interval)."""
        judged = [b.holdout.within for b in self.backtests if b.holdout.within is not None]
        return sum(judged), len(judged)


def lineage(model: str) -> str:
    """A preset's family: its name without the size suffix (t5-xl -> t5, cont-palm-62b -> cont-palm)."""
    return model.rsplit("-", 1)[0] if "-" in model else model


def usable(cells: Iterable[CellRun], metric: str, states: Iterable[str] = (CellState.FINISHED,)) -> list[CellRun]:
    """Cells whose `metric` is final: a running cell's last value is not its result."""
    wanted = set(states)
    return [c for c in cells if c.state in wanted and c.metric(metric) is not None]


def total_flops(c: CellRun) -> float:
    """Compute that made the cell's model: pretraining plus finetuning (logged, else planned)."""
    pre = c.pretrain_flops if c.pretrain_flops is not None else _num(c.plan.get("pretrain_flops"))
    ft = c.finetune_flops if c.finetune_flops is not None else _num(c.plan.get("finetune_flops"))
    return (pre or 0.0) + ((ft or 0.0) if c.task_count > 0 else 0.0)


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def user_axis(against: str) -> str | None:
    """The field of the user axis `against` names, None for a built-in x axis."""
    return None if against in AGAINST else grid.axis_named(against).sets


def _value(c: CellRun, name: str) -> object:
    return c.formats if name == grid.FORMATS.name else c.axis_value(name)


def split_by(cells: Sequence[CellRun]) -> list[str]:
    """The series axes (trainers/axes.py roles: the format set and every user axis) whose
    values differ among the finetuned cells: each value is its own series, never merged."""
    finetuned = [c for c in cells if c.task_count > 0]
    names = [a.name for a in grid.BUILTIN if a.role == "series"]
    names += [grid.axis_named(k).name for c in finetuned for k in c.axes if grid.axis_named(k).role == "series"]
    return [n for n in dict.fromkeys(names) if len({grid.format_value(_value(c, n)) for c in finetuned}) > 1]


def grouped(cells: Sequence[CellRun], metric: str, against: str = "params",
            states: Iterable[str] = (CellState.FINISHED,)) -> dict[tuple, dict[object, list[CellRun]]]:
    """The cells of each series (see module doc): group -> member (preset, task count or the
    user axis's value) -> cells. Cells that differ in any axis but the replicate one (the seed)
    are never one member of one group."""
    field = user_axis(against)
    pts = usable(cells, metric, states)
    finetuned = [c for c in pts if c.task_count > 0]
    split_cot = len({c.with_cot for c in finetuned}) > 1
    split = [n for n in split_by(pts) if field is None or n != grid.axis_named(against).name]
    groups: dict[tuple, dict[object, list[CellRun]]] = defaultdict(lambda: defaultdict(list))
    for c in pts:
        if field is not None:
            x = c.axis_value(against)
            if c.task_count == 0 or not isinstance(x, (int, float)) or isinstance(x, bool) or x <= 0:
                continue  # a base model is not trained at any value; a value not on a log axis
            g: list[tuple[str, object]] = [("model", c.model), ("task_count", c.task_count)]
            member: object = x
        elif against == "task_count":
            g = [("model", c.model)]
            member = c.task_count
        else:
            if (c.params if against == "params" else total_flops(c)) <= 0:
                continue  # size or compute not known: the cell cannot be placed on the axis
            g = [("family", lineage(c.model)), ("task_count", c.task_count)]
            member = c.model
        if split_cot and c.task_count > 0:
            g.append(("with_cot", c.with_cot))
        for name in split:
            if c.task_count > 0:
                g.append((name, _value(c, name)))
        groups[tuple(g)][member].append(c)
    return groups


def curves(cells: Sequence[CellRun], metric: str, against: str = "params",
           states: Iterable[str] = (CellState.FINISHED,)) -> list[Series]:
    """Series of `metric` by lineage, seeds aggregated into points (see module doc)."""
    groups = grouped(cells, metric, against, states)
    one_family = len({lineage(c.model) for m in groups.values() for cs in m.values() for c in cs}) <= 1
    order = {c.model: c.params for c in cells}
    out = []
    for g, members in sorted(groups.items(), key=lambda kv: _group_order(kv[0], order)):
        points, base = [], None
        for member, cs in members.items():
            x = axis_x(cs[0], against)
            name = (f"{member} tasks" if against == "task_count" else
                    grid.axis_named(against).fragment(member) if user_axis(against) else str(member))
            p = _point(x, [c.metric(metric) for c in cs], [c.key for c in cs], name)  # type: ignore[misc]
            if against == "task_count" and x <= 0:
                base = p
            else:
                points.append(p)
        out.append(Series(_label(g, one_family), g, tuple(sorted(points, key=lambda p: p.x)), base))
    return out


def axis_x(c: CellRun, against: str) -> float:
    if against == "params":
        return float(c.params)
    if against == "task_count":
        return float(c.task_count)
    if user_axis(against):
        return float(c.axis_value(against))
    return total_flops(c)


def _point(x: float, values: Sequence[float], keys: Sequence[str], name: str) -> Point:
    v = np.asarray(values, dtype=float)
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return Point(x, float(v.mean()), len(v), float(v.min()), float(v.max()), sd, tuple(keys), name)


def _group_order(g: tuple, params_of: dict[str, int]) -> tuple:
    d = dict(g)
    if "family" in d:
        head: tuple = (d["task_count"], str(d["family"]))
    else:
        head = (params_of.get(str(d["model"]), 0), str(d["model"]), d.get("task_count", 0))
    rest = [(str(k), (0, v) if isinstance(v, (int, float)) else (1, str(v))) for k, v in g if grid.is_setting_axis(str(k))]
    return (*head, not d.get("with_cot", True), str(d.get("formats", "")), rest)


def _label(g: tuple, one_family: bool) -> str:
    d = dict(g)
    tasks = "0 tasks (base)" if d.get("task_count") == 0 else f"{d.get('task_count')} tasks"
    if "family" in d:
        parts = [tasks] if one_family else [f"{d['family']}, {tasks}"]
    elif "task_count" in d:  # against a user axis: a curve per size and task count
        parts = [str(d["model"]), tasks]
    else:
        parts = [str(d["model"])]
    if "with_cot" in d:
        parts.append("with CoT" if d["with_cot"] else "no CoT")
    if "formats" in d:
        parts.append("+".join(d["formats"]))  # type: ignore[arg-type]
    parts += [grid.axis_named(str(k)).fragment(v) for k, v in g if grid.is_setting_axis(str(k))]
    return ", ".join(parts)


def cannot_show(series: Series, domain: Domain, against: str) -> str | None:
    """Why the series cannot carry a law at this scale, in plain words; None when it can.
    Whether the metric moves along the axis at all is the pooled test's to say
    (dashboards/trends.py); this is what one series itself lacks."""
    noun = X_NOUN[against]
    if len(set(series.x)) < laws.MIN_POINTS:
        n = len(set(series.x))
        return (f"{n} {noun if n != 1 else noun[:-1]}: a trend's shape needs at least {laws.MIN_POINTS}, "
                "so no law is fitted")
    y = np.asarray(series.y)
    if domain.kind == "accuracy" and float(np.max(y)) <= domain.low + 0.5:
        return f"every point at or below chance ({domain.low:.4g}): nothing above chance to fit"
    # Equal to rounding (their slope in ln x is then 1e-14, not 0): nothing moves at all.
    if float(np.ptp(y)) <= 1e-9 * max(1.0, float(np.max(np.abs(y)))):
        return f"the same value, {y[0]:.4g}, at every one of the {len(y)} {noun}: no law to fit"
    res = float(domain.resolution(float(np.mean(y))))
    if float(np.ptp(y)) < res:
        return (f"the means differ by {np.ptp(y):.2g} across {noun} ({y[0]:.4g} to {y[-1]:.4g}), less than the "
                f"metric's resolution ({res:.2g}): no law to fit")
    seeded = [p for p in series.points if p.n > 1]
    if seeded and all(p.sd == 0 for p in seeded):
        return ("the seeds agree exactly at every point: no noise is measured, so nothing tells a change from "
                "chance; no law to fit")
    return None


def fit_series(series: Series, domain: Domain, against: str = "params", seed: int = 0,
               n_boot: int = laws.DEFAULT_BOOTSTRAP, level: float = laws.DEFAULT_LEVEL) -> SeriesFit | Skipped:
    reason = cannot_show(series, domain, against)
    if reason is not None:
        return Skipped(series.label, reason)
    pts = series.points
    f = laws.fit([p.x for p in pts], [p.mean for p in pts], domain, [p.sd for p in pts], [p.n for p in pts],
                 seed=seed, n_boot=n_boot, level=level)
    return SeriesFit(series, f)


def backtest(series: Series, domain: Domain, against: str = "params", seed: int = 0,
             n_boot: int = laws.DEFAULT_BOOTSTRAP, level: float = laws.DEFAULT_LEVEL) -> Backtest | None:
    """The largest x held out and forecast from the rest by the forecasts' own procedure: the
    same checks of the series, law forms and bootstrap. None where that procedure would not
    forecast from the rest."""
    pts = series.points
    if cannot_show(Series(series.label, series.group, pts[:-1]), domain, against) is not None:
        return None
    h = laws.holdout([p.x for p in pts], [p.mean for p in pts], domain, [p.sd for p in pts], [p.n for p in pts],
                     seed=seed, n_boot=n_boot, level=level)
    return Backtest(series.label, h) if h is not None else None


def analyse(cells: Sequence[CellRun], metric: str, against: str = "params", forecast_at: Sequence[float] = (),
            seed: int = 0, n_boot: int = laws.DEFAULT_BOOTSTRAP, level: float = laws.DEFAULT_LEVEL,
            domain: Domain | None = None, no_trend: str | None = None) -> ScalingAnalysis:
    """Curves, a fit per series that can carry a law, forecasts at `forecast_at` and back-tests.
    `no_trend`: why the pooled test finds no trend along this axis; then no series is fitted."""
    domain = domain or domain_for(metric)
    series = curves(cells, metric, against)
    fits, skipped, fcs, bts = [], [], [], []
    for i, s in enumerate(series):
        if no_trend is not None:
            skipped.append(Skipped(s.label, f"the pooled test with {X_NOUN[against][:-1]}: {no_trend}; "
                                            "no law is fitted"))
            continue
        r = fit_series(s, domain, against, seed=seed + i, n_boot=n_boot, level=level)
        if isinstance(r, Skipped):
            skipped.append(r)
            continue
        fits.append(r)
        fcs.extend(Forecast(s.label, laws.predict(r.fit, x), r.fit.law.name) for x in forecast_at if x not in s.x)
        b = backtest(s, domain, against, seed=seed + i, n_boot=n_boot, level=level)
        if b is not None:
            bts.append(b)
    notes = []
    if not series:
        notes.append(f"no finished cell has logged {metric}")
    left = [c for c in cells if c.metric(metric) is not None and c.state != CellState.FINISHED]
    if left:
        states = ", ".join(sorted({c.state for c in left}))
        notes.append(f"{len(left)} unfinished cell(s) left out of the curves ({states})")
    return ScalingAnalysis(metric, against, domain, tuple(series), tuple(fits), tuple(skipped), tuple(fcs),
                           tuple(bts), tuple(notes))
