"""Scores: per-task exact match, benchmark means, normalization (BBH per subtask) and the
normalized average, checked against hand-computed numbers; and the runner with a fake model."""

from pathlib import Path

import pytest

from trainers.eval import loaders, prompts, runner, scoring
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


def _oracle(bench):
    """A fake model that answers every prompt correctly, in the benchmark's answer style."""
    by_prompt = {}
    for ex in (e for task in bench.tasks.values() for e in task):
        for mode in prompts.MODES[bench.name]:
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


@pytest.mark.parametrize("name", loaders.BENCHMARKS)
def test_runner_with_an_oracle_scores_100(name):
    bench = loaders.load(name).limited(3)
    cfg = EvalConfig(sc_samples=5)
    for mode in prompts.MODES[name]:
        run = runner.run_benchmark(bench, mode, _oracle(bench), cfg)
        assert run.score.score == pytest.approx(100.0), (name, mode)
        assert run.score.normalized == pytest.approx(100.0)
        assert set(run.outputs) == set(bench.by_id())
        assert all(len(o) == (5 if mode == "sc" else 1) for o in run.outputs.values())


def test_run_all_skips_modes_a_benchmark_lacks_and_rejects_unknown():
    cfg = EvalConfig(benchmarks=("tydiqa", "mgsm"), modes=("direct", "cot"), max_examples=2)
    calls = []

    def generate(texts, **kw):
        calls.append(len(texts))
        return [["nothing"] for _ in texts]
    runs = runner.run_all(cfg, generate)
    assert [(r.score.benchmark, r.score.mode) for r in runs] == [("tydiqa", "direct"), ("mgsm", "direct"), ("mgsm", "cot")]
    assert all(r.score.score == 0.0 for r in runs)
    with pytest.raises(UserError, match="eval.modes: unknown 'cott'"):
        runner.run_all(EvalConfig(benchmarks=("mgsm",), modes=("cott",)), generate)
    with pytest.raises(UserError, match="mode: 'cot' is not evaluated for tydiqa"):
        runner.check_mode("tydiqa", "cot")
