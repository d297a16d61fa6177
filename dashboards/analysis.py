"""Scaling curves, fits, forecasts and back-tests over a sweep's cells (pure: no I/O).

A *series* is one line of a scaling plot: the cells that differ only in the x variable
(model size, or number of finetuning tasks). Two laws are fitted to each series, both in the
log of x, as the paper reads its curves:

  log-linear         y = a + b * ln(x / s)
  saturating power   y = a - b * (x / s) ** -c      (c > 0; approaches a as x grows)

s is the geometric mean of the fitted x, which keeps the optimiser well conditioned over
the nine decades between a 0.5M-parameter test model and PaLM 540B. The saturating law has
one more parameter, so it is chosen only when the small-sample AIC (AICc) says the extra
parameter pays for itself, which needs at least five points. Intervals come from a seeded
bootstrap over the series' points: resample, refit the chosen law, predict; percentiles.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from dashboards.runs import CellRun

MIN_POINTS_LINEAR = 2  # a line through two points is a forecast, with no interval
MIN_POINTS_INTERVAL = 3
MIN_POINTS_SATURATING = 5  # AICc with 3 parameters needs n - k - 1 > 0, and one point to spare
DEFAULT_BOOTSTRAP = 200
DEFAULT_LEVEL = 0.95
# Exponent range of the saturating law: below 1e-3 it is indistinguishable from log-linear.
_C_MIN, _C_MAX = 1e-3, 5.0


@dataclass(frozen=True)
class Series:
    """Points (x, y) of one curve; `group` names what is held fixed along it."""

    label: str
    group: tuple[tuple[str, object], ...]
    x: tuple[float, ...]
    y: tuple[float, ...]
    keys: tuple[str, ...]  # cell keys behind each point (several when averaged)

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class Law:
    """One fitted law; `predict` works on raw x (parameters or task counts)."""

    kind: str  # "log-linear" | "saturating"
    coef: tuple[float, ...]
    scale: float
    n: int
    rss: float

    @property
    def k(self) -> int:
        return len(self.coef)

    @property
    def aicc(self) -> float | None:
        if self.n - self.k - 1 <= 0:
            return None
        rss = max(self.rss, 1e-300)
        return self.n * math.log(rss / self.n) + 2 * self.k + 2 * self.k * (self.k + 1) / (self.n - self.k - 1)

    def predict(self, x: Sequence[float] | np.ndarray | float) -> np.ndarray:
        xs = np.asarray(x, dtype=float) / self.scale
        if self.kind == "log-linear":
            a, b = self.coef
            return a + b * np.log(xs)
        a, b, c = self.coef
        return a - b * xs ** (-c)

    def formula(self) -> str:
        if self.kind == "log-linear":
            a, b = self.coef
            return f"y = {a:.4g} {'+' if b >= 0 else '-'} {abs(b):.4g} ln(x / {self.scale:.3g})"
        a, b, c = self.coef
        return f"y = {a:.4g} {'-' if b >= 0 else '+'} {abs(b):.4g} (x / {self.scale:.3g})^-{c:.3g}"


@dataclass(frozen=True)
class FitResult:
    series: Series
    law: Law
    candidates: tuple[Law, ...]
    boot: tuple[Law, ...]  # refits on bootstrap resamples (empty when too few points)
    level: float
    note: str = ""
    loo_rmse: tuple[float | None, ...] = ()  # leave-one-out error of each candidate, same order

    def interval(self, x: Sequence[float] | np.ndarray | float) -> tuple[np.ndarray, np.ndarray] | None:
        if len(self.boot) < 20:
            return None
        preds = np.stack([b.predict(x) for b in self.boot])
        tail = (1 - self.level) / 2 * 100
        return np.percentile(preds, tail, axis=0), np.percentile(preds, 100 - tail, axis=0)


@dataclass(frozen=True)
class Forecast:
    series: str
    x: float
    value: float
    low: float | None
    high: float | None
    law: str


@dataclass(frozen=True)
class Backtest:
    series: str
    held_out_x: float
    actual: float
    predicted: float
    low: float | None
    high: float | None
    law: str
    fitted_points: int

    @property
    def error(self) -> float:
        return self.predicted - self.actual

    @property
    def within(self) -> bool | None:
        if self.low is None or self.high is None:
            return None
        return self.low <= self.actual <= self.high


@dataclass(frozen=True)
class Skipped:
    """A series that could not be fitted, and why (shown in the report instead of a fit)."""

    series: str
    reason: str


@dataclass(frozen=True)
class ScalingAnalysis:
    metric: str
    against: str  # "params" | "task_count"
    series: tuple[Series, ...]
    fits: tuple[FitResult, ...]
    skipped: tuple[Skipped, ...]
    forecasts: tuple[Forecast, ...]
    backtests: tuple[Backtest, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)


def usable(cells: Iterable[CellRun], metric: str, states: Iterable[str] = ("finished",)) -> list[CellRun]:
    """Cells whose `metric` is final: a running cell's last loss is not its result."""
    wanted = set(states)
    return [c for c in cells if c.state in wanted and c.metric(metric) is not None]


def curves(cells: Sequence[CellRun], metric: str, against: str = "params",
           states: Iterable[str] = ("finished",)) -> list[Series]:
    """Series of `metric` against model size (one per task count) or against task count (one per size).

    The CoT split and the format set become part of the group only when the sweep varies them,
    so a plain sweep gets plain labels. Cells sharing every grouping value and x are averaged.
    """
    if against not in ("params", "task_count"):
        raise ValueError(f"against must be 'params' or 'task_count', not {against!r}")
    pts = usable(cells, metric, states)
    finetuned = [c for c in pts if c.task_count > 0]
    split_cot = len({c.with_cot for c in finetuned}) > 1
    split_formats = len({c.formats for c in finetuned}) > 1
    groups: dict[tuple, dict[float, list[CellRun]]] = defaultdict(lambda: defaultdict(list))
    for c in pts:
        if against == "params" and c.params <= 0:
            continue  # size not logged: the cell cannot be placed on the size axis
        g: list[tuple[str, object]] = [("task_count", c.task_count)] if against == "params" else [("model", c.model)]
        if split_cot and c.task_count > 0:
            g.append(("with_cot", c.with_cot))
        if split_formats and c.task_count > 0:
            g.append(("formats", c.formats))
        x = float(c.params) if against == "params" else float(c.task_count)
        groups[tuple(g)][x].append(c)
    out = []
    order = {c.model: c.params for c in cells}
    for g, by_x in sorted(groups.items(), key=lambda kv: _group_order(kv[0], order)):
        xs = sorted(by_x)
        out.append(Series(
            label=_label(g),
            group=g,
            x=tuple(xs),
            y=tuple(float(np.mean([c.metric(metric) for c in by_x[x]])) for x in xs),
            keys=tuple(",".join(c.key for c in by_x[x]) for x in xs),
        ))
    return out


def _group_order(g: tuple, params_of: dict[str, int]) -> tuple:
    d = dict(g)
    head = d["task_count"] if "task_count" in d else params_of.get(str(d["model"]), 0)
    return (head, str(d.get("model", "")), not d.get("with_cot", True), str(d.get("formats", "")))


def _label(g: tuple) -> str:
    d = dict(g)
    parts = [f"{d['task_count']} tasks" if "task_count" in d else str(d["model"])]
    if "with_cot" in d:
        parts.append("with CoT" if d["with_cot"] else "no CoT")
    if "formats" in d:
        parts.append("+".join(d["formats"]))  # type: ignore[arg-type]
    return ", ".join(parts)


def fit_series(series: Series, seed: int = 0, n_boot: int = DEFAULT_BOOTSTRAP,
               level: float = DEFAULT_LEVEL) -> FitResult | Skipped:
    """Fit both laws in log x, keep the better by AICc, bootstrap the kept one."""
    x = np.asarray(series.x, dtype=float)
    y = np.asarray(series.y, dtype=float)
    keep = x > 0  # log x: the base model (0 tasks) is a reference, not a point on the law
    x, y = x[keep], y[keep]
    if len(x) < MIN_POINTS_LINEAR:
        return Skipped(series.label, f"{len(x)} point{'s' if len(x) != 1 else ''} with x > 0; a fit needs {MIN_POINTS_LINEAR}")
    if np.ptp(y) == 0:
        # A flat series (say, every cell at chance on a benchmark) has no trend to fit, and
        # a forecast from it would only repeat the constant with a spurious interval.
        return Skipped(series.label, f"the same value ({y[0]:.4g}) at every point; nothing to fit")
    lin = fit_law("log-linear", x, y)
    candidates = [lin]
    notes = []
    if len(x) >= MIN_POINTS_SATURATING:
        sat = fit_law("saturating", x, y)
        if sat is not None:
            candidates.append(sat)
    else:
        notes.append(f"saturating law not tried ({len(x)} points; needs {MIN_POINTS_SATURATING})")
    chosen = min(candidates, key=lambda law: law.aicc if law.aicc is not None else math.inf) \
        if all(c.aicc is not None for c in candidates) else lin
    boot: list[Law] = []
    if len(x) >= MIN_POINTS_INTERVAL:
        boot = _bootstrap(chosen.kind, x, y, seed, n_boot)
        if len(boot) < 20:
            notes.append(f"only {len(boot)} of {n_boot} resamples could be fitted; no interval")
    else:
        notes.append(f"no interval with {len(x)} points (needs {MIN_POINTS_INTERVAL})")
    if (np.asarray(series.x) <= 0).any():
        notes.append("0-task base model left out of the fit")
    loo = tuple(loo_rmse(c.kind, x, y) for c in candidates)
    return FitResult(series, chosen, tuple(candidates), tuple(boot), level, "; ".join(notes), loo)


def loo_rmse(kind: str, x: np.ndarray, y: np.ndarray) -> float | None:
    """Root-mean-square error predicting each point from a fit to the others: how well the law
    interpolates, shown next to AICc so a reader can judge the choice."""
    need = 2 if kind == "log-linear" else 3
    errs = []
    for i in range(len(x)):
        rest = np.arange(len(x)) != i
        if len(np.unique(x[rest])) < need:
            return None
        law = fit_law(kind, x[rest], y[rest])
        if law is None:
            return None
        errs.append(float(law.predict(x[i])) - y[i])
    return float(np.sqrt(np.mean(np.square(errs)))) if errs else None


def fit_law(kind: str, x: np.ndarray, y: np.ndarray) -> Law | None:
    scale = float(np.exp(np.mean(np.log(x))))
    xs = x / scale
    if kind == "log-linear":
        b, a = np.polyfit(np.log(xs), y, 1)
        rss = float(np.sum((a + b * np.log(xs) - y) ** 2))
        return Law(kind, (float(a), float(b)), scale, len(x), rss)
    return _fit_saturating(xs, y, scale)


def _fit_saturating(xs: np.ndarray, y: np.ndarray, scale: float) -> Law | None:
    """Least squares by variable projection: for a fixed exponent c the law is linear in (a, b),
    so only c is searched (a grid, then a bounded 1-D refinement). Unlike a 3-parameter
    curve_fit from a guessed start, the result does not depend on a starting point."""
    from scipy.optimize import minimize_scalar

    def solve(c: float) -> tuple[float, float, float]:
        design = np.stack([np.ones_like(xs), -(xs ** (-c))], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
        return float(np.sum((design @ (a, b) - y) ** 2)), float(a), float(b)

    grid = np.geomspace(_C_MIN, _C_MAX, 40)
    rss = [solve(c)[0] for c in grid]
    i = int(np.argmin(rss))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best = minimize_scalar(lambda c: solve(c)[0], bounds=(lo, hi), method="bounded", options={"xatol": 1e-7})
    c = float(best.x) if best.success and best.fun <= rss[i] else float(grid[i])
    r, a, b = solve(c)
    if not all(map(math.isfinite, (r, a, b))):
        return None
    return Law("saturating", (a, b, c), scale, len(xs), r)


def _bootstrap(kind: str, x: np.ndarray, y: np.ndarray, seed: int, n_boot: int) -> list[Law]:
    rng = np.random.default_rng(seed)
    need = 2 if kind == "log-linear" else 3
    out: list[Law] = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        if len(np.unique(x[idx])) < need:
            continue  # the law is not identified on this resample
        law = fit_law(kind, x[idx], y[idx])
        if law is not None:
            out.append(law)
    return out


def forecast(fit: FitResult, x: float) -> Forecast:
    value = float(fit.law.predict(x))
    iv = fit.interval([x])
    lo, hi = (float(iv[0][0]), float(iv[1][0])) if iv is not None else (None, None)
    return Forecast(fit.series.label, float(x), value, lo, hi, fit.law.kind)


def backtest(series: Series, seed: int = 0, n_boot: int = DEFAULT_BOOTSTRAP,
             level: float = DEFAULT_LEVEL) -> Backtest | Skipped:
    """Hold out the largest x, fit the rest, and see how far the forecast lands from the truth."""
    pts = [(x, y, k) for x, y, k in zip(series.x, series.y, series.keys) if x > 0]
    if len(pts) < MIN_POINTS_LINEAR + 1:
        return Skipped(series.label, f"back-test needs {MIN_POINTS_LINEAR + 1} points with x > 0, has {len(pts)}")
    *train, held = pts
    sub = Series(series.label, series.group, tuple(p[0] for p in train), tuple(p[1] for p in train),
                 tuple(p[2] for p in train))
    fit = fit_series(sub, seed=seed, n_boot=n_boot, level=level)
    if isinstance(fit, Skipped):
        return fit
    f = forecast(fit, held[0])
    return Backtest(series.label, held[0], held[1], f.value, f.low, f.high, f.law, len(train))


def analyse(cells: Sequence[CellRun], metric: str, against: str = "params",
            forecast_at: Sequence[float] = (), seed: int = 0, n_boot: int = DEFAULT_BOOTSTRAP,
            level: float = DEFAULT_LEVEL) -> ScalingAnalysis:
    """Curves, a fit per series, forecasts at `forecast_at` (x values not run) and back-tests."""
    series = curves(cells, metric, against)
    fits, skipped, fcs, bts = [], [], [], []
    for i, s in enumerate(series):
        r = fit_series(s, seed=seed + i, n_boot=n_boot, level=level)
        if isinstance(r, Skipped):
            skipped.append(r)
            continue
        fits.append(r)
        fcs.extend(forecast(r, x) for x in forecast_at if x not in s.x)
        b = backtest(s, seed=seed + i, n_boot=n_boot, level=level)
        if isinstance(b, Backtest):
            bts.append(b)
    notes = []
    if not series:
        notes.append(f"no finished cell has logged {metric}")
    left = [c for c in cells if c.metric(metric) is not None and c.state != "finished"]
    if left:
        notes.append(f"{len(left)} unfinished cell(s) left out of the curves ({', '.join(sorted({c.state for c in left}))})")
    return ScalingAnalysis(metric, against, tuple(series), tuple(fits), tuple(skipped), tuple(fcs), tuple(bts),
                           tuple(notes))
