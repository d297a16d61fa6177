"""Scores: exact match per task, the unweighted benchmark mean, the normalized score against
each benchmark's random baseline, and the paper's normalized average of six scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from trainers.eval.extract import extract, gold, majority_vote
from trainers.eval.loaders import BBH_BASELINES, Benchmark, Example
from trainers.spec import UserError

# Random baselines in percent (PAPER.md section 5); BBH's are per subtask.
BASELINES = {"mmlu": 25.0, "tydiqa": 0.0, "mgsm": 0.0}
# The six scores of the paper's normalized average.
NORMALIZED_AVERAGE_OF = (
    ("mmlu", "direct"), ("mmlu", "cot"), ("bbh", "direct"), ("bbh", "cot"), ("tydiqa", "direct"), ("mgsm", "cot"),
)


def normalize(score: float, baseline: float) -> float:
    """100 x (s - r) / (100 - r): 0 at chance, 100 when perfect (negative below chance)."""
    return 100.0 * (score - baseline) / (100.0 - baseline)


def baseline(benchmark: str, task: str) -> float:
    if benchmark == "bbh":
        if task not in BBH_BASELINES:
            raise UserError(f"BBH: no random baseline for task {task!r}; known: {', '.join(sorted(BBH_BASELINES))}")
        return BBH_BASELINES[task]
    return BASELINES[benchmark]


@dataclass(frozen=True)
class Score:
    benchmark: str
    mode: str
    tasks: dict[str, float]  # percent per task
    score: float  # unweighted mean over tasks, percent
    normalized: float
    missing: int = 0  # examples without a prediction (counted wrong)

    def to_json(self) -> dict:
        return {"benchmark": self.benchmark, "mode": self.mode, "tasks": self.tasks,
                "score": self.score, "normalized": self.normalized}


def aggregate(benchmark: str, mode: str, task_scores: Mapping[str, float], missing: int = 0) -> Score:
    """Benchmark mean (unweighted over tasks) and its normalized score. BBH normalizes each
    subtask with its own baseline and averages those; for the others the baseline is one
    number, so normalizing the mean is the same as averaging normalized tasks."""
    if not task_scores:
        raise UserError(f"{benchmark}: no tasks to score")
    tasks = dict(sorted(task_scores.items()))
    mean = sum(tasks.values()) / len(tasks)
    normalized = sum(normalize(s, baseline(benchmark, t)) for t, s in tasks.items()) / len(tasks)
    return Score(benchmark, mode, tasks, mean, normalized, missing)


def is_correct(benchmark: str, ex: Example, answer: str | None) -> bool:
    return answer is not None and answer in gold(benchmark, ex.answers)


def answer_of(benchmark: str, mode: str, ex: Example, outputs: Sequence[str]) -> str | None:
    """One output -> its extracted answer; several samples -> the majority vote."""
    answers = [extract(benchmark, mode, o, ex.answers[0]) for o in outputs]
    return answers[0] if len(answers) == 1 else majority_vote(answers)


def score_outputs(bench: Benchmark, mode: str, outputs: Mapping[str, Sequence[str]]) -> Score:
    """Score raw model outputs keyed by example id (a list of samples each; one for greedy
    decoding). Examples without outputs count as wrong and are reported in `missing`."""
    known = bench.by_id()
    unknown = [i for i in outputs if i not in known]
    if unknown:
        sample = ", ".join(repr(u) for u in unknown[:3])
        raise UserError(f"predictions: {len(unknown)} id(s) not in the {bench.name} data, e.g. {sample}; "
                        f"ids look like {_id_hint(bench)}")
    task_scores, missing = {}, 0
    for task, examples in bench.tasks.items():
        right = 0
        for ex in examples:
            if ex.id not in outputs or not outputs[ex.id]:
                missing += 1
                continue
            right += is_correct(bench.name, ex, answer_of(bench.name, mode, ex, outputs[ex.id]))
        task_scores[task] = 100.0 * right / len(examples) if examples else 0.0
    return aggregate(bench.name, mode, task_scores, missing)


def _id_hint(bench: Benchmark) -> str:
    first = next((ex[0].id for ex in bench.tasks.values() if ex), "")
    form = {"mmlu": "{subject}/{split}/{row}", "bbh": "{task}/{index}", "mgsm": "{lang}/{index}",
            "tydiqa": "the question's id"}[bench.name]
    return f"{form} ({first!r})"


def metrics(scores: Sequence[Score]) -> dict[str, float]:
    """Flat metric dict: eval/<benchmark>/<mode> and .../normalized, plus
    eval/normalized_average when all six of the paper's scores are present."""
    out: dict[str, float] = {}
    for s in scores:
        out[f"eval/{s.benchmark}/{s.mode}"] = s.score
        out[f"eval/{s.benchmark}/{s.mode}/normalized"] = s.normalized
    avg = normalized_average({(s.benchmark, s.mode): s.normalized for s in scores})
    if avg is not None:
        out["eval/normalized_average"] = avg
    return out


def normalized_average(normalized: Mapping[tuple[str, str], float]) -> float | None:
    """Macro-average of the six normalized scores; None unless all six are given."""
    if not all(k in normalized for k in NORMALIZED_AVERAGE_OF):
        return None
    return sum(normalized[k] for k in NORMALIZED_AVERAGE_OF) / len(NORMALIZED_AVERAGE_OF)
