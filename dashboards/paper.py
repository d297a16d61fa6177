"""The paper's held-out results (Chung et al. 2022, Table 5), shipped as data, so a sweep of
the paper's presets can be read beside the paper and `flanscale fit` can fit the paper's points.

`data/paper_table5.csv`: one row per model of Table 5 (the base model and its Flan
finetuning for each of the ten sizes), with the flanscale preset it corresponds to, its
family, the size the paper names, the six scores and the normalized average, in percent.
Table 5's MMLU figures are the validation split's (the test-set figures of Table 4 differ).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from trainers.spec import TASK_LADDER
from trainers.eval import benchmarks

TABLE5 = Path(__file__).parent / "data" / "paper_table5.csv"
# `flanscale fit paper:table5 ...` reads the shipped table.
TABLE5_ALIAS = "paper:table5"
# Table 5's columns by the metric name a sweep logs for them: the normalized average and its
# members as the benchmark registry declares them ("mmlu_direct" for eval/mmlu/direct).
METRIC_COLUMNS = {
    benchmarks.average_metric("paper"): "norm_avg",
    **{f"eval/{b}/{m}": f"{b}_{m}" for b, m in benchmarks.average_members("paper")},
}
SCORE_COLUMNS = tuple(METRIC_COLUMNS.values())
COLUMN_METRICS = {c: m for m, c in METRIC_COLUMNS.items()}
# The paper's finetuned models were trained on the full mixture.
PAPER_TASKS = TASK_LADDER[-1]


@dataclass(frozen=True)
class Row:
    model: str  # the paper's name (T5-XL, Flan-T5-XL, ...)
    preset: str  # flanscale's preset of the same architecture
    family: str
    finetuned: bool
    size: str  # as the paper names it (80M, 3B, 540B)
    params: float
    scores: dict[str, float]  # column -> percent

    @property
    def task_count(self) -> int:
        return PAPER_TASKS if self.finetuned else 0


@lru_cache(maxsize=1)
def table5() -> tuple[Row, ...]:
    with TABLE5.open(newline="", encoding="utf-8") as f:
        return tuple(Row(r["model"], r["preset"], r["family"], r["finetuned"] == "yes", r["size"], float(r["params"]),
                         {c: float(r[c]) for c in SCORE_COLUMNS}) for r in csv.DictReader(f))


def presets() -> set[str]:
    return {r.preset for r in table5()}


@dataclass(frozen=True)
class PaperPoint:
    preset: str
    label: str  # "Flan-T5-XL (paper)"
    finetuned: bool
    value: float


def overlay(metric: str, sweep_presets: set[str] | list[str]) -> list[PaperPoint]:
    """The paper's values of `metric` for the sweep's presets that are paper presets (none
    when the metric is not one of Table 5's columns)."""
    col = METRIC_COLUMNS.get(metric)
    wanted = set(sweep_presets) & presets()
    if col is None or not wanted:
        return []
    return [PaperPoint(r.preset, f"{r.model} (paper)", r.finetuned, r.scores[col]) for r in table5() if r.preset in wanted]
