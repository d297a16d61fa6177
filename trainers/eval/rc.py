"""Rank classification (mode `rc`): the answer options of a multiple-choice question and the
scores read from their log-probabilities. JAX-free; the log-probabilities come from
`trainers.eval.rank.OptionScorer` (or anything with its signature).

Options are what a model fine-tuned on direct answers would write after the direct prompt:
MMLU's letters A-D; for BBH-shaped subtasks whose targets are option letters, the "(X)"
letters listed in the question's "Options:" block; for subtasks with a small fixed answer set
(True/False, Yes/No, valid/invalid, ...) that set. Free-form subtasks (word sorting, Dyck
languages, arithmetic, counting) have no options and are left out of rc.

Three scores, as lm-evaluation-harness reports them: `rc` (accuracy of the option with the
highest summed log-probability), `rc_norm` (accuracy after dividing each option's
log-probability by its length in characters, which removes the bias towards short options),
and `rc_logprob`, the mean log-probability of the correct option, a continuous measure
that moves before accuracy does and that scaling fits can use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, Sequence

from trainers.eval import benchmarks, prompts
from trainers.eval.loaders import MMLU_LETTERS, Benchmark, Example
from trainers.eval.scoring import Score, aggregate
from trainers.spec import UserError

# A subtask whose targets take more distinct values than this is free-form, not multiple choice.
MAX_FIXED_OPTIONS = 8
_OPTION_LINE = re.compile(r"^\(([A-R])\)", re.MULTILINE)
_LETTER_TARGET = re.compile(r"^\(([A-R])\)$")


class OptionScores(Protocol):
    logprob: float
    num_tokens: int
    num_chars: int


class ScoreOptions(Protocol):
    def __call__(self, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[list[OptionScores]]: ...


def task_options(bench: Benchmark, task: str) -> dict[str, tuple[str, ...]] | None:
    """Example id -> its answer options, for every example of `task`; None when the task is
    not multiple choice (then rc skips it)."""
    examples = bench.tasks[task]
    if bench.shape == "mmlu":
        return {ex.id: MMLU_LETTERS[: len(ex.choices)] for ex in examples}
    if bench.shape != "bbh" or not examples:
        return None
    targets = [ex.answers[0].strip() for ex in examples]
    if all(_LETTER_TARGET.match(t) for t in targets):
        out = {}
        for ex in examples:
            letters = tuple(dict.fromkeys(_OPTION_LINE.findall(ex.question)))
            if ex.answers[0].strip()[1] not in letters:
                return None  # the question does not list its options: not rankable
            out[ex.id] = tuple(f"({x})" for x in letters)
        return out
    fixed = sorted(set(targets))
    if len(fixed) > MAX_FIXED_OPTIONS or benchmarks.get(bench.name).baseline(task) == 0.0:
        return None
    return {ex.id: tuple(fixed) for ex in examples}


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
    chosen: dict[str, tuple[str, str]]  # example id -> (rc choice, rc_norm choice)

    def metrics(self) -> dict[str, float]:
        b = self.rc.benchmark
        return {
            f"eval/{b}/rc": self.rc.score, f"eval/{b}/rc/normalized": self.rc.normalized,
            f"eval/{b}/rc_norm": self.rc_norm.score, f"eval/{b}/rc_norm/normalized": self.rc_norm.normalized,
            f"eval/{b}/rc_logprob": self.logprob,
        }


def run_rank(bench: Benchmark, score_options: ScoreOptions) -> RankResult:
    """Score every option of every multiple-choice example of `bench` and aggregate per task
    (unweighted over tasks, BBH-shaped subtasks normalized by their own baselines)."""
    if "rc" not in benchmarks.get(bench.name).modes:
        raise UserError(f"mode: 'rc' is not evaluated for {bench.name}; it needs multiple-choice answers")
    items: list[tuple[str, Example, tuple[str, ...]]] = []
    for task in bench.tasks:
        opts = task_options(bench, task)
        if opts is not None:
            items.extend((task, ex, opts[ex.id]) for ex in bench.tasks[task])
    if not items:
        raise UserError(f"{bench.name}: no multiple-choice task to rank-classify")
    texts = [prompts.prompt(bench, ex, "rc") for _, ex, _ in items]
    scored = score_options(texts, [o for _, _, o in items])
    right: dict[str, list[float]] = {}
    right_norm: dict[str, list[float]] = {}
    logprobs: dict[str, list[float]] = {}
    chosen: dict[str, tuple[str, str]] = {}
    for (task, ex, opts), scores in zip(items, scored):
        gold = opts.index(ex.answers[0].strip())
        summed = [s.logprob for s in scores]
        per_char = [s.logprob / max(s.num_chars, 1) for s in scores]
        right.setdefault(task, []).append(_credit(summed, gold))
        right_norm.setdefault(task, []).append(_credit(per_char, gold))
        logprobs.setdefault(task, []).append(scores[gold].logprob)
        chosen[ex.id] = (opts[summed.index(max(summed))], opts[per_char.index(max(per_char))])
    pct = lambda xs: 100.0 * sum(xs) / len(xs)  # noqa: E731
    rc = aggregate(bench.name, "rc", {t: pct(v) for t, v in right.items()})
    rc_norm = aggregate(bench.name, "rc_norm", {t: pct(v) for t, v in right_norm.items()})
    mean_lp = sum(sum(v) / len(v) for v in logprobs.values()) / len(logprobs)
    return RankResult(rc, rc_norm, mean_lp, chosen)
