"""Rank classification's options and scores, with scorers whose answers are known: an oracle
scores 100, a model that cannot tell options apart scores exactly chance."""

import math
from dataclasses import dataclass

import pytest

from trainers.eval import benchmarks, loaders, prompts, rc, runner
from trainers.spec import EvalConfig, UserError


@dataclass(frozen=True)
class Scored:
    logprob: float
    num_tokens: int
    num_chars: int


def _gold_by_prompt(bench):
    return {prompts.prompt(bench, ex, "rc"): ex.answers[0] for task in bench.tasks.values() for ex in task}


def _oracle(bench):
    gold = _gold_by_prompt(bench)

    def score(texts, options):
        return [[Scored(0.0 if o == gold[t] else -5.0, 1, len(o)) for o in opts] for t, opts in zip(texts, options)]

    return score


def _uniform(texts, options):
    # A model with equal probability for every token of a vocabulary of 4 letters: options of
    # equal token length get equal log-probabilities.
    return [[Scored(-len(o) * math.log(4), len(o), len(o)) for o in opts] for opts in options]


@pytest.mark.parametrize("name", ["mmlu", "bbh", "unseen_mc", "unseen_reasoning"])
def test_oracle_scores_100_and_uniform_scores_chance(name):
    bench = loaders.load(name)
    info = benchmarks.get(name)
    best = rc.run_rank(bench, _oracle(bench))
    assert best.rc.score == pytest.approx(100.0) and best.rc_norm.score == pytest.approx(100.0)
    assert best.rc.normalized == pytest.approx(100.0)
    assert best.logprob == 0.0
    flat = rc.run_rank(bench, _uniform)
    ranked = {t for t in bench.tasks if rc.task_options(bench, t) is not None}
    assert ranked and set(flat.rc.tasks) == ranked
    for task, score in flat.rc.tasks.items():
        opts = rc.task_options(bench, task)
        equal_length = all(len({len(o) for o in v}) == 1 for v in opts.values())
        if equal_length:  # every option ties: exactly 1/k credit per question
            expected = 100.0 * sum(1 / len(v) for v in opts.values()) / len(opts)
            assert score == pytest.approx(expected), task
        assert flat.rc_norm.tasks[task] == pytest.approx(
            100.0 * sum(1 / len(v) for v in opts.values()) / len(opts)), task
    if name in ("mmlu", "unseen_mc"):
        assert flat.rc.score == pytest.approx(info.chance) and flat.rc.normalized == pytest.approx(0.0)
    assert set(flat.metrics()) == {f"eval/{name}/{m}" for m in
                                   ("rc", "rc/normalized", "rc_norm", "rc_norm/normalized", "rc_logprob")}


def test_options_per_shape():
    mmlu = loaders.load("mmlu")
    task = next(iter(mmlu.tasks))
    assert set(rc.task_options(mmlu, task).values()) == {("A", "B", "C", "D")}
    bbh = loaders.load("bbh")
    assert set(rc.task_options(bbh, "boolean_expressions").values()) == {("False", "True")}
    letters = rc.task_options(bbh, "date_understanding")
    assert all(v[0] == "(A)" and len(v) >= 2 for v in letters.values())
    for free_form in ("word_sorting", "multistep_arithmetic_two"):
        assert rc.task_options(bbh, free_form) is None
    assert rc.task_options(loaders.load("tydiqa"), next(iter(loaders.load("tydiqa").tasks))) is None


def test_rc_is_refused_where_there_are_no_options():
    with pytest.raises(UserError, match="'rc' is not evaluated for tydiqa"):
        rc.run_rank(loaders.load("tydiqa"), _uniform)
    with pytest.raises(UserError, match="'rc' is not evaluated for mgsm"):
        runner.check_mode("mgsm", "rc")


def test_run_all_runs_rc_beside_generation_and_the_unseen_average():
    cfg = EvalConfig(benchmarks=tuple(benchmarks.SUITES["unseen"].values()), modes=("direct", "cot", "rc"),
                     max_examples=2, loss=False)

    def generate(texts, **kw):
        return [["So the answer is (A)."] for _ in texts]

    metrics = runner.run_all(cfg, generate, _uniform)
    assert "eval/unseen_mc/rc" in metrics and "eval/unseen_reasoning/rc_logprob" in metrics
    assert "eval/unseen_qa/rc" not in metrics  # extractive QA has no options
    assert "eval/unseen/normalized_average" in metrics and "eval/normalized_average" not in metrics
    # Without an option scorer rc is skipped, generation still runs.
    assert not any("/rc" in k for k in runner.run_all(cfg, generate))
