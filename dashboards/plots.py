"""Figures (matplotlib, Agg): scaling curves with their fits, intervals and forecasts.

Each figure is written as PNG (embedded in the HTML report) and SVG (for papers and slides).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: reports are built on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402

from dashboards.analysis import ScalingAnalysis  # noqa: E402
from dashboards.runs import CellRun  # noqa: E402

AXIS_LABEL = {"params": "model parameters", "task_count": "number of finetuning tasks"}


@dataclass(frozen=True)
class Figure:
    name: str  # file stem
    title: str
    png: Path
    svg: Path


def scaling_figure(a: ScalingAnalysis, out_dir: Path, name: str) -> Figure:
    fig, ax = plt.subplots(figsize=(7.0, 4.4), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fits = {f.series.label: f for f in a.fits}
    for i, s in enumerate(a.series):
        color = colors[i % len(colors)]
        style = "--" if dict(s.group).get("with_cot") is False else "-"
        ax.plot(s.x, s.y, style, marker="o", color=color, label=s.label, linewidth=1.6)
        f = fits.get(s.label)
        if f is None:
            continue
        xs_fit = np.asarray([x for x in s.x if x > 0], dtype=float)
        targets = [fc.x for fc in a.forecasts if fc.series == s.label]
        lo_x, hi_x = xs_fit.min(), max([xs_fit.max(), *targets])
        grid = np.geomspace(lo_x, hi_x, 120)
        ax.plot(grid, f.law.predict(grid), ":", color=color, linewidth=1.1)
        iv = f.interval(grid)
        if iv is not None:
            ax.fill_between(grid, iv[0], iv[1], color=color, alpha=0.12, linewidth=0)
        for fc in a.forecasts:
            if fc.series != s.label:
                continue
            err = None
            if fc.low is not None and fc.high is not None:
                err = [[max(fc.value - fc.low, 0.0)], [max(fc.high - fc.value, 0.0)]]
            ax.errorbar([fc.x], [fc.value], yerr=err, fmt="D", mfc="white", color=color, capsize=3)
    has_zero = any(x <= 0 for s in a.series for x in s.x)
    if has_zero:
        # 0 tasks (the base model) sits left of the log axis on a linear stretch.
        ax.set_xscale("symlog", linthresh=1.0)
    else:
        ax.set_xscale("log")
    ax.set_xlabel(AXIS_LABEL[a.against] + (" (log scale)" if not has_zero else " (symlog scale)"))
    ax.set_ylabel(a.metric)
    # Plain tick labels: an offset axis ("1e-11 + 25.8") hides the value of a flat series.
    ax.ticklabel_format(axis="y", useOffset=False)
    title = f"{a.metric} vs {AXIS_LABEL[a.against]}"
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    if a.series:
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, f"no finished cell has logged {a.metric}", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, out_dir, name, title)


def history_figure(cells: Sequence[CellRun], histories: dict[str, Sequence[tuple[int, float]]], metric: str,
                   out_dir: Path, name: str) -> Figure:
    """`metric` against optimizer step, one line per cell: colour = model size, line style =
    task count, so a 40-cell sweep still reads (the legend names sizes and task counts once)."""
    fig, ax = plt.subplots(figsize=(7.0, 4.0), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    models = sorted({c.model: c.params for c in cells}.items(), key=lambda kv: (kv[1], kv[0]))
    color_of = {m: colors[i % len(colors)] for i, (m, _) in enumerate(models)}
    tasks = sorted({c.task_count for c in cells})
    style_of = {t: styles[i % len(styles)] for i, t in enumerate(tasks)}
    drawn = False
    for c in cells:
        pts = histories.get(c.key) or []
        if pts:
            steps, vals = zip(*sorted(pts))
            ax.plot(steps, vals, style_of[c.task_count], color=color_of[c.model], linewidth=1.2, alpha=0.85)
            drawn = True
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    title = f"{metric} during finetuning"
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.25)
    if drawn:
        handles = [Line2D([], [], color=color_of[m], label=m) for m, _ in models]
        handles += [Line2D([], [], color="0.3", linestyle=style_of[t], label=f"{t} tasks") for t in tasks]
        ax.legend(handles=handles, fontsize=8, frameon=False, ncol=2)
    else:
        ax.text(0.5, 0.5, f"no {metric} logged yet", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, out_dir, name, title)


def _save(fig, out_dir: Path, name: str, title: str) -> Figure:
    out_dir.mkdir(parents=True, exist_ok=True)
    png, svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
    fig.savefig(png, dpi=110)
    fig.savefig(svg)
    plt.close(fig)
    return Figure(name, title, png, svg)
