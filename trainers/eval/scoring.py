"""Scores: exact match per task, the unweighted benchmark mean, the normalized score against
each benchmark's random baseline, and the paper's normalized average of six scores.

Every generative score comes with its flexible-extract twin (`Score.flex`, mode
"<mode>_flex"), read from the same outputs by the shape's `flex`: an example counts for it when
the strict reading or the flexible one finds a gold answer, so it is never below the strict
score. The normalized averages use the strict scores, as the paper's tables do."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from trainers.eval import benchmarks
from trainers.eval.extract import majority_vote
from trainers.eval.shapes.base import Benchmark, Example, Shape
from trainers.spec import UserError


def normalize(score: float, baseline: float) -> float:
    """100 x (s - r) / (100 - r): 0 at chance, 100 when perfect (negative below chance)."""
    return 100.0 * (score - baseline) / (100.0 - baseline)


def baseline(benchmark: str, task: str, mode: str = "") -> float:
    """Random baseline in percent of one task of a registered benchmark, scored in `mode`."""
    return benchmarks.get(benchmark).baseline(task, mode)


@dataclass(frozen=True)
class Score:
    benchmark: str
    mode: str
    tasks: dict[str, float]  # percent per task
    score: float  # unweighted mean over tasks, percent
    normalized: float
    missing: int = 0  # examples without a prediction (counted wrong)
    flex: Score | None = None  # the flexible-extract score of the same outputs

    def to_json(self) -> dict:
        out = {"benchmark": self.benchmark, "mode": self.mode, "tasks": self.tasks,
               "score": self.score, "normalized": self.normalized}
        if self.flex is not None:
            out["flex"] = {"tasks": self.flex.tasks, "score": self.flex.score, "normalized": self.flex.normalized}
        return out


def aggregate(benchmark: str, mode: str, task_scores: Mapping[str, float], missing: int = 0) -> Score:
    """Benchmark mean (unweighted over tasks) and its normalized score. BBH normalizes each
    subtask with its own baseline and averages those; for the others the baseline is one
    number, so normalizing the mean is the same as averaging normalized tasks."""
    if not task_scores:
        raise UserError(f"{benchmark}: no tasks to score")
    tasks = dict(sorted(task_scores.items()))
    mean = sum(tasks.values()) / len(tasks)
    normalized = sum(normalize(s, baseline(benchmark, t, mode)) for t, s in tasks.items()) / len(tasks)
    return Score(benchmark, mode, tasks, mean, normalized, missing)


def is_correct(shape: Shape | str, ex: Example, answer: str | None) -> bool:
    return answer is not None and answer in benchmarks.shape(shape).gold(ex)


def answer_of(shape: Shape | str, mode: str, ex: Example, outputs: Sequence[str]) -> str | None:
    """One output -> its extracted answer; several samples -> the majority vote."""
    answers = [benchmarks.shape(shape).extract(mode, o, ex) for o in outputs]
    return answers[0] if len(answers) == 1 else majority_vote(answers)


def flex_answer_of(shape: Shape | str, mode: str, ex: Example, outputs: Sequence[str]) -> str | None:
    """`answer_of` with the flexible reading."""
    answers = [benchmarks.shape(shape).flex(mode, o, ex) for o in outputs]
    return answers[0] if len(answers) == 1 else majority_vote(answers)


def judge(shape: Shape | str, mode: str, ex: Example, outputs: Sequence[str]) -> tuple[bool, bool]:
    """(strict, flexible) correctness of one example's outputs under `shape` (a Shape or a
    registered shape's name). The flexible one also holds whenever the strict one does: a
    self-consistency vote over lenient readings can move away from the answer the strict vote
    found, and a lenient score must not fall below the strict one."""
    shape = benchmarks.shape(shape)
    strict = is_correct(shape, ex, answer_of(shape, mode, ex, outputs))
    lenient = flex_answer_of(shape, mode, ex, outputs)
    return strict, strict or (lenient is not None and lenient in shape.flex_gold(ex))


def score_outputs(bench: Benchmark, mode: str, outputs: Mapping[str, Sequence[str]]) -> Score:
    """Score raw model outputs keyed by example id (a list of samples each; one for greedy
    decoding). Examples without outputs count as wrong and are reported in `missing`. The
    strict score carries the flexible-extract score of the same outputs in `.flex`."""
    known = bench.by_id()
    unknown = [i for i in outputs if i not in known]
    if unknown:
        sample = ", ".join(repr(u) for u in unknown[:3])
        raise UserError(f"predictions: {len(unknown)} id(s) not in the {bench.name} data, e.g. {sample}; "
                        f"ids look like {_id_hint(bench)}")
    task_scores, flex_scores, missing = {}, {}, 0
    for task, examples in bench.tasks.items():
        right = lenient = 0
        for ex in examples:
            if ex.id not in outputs or not outputs[ex.id]:
                missing += 1
                continue
            strict_ok, flex_ok = judge(bench.shape, mode, ex, outputs[ex.id])
            right += strict_ok
            lenient += flex_ok
        task_scores[task] = 100.0 * right / len(examples) if examples else 0.0
        flex_scores[task] = 100.0 * lenient / len(examples) if examples else 0.0
    flexible = aggregate(bench.name, f"{mode}_flex", flex_scores, missing)
    return replace(aggregate(bench.name, mode, task_scores, missing), flex=flexible)


def _id_hint(bench: Benchmark) -> str:
    first = next((ex[0].id for ex in bench.tasks.values() if ex), "")
    return f"{bench.shape.id_form} ({first!r})"


def metrics(scores: Sequence[Score]) -> dict[str, float]:
    """Flat metric dict: eval/<benchmark>/<mode> and .../normalized, the same for each
    score's flexible twin (eval/<benchmark>/<mode>_flex), plus each suite's normalized
    average (eval/normalized_average for the paper's) when all six of its strict scores
    are present."""
    out: dict[str, float] = {}
    for s in scores:
        for part in (s, s.flex):
            if part is not None:
                out[f"eval/{part.benchmark}/{part.mode}"] = part.score
                out[f"eval/{part.benchmark}/{part.mode}/normalized"] = part.normalized
    normalized = {(s.benchmark, s.mode): s.normalized for s in scores}
    for suite in benchmarks.SUITES:
        avg = normalized_average(normalized, suite)
        if avg is not None:
            out[benchmarks.average_metric(suite)] = avg
    return out


def normalized_average(normalized: Mapping[tuple[str, str], float], suite: str = "paper") -> float | None:
    """Macro-average of a suite's six normalized scores (the paper's: MMLU and BBH direct
    and CoT, TyDiQA direct, MGSM CoT); None unless all six are given."""
    members = benchmarks.average_members(suite)
    if not all(k in normalized for k in members):
        return None
    return sum(normalized[k] for k in members) / len(members)
