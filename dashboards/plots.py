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

from dashboards.analysis import AxisText, ScalingAnalysis, Series  # noqa: E402
from dashboards.paper import PaperPoint  # noqa: E402
from dashboards.runs import CellRun  # noqa: E402

AXIS_LABEL = AxisText({"params": "model parameters", "task_count": "number of finetuning tasks",
                       "flops": "training compute (pretraining + finetuning FLOPs)"}, lambda f: f)


@dataclass(frozen=True)
class Figure:
    name: str  # file stem
    title: str
    png: Path
    svg: Path


def scaling_figure(a: ScalingAnalysis, out_dir: Path, name: str,
                   paper: Sequence[tuple[float, PaperPoint]] = (), label: str = "") -> Figure:
    """Points (means over seeds, bars: min-max over seeds), the fitted law (dotted over the
    data, dashed beyond it), its interval (band), forecasts (diamonds: open beyond the data,
    filled within it), the base model of a task-count series (square at 0), chance (grey
    line) and, for the paper's presets, the paper's own values (grey stars). `label`: the
    metric's name as the report shows it."""
    label = label or a.metric
    fig, ax = plt.subplots(figsize=(7.0, 4.4), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fits = {f.series.label: f.fit for f in a.fits}
    for i, s in enumerate(a.series):
        color = colors[i % len(colors)]
        style = "--" if dict(s.group).get("with_cot") is False else "-"
        xs, ys = np.asarray(s.x), np.asarray(s.y)
        ax.plot(xs, ys, style, marker="o", color=color, label=_legend(s), linewidth=1.6)
        spread = [(p.x, p.mean, p.low, p.high) for p in s.points if p.n > 1]
        if spread:
            px, pm, lo, hi = map(np.asarray, zip(*spread))
            ax.errorbar(px, pm, yerr=[pm - lo, hi - pm], fmt="none", ecolor=color, capsize=3, linewidth=1.0)
        if s.base is not None:
            ax.errorbar([0.0], [s.base.mean], yerr=[[s.base.mean - s.base.low], [s.base.high - s.base.mean]],
                        fmt="s", color=color, mfc="white", capsize=3)
        f = fits.get(s.label)
        if f is None:
            continue
        targets = [fc.prediction.at for fc in a.forecasts if fc.series == s.label]
        grid = np.geomspace(min(xs.min(), *targets) if targets else xs.min(), max([xs.max(), *targets]), 160)
        inside = (grid >= xs.min()) & (grid <= xs.max())
        law = f.law.predict(grid)
        ax.plot(grid[inside], law[inside], ":", color=color, linewidth=1.1)
        for side in (grid < xs.min(), grid > xs.max()):
            if side.any():
                ax.plot(grid[side], law[side], "--", color=color, linewidth=1.1)
        iv = f.interval(grid)
        if iv is not None:
            ax.fill_between(grid, iv[0], iv[1], color=color, alpha=0.12, linewidth=0)
        for fc in a.forecasts:
            if fc.series != s.label:
                continue
            p = fc.prediction
            err = [[p.value - p.low], [p.high - p.value]] if p.low is not None and p.high is not None else None
            ax.errorbar([p.at], [p.value], yerr=err, fmt="D", mfc="white" if p.extrapolation else color, color=color,
                        capsize=3)
    if a.forecasts:
        ax.plot([], [], "D--", color="0.35", mfc="white", label="beyond the data: extrapolation")
    # Against task count a series is a preset: its paper stars take its colour. Against size
    # the stars are named instead.
    color_of = {dict(s.group).get("model"): colors[i % len(colors)] for i, s in enumerate(a.series)}
    for x, pt in paper:
        grey = "0.35" if pt.finetuned else "0.65"
        ax.plot([x], [pt.value], "*", color=color_of.get(pt.preset, grey), markersize=9, zorder=5,
                markeredgecolor=grey)
        if a.against != "task_count":
            ax.annotate(pt.label.replace(" (paper)", ""), (x, pt.value), fontsize=6, color="0.35",
                        xytext=(4, 2), textcoords="offset points")
    if paper:
        ax.plot([], [], "*", color="0.35", label="paper, Flan (1,836 tasks)")
        ax.plot([], [], "*", color="0.65", label="paper, base model")
    if a.domain.kind in ("accuracy", "score") and a.series:
        ax.axhline(a.domain.chance or 0.0, color="0.6", linewidth=0.8, linestyle="-.", label="chance")
    has_zero = any(s.base is not None for s in a.series)
    if has_zero:
        # 0 tasks (the base model) sits left of the log axis on a linear stretch.
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(left=-0.5)
    else:
        ax.set_xscale("log")
    ax.set_xlabel(AXIS_LABEL[a.against] + (" (log scale)" if not has_zero else " (symlog scale; 0 = base model)"))
    ax.set_ylabel(label + (" (training loss, own mixture)" if a.metric == "train/loss" else ""))
    # Plain tick labels: an offset axis ("1e-11 + 25.8") hides the value of a flat series.
    ax.ticklabel_format(axis="y", useOffset=False)
    title = f"{label} vs {AXIS_LABEL[a.against]}"
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    if a.series:
        ax.legend(fontsize=7, frameon=False)
    else:
        ax.text(0.5, 0.5, f"no finished cell has logged {a.metric}", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, out_dir, name, title)


def _legend(s: Series) -> str:
    seeds = sorted({p.n for p in s.points} | ({s.base.n} if s.base else set()))
    if seeds == [1]:
        return s.label
    return f"{s.label} ({'/'.join(map(str, seeds))} seeds)"


def history_figure(cells: Sequence[CellRun], histories: dict[str, Sequence[tuple[int, float]]], metric: str,
                   out_dir: Path, name: str, title: str = "") -> Figure:
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
    title = title or f"{metric} during finetuning"
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
    # The layout the PNG's drawing computed serves the SVG too: constrained layout is most of
    # a figure's drawing time, and it would compute the same positions again.
    fig.set_layout_engine("none")
    fig.savefig(svg)
    plt.close(fig)
    return Figure(name, title, png, svg)
