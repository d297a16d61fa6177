"""Scores: per-task exact match, benchmark means, normalization (BBH per subtask) and the
normalized average, checked against hand-computed numbers; the flexible-extract twin of
every score; and the runner with a fake model."""

import random
from dataclasses import replace
from pathlib import Path

import pytest

from trainers.eval import benchmarks, loaders, prompts, runner, scoring
from trainers.spec import EvalConfig, UserError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"


def test_normalize_and_baselines():
    assert scoring.normalize(25.0, 25.0) == 0.0
    assert scoring.normalize(100.0, 25.0) == 100.0
    assert scoring.normalize(40.0, 25.0) == pytest.approx(20.0)
    assert scoring.normalize(10.0, 25.0) == pytest.approx(-20.0)
    assert scoring.baseline("bbh", "reasoning_about_colored_objects") == pytest.approx(100 / 18)
    assert scoring.baseline("bbh", "logical_deduction_seven_objects") == 14.3
    assert scoring.baseline("bbh", "navigate") == 50.0 and scoring.baseline("bbh", "dyck_languages") == 0.0
    assert len(loaders.BBH_BASELINES) == 27
    with pytest.raises(UserError, match="no random baseline for task 'nope'"):
        scoring.baseline("bbh", "nope")


def test_bbh_normalizes_each_subtask_with_its_own_baseline():
    s = scoring.aggregate("bbh", "direct", {"boolean_expressions": 75.0, "date_understanding": 50.0, "word_sorting": 30.0})
    assert s.score == pytest.approx((75 + 50 + 30) / 3)
    # 100(75-50)/50 = 50; 100(50-100/6)/(100-100/6) = 40; 30 -> 30.
    assert s.normalized == pytest.approx(40.0)
    # (Normalizing the mean against the mean baseline would give about 37.86 instead.)
    assert abs(s.normalized - scoring.normalize(s.score, (50 + 100 / 6) / 3)) > 2


def test_normalized_average_of_the_six_scores():
    scores = [
        scoring.aggregate("mmlu", "direct", {"a": 40.0, "b": 40.0}),  # -> 20
        scoring.aggregate("mmlu", "cot", {"a": 50.0, "b": 60.0}),  # mean 55 -> 40
        scoring.aggregate("bbh", "direct", {"boolean_expressions": 75.0, "date_understanding": 50.0, "word_sorting": 30.0}),  # 40
        scoring.aggregate("bbh", "cot", {"navigate": 100.0, "ruin_names": 100.0}),  # 100
        scoring.aggregate("tydiqa", "direct", {"ar": 20.0, "sw": 40.0}),  # 30
        scoring.aggregate("mgsm", "cot", {"de": 10.0}),  # 10
    ]
    m = scoring.metrics(scores)
    assert m["eval/mmlu/direct"] == pytest.approx(40.0) and m["eval/mmlu/direct/normalized"] == pytest.approx(20.0)
    assert m["eval/mmlu/cot/normalized"] == pytest.approx(40.0)
    assert m["eval/bbh/cot/normalized"] == pytest.approx(100.0)
    assert m["eval/normalized_average"] == pytest.approx((20 + 40 + 40 + 100 + 30 + 10) / 6)
    partial = scoring.metrics(scores[:5] + [scoring.aggregate("mgsm", "sc", {"de": 10.0})])
    assert "eval/normalized_average" not in partial and "eval/mgsm/sc" in partial


def test_score_outputs_missing_wrong_and_unknown():
    bench = loaders.load("mgsm", FIXTURES)
    outputs = {"de/0": ["... The answer is 18."], "de/1": ["The answer is 2125."], "zh/0": ["答案是 9。"]}
    s = scoring.score_outputs(bench, "cot", outputs)
    assert s.tasks == {"de": pytest.approx(200 / 3), "zh": 0.0}
    assert s.missing == 1 and s.score == pytest.approx(100 / 3)
    with pytest.raises(UserError, match=r"1 id\(s\) not in the mgsm data, e.g. 'fr/0'; ids look like \{lang\}/\{index\}"):
        scoring.score_outputs(bench, "cot", {"fr/0": ["1"]})
    sc = scoring.score_outputs(bench, "sc", {"de/2": ["The answer is -5.", "The answer is 5.", "it is -5"]})
    assert sc.tasks["de"] == pytest.approx(100 / 3)


def test_flex_score_beside_strict_in_metrics():
    bench = loaders.load("mmlu", FIXTURES)
    outputs = {"astronomy/test/0": [" A"], "astronomy/test/1": ["The answer is (B)."], "astronomy/test/2": ["c"],
               "virology/test/0": ["(A) 100"]}
    s = scoring.score_outputs(bench, "direct", outputs)
    assert s.mode == "direct" and s.flex is not None and s.flex.mode == "direct_flex"
    assert s.tasks == {"astronomy": pytest.approx(100 / 3), "virology": 100.0}
    assert s.flex.tasks["astronomy"] > s.tasks["astronomy"] and s.flex.tasks["virology"] == 100.0
    assert s.to_json()["flex"]["score"] == s.flex.score
    m = scoring.metrics([s])
    assert m["eval/mmlu/direct"] == s.score and m["eval/mmlu/direct_flex"] == s.flex.score
    assert m["eval/mmlu/direct_flex/normalized"] == pytest.approx(scoring.normalize(s.flex.score, 25.0))
    assert set(m) == {"eval/mmlu/direct", "eval/mmlu/direct/normalized", "eval/mmlu/direct_flex",
                      "eval/mmlu/direct_flex/normalized"}


def test_normalized_average_ignores_flex_scores():
    strict = [scoring.aggregate(b, mode, {t: 0.0 for t in ts}) for b, mode, ts in (
        ("mmlu", "direct", ["a"]), ("mmlu", "cot", ["a"]), ("bbh", "direct", ["navigate"]),
        ("bbh", "cot", ["navigate"]), ("tydiqa", "direct", ["sw"]), ("mgsm", "cot", ["de"]))]
    scores = [replace(s, flex=scoring.aggregate(s.benchmark, s.mode + "_flex", {t: 100.0 for t in s.tasks}))
              for s in strict]
    m = scoring.metrics(scores)
    assert m["eval/mgsm/cot_flex/normalized"] == pytest.approx(100.0)
    assert m["eval/normalized_average"] == pytest.approx((-100 / 3 * 2 - 100 - 100 + 0 + 0) / 6)


# Fragments of plausible and implausible outputs; the property below holds for any mix.
_PIECES = ["The answer is", "So the answer is", "answer:", "(A)", "(b)", "C", "c", "D Paris", "True", "true",
           "FALSE", "Yes", "no", "-5", "2,125", "1.000", "18", "7", "valid", "Nile", ".", "\n", " ", "Let's think.",
           "Die Antwort lautet", "答案是", "04/16/2021", "] ) }", "apple pear"]


def _random_output(rng: random.Random) -> str:
    return " ".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 8))).replace("\\n", "\n")


@pytest.mark.parametrize("name", benchmarks.names())
def test_flex_is_never_below_strict(name):
    """On any outputs, greedy or sampled, every task's flexible score >= its strict score."""
    bench = loaders.load(name).limited(4)
    rng = random.Random(name)
    examples = [ex for task in bench.tasks.values() for ex in task]
    for mode in (m for m in benchmarks.get(name).modes if m != "rc"):
        for trial in range(20):
            samples = 5 if mode == "sc" else 1
            outputs = {ex.id: [_random_output(rng) if rng.random() < 0.8 else f"So the answer is {ex.answers[0]}."
                               for _ in range(samples)] for ex in examples}
            s = scoring.score_outputs(bench, mode, outputs)
            for task, value in s.tasks.items():
                assert s.flex.tasks[task] >= value, (name, mode, trial, task)


def test_flex_vote_cannot_undo_a_strict_vote():
    """Lenient readings of the samples can outvote the strict winner; the example still
    counts for the flexible score, which is never below the strict one."""
    bench = loaders.load("mgsm", FIXTURES)
    samples = ["The answer is 2125. Then 7", "The answer is 2125. Then 7", "x 7"]
    ex = bench.by_id()["de/1"]  # gold 2,125
    assert scoring.answer_of("mgsm", "sc", ex, samples) == "2125"  # 2125 twice, 7 once
    assert scoring.flex_answer_of("mgsm", "sc", ex, samples) == "7"  # the last number: 7 three times
    assert scoring.judge("mgsm", "sc", ex, samples) == (True, True)
    assert scoring.judge("mgsm", "sc", ex, ["x 7", "The answer is 2125. Then 7"]) == (False, False)
    s = scoring.score_outputs(bench, "sc", {"de/1": samples})
    assert s.tasks["de"] == pytest.approx(100 / 3) and s.flex.tasks["de"] == pytest.approx(100 / 3)


def _oracle(bench):
    """A fake model that answers every prompt correctly, in the benchmark's answer style."""
    by_prompt = {}
    for ex in (e for task in bench.tasks.values() for e in task):
        for mode in _generative_modes(bench.name):
            by_prompt[prompts.prompt(bench, ex, mode)] = (mode, ex.answers[0])

    def generate(texts, *, num_samples=1, temperature=0.0, top_k=0, seed=0):
        out = []
        for t in texts:
            mode, answer = by_prompt[t]
            if mode == "direct":
                out.append([f" {answer}\n\nQ: invented follow-up"] * num_samples)
            else:
                wrong = [f"So the answer is wrong{i}." for i in range(num_samples // 2)]
                out.append(wrong + [f"Step. So the answer is {answer}."] * (num_samples - len(wrong)))
        return out
    return generate


def _generative_modes(name):
    return [m for m in benchmarks.get(name).modes if m != "rc"]


@pytest.mark.parametrize("name", benchmarks.names())
def test_runner_with_an_oracle_scores_100(name):
    bench = loaders.load(name).limited(3)
    cfg = EvalConfig(sc_samples=5)
    for mode in _generative_modes(name):
        run = runner.run_benchmark(bench, mode, _oracle(bench), cfg)
        assert run.score.score == pytest.approx(100.0), (name, mode)
        assert run.score.normalized == pytest.approx(100.0)
        assert run.score.flex.score == pytest.approx(100.0)
        assert set(run.outputs) == set(bench.by_id())
        assert all(len(o) == (5 if mode == "sc" else 1) for o in run.outputs.values())


def test_run_all_skips_modes_a_benchmark_lacks_and_rejects_unknown():
    cfg = EvalConfig(benchmarks=("tydiqa", "mgsm"), modes=("direct", "cot"), max_examples=2)
    calls = []

    def generate(texts, **kw):
        calls.append(len(texts))
        return [["nothing"] for _ in texts]
    metrics = runner.run_all(cfg, generate)
    assert calls == [2 * 3, 2 * 4, 2 * 4]  # tydiqa direct; mgsm direct and cot
    assert sorted(k for k in metrics if not k.endswith("/normalized")) == [
        "eval/mgsm/cot", "eval/mgsm/cot_flex", "eval/mgsm/direct", "eval/mgsm/direct_flex",
        "eval/tydiqa/direct", "eval/tydiqa/direct_flex"]
    assert all(v == 0.0 for v in metrics.values())
    with pytest.raises(UserError, match="eval.modes: unknown 'cott'"):
        runner.run_all(EvalConfig(benchmarks=("mgsm",), modes=("cott",)), generate)
    with pytest.raises(UserError, match="mode: 'cot' is not evaluated for tydiqa"):
        runner.check_mode("tydiqa", "cot")
