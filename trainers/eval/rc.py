"""Rank classification (mode `rc`): the answer options of a multiple-choice question and the
scores read from their log-probabilities. JAX-free; the log-probabilities come from
`trainers.eval.rank.OptionScorer` (or anything with its signature).

Options are scored by their content, as Flan's `*_opt` formats train a model to answer (the
option's text, never a letter); each shape lists them (`Shape.rc_options`): MMLU's four choice
texts; for BBH-shaped subtasks whose targets are option letters, the texts of the "(X) ..."
lines listed in the question; for subtasks with a small fixed answer set (True/False, Yes/No,
valid/invalid, ...) that set; a span question's candidate spans. The prompt is the direct
few-shot prompt with its exemplars answered by text too (`Shape.rc_prompt`).
Scoring letters instead measures little below the scale where models map letters to options:
a small model prefers one letter whatever the question, which on balanced answers is exactly
chance. A choice is still reported by its label (letter), so rc predictions score as direct
answers. Free-form subtasks (word sorting, Dyck languages, arithmetic, counting) have no
options and are left out of rc.

Three scores, as lm-evaluation-harness reports them: `rc` (accuracy of the option with the
highest summed log-probability), `rc_norm` (accuracy after dividing each option's
log-probability by its length in characters, which removes the bias towards short options),
`rc_logprob`, the mean log-probability of the correct option, a continuous measure that moves
before accuracy does and that scaling fits can use, and `rc_choice_logprob`, the mean
log-probability of the correct option *among the options* (chance: -log k). `rc_logprob` rises
as much when a model learns the answer format (every option likelier) as when it learns to
tell options apart; `rc_choice_logprob` rises only with the latter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

from trainers.eval import benchmarks, prompts
from trainers.eval.scoring import Score, aggregate
from trainers.eval.shapes.base import Benchmark, Choices, Example
from trainers.spec import UserError


class OptionScores(Protocol):
    logprob: float
    num_tokens: int
    num_chars: int


class ScoreOptions(Protocol):
    def __call__(self, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[list[OptionScores]]: ...


def task_options(bench: Benchmark, task: str) -> dict[str, Choices] | None:
    """Example id -> its choices, for every example of `task`; None when the task is not
    multiple choice (then rc skips it). The benchmark's shape lists them (`Shape.rc_options`)."""
    return bench.shape.rc_options(bench, task)


def _credit(values: list[float], gold: int) -> float:
    """1 when the gold option alone scores highest; 1/m when it ties with m-1 others for the
    highest score (the expected accuracy of breaking the tie at random), so a model that
    cannot tell the options apart scores exactly chance instead of "always the first"."""
    best = max(values)
    tied = [i for i, v in enumerate(values) if v == best]
    return 1.0 / len(tied) if gold in tied else 0.0


@dataclass(frozen=True)
class RankResult:
    rc: Score
    rc_norm: Score
    logprob: float  # mean over tasks of the mean log-probability of the correct option
    choice_logprob: float  # the same for log P(correct | one of the options): log-softmax over the options
    chosen: dict[str, tuple[str, str]]  # example id -> labels of the (rc, rc_norm) choices

    def metrics(self) -> dict[str, float]:
        b = self.rc.benchmark
        return {
            f"eval/{b}/rc": self.rc.score, f"eval/{b}/rc/normalized": self.rc.normalized,
            f"eval/{b}/rc_norm": self.rc_norm.score, f"eval/{b}/rc_norm/normalized": self.rc_norm.normalized,
            f"eval/{b}/rc_logprob": self.logprob, f"eval/{b}/rc_choice_logprob": self.choice_logprob,
        }


def run_rank(bench: Benchmark, score_options: ScoreOptions) -> RankResult:
    """Score every option of every multiple-choice example of `bench` and aggregate per task
    (unweighted over tasks, BBH-shaped subtasks normalized by their own baselines)."""
    if "rc" not in benchmarks.get(bench.name).modes:
        raise UserError(f"mode: 'rc' is not evaluated for {bench.name}; it needs multiple-choice answers")
    items: list[tuple[str, Example, Choices]] = []
    for task in bench.tasks:
        choices = task_options(bench, task)
        if choices is not None:
            items.extend((task, ex, choices[ex.id]) for ex in bench.tasks[task])
    if not items:
        raise UserError(f"{bench.name}: no multiple-choice task to rank-classify")
    texts = [prompts.prompt(bench, ex, "rc") for _, ex, _ in items]
    scored = score_options(texts, [c.options for _, _, c in items])
    right: dict[str, list[float]] = {}
    right_norm: dict[str, list[float]] = {}
    logprobs: dict[str, list[float]] = {}
    choice_logprobs: dict[str, list[float]] = {}
    chosen: dict[str, tuple[str, str]] = {}
    for (task, ex, c), scores in zip(items, scored):
        summed = [s.logprob for s in scores]
        per_char = [s.logprob / max(s.num_chars, 1) for s in scores]
        right.setdefault(task, []).append(_credit(summed, c.gold))
        right_norm.setdefault(task, []).append(_credit(per_char, c.gold))
        logprobs.setdefault(task, []).append(scores[c.gold].logprob)
        choice_logprobs.setdefault(task, []).append(choice_logprob(summed, c.gold))
        chosen[ex.id] = (c.labels[summed.index(max(summed))], c.labels[per_char.index(max(per_char))])
    pct = lambda xs: 100.0 * sum(xs) / len(xs)  # noqa: E731
    rc = aggregate(bench.name, "rc", {t: pct(v) for t, v in right.items()})
    rc_norm = aggregate(bench.name, "rc_norm", {t: pct(v) for t, v in right_norm.items()})
    return RankResult(rc, rc_norm, _task_mean(logprobs), _task_mean(choice_logprobs), chosen)


def _task_mean(per_task: dict[str, list[float]]) -> float:
    """The unweighted mean over tasks of each task's mean."""
    return sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)


def choice_logprob(summed: Sequence[float], gold: int) -> float:
    """log P(gold | the options): the gold option's summed log-probability, log-softmaxed over
    the options'. A model that cannot tell the options apart scores exactly -log(k), one that
    puts all the mass on the gold option 0; unlike `rc_logprob` it does not rise when the model
    merely learns the answer format and every option becomes likelier."""
    top = max(summed)
    return summed[gold] - (top + math.log(sum(math.exp(v - top) for v in summed)))
