"""A built report as files for people: tables as CSV and Markdown, the page as self-contained
HTML (PNG as data URIs, styles in the page, no fonts or scripts from elsewhere; a
Content-Security-Policy forbids any fetch) and as Markdown with relative figure links.

The page states its findings first (dashboards/findings.py): sentences with numbers, the
figures that show them, the size x task-count tables, at most five limits; then an appendix
with everything else.
"""

from __future__ import annotations

import base64
import csv
import math
import time
from pathlib import Path
from typing import Any, Sequence

from dashboards import laws, plots
from dashboards.runs import SweepRuns
from dashboards.tables import Table

TEMPLATES = Path(__file__).parent / "templates"
# The appendix's tables, in order (the headline tables and the trends table come first).
TABLE_ORDER = ("results", "gains", "series", "flops", "fits", "forecasts", "backtests", "paper", "cells", "time")


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


def render_html(runs: SweepRuns, page: dict, all_tables: Sequence[Table], summary: dict,
                prices: dict[str, float]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = fmt
    env.filters["png_data"] = lambda p: "data:image/png;base64," + base64.b64encode(Path(p).read_bytes()).decode()
    return env.get_template("report.html").render(
        runs=runs, page=page, tables={t.name: t for t in all_tables}, summary=summary, prices=prices,
        table_order=TABLE_ORDER, generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(runs.read_at)),
        mlflow_ui=mlflow_ui_command(runs.tracking_uri), level=int(laws.DEFAULT_LEVEL * 100),
    )


def render_markdown(runs: SweepRuns, page: dict, all_tables: Sequence[Table], summary: dict) -> str:
    """The same report as Markdown with relative figure links (for a README, a PR or a wiki)."""
    by_name = {t.name: t for t in all_tables}
    out = [f"# Sweep `{runs.sweep}` ({runs.state})", "", "## Findings", ""]
    out += [" ".join(page["findings"]), ""]
    out += [_md_figure(f) for f in page["first_figures"]] + [""]
    out += [to_markdown(by_name[n]) for n in page["headline_tables"]]
    if page["limits"]:
        out += ["**Limits**", ""] + [f"- {n}" for n in page["limits"]] + [""]
    states = ", ".join(f"{n} {s}" for s, n in summary["states"].items())
    out += ["## Appendix", "",
            f"{summary['cells']} cells: {states}. Device-hours used: {fmt(summary['device_hours'])}; "
            f"cost so far: ${fmt(summary['cost_so_far'])} (planned ${fmt(summary['planned_cost'])}).", "",
            f"Loss metric: `{page['loss_metric']}`." + (f" Note: {page['loss_note']}." if page["loss_note"] else ""),
            "", to_markdown(by_name["trends"])]
    for s in page["sections"]:
        out += [f"## Scaling: `{s['label']}`", "", f"Kind: {s['domain']}.", ""]
        out += [_md_figure(f) for f in s["figures"]] + [""]
        out += [f"- {n}" for n in s["notes"]] + [f"- no fit: {n}" for n in s["skipped"]]
        out += [f"- {s['calibration']}"] if s["calibration"] else []
        out += [""]
    if page["histories"]:
        out += ["## Training", ""] + [_md_figure(h) for h in page["histories"]] + [""]
    for name in TABLE_ORDER:
        out += [to_markdown(by_name[name]).replace("### ", "## ", 1)]
    return "\n".join(out)


def _md_figure(f: plots.Figure) -> str:
    return f"![{f.title}](figures/{f.png.name})"


def mlflow_ui_command(tracking_uri: str) -> str:
    return f"mlflow ui --backend-store-uri {tracking_uri}"
