"""A sweep's report: figures (PNG + SVG), tables (CSV + Markdown), fits and forecasts, and one
self-contained HTML page, all written to a folder and logged on the sweep's parent run.

The HTML carries everything inline (PNG as data URIs, styles in the page, no fonts or
scripts from elsewhere; a Content-Security-Policy forbids any fetch), so it opens the same
from disk, from an MLflow artifact view, or attached to an e-mail.
"""

from __future__ import annotations

import base64
import difflib
import csv
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dashboards import analysis, plots, tables
from dashboards.runs import SweepRuns, load_history
from dashboards.tables import Table
from trainers.spec import UserError

TEMPLATES = Path(__file__).parent / "templates"
# The paper's ladder of task counts: forecasts go to the next rung not yet run.
TASK_LADDER = (9, 89, 282, 1836)


@dataclass(frozen=True)
class ReportOptions:
    metrics: tuple[str, ...] = ()  # () = train/loss plus the held-out metrics that were logged
    forecast_params: tuple[float, ...] = ()  # () = ten times the largest model run
    forecast_tasks: tuple[float, ...] = ()  # () = the next rung of the paper's task ladder
    seed: int = 0
    n_boot: int = analysis.DEFAULT_BOOTSTRAP
    log_artifacts: bool = True


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


def default_metrics(runs: SweepRuns) -> tuple[str, ...]:
    logged = set(runs.metric_names)
    evals = [m for _, m in tables.EVAL_COLUMNS if m in logged]
    if "eval/normalized_average" in evals:
        evals = ["eval/normalized_average"]
    return ("train/loss", *evals)


def default_forecasts(runs: SweepRuns) -> tuple[tuple[float, ...], tuple[float, ...]]:
    params = [c.params for c in runs.cells if c.params > 0]
    tasks = [c.task_count for c in runs.cells]
    fp = (10.0 * max(params),) if params else ()
    top = max(tasks) if tasks else 0
    nxt = [t for t in TASK_LADDER if t > top]
    ft = (float(nxt[0]) if nxt else 2.0 * top,) if top > 0 else ()
    return fp, ft


def build_report(runs: SweepRuns, out_dir: Path, options: ReportOptions = ReportOptions()) -> Report:
    out_dir = Path(out_dir)
    fig_dir, tab_dir = out_dir / "figures", out_dir / "tables"
    metrics = options.metrics or default_metrics(runs)
    fp_default, ft_default = default_forecasts(runs)
    fp = options.forecast_params or fp_default
    ft = options.forecast_tasks or ft_default

    sections, figures, all_tables = [], [], []
    fit_rows, fc_rows, bt_rows = [], [], []
    for metric in metrics:
        section = {"metric": metric, "figures": [], "skipped": [], "notes": []}
        for against, at in (("params", fp), ("task_count", ft)):
            a = analysis.analyse(runs.cells, metric, against, forecast_at=at, seed=options.seed, n_boot=options.n_boot)
            fig = plots.scaling_figure(a, fig_dir, f"{_slug(metric)}_vs_{against}")
            figures.append(fig)
            section["figures"].append(fig)
            section["skipped"].extend(f"{s.series} (vs {plots.AXIS_LABEL[against]}): {s.reason}" for s in a.skipped)
            section["notes"].extend(a.notes)
            for f in a.fits:
                fit_rows.append((metric, against, f.series.label, f.law.kind, f.law.formula(), f.law.n,
                                 f.law.aicc, _candidates(f), f.note))
            fc_rows.extend((metric, against, fc.series, fc.x, fc.value, fc.low, fc.high, fc.law) for fc in a.forecasts)
            bt_rows.extend((metric, against, b.series, b.fitted_points, b.held_out_x, b.actual, b.predicted, b.error,
                            b.low, b.high, _yes_no(b.within)) for b in a.backtests)
        section["notes"] = sorted(set(section["notes"]))
        sections.append(section)

    started = [c for c in runs.cells if c.state in ("finished", "running", "preempted", "failed")]
    history = load_history(runs.tracking_uri, started, "train/loss") if started else {}
    figures.append(plots.history_figure(started, history, "train/loss", fig_dir, "train_loss_history"))

    prices = _prices()
    now = time.time()
    summary = tables.cost_summary(runs.cells, prices, now)
    level = f"{int(analysis.DEFAULT_LEVEL * 100)}%"
    all_tables = [
        tables.cells_table(runs.cells, prices, now),
        tables.flops_table(runs.cells),
        tables.results_table(runs.cells),
        Table("fits", "Fitted scaling laws (chosen by AICc)",
              ("metric", "against", "series", "law", "formula", "points", "AICc", "candidates (AICc; leave-one-out RMSE)", "note"),
              tuple(fit_rows), "" if fit_rows else "no series had enough points for a fit"),
        Table("forecasts", f"Forecasts at sizes / task counts not run ({level} bootstrap interval)",
              ("metric", "against", "series", "at", "forecast", "low", "high", "law"), tuple(fc_rows),
              "" if fc_rows else "no fitted series to forecast from"),
        Table("backtests", f"Back-tests: largest x held out, rest fitted ({level} interval)",
              ("metric", "against", "series", "fitted points", "held out at", "actual", "predicted", "error", "low", "high",
               "within interval"), tuple(bt_rows), "" if bt_rows else "no series had enough points to hold one out"),
    ]
    table_paths = []
    for t in all_tables:
        table_paths.extend(write_table(t, tab_dir))
    (out_dir / "fits.json").write_text(json.dumps(
        {"fits": [dict(zip(all_tables[3].columns, r)) for r in fit_rows],
         "forecasts": [dict(zip(all_tables[4].columns, r)) for r in fc_rows],
         "backtests": [dict(zip(all_tables[5].columns, r)) for r in bt_rows]}, indent=1, default=str))

    (out_dir / "report.md").write_text(render_markdown(runs, sections, figures[-1], all_tables, summary))
    html = out_dir / "report.html"
    html.write_text(render_html(runs, sections, figures[-1], all_tables, summary, prices))
    notes = tuple(n for s in sections for n in s["notes"])
    return Report(out_dir, html, tuple(figures), tuple(table_paths), None, notes)


def write_table(t: Table, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{t.name}.csv", out_dir / f"{t.name}.md"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(t.columns)
        for r in t.rows:
            w.writerow(["" if v is None else v for v in r])
    md_path.write_text(to_markdown(t))
    return [csv_path, md_path]


def to_markdown(t: Table) -> str:
    def cell(v: Any) -> str:
        return fmt(v).replace("|", "\\|")

    lines = [f"### {t.title}", "", "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in t.rows]
    if t.note:
        lines += ["", f"_{t.note}_"]
    return "\n".join(lines) + "\n"


def fmt(v: Any) -> str:
    """Numbers for people: thousands separators for counts, 4 significant digits otherwise."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


def render_html(runs: SweepRuns, sections: Sequence[dict], history_fig: plots.Figure, all_tables: Sequence[Table],
                summary: dict, prices: dict[str, float]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = fmt
    env.filters["png_data"] = lambda p: "data:image/png;base64," + base64.b64encode(Path(p).read_bytes()).decode()
    tab = {t.name: t for t in all_tables}
    return env.get_template("report.html").render(
        runs=runs, sections=sections, history=history_fig, tables=tab, summary=summary, prices=prices,
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(runs.read_at)),
        mlflow_ui=mlflow_ui_command(runs.tracking_uri),
    )


def render_markdown(runs: SweepRuns, sections: Sequence[dict], history_fig: plots.Figure,
                    all_tables: Sequence[Table], summary: dict) -> str:
    """The same report as Markdown with relative figure links (for a README, a PR or a wiki)."""
    states = ", ".join(f"{n} {s}" for s, n in summary["states"].items())
    out = [f"# Sweep `{runs.sweep}` ({runs.state})", "",
           f"{summary['cells']} cells: {states}. Device-hours used: {fmt(summary['device_hours'])}; "
           f"cost so far: ${fmt(summary['cost_so_far'])} (planned ${fmt(summary['planned_cost'])}).", ""]
    for s in sections:
        out += [f"## Scaling: `{s['metric']}`", ""]
        out += [f"![{f.title}](figures/{f.png.name})" for f in s["figures"]] + [""]
        out += [f"- {n}" for n in s["notes"]] + [f"- no fit: {n}" for n in s["skipped"]] + [""]
    out += ["## Training", "", f"![{history_fig.title}](figures/{history_fig.png.name})", ""]
    by_name = {t.name: t for t in all_tables}
    for name in ("results", "flops", "fits", "forecasts", "backtests", "cells"):
        out += [to_markdown(by_name[name]).replace("### ", "## ", 1)]
    return "\n".join(out)


def mlflow_ui_command(tracking_uri: str) -> str:
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def _prices() -> dict[str, float]:
    try:
        from trainers.accounting import ACCELERATORS
    except ImportError:
        return {}
    return {name: float(acc.price_per_device_hour) for name, acc in ACCELERATORS.items()}


def _candidates(f: analysis.FitResult) -> str:
    parts = []
    for law, loo in zip(f.candidates, f.loo_rmse):
        aicc = f"AICc {law.aicc:.3g}" if law.aicc is not None else "AICc —"
        parts.append(f"{law.kind}: {aicc}; LOO {loo:.3g}" if loo is not None else f"{law.kind}: {aicc}")
    return " / ".join(parts)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_")


def _yes_no(v: bool | None) -> str:
    return "—" if v is None else ("yes" if v else "no")
