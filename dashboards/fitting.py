"""Fit a table of points from a CSV file with the report's laws (`flanscale fit`).

Rows with the same x are one point, as seeds are in a report: their mean is fitted and their
spread sets a floor under the interval's noise. Whether y moves with x at all is the report's
trend test (dashboards/trends.py) on every row. Every check on the input raises UserError
with one line naming the file, the row or flag, the bad value and what is allowed.
"""

from __future__ import annotations

import csv
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dashboards import analysis, laws, paper, trends
from dashboards.kinds import Domain
from trainers.spec import UserError

_SUFFIX = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def number(text: str) -> float:
    """A number, optionally with a size suffix: 540e9, 80M, 3B, 1.3T."""
    s = text.strip().replace("_", "").replace(",", "")
    mult = 1.0
    if s and s[-1].upper() in _SUFFIX:
        mult, s = _SUFFIX[s[-1].upper()], s[:-1]
    v = float(s) * mult  # ValueError for anything else
    if not math.isfinite(v):
        raise ValueError(text)
    return v


@dataclass(frozen=True)
class Points:
    source: str
    x: tuple[float, ...]
    mean: tuple[float, ...]
    n: tuple[int, ...]
    sd: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    values: tuple[tuple[float, ...], ...]  # every row's y, per x


def read_points(path: str, x_col: str, y_col: str, where: Sequence[str] = ()) -> Points:
    """Points of columns `x_col`, `y_col` of a CSV file with a header (or the paper's Table 5)."""
    file = paper.TABLE5 if path == paper.TABLE5_ALIAS else Path(path)
    if not file.is_file():
        raise UserError(f"{path}: no such file (a CSV with a header row, or {paper.TABLE5_ALIAS})")
    with file.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c for c in (reader.fieldnames or []) if c is not None]
        rows = [(i, r) for i, r in enumerate(reader, start=2)]
    if not columns:
        raise UserError(f"{path}: empty file; expected a header row naming the columns")
    for flag, col in (("--x", x_col), ("--y", y_col)):
        if col not in columns:
            close = difflib.get_close_matches(col, columns, n=1, cutoff=0.5) or [c for c in columns if col in c][:1]
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserError(f"{flag}: no column {col!r} in {path}; {hint}columns: {', '.join(columns)}")
    for cond in where:
        rows = _filter(path, columns, rows, cond)
    by_x: dict[float, list[float]] = {}
    for line, r in rows:
        x, y = _cell(path, line, x_col, r.get(x_col)), _cell(path, line, y_col, r.get(y_col))
        if x <= 0:
            raise UserError(f"{path}:{line}: {x_col} = {r[x_col]!r}; --x values must be > 0 (laws are in log x)")
        by_x.setdefault(x, []).append(y)
    xs = sorted(by_x)
    vals = [np.asarray(by_x[x]) for x in xs]
    return Points(path, tuple(xs), tuple(float(v.mean()) for v in vals), tuple(len(v) for v in vals),
                  tuple(float(v.std(ddof=1)) if len(v) > 1 else 0.0 for v in vals),
                  tuple(float(v.min()) for v in vals), tuple(float(v.max()) for v in vals),
                  tuple(tuple(float(y) for y in v) for v in vals))


def _filter(path: str, columns: list[str], rows: list, cond: str) -> list:
    col, sep, value = cond.partition("=")
    if not sep or not col:
        raise UserError(f"--where: expected COLUMN=VALUE, got {cond!r}")
    if col not in columns:
        raise UserError(f"--where: no column {col!r} in {path}; columns: {', '.join(columns)}")
    kept = [(i, r) for i, r in rows if (r.get(col) or "").strip() == value]
    if not kept:
        seen = sorted({(r.get(col) or "").strip() for _, r in rows})
        raise UserError(f"--where: no row of {path} has {col} = {value!r}; values: {', '.join(seen[:12])}")
    return kept


def _cell(path: str, line: int, col: str, text: str | None) -> float:
    try:
        return number(text or "")
    except ValueError:
        raise UserError(f"{path}:{line}: column {col!r} has {text!r}, not a number") from None


def check_domain(points: Points, domain: Domain, y_col: str, chance_given: bool) -> None:
    """Values a law of this kind cannot describe are refused, not clipped."""
    lo, hi = min(points.low), max(points.high)
    if domain.kind == "loss":
        if domain.sign > 0 and lo < 0:
            raise UserError(f"{points.source}: {y_col} has {lo:g}; a loss is >= 0 (or pass --kind accuracy|score)")
        if domain.sign < 0 and hi > 0:
            raise UserError(f"{points.source}: {y_col} has {hi:g}; a log-probability is <= 0")
        return
    if hi > 100:
        raise UserError(f"{points.source}: {y_col} has {hi:g}; {domain.kind} values are percent, at most 100")
    if domain.kind == "accuracy":
        if lo < 0:
            raise UserError(f"{points.source}: {y_col} has {lo:g}; an accuracy is between 0 and 100 "
                            "(a normalized score is --kind score)")
        if not 0 <= domain.low < 100:
            raise UserError(f"--chance: {domain.low:g} is outside 0..100")
        if max(points.mean) <= domain.low + 0.5:
            what = "--chance" if chance_given else f"the chance level of {y_col}"
            raise UserError(f"{what}: {domain.low:g} is not below the data (largest mean {max(points.mean):g}); "
                            "an accuracy law rises from chance")
    elif domain.low > lo:
        what = "--chance (the score's floor)" if chance_given else f"the floor of {y_col}"
        raise UserError(f"{what}: {domain.low:g} is above the smallest value {lo:g}; a score's floor is the lowest it "
                        "can be")


def fit_points(points: Points, domain: Domain, at: Sequence[float] = (), seed: int = 0,
               n_boot: int = laws.DEFAULT_BOOTSTRAP, level: float = laws.DEFAULT_LEVEL) -> dict[str, Any]:
    """The fit as plain data: the trend test, law, formula, parameters, points, forecasts and
    the back-test."""
    if len(points.x) < laws.MIN_POINTS:
        raise UserError(f"{points.source}: {len(points.x)} distinct x value(s); a law needs at least {laws.MIN_POINTS} "
                        "(2 parameters and one degree of freedom for its interval)")
    f = laws.fit(points.x, points.mean, domain, points.sd, points.n, seed=seed, n_boot=n_boot, level=level)
    notes = [f.note] if f.note else []
    # The report would not fit a series without a trend; here the user asked, so it is said.
    series = analysis.Series(points.source, (), tuple(analysis.Point(x, y, n, lo, hi, sd, (), "")
                                                      for x, y, n, lo, hi, sd in zip(points.x, points.mean, points.n,
                                                                                     points.low, points.high, points.sd)))
    reason = analysis.cannot_show(series, domain, "params")
    if reason is not None:
        notes.append("the report would not fit these points: " + reason.replace(" sizes", " x values"))
    # The report's pooled test on one series: every row an observation, rows of one x replicates.
    u = [math.log(x) for x, vs in zip(points.x, points.values) for _ in vs]
    trend = trends.pooled(u, [v for vs in points.values for v in vs], ["points"] * len(u), domain, level=level)
    h = laws.holdout(points.x, points.mean, domain, points.sd, points.n, seed=seed, n_boot=n_boot, level=level)
    forecasts = []
    for x in at:
        p = laws.predict(f, x)
        forecasts.append({"at": p.at, "value": p.value, "low": p.low, "high": p.high,
                          "decades_beyond": round(p.decades_beyond, 3), "extrapolation": p.extrapolation})
    backtest: dict[str, Any] = ({"held_out_x": h.held_out_x, "actual": h.actual, "predicted": h.predicted,
                                 "low": h.low, "high": h.high, "within": h.within, "fitted_points": h.fitted_points,
                                 "law": h.law} if h is not None else
                                {"skipped": f"{len(points.x) - 1} points left after holding out the largest x "
                                            f"cannot give an interval (needs {laws.MIN_POINTS})"})
    return {
        "trend": trend.to_json(),
        "law": f.law.name,
        "kind": domain.kind,
        "domain": domain.describe(),
        "formula": f.law.formula(),
        "params": f.law.params(),
        "points": [{"x": x, "y": y, "n": n, "low": lo, "high": hi}
                   for x, y, n, lo, hi in zip(points.x, points.mean, points.n, points.low, points.high)],
        "aicc": f.law.aicc,
        "candidates": [{"law": c.name, "aicc": c.aicc} for c in f.candidates],
        "interval": {"method": laws.INTERVAL_METHOD, "level": level} if f.boot is not None else None,
        "note": "; ".join(notes),
        "forecasts": forecasts,
        "backtest": backtest,
    }


def format_table(result: dict[str, Any]) -> str:
    """The fit for people: the law, its parameters, forecasts with intervals, the back-test."""
    g = _g
    t = result["trend"]
    if t["direction"] == "none":
        trend = t["verdict"]
    else:
        p = "p < 0.001" if t["p"] < 1e-3 else f"p = {t['p']:.2g}"
        trend = (f"{t['direction']}, {t['slope']:+.3g} per e-fold of x [{t['low']:+.3g}, {t['high']:+.3g}] "
                 f"(t = {t['t']:.1f}, df {t['df']}, {p})")
    out = [f"trend:    {trend}", f"law:      {result['law']} ({result['domain']})", f"formula:  {result['formula']}",
           "params:   " + ", ".join(f"{k} = {g(v)}" for k, v in result["params"].items())]
    pts = result["points"]
    seeds = sorted({p["n"] for p in pts})
    out.append(f"points:   {len(pts)}, x from {g(pts[0]['x'])} to {g(pts[-1]['x'])}"
               + (f", {'/'.join(map(str, seeds))} rows per x (mean fitted)" if seeds != [1] else ""))
    cands = ", ".join(f"{c['law']} {g(c['aicc'])}" for c in result["candidates"])
    out.append(f"AICc:     {cands}")
    iv = result["interval"]
    out.append(f"interval: {int(iv['level'] * 100)}% {iv['method']}" if iv else "interval: none")
    if result["note"]:
        out.append(f"note:     {result['note']}")
    if result["forecasts"]:
        out += ["", f"{'at':>12}  {'forecast':>10}  {'low':>10}  {'high':>10}"]
        for fc in result["forecasts"]:
            flag = f"  extrapolation: {fc['decades_beyond']:.1f} decades beyond the data" if fc["extrapolation"] else ""
            out.append(f"{g(fc['at']):>12}  {g(fc['value']):>10}  {g(fc['low']):>10}  {g(fc['high']):>10}{flag}")
    b = result["backtest"]
    out.append("")
    if "skipped" in b:
        out.append(f"back-test: {b['skipped']}")
    else:
        inside = {True: "inside the interval", False: "outside the interval", None: "no interval"}[b["within"]]
        out.append(f"back-test: largest x ({g(b['held_out_x'])}) held out, {b['fitted_points']} points fitted: "
                   f"predicted {g(b['predicted'])} [{g(b['low'])}, {g(b['high'])}], actual {g(b['actual'])}, {inside}")
    return "\n".join(out)


def _g(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
