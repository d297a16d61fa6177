"""`flanscale report SWEEP`: scaling curves, fits, forecasts and tables from a sweep's MLflow runs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from orchestrator.commands.fit import positive_number
from orchestrator.preflight import check_out_dir
from trainers.spec import TASK_LADDER, UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="analyse a sweep's runs into an HTML report, figures and tables",
        description="Read a sweep's cells from MLflow and write scaling curves against model size, task count "
        "and compute (PNG + SVG; seeds averaged per point, their spread drawn), laws chosen by the metric's kind "
        "with bootstrap intervals, forecasts, back-tests, held-out results with the gain over each base model, "
        "FLOPs tables (exact and in the paper's Table 2 convention) and a self-contained report.html; the "
        "folder is also logged on the sweep's MLflow run.",
    )
    p.add_argument("sweep", help="sweep name (the MLflow experiment)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: $FLANSCALE_HOME/reports/<sweep>)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///$FLANSCALE_HOME/mlflow.db)")
    p.add_argument("--metric", action="append", default=[], metavar="M",
                   help="metric to plot and fit, e.g. eval/loss or eval/mmlu/direct (repeatable; default: eval/loss "
                   "(train/loss when a sweep has none), normalized averages and rank-classification metrics logged)")
    p.add_argument("--forecast-params", action="append", default=[], type=positive_number, metavar="N",
                   help="forecast at this parameter count, e.g. 540e9 (repeatable; default: 10x the largest run)")
    p.add_argument("--forecast-tasks", action="append", default=[], type=positive_number, metavar="N",
                   help=f"forecast at this number of tasks, e.g. {TASK_LADDER[-1]} (repeatable; default: next rung of "
                   f"{'/'.join(map(str, TASK_LADDER))})")
    p.add_argument("--forecast-flops", action="append", default=[], type=positive_number, metavar="F",
                   help="forecast at this training compute in FLOPs (repeatable; default: 10x the largest run)")
    p.add_argument("--x", action="append", default=[], metavar="FIELD",
                   help="also plot against this user axis of the sweep (a field of its `axes:`), e.g. "
                   "optim.learning_rate: a curve per model size and task count (repeatable)")
    p.add_argument("--bootstrap", type=int, default=200, metavar="N", help="bootstrap resamples per fit (default 200)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--no-log", action="store_true", help="do not log the report on the sweep's MLflow run")
    p.set_defaults(func=run, reads_store=_reads_only)


def _reads_only(args: argparse.Namespace) -> bool:
    """--no-log: the report only reads the store (a read-only home serves it)."""
    return bool(args.no_log)


def run(args: argparse.Namespace) -> int:
    from trainers.home import flanscale_home, tracking_uri

    # Progress bars for a handful of small files only clutter what the command prints.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap: must be >= 0, got {args.bootstrap}")
    out = args.out or flanscale_home() / "reports" / args.sweep
    check_out_dir(out, "--out" if args.out else "report folder")
    from dashboards.render import mlflow_ui_command
    from dashboards.report import ReportOptions, check_metrics, check_x, write_report
    from dashboards.runs import load_sweep

    uri = tracking_uri(args.tracking_uri)
    runs = load_sweep(args.sweep, uri)
    check_metrics(runs, args.metric)
    xs = check_x(runs, args.x)
    options = ReportOptions(
        metrics=tuple(args.metric),
        forecast_params=tuple(args.forecast_params),
        forecast_tasks=tuple(args.forecast_tasks),
        forecast_flops=tuple(args.forecast_flops),
        seed=args.seed,
        n_boot=args.bootstrap,
        log_artifacts=not args.no_log,
        x=xs,
    )
    report = write_report(runs, out, options)
    print(f"report:  {report.html.resolve()}")
    print(f"figures: {len(report.figures)} in {(report.out_dir / 'figures').resolve()} (PNG + SVG)")
    print(f"tables:  {(report.out_dir / 'tables').resolve()} (CSV + Markdown)")
    for note in report.notes:
        print(f"note:    {note}")
    if report.logged_to_run:
        print(f"logged as artifacts 'report/' on sweep run {report.logged_to_run}")
    elif not args.no_log:
        print("not logged to MLflow: the sweep has no parent run")
    print(f"open the store: {mlflow_ui_command(uri)}")
    return 0
