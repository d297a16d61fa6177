"""Benchmark loaders on fixtures in the public releases' formats, and their error messages."""

from pathlib import Path

import pytest

from trainers.eval import benchmarks, loaders, prompts
from trainers.spec import UserError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"


def test_mmlu_csv_quoting_ids_and_dev_shots():
    bench = loaders.load("mmlu", FIXTURES)
    assert list(bench.tasks) == ["astronomy", "virology"]
    first, second, third = bench.tasks["astronomy"]
    assert first.id == "astronomy/test/0"
    assert first.question == 'What is true for a type-Ia ("type one-a") supernova?'
    assert first.answers == ("A",)
    assert second.question.endswith("you can find:") and "," in second.question
    # A quoted field may hold commas and a newline.
    assert third.question == "Which statement is true?\n(Consider both lines.)"
    assert third.choices == ("1,000 km", "two", "three, four", "five") and third.answers == ("C",)
    assert len(bench.shots["astronomy"]) == 5
    assert bench.shots["astronomy"][4].choices[0] == 'Because the surface is covered with heavily oxidized ("rusted") minerals.'
    assert bench.cot_shots == {}


def test_mmlu_val_split_and_direct_prompt():
    val = loaders.load_mmlu(FIXTURES / "mmlu", split="val")
    assert val.tasks["astronomy"][0].id == "astronomy/val/0"
    bench = loaders.load("mmlu", FIXTURES)
    text = prompts.prompt(bench, bench.tasks["virology"][0], "direct")
    assert text.startswith("The following are multiple choice questions (with answers) about virology.\n\n")
    assert text.count("\nAnswer: ") == 5
    assert text.endswith("How many human polyomaviruses are known at present?\nA. 100\nB. 1\nC. 10\nD. unknown\nAnswer:")
    cot = prompts.prompt(bench, bench.tasks["virology"][0], "cot")
    assert cot.endswith("A: Let's think step by step.") and cot.count("So the answer is (") == 5


@pytest.mark.parametrize("row, message", [
    ("only,four,columns,here\n", "expected 6 CSV columns"),
    ("q,a,b,c,d,E\n", "answer 'E' is not one of A, B, C, D"),
])
def test_mmlu_malformed_rows_name_file_and_line(tmp_path, row, message):
    for split in ("dev", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
    (tmp_path / "data" / "dev" / "x_dev.csv").write_text("q,a,b,c,d,A\n")
    (tmp_path / "data" / "test" / "x_test.csv").write_text("q,a,b,c,d,B\n" + row)
    with pytest.raises(UserError, match=rf"x_test\.csv:2: {message}"):
        loaders.load("mmlu", tmp_path)


def test_mmlu_missing_dev_file(tmp_path):
    for split in ("dev", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
    (tmp_path / "data" / "test" / "x_test.csv").write_text("q,a,b,c,d,B\n")
    with pytest.raises(UserError, match="x_dev.csv is missing"):
        loaders.load("mmlu", tmp_path)


def test_bbh_targets_of_every_style_and_cot_prompts():
    bench = loaders.load("bbh", FIXTURES)
    targets = {t: ex[0].answers[0] for t, ex in bench.tasks.items()}
    assert targets == {
        "boolean_expressions": "False", "date_understanding": "(B)", "formal_fallacies": "invalid",
        "multistep_arithmetic_two": "24", "word_sorting": "syndrome therefrom"}
    assert bench.tasks["multistep_arithmetic_two"][3].answers == ("-35",)
    assert bench.tasks["date_understanding"][1].id == "date_understanding/1"
    shots = bench.cot_shots["date_understanding"]
    assert [s.answer for s in shots] == ["(D)", "(B)", "(B)"]
    assert shots[0].question.startswith("Today is Christmas Eve of 1937.") and "\n(F) 12/14/1988" in shots[0].question
    assert shots[0].rationale.startswith("Let's think step by step.\nIf today is")
    assert bench.descriptions["date_understanding"] == "Infer the date from context."
    assert [s.answer for s in bench.cot_shots["multistep_arithmetic_two"]] == ["123", "3929", "-219"]
    assert [s.answer for s in bench.cot_shots["word_sorting"]][0] == "costume counterpart oven"


def test_bbh_prompts_direct_drops_rationale():
    bench = loaders.load("bbh", FIXTURES)
    ex = bench.tasks["boolean_expressions"][0]
    direct = prompts.prompt(bench, ex, "direct")
    assert direct == ("Evaluate the result of a random Boolean expression.\n\n"
                      "Q: not ( ( not not True ) ) is\nA: False\n\n"
                      "Q: True and False and not True and True is\nA: False\n\n"
                      "Q: not not ( not ( False ) ) is\nA: True\n\n"
                      "Q: not ( True ) and ( True ) is\nA:")
    cot = prompts.prompt(bench, ex, "cot")
    assert cot.count("Let's think step by step.") == 4 and "Plugging in A" in cot
    assert cot.endswith("Q: not ( True ) and ( True ) is\nA: Let's think step by step.")
    assert prompts.prompt(bench, ex, "sc") == cot


def test_bbh_errors(tmp_path):
    (tmp_path / "bbh").mkdir()
    (tmp_path / "cot-prompts").mkdir()
    (tmp_path / "bbh" / "boolean_expresions.json").write_text('{"examples": []}')
    with pytest.raises(UserError, match="unknown bbh task 'boolean_expresions' \\(did you mean 'boolean_expressions'\\?\\)"):
        loaders.load("bbh", tmp_path)
    (tmp_path / "bbh" / "boolean_expresions.json").unlink()
    (tmp_path / "bbh" / "navigate.json").write_text('{"examples": [{"input": "x", "target": "Yes"}]}')
    (tmp_path / "cot-prompts" / "navigate.txt").write_text("canary\nno separator\nQ: x\nA: y")
    with pytest.raises(UserError, match=r"navigate\.txt:2: expected a line '-----'"):
        loaders.load("bbh", tmp_path)
    (tmp_path / "cot-prompts" / "navigate.txt").write_text("canary\n-----\nDescribe.\n\nQ: a\nA: ok. So the answer is No.\n\nQ: b\nA: no verdict here")
    with pytest.raises(UserError, match=r"navigate\.txt:8: exemplar answer has no 'the answer is X'"):
        loaders.load("bbh", tmp_path)
    (tmp_path / "bbh" / "navigate.json").write_text('{"examples": [{"input": "x"}]}')
    with pytest.raises(UserError, match=r"navigate\.json: examples\[0\] needs string fields"):
        loaders.load("bbh", tmp_path)
    (tmp_path / "bbh" / "navigate.json").write_text('{"examples": [\n  {"input": "x",}]}')
    with pytest.raises(UserError, match=r"navigate\.json:2: invalid JSON"):
        loaders.load("bbh", tmp_path)


def test_tydiqa_languages_from_id_prefix_and_one_shot():
    bench = loaders.load("tydiqa", FIXTURES)
    assert list(bench.tasks) == ["ar", "sw"]  # English is not among the evaluated languages
    ar = bench.tasks["ar"]
    assert [e.id for e in ar] == ["arabic-2387335860751143628-1", "arabic--7780098722893129541-0"]
    assert ar[1].answers == ("نهر النيل", "النيل")
    text = prompts.prompt(bench, ar[0], "direct")
    # The exemplar is the other Arabic question, never the evaluated one.
    assert text.count("Passage: ") == 2 and "Answer: نهر النيل\n\n" in text
    assert text.endswith("Question: ما هي عاصمة مصر؟\nAnswer:")
    only = bench.tasks["sw"][0]
    assert prompts.prompt(bench, only, "direct").startswith("Passage: Nairobi")  # no other sw question


def test_tydiqa_errors(tmp_path):
    (tmp_path / "a.json").write_text('{"data": [{"paragraphs": [{"qas": []}]}]}')
    with pytest.raises(UserError, match=r"a\.json: not SQuAD 1\.1 JSON .* missing 'context'"):
        loaders.load("tydiqa", tmp_path)
    qa = '{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "finnish-1-0", "question": "q", "answers": [{"text": "c", "answer_start": 0}]}]}]}]}'
    (tmp_path / "a.json").write_text(qa)
    (tmp_path / "b.json").write_text(qa)
    with pytest.raises(UserError, match=r"b\.json: question id 'finnish-1-0' also appears in .*a\.json"):
        loaders.load("tydiqa", tmp_path)


def test_mgsm_thousands_separator_signs_and_fallback_shots():
    bench = loaders.load("mgsm", FIXTURES)
    assert list(bench.tasks) == ["de", "zh"]  # mgsm_en.tsv is not among the ten languages
    de = bench.tasks["de"]
    assert [e.answers[0] for e in de] == ["18", "2,125", "-5"]
    assert de[1].id == "de/1" and de[1].question.endswith('zu je 17 "Euro". Wie viel zahlt er insgesamt?')
    text = prompts.prompt(bench, de[0], "cot")
    # No exemplar file: the language's other rows, answered without a rationale.
    assert text.count("Q: ") == 3 and "A: The answer is 2,125.\n\n" in text
    assert text.endswith("Wie viel Dollar verdient sie täglich?\nA: Let's think step by step.")


def test_mgsm_exemplar_file_and_errors(tmp_path):
    (tmp_path / "mgsm_sw.tsv").write_text("Swali moja?\t7\n")
    (tmp_path / "exemplars").mkdir()
    (tmp_path / "exemplars" / "mgsm_sw.tsv").write_text("Q1?\tLet's think step by step. 3 + 4 = 7. The answer is 7.\n")
    bench = loaders.load("mgsm", tmp_path)
    assert bench.cot_shots["sw"][0].answer == "7"
    text = prompts.prompt(bench, bench.tasks["sw"][0], "cot")
    assert text == "Q: Q1?\nA: Let's think step by step. 3 + 4 = 7. The answer is 7.\n\nQ: Swali moja?\nA: Let's think step by step."
    (tmp_path / "mgsm_sw.tsv").write_text("Swali moja?\t7\nSwali\tmbili\t8\n")
    with pytest.raises(UserError, match=r"mgsm_sw\.tsv:2: expected 2 tab-separated columns"):
        loaders.load("mgsm", tmp_path)
    (tmp_path / "mgsm_sw.tsv").write_text("Swali moja?\tseven\n")
    with pytest.raises(UserError, match=r"mgsm_sw\.tsv:1: answer 'seven' is not a number"):
        loaders.load("mgsm", tmp_path)


def test_unknown_benchmark_and_bad_dir(tmp_path):
    with pytest.raises(UserError, match="did you mean 'mmlu'"):
        loaders.load("mmla", tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        loaders.load("mmlu", tmp_path / "nope")


def test_shipped_data_load_by_default_and_limit():
    for name in benchmarks.names():
        bench = loaders.load(name)
        assert len(bench.tasks) >= 3 and all(len(ex) >= 5 for ex in bench.tasks.values())
        limited = bench.limited(2)
        assert all(len(ex) == 2 for ex in limited.tasks.values())
        for ex in (e for task in limited.tasks.values() for e in task):
            for mode in benchmarks.get(name).modes:
                assert prompts.prompt(limited, ex, mode).strip()
    assert set(loaders.load("bbh").tasks) >= {"boolean_expressions", "date_understanding", "word_sorting", "multistep_arithmetic_two"}
    assert len(loaders.load("mmlu").shots["letter_counting"]) == 5


def test_shipped_standins_are_what_the_generator_writes(tmp_path):
    from trainers.eval import make_standins

    make_standins.main(tmp_path)
    shipped = sorted(p.relative_to(loaders.STANDINS) for p in loaders.STANDINS.rglob("*") if p.is_file())
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert shipped == written
    for rel in written:
        assert (tmp_path / rel).read_bytes() == (loaders.STANDINS / rel).read_bytes(), rel
