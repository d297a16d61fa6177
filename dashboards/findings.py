"""The report's first page (pure): its findings in a few sentences with numbers, generated from
the pooled trend tests (dashboards/trends.py) and the gains over the base model; the figures
that show them; the metrics of the size x task-count tables; at most five limits, one per
metric. Everything else follows in the report's appendix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from dashboards import tables
from dashboards.kinds import domain_for, metric_kind
from dashboards.runs import CellRun
from dashboards.analysis import AxisText
from dashboards.trends import AXIS_NOUN, Trend, describe
from trainers.states import CellState

MAX_FIGURES = 3
MAX_LIMITS = 5
MAX_MOVING = 2  # metrics the last findings sentence names, besides the loss and the averages
# Where each series of an axis' test lies: the words for "every series".
EVERY = AxisText({"params": "at every task count", "task_count": "for every model", "flops": "at every task count"},
                 lambda f: "for every model and task count")


@dataclass(frozen=True)
class MetricTrends:
    metric: str
    label: str  # the name the report shows (stand-in data marked)
    trends: tuple[Trend, ...]

    def found(self) -> list[Trend]:
        return [t for t in self.trends if t.direction != "none"]


def trend_clause(t: Trend) -> str:
    """A detected trend with its numbers, and whether every series shares its sign."""
    text = describe(t)
    if t.direction != "none" and len(t.series_slopes) > 1:
        if t.consistent:
            text += f", {EVERY[t.against]}"
        else:
            lo, hi = min(s for _, s in t.series_slopes), max(s for _, s in t.series_slopes)
            text += f", though not in every series (their own slopes run from {lo:+.3g} to {hi:+.3g})"
    return text


def sentences(metrics: Sequence[MetricTrends], cells: Sequence[CellRun], loss: str) -> list[str]:
    """Two or three sentences: the loss metric's trends, its gain over the base model, and what
    the other metrics show (their detected trends, or none) - each with its numbers."""
    out = []
    head = next((m for m in metrics if m.metric == loss), None)
    if head is not None:
        found = head.found()
        if found:
            out.append(f"{head.label} " + "; it ".join(trend_clause(t) for t in found) + ".")
        else:
            out.append(f"{head.label} shows {_none(head.trends)}.")
        gain = gain_sentence(cells, head.metric, head.label)
        if gain:
            out.append(gain)
    for m in metrics:  # the paper's headline: the normalized average's gain over the base model
        if m.metric.endswith("normalized_average"):
            gain = gain_sentence(cells, m.metric, m.label)
            if gain:
                out.append(gain)
    others = [m for m in metrics if m.metric != loss and not m.metric.endswith("normalized_average")]
    moving = [m for m in others if m.found()]
    still = [m for m in others if not m.found()]
    # A first page, not the trend table: the first few metrics, then how many more it holds.
    parts = [f"{m.label} " + "; it ".join(trend_clause(t) for t in m.found()) for m in moving[:MAX_MOVING]]
    if len(moving) > MAX_MOVING:
        parts.append(f"{len(moving) - MAX_MOVING} more metrics have a trend (the trend table lists them)")
    if still:
        ranges = ", ".join(f"{m.label} ({_range(cells, m.metric)})" for m in still[:MAX_MOVING])
        more = f" and {len(still) - MAX_MOVING} more" if len(still) > MAX_MOVING else ""
        parts.append(f"no detectable trend with {_axes(still)} in {ranges}{more}")
    if parts:
        text = "; ".join(parts)
        out.append((text[0].upper() + text[1:] if text.startswith("no ") else text) + ".")
    return out


def gain_sentence(cells: Sequence[CellRun], metric: str, label: str) -> str:
    """Finetuned minus base model of the same preset, its range over presets at the fewest and
    the most tasks."""
    g = tables.gains_table(cells, [metric])
    by_t: dict[int, list[float]] = {}
    for r in g.rows:
        by_t.setdefault(r[3], []).append(r[-1])
    if not by_t:
        return ""
    counts = sorted(by_t)
    counts = counts[:1] + counts[-1:] if len(counts) > 1 else counts
    values = [v for t in counts for v in by_t[t]]
    verb = "lowers" if max(values) < 0 else "raises" if min(values) > 0 else "changes"
    sign = -1.0 if verb == "lowers" else 1.0

    def span(t: int) -> str:
        lo, hi = sorted(sign * v for v in (min(by_t[t]), max(by_t[t])))
        same = f"{lo:.3g}" == f"{hi:.3g}"
        return (f"{lo:.3g}" if same else f"{lo:.3g} to {hi:.3g}") + f" at {t} tasks"

    return f"Finetuning {verb} {label} against the base model of the same size by " + " and ".join(
        span(t) for t in counts) + f" ({len({r[1] for r in g.rows})} sizes)."


def _none(trends: Sequence[Trend]) -> str:
    return "; ".join(f"{t.verdict} with {AXIS_NOUN[t.against]}" for t in trends) or "no trend test"


def _axes(metrics: Sequence[MetricTrends]) -> str:
    axes = list(dict.fromkeys(AXIS_NOUN[t.against] for m in metrics for t in m.trends))
    return " or ".join(axes) or "any axis"


def _range(cells: Sequence[CellRun], metric: str) -> str:
    values = [v for c in cells if c.state == CellState.FINISHED for v in [c.metric(metric)] if v is not None]
    text = f"{min(values):.3g} to {max(values):.3g} over {len(values)} cells" if values else "no cells"
    if metric_kind(metric) == "accuracy":
        d = domain_for(metric)
        text += f"; chance {d.chance:.3g}"
    return text


def figures(metrics: Sequence[MetricTrends], loss: str) -> list[tuple[str, str]]:
    """(metric, axis) of the first page's figures: the detected trends, the loss metric's
    first; the loss against size when nothing moves."""
    ordered = sorted(metrics, key=lambda m: m.metric != loss)
    picked = [(m.metric, t.against) for m in ordered for t in m.found()][:MAX_FIGURES]
    if not picked and ordered:
        picked = [(ordered[0].metric, "params")]
    return picked


def headline_metrics(metrics: Sequence[MetricTrends], loss: str) -> list[str]:
    """The loss metric, the normalized averages (the paper's headline), and the first other
    metric with a trend (else the first other one)."""
    others = [m for m in metrics if m.metric != loss]
    averages = [m.metric for m in others if m.metric.endswith("normalized_average")]
    rest = [m for m in others if m.metric not in averages]
    second = next((m for m in rest if m.found()), rest[0] if rest and not averages else None)
    return [m.metric for m in metrics if m.metric == loss] + averages + ([second.metric] if second else [])


def limits(metrics: Sequence[MetricTrends], skipped: dict[str, list[str]], notes: Sequence[str] = ()) -> list[str]:
    """At most five limits, one per metric (what its tests cannot tell, how many series got no
    law), then the report-wide notes; the rest is in the appendix."""
    out = list(notes)
    for m in metrics:
        parts = [f"{t.verdict} with {AXIS_NOUN[t.against]}" for t in m.trends if t.direction == "none"]
        n = len(skipped.get(m.metric, []))
        if n:
            parts.append(f"no law on {n} series of its figures (the appendix says why)")
        if parts:
            out.append(f"{m.label}: " + "; ".join(parts))
    if len(out) > MAX_LIMITS:
        out = out[:MAX_LIMITS - 1] + [f"{len(out) - MAX_LIMITS + 1} more in the appendix"]
    return out


def seed_note(cells: Sequence[CellRun]) -> str:
    """What the seeds of a sweep vary, when they share a base model: then the spread over seeds
    is the finetuning noise alone, a lower bound on that between independently pretrained
    models."""
    seeds = {c.seed for c in cells if c.task_count > 0}
    shared = any(isinstance(c.plan.get("spec"), dict) and c.plan["spec"].get("init_checkpoint")
                 for c in cells if c.task_count > 0)
    if len(seeds) < 2 or not shared:
        return ""
    dropout = {float(c.plan["spec"].get("model", {}).get("dropout_rate") or 0.0)
               for c in cells if c.task_count > 0 and isinstance(c.plan.get("spec"), dict)}
    varied = "the finetuning data order" + (" and dropout" if any(d > 0 for d in dropout) else " only")
    return (f"seeds vary {varied}: every seed of a size finetunes the same base model, so the spread over "
            "seeds is a lower bound on the noise between independently pretrained models")
