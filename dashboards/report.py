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

from dashboards import analysis, laws, paper, plots, tables
from dashboards.kinds import domain_for, metric_kind
from dashboards.runs import SweepRuns, load_history
from dashboards.tables import Table
from trainers.spec import UserError

TEMPLATES = Path(__file__).parent / "templates"
# The paper's ladder of task counts: forecasts go to the next rung not yet run.
TASK_LADDER = (9, 89, 282, 1836)
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


def loss_metric(runs: SweepRuns) -> tuple[str, str]:
    """(the loss metric reports use, a note when it is not the held-out loss)."""
    if "eval/loss" in runs.metric_names or "train/loss" not in runs.metric_names:
        return "eval/loss", ""
    return "train/loss", LOSS_FALLBACK_NOTE


def default_metrics(runs: SweepRuns) -> tuple[str, ...]:
    """The loss metric, then the held-out scores: normalized averages (the paper's six columns
    when its average is incomplete), and each benchmark's rank-classification accuracy and
    correct-option log-probability."""
    logged = set(runs.metric_names)
    loss, _ = loss_metric(runs)
    evals = [m for _, m in tables.EVAL_COLUMNS if m in logged]
    if "eval/normalized_average" in evals:
        evals = ["eval/normalized_average"]
    evals += sorted(m for m in logged if m.endswith("/normalized_average") and m != "eval/normalized_average")
    evals += sorted(m for m in logged if m.startswith("eval/") and m.endswith(("/rc", "/rc_logprob")))
    return (loss, *evals) if loss in logged else tuple(evals)


def default_forecasts(runs: SweepRuns) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """One decade beyond the largest model and compute that finished, and the next rung of tasks."""
    done = [c for c in runs.cells if c.state == "finished"] or list(runs.cells)
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

    sections, figures, rows = [], [], {"fits": [], "forecasts": [], "backtests": [], "series": []}
    fits_json = []
    for metric in metrics:
        domain = domain_for(metric) if metric_kind(metric) else domain_for(metric, kind="loss")
        section = {"metric": metric, "domain": domain.describe(), "figures": [], "skipped": [], "notes": [],
                   "calibration": ""}
        if metric == "train/loss" and loss_note:
            section["notes"].append(loss_note)
        judged = [0, 0]
        for against in analysis.AGAINST:
            a = analysis.analyse(runs.cells, metric, against, forecast_at=at[against], seed=options.seed,
                                 n_boot=options.n_boot, domain=domain)
            overlay = _overlay(metric, against, presets, params_of)
            fig = plots.scaling_figure(a, fig_dir, f"{_slug(metric)}_vs_{against}", overlay)
            figures.append(fig)
            section["figures"].append(fig)
            axis = plots.AXIS_LABEL[against]
            section["skipped"].extend(f"{s.series} (vs {axis}): {s.reason}" for s in a.skipped)
            section["notes"].extend(a.notes)
            hit, n = a.calibration()
            judged[0] += hit
            judged[1] += n
            _collect(rows, fits_json, metric, against, a)
        if judged[1]:
            section["calibration"] = (f"back-tests: the truth fell inside {judged[0]} of {judged[1]} "
                                      f"{int(laws.DEFAULT_LEVEL * 100)}% intervals")
        section["notes"] = sorted(set(section["notes"]))
        sections.append(section)

    history_figs = _histories(runs, fig_dir)
    figures.extend(history_figs)

    prices = _prices()
    now = time.time()
    summary = tables.cost_summary(runs.cells, prices, now)
    held_out = [m for m in metrics if m != "train/loss"]
    all_tables = [
        tables.cells_table(runs.cells, prices, now),
        tables.flops_table(runs.cells),
        tables.results_table(runs.cells),
        tables.gains_table(runs.cells, held_out or metrics),
        *result_tables(rows, sum(1 for r in rows["backtests"] if r[-1] == "yes"),
                       sum(1 for r in rows["backtests"] if r[-1] in ("yes", "no"))),
        paper_table(presets),
    ]
    table_paths = []
    for t in all_tables:
        table_paths.extend(write_table(t, tab_dir))
    by_name = {t.name: t for t in all_tables}
    (out_dir / "fits.json").write_text(json.dumps(
        {"fits": fits_json,
         "forecasts": [dict(zip(by_name["forecasts"].columns, r)) for r in rows["forecasts"]],
         "backtests": [dict(zip(by_name["backtests"].columns, r)) for r in rows["backtests"]]},
        indent=1, default=str))
    held = {"loss_metric": loss, "loss_note": loss_note,
            "cannot_show": [f"{s['metric']}: {n}" for s in sections if s["metric"] != "train/loss" for n in s["skipped"]]}
    (out_dir / "report.md").write_text(render_markdown(runs, sections, history_figs, all_tables, summary, held))
    html = out_dir / "report.html"
    html.write_text(render_html(runs, sections, history_figs, all_tables, summary, prices, held))
    notes = tuple(n for s in sections for n in s["notes"])
    return Report(out_dir, html, tuple(figures), tuple(table_paths), None, notes)


def _overlay(metric: str, against: str, presets: set[str], params_of: dict[str, int]):
    """(x, paper point) pairs to draw: by the preset's size, or at 0 / 1,836 tasks."""
    if against == "flops":
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
        beyond = f"yes ({p.decades_beyond:.1f} decades beyond the data)" if p.extrapolation else "no"
        rows["forecasts"].append((metric, against, fc.series, p.at, p.value, p.low, p.high, fc.law, beyond))
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
              ("metric", "against", "series", "at", "forecast", "low", "high", "law", "extrapolation"),
              tuple(rows["forecasts"]), "" if rows["forecasts"] else "no fitted series to forecast from"),
        Table("backtests", f"Back-tests: largest x held out, rest fitted ({level} interval)",
              ("metric", "against", "series", "fitted points", "held out at", "actual", "predicted", "error", "low",
               "high", "within interval"), tuple(rows["backtests"]),
              (f"the truth fell inside {hits} of {judged} intervals" if judged else
               "no series had enough points to hold one out with an interval")),
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
    started = [c for c in runs.cells if c.state in ("finished", "running", "preempted", "failed")]
    out = []
    history = load_history(runs.tracking_uri, started, "train/loss") if started else {}
    out.append(plots.history_figure(started, history, "train/loss", fig_dir, "train_loss_history",
                                    "train/loss during finetuning: training loss on each cell's own mixture"))
    if "eval/loss" in runs.metric_names:
        history = load_history(runs.tracking_uri, started, "eval/loss")
        out.append(plots.history_figure(started, history, "eval/loss", fig_dir, "eval_loss_history",
                                        "eval/loss during finetuning: the same held-out set for every cell"))
    return out


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


TABLE_ORDER = ("results", "gains", "series", "flops", "fits", "forecasts", "backtests", "paper", "cells")


def render_html(runs: SweepRuns, sections: Sequence[dict], histories: Sequence[plots.Figure],
                all_tables: Sequence[Table], summary: dict, prices: dict[str, float], held: dict) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = fmt
    env.filters["png_data"] = lambda p: "data:image/png;base64," + base64.b64encode(Path(p).read_bytes()).decode()
    tab = {t.name: t for t in all_tables}
    return env.get_template("report.html").render(
        runs=runs, sections=sections, histories=histories, tables=tab, summary=summary, prices=prices, held=held,
        table_order=[n for n in TABLE_ORDER if n not in ("results", "gains")],
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(runs.read_at)),
        mlflow_ui=mlflow_ui_command(runs.tracking_uri), level=int(laws.DEFAULT_LEVEL * 100),
    )


def render_markdown(runs: SweepRuns, sections: Sequence[dict], histories: Sequence[plots.Figure],
                    all_tables: Sequence[Table], summary: dict, held: dict) -> str:
    """The same report as Markdown with relative figure links (for a README, a PR or a wiki)."""
    states = ", ".join(f"{n} {s}" for s, n in summary["states"].items())
    by_name = {t.name: t for t in all_tables}
    out = [f"# Sweep `{runs.sweep}` ({runs.state})", "",
           f"{summary['cells']} cells: {states}. Device-hours used: {fmt(summary['device_hours'])}; "
           f"cost so far: ${fmt(summary['cost_so_far'])} (planned ${fmt(summary['planned_cost'])}).", "",
           "## Held-out measurement", "", f"Loss metric: `{held['loss_metric']}`."
           + (f" Note: {held['loss_note']}." if held["loss_note"] else ""), ""]
    if held["cannot_show"]:
        out += ["What the data cannot show at this scale:", ""] + [f"- {n}" for n in held["cannot_show"]] + [""]
    out += [to_markdown(by_name["results"]), to_markdown(by_name["gains"])]
    for s in sections:
        out += [f"## Scaling: `{s['metric']}`", "", f"Kind: {s['domain']}.", ""]
        out += [f"![{f.title}](figures/{f.png.name})" for f in s["figures"]] + [""]
        out += [f"- {n}" for n in s["notes"]] + [f"- no fit: {n}" for n in s["skipped"]]
        out += [f"- {s['calibration']}"] if s["calibration"] else []
        out += [""]
    out += ["## Training", ""] + [f"![{h.title}](figures/{h.png.name})" for h in histories] + [""]
    for name in TABLE_ORDER:
        if name not in ("results", "gains"):
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


def _candidates(f: laws.Fit) -> str:
    return " / ".join(f"{law.name}: AICc {law.aicc:.3g}" if law.aicc is not None else f"{law.name}: AICc —"
                      for law in f.candidates)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_")


def _yes_no(v: bool | None) -> str:
    return "—" if v is None else ("yes" if v else "no")
