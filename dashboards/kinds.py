"""What a metric can be: its kind (loss, accuracy, score), its domain and its chance level.

The kind decides which law a scaling fit uses and keeps every forecast inside the metric's
domain (dashboards/laws.py):

- loss kind: names ending in `loss` (`train/loss`, `eval/loss`, `eval/loss/<group>`), >= 0.
  `eval/<b>/rc_logprob` (the mean log-probability of the correct option, <= 0) and
  `eval/<b>/rc_choice_logprob` (the same among the options, <= 0, chance -log k) are fitted
  as their negation, a cross-entropy >= 0, and reported with their own sign.
- accuracy kind: `eval/<benchmark>/<mode>` and the `_flex`, `rc`, `rc_norm` variants, in
  percent, between the benchmark's chance level (from the benchmark registry) and 100.
- score kind: `.../normalized` scores and normalized averages. Their chance level is 0, but a
  model can score below chance down to the score of answering everything wrong (the floor:
  -100 r / (100 - r) for a random baseline r, averaged the way the score averages). The law
  runs between that floor and 100, so a forecast is never below what any model can score
  and never above 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from trainers.spec import UserError

KINDS = ("loss", "accuracy", "score")
# Mean log-probabilities (<= 0), fitted as the cross-entropies they negate.
LOGPROBS = ("rc_logprob", "rc_choice_logprob")
# The smallest change a metric can show: half a point of a percent (accuracy, score), since
# benchmarks of a few hundred items move in steps of a few tenths of a point, and 1% of a
# loss. Trends smaller than this are not told apart from nothing, and no interval is narrower.
RESOLUTION_POINTS = 0.5
RESOLUTION_LOSS = 0.01
# The lowest normalized score a benchmark with a 50% baseline allows; used when a score's
# components are not known (a user's own column).
DEFAULT_SCORE_FLOOR = -100.0


@dataclass(frozen=True)
class Domain:
    """Where a metric lives. The law fitted to it runs between `low` and `high`."""

    kind: str
    low: float  # loss: 0; accuracy: chance; score: the floor
    high: float  # loss: inf; accuracy and score: 100
    chance: float | None = None  # reference level drawn on plots (accuracy: chance, score: 0)
    sign: float = 1.0  # -1 when the metric is a negated cross-entropy (rc_logprob)
    source: str = ""  # where `low` came from, for the report

    def resolution(self, y):
        """The metric's resolution at the value(s) y, in the metric's units (see RESOLUTION_*)."""
        return RESOLUTION_LOSS * abs(y) if self.kind == "loss" else RESOLUTION_POINTS

    def describe(self) -> str:
        if self.kind == "loss":
            what = "negated cross-entropy (fitted as its negation, >= 0)" if self.sign < 0 else "loss (>= 0)"
            return what
        if self.kind == "accuracy":
            return f"accuracy between chance {self.low:.4g} and 100" + (f" ({self.source})" if self.source else "")
        return f"score between floor {self.low:.4g} and 100, chance 0" + (f" ({self.source})" if self.source else "")


def metric_kind(name: str) -> str | None:
    """The kind a metric's name implies, or None when the name does not say."""
    n = name.strip()
    if n.endswith(LOGPROBS) or n.endswith("loss") or "/loss/" in n:
        return "loss"
    if n.endswith("/normalized") or n.endswith("normalized_average"):
        return "score"
    parts = n.split("/")
    if len(parts) == 3 and parts[0] == "eval" and _is_mode(parts[2]):
        return "accuracy"
    return None


def _is_mode(m: str) -> bool:
    base = m[:-len("_flex")] if m.endswith("_flex") else m
    return base in ("direct", "cot", "sc", "rc", "rc_norm")


def chance_level(benchmark: str, mode: str = "") -> float | None:
    """A benchmark's random baseline in percent for `mode`'s scores (rank classification of
    span questions has one, generating the span none), from the benchmark registry; None when
    the registry does not know it."""
    from trainers.eval import benchmarks

    try:
        return float(benchmarks.get(benchmark).chance_for(mode))
    except UserError:
        return None


def score_floor(benchmark: str, mode: str = "") -> float | None:
    """The normalized score of a model that answers every question of `benchmark` wrong in
    `mode`: each task normalized with its own baseline, averaged as the score averages them."""
    from trainers.eval import benchmarks

    try:
        info = benchmarks.get(benchmark)
    except UserError:
        return None
    base = info.rc_baseline if info.rc_baseline is not None and mode.startswith("rc") else info.baselines
    values = list(base.values()) if isinstance(base, Mapping) else [float(base)]
    return sum(-100.0 * r / (100.0 - r) for r in values) / len(values)


def average_floor(suite: str) -> float | None:
    """The floor of a suite's normalized average: the mean of its members' floors."""
    from trainers.eval import benchmarks

    if suite not in benchmarks.SUITES:
        return None
    floors = [score_floor(b) for b, _ in benchmarks.average_members(suite)]
    return None if any(f is None for f in floors) or not floors else sum(floors) / len(floors)  # type: ignore[misc]


def domain_for(metric: str, kind: str | None = None, chance: float | None = None) -> Domain:
    """The domain of `metric`; `kind` and `chance` override what its name implies (for a
    score kind, `chance` is the floor). Raises UserError when the kind cannot be told."""
    k = kind or metric_kind(metric)
    if k is None:
        raise UserError(f"--kind: cannot tell the kind of {metric!r} from its name; pass --kind {'|'.join(KINDS)}")
    if k not in KINDS:
        raise UserError(f"--kind: unknown {k!r}; allowed: {', '.join(KINDS)}")
    if k == "loss":
        return Domain("loss", 0.0, float("inf"), None, -1.0 if metric.endswith(LOGPROBS) else 1.0)
    parts = metric.split("/")
    bench = parts[1] if len(parts) >= 3 and parts[0] == "eval" else ""
    mode = parts[2] if len(parts) >= 3 and parts[0] == "eval" else ""
    if k == "accuracy":
        if chance is not None:
            return Domain("accuracy", float(chance), 100.0, float(chance), source="given")
        c = chance_level(bench, mode) if bench else None
        if c is None:
            return Domain("accuracy", 0.0, 100.0, 0.0, source="chance unknown, 0 assumed")
        return Domain("accuracy", c, 100.0, c, source=f"{bench} random baseline")
    if chance is not None:
        return Domain("score", float(chance), 100.0, 0.0, source="given floor")
    floor, source = None, ""
    if metric.endswith("normalized_average"):
        suite = "paper" if metric == "eval/normalized_average" else (parts[1] if len(parts) == 3 else "")
        floor, source = average_floor(suite), f"all-wrong floor of the {suite} average"
    elif bench:
        floor, source = score_floor(bench, mode), f"all-wrong floor of {bench}"
    if floor is None:
        floor, source = DEFAULT_SCORE_FLOOR, "floor of a 2-choice benchmark, components unknown"
    return Domain("score", floor, 100.0, 0.0, source=source)
