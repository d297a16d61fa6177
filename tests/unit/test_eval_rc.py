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


def _oracle(bench):
    """Knows every answer: the right option gets log-probability 0, the others -5."""
    gold = {}
    for task, examples in bench.tasks.items():
        choices = rc.task_options(bench, task) or {}
        for ex in examples:
            if ex.id in choices:
                c = choices[ex.id]
                gold[prompts.prompt(bench, ex, "rc")] = c.options[c.gold]

    def score(texts, options):
        return [[Scored(0.0 if o == gold[t] else -5.0, 1, len(o)) for o in opts] for t, opts in zip(texts, options)]

    return score


def _uniform(texts, options):
    # A model with equal probability for every token of a vocabulary of 4 letters: options of
    # equal token length get equal log-probabilities.
    return [[Scored(-len(o) * math.log(4), len(o), len(o)) for o in opts] for opts in options]


@pytest.mark.parametrize("name", ["mmlu", "bbh", "unseen_mc", "unseen_reasoning", "unseen_qa"])
def test_oracle_scores_100_and_uniform_scores_chance(name):
    bench = loaders.load(name)
    info = benchmarks.get(name)
    best = rc.run_rank(bench, _oracle(bench))
    assert best.rc.score == pytest.approx(100.0) and best.rc_norm.score == pytest.approx(100.0)
    assert best.rc.normalized == pytest.approx(100.0)
    assert best.logprob == 0.0
    # The oracle's gold option holds all but e^-5 of the mass among the options.
    assert -0.05 < best.choice_logprob < 0.0
    flat = rc.run_rank(bench, _uniform)
    ranked = {t for t in bench.tasks if rc.task_options(bench, t) is not None}
    assert ranked and set(flat.rc.tasks) == ranked
    for task, score in flat.rc.tasks.items():
        choices = rc.task_options(bench, task).values()
        expected = 100.0 * sum(1 / len(c.options) for c in choices) / len(choices)
        if all(len({len(o) for o in c.options}) == 1 for c in choices):
            assert score == pytest.approx(expected), task  # every option ties: 1/k credit each
        # Per character every option of a uniform model scores the same: exactly chance.
        assert flat.rc_norm.tasks[task] == pytest.approx(expected), task
    if name in ("mmlu", "unseen_mc", "unseen_qa"):
        assert flat.rc_norm.score == pytest.approx(info.chance_for("rc"))
        assert flat.rc_norm.normalized == pytest.approx(0.0)
    assert set(flat.metrics()) == {f"eval/{name}/{m}" for m in ("rc", "rc/normalized", "rc_norm", "rc_norm/normalized",
                                                                "rc_logprob", "rc_choice_logprob")}


def test_choice_logprob_is_minus_log_k_for_a_uniform_model_and_0_for_an_oracle():
    assert rc.choice_logprob([-3.0] * 4, 2) == pytest.approx(-math.log(4))
    assert rc.choice_logprob([0.0, -1e9, -1e9], 0) == pytest.approx(0.0)
    # Learning the format lifts every option alike: rc_logprob rises, rc_choice_logprob does not.
    assert rc.choice_logprob([-30.0, -31.0, -32.0], 1) == pytest.approx(rc.choice_logprob([-3.0, -4.0, -5.0], 1))
    # Over a benchmark: equal-length options of a uniform model score -log k per question.
    bench = loaders.load("unseen_mc")
    flat = rc.run_rank(bench, lambda texts, options: [[Scored(-1.0, 1, 1) for _ in o] for o in options])
    assert flat.choice_logprob == pytest.approx(-math.log(4))


def test_span_questions_rank_the_passages_candidates():
    qa = loaders.load("unseen_qa")
    for task, examples in qa.tasks.items():
        for ex in examples:
            c = rc.task_options(qa, task)[ex.id]
            assert len(c.options) == 4 and c.options[c.gold] == ex.answers[0]
            assert all(o in ex.context for o in c.options)  # every candidate is a span of the passage
    assert benchmarks.get("unseen_qa").chance_for("rc") == 25.0 and benchmarks.get("unseen_qa").chance == 0.0


def test_options_per_shape():
    mmlu = loaders.load("mmlu")
    task = next(iter(mmlu.tasks))
    for ex in mmlu.tasks[task]:  # the four choice texts, labelled by letter
        c = rc.task_options(mmlu, task)[ex.id]
        assert c.options == ex.choices and c.labels == ("A", "B", "C", "D") and c.labels[c.gold] == ex.answers[0]
    bbh = loaders.load("bbh")
    assert {c.options for c in rc.task_options(bbh, "boolean_expressions").values()} == {("False", "True")}
    for ex in bbh.tasks["date_understanding"]:
        c = rc.task_options(bbh, "date_understanding")[ex.id]
        assert c.labels[0] == "(A)" and c.labels[c.gold] == ex.answers[0]
        assert all(f"{label} {text}" in ex.question for label, text in zip(c.labels, c.options))
    for free_form in ("word_sorting", "multistep_arithmetic_two"):
        assert rc.task_options(bbh, free_form) is None
    tydiqa = loaders.load("tydiqa")
    assert rc.task_options(tydiqa, next(iter(tydiqa.tasks))) is None


def test_rc_prompts_answer_exemplars_by_text():
    mmlu = loaders.load("unseen_mc")
    ex = mmlu.tasks["addition"][0]
    direct, ranked = prompts.prompt(mmlu, ex, "direct"), prompts.prompt(mmlu, ex, "rc")
    shot = mmlu.shots["addition"][0]
    assert f"Answer: {shot.answer}\n" in direct
    assert f"Answer: {shot.choices['ABCD'.index(shot.answer)]}\n" in ranked
    assert direct.endswith("Answer:") and ranked.endswith("Answer:")


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
    assert "eval/unseen_qa/rc" in metrics  # the passage's candidate spans
    assert "eval/unseen_arith/rc" not in metrics  # arithmetic has no options
    assert "eval/unseen/normalized_average" in metrics and "eval/normalized_average" not in metrics
    # Without an option scorer rc is skipped, generation still runs.
    assert not any("/rc" in k for k in runner.run_all(cfg, generate))
