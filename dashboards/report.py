"""A sweep's report: pooled trend tests, figures (PNG + SVG), tables (CSV + Markdown), fits
and forecasts, and one self-contained HTML page (dashboards/render.py), all written to a
folder and logged on the sweep's parent run.

A law is fitted along an axis only where the pooled test finds a trend there; every forecast
says whether it lies beyond the data; back-tests run the forecasts' own procedure.
"""

from __future__ import annotations

import difflib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from dashboards import analysis, findings, laws, paper, plots, render, standins, tables, timing, trends
from dashboards.kinds import domain_for, metric_kind
from dashboards.runs import SweepRuns, load_history
from dashboards.tables import Table
from trainers import axes as grid
from trainers.home import flanscale_home
from trainers.spec import TASK_LADDER, UserError, did_you_mean
from trainers.states import CellState

# Forecasts go to the next rung of the paper's ladder of task counts (trainers.spec.TASK_LADDER)
# not yet run.
LOSS_FALLBACK_NOTE = ("this sweep logged no eval/loss, so train/loss stands in as the loss metric: it is each "
                      "cell's training loss on its own mixture, so cells with different task counts are measured "
                      "on different data and a trend with task count is not a finding")


@dataclass(frozen=True)
class ReportOptions:
    metrics: tuple[str, ...] = ()  # () = eval/loss (else train/loss) plus the held-out metrics logged
    forecast_params: tuple[float, ...] = ()  # () = ten times the largest model run
    forecast_tasks: tuple[float, ...] = ()  # () = the next rung of the paper's task ladder
    forecast_flops: tuple[float, ...] = ()  # () = ten times the largest compute run
    seed: int = 0
    n_boot: int = laws.DEFAULT_BOOTSTRAP
    log_artifacts: bool = True
    x: tuple[str, ...] = ()  # user axes (fields, e.g. optim.learning_rate) to plot against too


@dataclass(frozen=True)
class Report:
    out_dir: Path
    html: Path
    figures: tuple[plots.Figure, ...]
    tables: tuple[Path, ...]
    logged_to_run: str | None
    notes: tuple[str, ...] = field(default_factory=tuple)


def write_report(runs: SweepRuns, out_dir: Path, options: ReportOptions = ReportOptions()) -> Report:
    """Build the report for an already loaded sweep and log it on the sweep's parent run."""
    report = build_report(runs, out_dir, options)
    if options.log_artifacts and runs.parent_run_id:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=runs.tracking_uri)
        # Only what this report wrote: --out may be a folder that holds other things.
        for path in (report.html, report.out_dir / "report.md", report.out_dir / "fits.json"):
            client.log_artifact(runs.parent_run_id, str(path), "report")
        for sub in ("figures", "tables"):
            client.log_artifacts(runs.parent_run_id, str(report.out_dir / sub), f"report/{sub}")
        return Report(report.out_dir, report.html, report.figures, report.tables, runs.parent_run_id, report.notes)
    return report


def check_metrics(runs: SweepRuns, metrics: Sequence[str]) -> None:
    """A metric no cell has logged is a typo or a benchmark not run: say which, with the closest names."""
    known = runs.metric_names
    for m in metrics:
        if m not in known:
            close = difflib.get_close_matches(m, known, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"logged: {', '.join(known) or 'nothing yet'}"
            raise UserError(f"--metric: no cell of sweep {runs.sweep!r} has logged {m!r}; {hint}")


def check_x(runs: SweepRuns, names: Sequence[str]) -> tuple[str, ...]:
    """The user axes `--x` names, as their fields; UserError for a field that is not an axis of
    the sweep or whose values are not positive numbers (a log axis)."""
    fields = list(dict.fromkeys(f for c in runs.cells for f in c.axes))
    out = []
    for name in names:
        if name in analysis.AGAINST:
            continue  # always plotted
        field = next((f for f in fields if grid.axis_named(f) == grid.axis_named(name)), None)
        if field is None:
            allowed = ", ".join([*analysis.AGAINST, *fields])
            raise UserError(f"--x: {name!r} is not an axis of sweep {runs.sweep!r}"
                            f"{did_you_mean(name, fields)}; allowed: {allowed}")
        bad = [v for c in runs.cells if field in c.axes for v in [c.axes[field]]
               if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0]
        if bad:
            raise UserError(f"--x: {field}: value {bad[0]!r} is not a positive number, so it has no place on a log "
                            "axis; its values are drawn as separate series instead")
        out.append(field)
    return tuple(dict.fromkeys(out))


def loss_metric(runs: SweepRuns) -> tuple[str, str]:
    """(the loss metric reports use, a note when it is not the held-out loss)."""
    if "eval/loss" in runs.metric_names or "train/loss" not in runs.metric_names:
        return "eval/loss", ""
    return "train/loss", LOSS_FALLBACK_NOTE


def default_metrics(runs: SweepRuns) -> tuple[str, ...]:
    """The loss metric, then the held-out scores: normalized averages (the paper's six columns
    when its average is incomplete), and each benchmark's rank-classification accuracy and
    correct-option log-probabilities (alone, and among the options)."""
    logged = set(runs.metric_names)
    loss, _ = loss_metric(runs)
    evals = [m for _, m in tables.EVAL_COLUMNS if m in logged]
    if "eval/normalized_average" in evals:
        evals = ["eval/normalized_average"]
    evals += sorted(m for m in logged if m.endswith("/normalized_average") and m != "eval/normalized_average")
    evals += sorted(m for m in logged if m.startswith("eval/") and m.endswith(("/rc", "/rc_logprob", "/rc_choice_logprob")))
    return (loss, *evals) if loss in logged else tuple(evals)


def default_forecasts(runs: SweepRuns) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """One decade beyond the largest model and compute that finished, and the next rung of tasks."""
    done = [c for c in runs.cells if c.state == CellState.FINISHED] or list(runs.cells)
    params = [c.params for c in done if c.params > 0]
    tasks = [c.task_count for c in done]
    compute = [analysis.total_flops(c) for c in done if analysis.total_flops(c) > 0]
    fp = (10.0 * max(params),) if params else ()
    top = max(tasks) if tasks else 0
    nxt = [t for t in TASK_LADDER if t > top]
    ft = (float(nxt[0]) if nxt else 2.0 * top,) if top > 0 else ()
    ff = (10.0 * max(compute),) if compute else ()
    return fp, ft, ff


def build_report(runs: SweepRuns, out_dir: Path, options: ReportOptions = ReportOptions()) -> Report:
    out_dir = Path(out_dir)
    fig_dir, tab_dir = out_dir / "figures", out_dir / "tables"
    metrics = options.metrics or default_metrics(runs)
    loss, loss_note = loss_metric(runs)
    defaults = default_forecasts(runs)
    at = {"params": options.forecast_params or defaults[0], "task_count": options.forecast_tasks or defaults[1],
          "flops": options.forecast_flops or defaults[2]}
    presets = {c.model for c in runs.cells}
    params_of = {c.model: c.params for c in runs.cells if c.params > 0}

    sections, figures, fig_of = [], [], {}
    rows: dict[str, list] = {"fits": [], "forecasts": [], "backtests": [], "series": [], "trends": []}
    fits_json: list = []
    tested, skipped = [], {}
    for metric in metrics:
        domain = domain_for(metric) if metric_kind(metric) else domain_for(metric, kind="loss")
        label = standins.label(metric, runs.cells)
        found = trends.sweep_trends(runs.cells, metric, domain)
        found += [trends.for_cells(runs.cells, metric, x, domain) for x in options.x]
        tested.append(findings.MetricTrends(metric, label, tuple(found)))
        rows["trends"].extend(_trend_row(label, t) for t in found)
        by_axis = {t.against: t for t in found}
        section = {"metric": metric, "label": label, "domain": domain.describe(), "figures": [], "skipped": [],
                   "notes": [], "calibration": ""}
        if metric == "train/loss" and loss_note:
            section["notes"].append(loss_note)
        if "flops" not in by_axis:
            section["notes"].append("compute is proportional to model size within every series, so its trend test "
                                    "is the size test")
        judged = [0, 0]
        for against in (*analysis.AGAINST, *options.x):
            gate = by_axis.get(against, by_axis["params"])
            a = analysis.analyse(runs.cells, metric, against, forecast_at=at.get(against, ()), seed=options.seed,
                                 n_boot=options.n_boot, domain=domain,
                                 no_trend=gate.verdict if gate.direction == "none" else None)
            overlay = [] if standins.is_standin(metric, runs.cells) else _overlay(metric, against, presets, params_of)
            fig = plots.scaling_figure(a, fig_dir, f"{_slug(metric)}_vs_{_slug(against)}", overlay, label)
            figures.append(fig)
            fig_of[(metric, against)] = fig
            section["figures"].append(fig)
            axis = plots.AXIS_LABEL[against]
            section["skipped"].extend(f"{s.series} (vs {axis}): {s.reason}" for s in a.skipped)
            section["notes"].extend(a.notes)
            hit, n = a.calibration()
            judged[0] += hit
            judged[1] += n
            _collect(rows, fits_json, label, against, a)
        if judged[1]:
            section["calibration"] = "back-tests: " + coverage(*judged)
        section["notes"] = sorted(set(section["notes"]))
        skipped[metric] = section["skipped"]
        sections.append(section)

    history_figs = _histories(runs, fig_dir)
    figures.extend(history_figs)

    prices = _prices()
    now = time.time()
    summary = tables.cost_summary(runs.cells, prices, now)
    held_out = [m for m in metrics if m != "train/loss"]
    headline = findings.headline_metrics(tested, loss)
    hits = sum(1 for r in rows["backtests"] if r[-1] == "yes")
    judged_all = sum(1 for r in rows["backtests"] if r[-1] in ("yes", "no"))
    all_tables = [
        *[tables.headline_table(runs.cells, m) for m in headline],
        trends_table(rows["trends"]),
        tables.cells_table(runs.cells, prices, now),
        tables.flops_table(runs.cells),
        tables.results_table(runs.cells),
        tables.gains_table(runs.cells, held_out or metrics),
        *result_tables(rows, hits, judged_all),
        paper_table(presets),
        timing.time_table(runs.cells, flanscale_home()),
    ]
    table_paths = []
    for t in all_tables:
        table_paths.extend(render.write_table(t, tab_dir))
    by_name = {t.name: t for t in all_tables}
    (out_dir / "fits.json").write_text(json.dumps(
        {"trends": [dict(zip(by_name["trends"].columns, r)) for r in rows["trends"]],
         "fits": fits_json,
         "forecasts": [dict(zip(by_name["forecasts"].columns, r)) for r in rows["forecasts"]],
         "backtests": [dict(zip(by_name["backtests"].columns, r)) for r in rows["backtests"]]},
        indent=1, default=str))
    page = {
        "findings": findings.sentences(tested, runs.cells, loss),
        "first_figures": [fig_of[k] for k in findings.figures(tested, loss) if k in fig_of],
        "headline_tables": [t.name for t in all_tables[:len(headline)]],
        "limits": findings.limits(tested, skipped, [n for n in (loss_note, findings.seed_note(runs.cells)) if n]),
        "sections": sections, "histories": history_figs, "loss_metric": loss, "loss_note": loss_note,
    }
    (out_dir / "report.md").write_text(render.render_markdown(runs, page, all_tables, summary))
    html = out_dir / "report.html"
    html.write_text(render.render_html(runs, page, all_tables, summary, prices))
    notes = tuple(dict.fromkeys(n for s in sections for n in s["notes"]))
    return Report(out_dir, html, tuple(figures), tuple(table_paths), None, notes)


def coverage(hits: int, judged: int) -> str:
    """Back-test coverage against the nominal level of the intervals."""
    return (f"the truth fell inside {hits} of {judged} {int(laws.DEFAULT_LEVEL * 100)}% intervals "
            f"(coverage {100 * hits / judged:.0f}% against the nominal {int(laws.DEFAULT_LEVEL * 100)}%)")


def _trend_row(label: str, t: trends.Trend) -> tuple:
    return (label, t.against, t.verdict, t.slope, t.low, t.high, t.t, t.df, t.p, t.cells, t.series, t.change,
            t.resolution, t.p_flat, ("yes" if t.consistent else "no") if len(t.series_slopes) > 1 else "—",
            t.p_interaction)


def trends_table(rows: Sequence[tuple]) -> Table:
    level = f"{int(trends.LEVEL * 100)}%"
    return Table("trends", f"Trends: one pooled model per metric and axis ({trends.TEST}; {level} interval)",
                 ("metric", "against", "verdict", "slope per e-fold", "low", "high", "t", "df", "p", "cells", "series",
                  "change across the data", "resolution (equivalence margin)", "equivalence p",
                  "same sign in every series", "interaction p"), tuple(rows),
                 "" if rows else "no metric to test")


def _overlay(metric: str, against: str, presets: set[str], params_of: dict[str, int]):
    """(x, paper point) pairs to draw: by the preset's size, or at 0 / 1,836 tasks."""
    if against not in ("params", "task_count"):
        return []
    out = []
    for pt in paper.overlay(metric, presets):
        if against == "params" and pt.preset in params_of:
            out.append((float(params_of[pt.preset]), pt))
        elif against == "task_count":
            out.append((float(paper.PAPER_TASKS if pt.finetuned else 0), pt))
    return out


def _collect(rows: dict, fits_json: list, metric: str, against: str, a: analysis.ScalingAnalysis) -> None:
    fitted = {f.series.label: f.fit for f in a.fits}
    skipped = {s.series: s.reason for s in a.skipped}
    for s in a.series:
        seeds = "/".join(map(str, sorted({p.n for p in s.points}))) or "—"
        first, last = (s.y[0], s.y[-1]) if s.points else (None, None)
        spread = max((p.high - p.low for p in s.points), default=None)
        verdict = f"fitted: {fitted[s.label].law.name}" if s.label in fitted else f"no fit: {skipped.get(s.label, '')}"
        rows["series"].append((metric, against, s.label, len(s.points), seeds, first, last,
                               (last - first) if first is not None else None, spread, verdict))
    for f in a.fits:
        law = f.fit.law
        rows["fits"].append((metric, against, f.series.label, law.name, law.formula(), law.n,
                             "/".join(map(str, sorted({p.n for p in f.series.points}))), law.aicc, _candidates(f.fit),
                             laws.INTERVAL_METHOD if f.fit.boot is not None else "none", f.fit.note))
        fits_json.append({"metric": metric, "against": against, "series": f.series.label, "kind": a.domain.kind,
                          "domain": a.domain.describe(), "law": law.name, "formula": law.formula(),
                          "params": law.params(),
                          "points": [{"x": p.x, "mean": p.mean, "seeds": p.n, "min": p.low, "max": p.high}
                                     for p in f.series.points],
                          "aicc": law.aicc, "interval": laws.INTERVAL_METHOD if f.fit.boot is not None else None,
                          "note": f.fit.note})
    for fc in a.forecasts:
        p = fc.prediction
        rows["forecasts"].append((metric, against, fc.series, p.at, p.value, p.low, p.high, fc.law,
                                  "yes" if p.extrapolation else "no", round(p.decades_beyond, 3)))
    for b in a.backtests:
        h = b.holdout
        rows["backtests"].append((metric, against, b.series, h.fitted_points, h.held_out_x, h.actual, h.predicted,
                                  h.error, h.low, h.high, _yes_no(h.within)))


def result_tables(rows: dict, hits: int, judged: int) -> list[Table]:
    level = f"{int(laws.DEFAULT_LEVEL * 100)}%"
    return [
        Table("series", "Series: what each curve shows (means over seeds)",
              ("metric", "against", "series", "points", "seeds per point", "first", "last", "change",
               "largest seed spread", "fit"), tuple(rows["series"]), "" if rows["series"] else "no series"),
        Table("fits", "Fitted scaling laws (law by the metric's kind; variant by AICc)",
              ("metric", "against", "series", "law", "formula", "points", "seeds per point", "AICc",
               "candidates (AICc)", "interval", "note"),
              tuple(rows["fits"]), "" if rows["fits"] else "no series could show a trend to fit"),
        Table("forecasts", f"Forecasts at sizes / task counts / compute not run ({level} interval)",
              ("metric", "against", "series", "at", "forecast", "low", "high", "law", "extrapolation",
               "decades beyond the data"),
              tuple(rows["forecasts"]), "" if rows["forecasts"] else "no fitted series to forecast from"),
        Table("backtests", f"Back-tests: largest x held out, forecast from the rest as forecasts are ({level} interval)",
              ("metric", "against", "series", "fitted points", "held out at", "actual", "predicted", "error", "low",
               "high", "within interval"), tuple(rows["backtests"]),
              (coverage(hits, judged) if judged else
               f"no fitted series has the {laws.MIN_POINTS + 1} points a back-test needs ({laws.MIN_POINTS} to fit "
               "as a forecast is fitted, 1 to hold out)")),
    ]


def paper_table(presets: set[str]) -> Table:
    """Table 5 of the paper for the sweep's presets that are the paper's."""
    rows = [(r.model, r.preset, r.size, r.task_count, *[r.scores[c] for c in paper.SCORE_COLUMNS])
            for r in paper.table5() if r.preset in presets]
    return Table("paper", "The paper's held-out results for this sweep's presets (Table 5, percent)",
                 ("model", "preset", "size", "tasks", "Norm. avg", "MMLU Direct", "MMLU CoT", "BBH Direct", "BBH CoT",
                  "TyDiQA Direct", "MGSM CoT"), tuple(rows),
                 "" if rows else "none of this sweep's presets is one of the paper's models")


def _histories(runs: SweepRuns, fig_dir: Path) -> list[plots.Figure]:
    """Training curves; a metric no cell logged at two steps or more has no curve to draw."""
    started = [c for c in runs.cells
               if c.state in (CellState.FINISHED, CellState.RUNNING, CellState.PREEMPTED, CellState.FAILED)]
    out = []
    for metric, title in (("train/loss", "train/loss during finetuning: training loss on each cell's own mixture"),
                          ("eval/loss", "eval/loss during finetuning: the same held-out set for every cell")):
        if not started or metric not in runs.metric_names:
            continue
        history = load_history(runs.tracking_uri, started, metric)
        if any(len(v) > 1 for v in history.values()):
            out.append(plots.history_figure(started, history, metric, fig_dir, f"{_slug(metric)}_history", title))
    return out


def _prices() -> dict[str, float]:
    try:
        from trainers.accounting import ACCELERATORS
    except ImportError:
        return {}
    return {name: float(acc.price_per_device_hour) for name, acc in ACCELERATORS.items()}


def _candidates(f: laws.Fit) -> str:
    return " / ".join(f"{law.name}: AICc {law.aicc:.3g}" if law.aicc is not None else f"{law.name}: AICc —"
                      for law in f.candidates)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_")


def _yes_no(v: bool | None) -> str:
    return "—" if v is None else ("yes" if v else "no")
