"""Answer extraction edge cases (strict and flexible), MGSM's per-language numbers and
triggers, and the self-consistency vote."""

import pytest

from trainers.eval.extract import (MGSM_TRIGGERS, after_answer_is, bbh_answer, canonical_number, extract,
                                   final_number, flex, flex_gold, gold, majority_vote, mmlu_letter, numbers,
                                   squad_normalize)
from trainers.eval.loaders import Example


@pytest.mark.parametrize("text, expected", [
    ("So the answer is (B).", "(B)"),
    ("... THE ANSWER IS: 42.\n\nQ: next question. So the answer is 7.", "42"),
    ("the answer is   valid..", "valid"),
    ("no verdict", None),
    ("the answer is .", None),
])
def test_after_answer_is(text, expected):
    assert after_answer_is(text) == expected


@pytest.mark.parametrize("text, cot, expected", [
    (" B", False, "B"),
    ("(C) because", False, "C"),
    ("D.\n\nThe following", False, "D"),
    ("A dog is an animal", False, None),  # the article "A" is not an answer letter
    ("E", False, None),
    ("", False, None),
    ("Let's think step by step. 2 + 2 = 4. So the answer is (D).", True, "D"),
    ("Let's think. The answer is B) four", True, "B"),
    ("Let's think step by step. It is (A).", True, None),  # CoT needs "the answer is"
])
def test_mmlu_letter(text, cot, expected):
    assert mmlu_letter(text, cot) == expected


@pytest.mark.parametrize("text, cot, target, expected", [
    (" False\n\nQ: True is", False, "False", "False"),
    ("valid.", False, "invalid", "valid"),
    ("(A)", False, "(A)", "(A)"),
    ("A", False, "(A)", "(A)"),
    ("So the answer is (F) 05/01/2021.", True, "(B)", "(F)"),
    ("So the answer is apple pear zebra.", True, "apple pear zebra", "apple pear zebra"),
    ("So the answer is -35.", True, "-35", "-35"),
    ("So the answer is Yes.", True, "Yes", "Yes"),
    ("I am not sure.", True, "Yes", None),
])
def test_bbh_answer(text, cot, target, expected):
    assert bbh_answer(text, cot, target) == expected


@pytest.mark.parametrize("s, expected", [
    ("2,125", "2125"), ("-3.50", "-3.5"), ("7.0", "7"), ("+12", "12"), ("\u22125", "-5"),
    ("১২", "12"),  # Bengali digits
    ("１８", "18"),  # full-width digits
    ("1,000,000", "1000000"), ("abc", None), ("0.25", "0.25"), ("0.125", "0.125"),
    ("12,5", None), ("1 000", None), ("3 4", None),  # not one number in English
])
def test_canonical_number(s, expected):
    assert canonical_number(s) == expected


@pytest.mark.parametrize("s, lang, expected", [
    ("1.000", "de", "1000"), ("1.000.000", "de", "1000000"), ("2,5", "de", "2.5"), ("1.234,5", "de", "1234.5"),
    ("1 000", "fr", "1000"), ("1\u00a0000", "fr", "1000"), ("1\u202f000", "ru", "1000"), ("3,75", "ru", "3.75"),
    ("1.500", "es", "1500"), ("0,5", "es", "0.5"),
    ("1,234.5", "en", "1234.5"), ("1,000", "zh", "1000"), ("1,000", "ja", "1000"), ("2.5", "th", "2.5"),
    ("1,00,000", "bn", "100000"), ("12,34,567", "te", "1234567"), ("1,000", "bn", "1000"),
    # Exactly three digits after one separator group thousands in every language: MGSM's
    # answers are whole numbers, and models write English grouping in any language.
    ("3,996", "de", "3996"), ("1.000", "en", "1000"),
    ("2.5", "de", "2.5"),  # a decimal point in a comma language is still a decimal
])
def test_canonical_number_by_language(s, lang, expected):
    assert canonical_number(s, lang) == expected


@pytest.mark.parametrize("text, expected", [
    ("She sells 9 eggs at $2 each, 9 * 2 = 18. The answer is 18.", "18"),
    ("The answer is 2,125.", "2125"),
    ("The answer is $1,234.50 in total.", "1234.5"),
    ("Temperatures drop by 8 to -5. The answer is -5.", "-5"),
    ("First 3 + 4 = 7, then 7 * 2 = 14.", "14"),  # no trigger: the last number of the output
    ("The answer is 12.\n\nQ: Tom has 30 apples", "12"),  # later invented questions are ignored
    ("The answer is 5 + 6 = 11.", "5"),  # the first number after the trigger
    ("The answer is twelve, since 3 * 4 = 12", "3"),  # number words are not numbers
    ("The answer is unknown.\nSo 7 + 1 = 8. The answer is 8.", "8"),  # a trigger without a number is skipped
    ("She pays 20-12=8 dollars.", "8"),  # "-12" after a digit is a subtraction, not a sign
    ("no numbers here", None),
    ("1, 2, 3", "3"),
])
def test_final_number(text, expected):
    assert final_number(text) == expected


# One output per language in the release's own answer form, with a distracting number after
# the answer; the trigger decides, then the language's separators.
@pytest.mark.parametrize("lang, text, expected", [
    ("bn", "5 + 6 = 11। উত্তর হল 11। 3টি", "11"),
    ("de", "5 + 6 = 11. Die Antwort lautet 1.000. Dann 4", "1000"),
    ("de", "Also 2 + 9 = 11. Die Antwort ist 11. 5", "11"),
    ("de", "Die Antwort lautet 2,5. Dann 4", "2.5"),
    ("es", "5 + 6 = 11. La respuesta es 1.500. 2", "1500"),
    ("fr", "5 + 6 = 11. La réponse est 1 500 euros. 2", "1500"),
    ("ja", "5+6=11。答えは１１です。3個", "11"),
    ("ru", "5 + 6 = 11. Ответ — 11. 4", "11"),
    ("ru", "Ответ — 12 000 рублей.", "12000"),
    ("sw", "5 + 6 = 11. Jibu ni 11. 4", "11"),
    # Telugu: not the "step-by-step answer:" header.
    ("te", "దశలవారీగా సమాధానం: 5+6=11. సమాధానం 11. 4", "11"),
    ("th", "5 + 6 = 11 คำตอบคือ 11 4", "11"),
    ("zh", "5 + 6 = 11。答案是 11。4", "11"),
    ("zh", "一共 3,087 元。答案是 3,087。", "3087"),
    ("de", "5 + 6 = 11. The answer is 11. 4", "11"),  # English is understood in every language
])
def test_final_number_by_language(lang, text, expected):
    assert final_number(text, lang) == expected
    assert extract("mgsm", "cot", text, task=lang) == expected


def test_every_mgsm_language_has_a_trigger():
    assert set(MGSM_TRIGGERS) == {"bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"}
    # A task that is not a language code (a built-in MGSM-shaped benchmark) reads English
    # numbers and accepts any language's trigger.
    assert final_number("Ответ — 7. 9", "word_problems") == "7"
    assert final_number("1.5 then 1,000", "word_problems") == "1000"
    assert numbers("a 2,5 b", "de") == ["2.5"] and numbers("a 2,5 b") == ["2", "5"]


def test_squad_normalize_and_tydiqa_exact_match():
    assert squad_normalize("The  Eiffel-Tower!") == "eiffeltower"
    assert squad_normalize("an apple, a pear") == "apple pear"
    assert extract("tydiqa", "direct", " The Nile.\nQuestion: x") == squad_normalize("Nile")
    assert extract("tydiqa", "direct", "القاهرة") in gold("tydiqa", ["القاهرة", "مصر"])
    with pytest.raises(ValueError, match="unknown benchmark shape 'unseen_qa'"):
        extract("unseen_qa", "direct", "x")


def test_gold_canonical_forms():
    assert gold("mgsm", ["2,125"]) == {"2125"}
    assert gold("mgsm", ["1.000"], "de") == {"1000"}
    assert extract("mgsm", "cot", "So 2125 dollars. The answer is 2125.") in gold("mgsm", ["2,125"])
    assert gold("bbh", [" (A) "]) == {"(A)"}


# ----------------------------------------------------------------------------- flexible

MMLU = Example("astronomy/test/0", "astronomy", "What is the capital of France?", ("C",),
               choices=("Rome", "Berlin", "Paris", "Madrid"))
BBH_MC = Example("date_understanding/0", "date_understanding",
                 "Today is 04/15/2021. What is the date tomorrow?\nOptions:\n(A) 04/16/2021\n(B) 04/14/2021", ("(A)",))
BBH_FREE = Example("web_of_lies/0", "web_of_lies", "Does Ka tell the truth?", ("True",))
BBH_NUM = Example("multistep_arithmetic_two/0", "multistep_arithmetic_two", "((3 - 5) * 7) =", ("-14",))
TYDIQA = Example("swahili-1", "sw", "Mto mrefu zaidi ni upi?", ("Nile",), context="...")
MGSM = Example("de/0", "de", "Wie viel?", ("1000",))


@pytest.mark.parametrize("shape, mode, ex, text, strict, flexible", [
    # MMLU: the answer sentence in direct mode, a letter followed by its text, lower case,
    # the option's text, a rationale without "the answer is".
    ("mmlu", "direct", MMLU, "The answer is (C).", None, "C"),
    ("mmlu", "direct", MMLU, "C Paris", None, "C"),
    ("mmlu", "direct", MMLU, "c", None, "C"),
    ("mmlu", "direct", MMLU, "(c) Paris", None, "C"),
    ("mmlu", "direct", MMLU, "Answer: C", None, "C"),
    ("mmlu", "direct", MMLU, "Paris.", None, "C"),
    ("mmlu", "direct", MMLU, "**C**", None, "C"),
    ("mmlu", "direct", MMLU, "a dog", None, None),  # a lower-case article is not a letter
    ("mmlu", "direct", MMLU, "E", None, None),  # not an option
    ("mmlu", "cot", MMLU, "Paris is in France, option (B) is wrong, so it is (C).", None, "C"),
    ("mmlu", "cot", MMLU, "So the answer is c.", None, "C"),
    ("mmlu", "cot", MMLU, "So the answer is (C).", "C", "C"),
    # BBH: option letters with or without parentheses, lower case, the option's text; free
    # form answers in any case ("true" for "True"), numbers in any notation.
    ("bbh", "direct", BBH_MC, "A", "(A)", "(A)"),
    ("bbh", "direct", BBH_MC, "a", "a", "(A)"),
    ("bbh", "direct", BBH_MC, "(a) 04/16/2021", "(a) 04/16/2021", "(A)"),
    ("bbh", "direct", BBH_MC, "04/16/2021", "04/16/2021", "(A)"),
    ("bbh", "direct", BBH_MC, "The answer is (A).", "The answer is (A)", "(A)"),
    ("bbh", "cot", BBH_MC, "Tomorrow is 04/16/2021, that is (A).", None, "(A)"),
    ("bbh", "cot", BBH_MC, "So the answer is A.", "(A)", "(A)"),
    ("bbh", "direct", BBH_FREE, "true", "true", "true"),
    ("bbh", "direct", BBH_FREE, "True.", "True", "true"),
    ("bbh", "cot", BBH_FREE, "Ka lies twice.\nSo the answer is TRUE.", "TRUE", "true"),
    ("bbh", "cot", BBH_FREE, "Ka lies twice.\nTrue", None, "true"),  # the rationale's last line
    ("bbh", "cot", BBH_NUM, "So the answer is \u221214.0.", "\u221214.0", "-14"),
    # TyDiQA: a label or a sentence after the answer.
    ("tydiqa", "direct", TYDIQA, "Answer: Nile", "answer nile", "nile"),
    ("tydiqa", "direct", TYDIQA, "The Nile. It is the longest river.", "nile it is longest river", "nile"),
    # MGSM: the last number anywhere, when the trigger's number is not the answer.
    ("mgsm", "cot", MGSM, "Die Antwort lautet 5 + 995 = 1.000.", "5", "1000"),
    ("mgsm", "cot", MGSM, "Er hat 500 + 500 = 1.000 Euro", "1000", "1000"),
    ("mgsm", "direct", MGSM, "nichts", None, None),
])
def test_flex_rules(shape, mode, ex, text, strict, flexible):
    assert extract(shape, mode, text, ex.answers[0], ex.task) == strict
    assert flex(shape, mode, text, ex) == flexible
    if flexible is not None:
        assert flexible in flex_gold(shape, ex)


def test_flex_gold_forms():
    assert flex_gold("mmlu", MMLU) == {"C"}
    assert flex_gold("bbh", BBH_MC) == {"(A)"} and flex_gold("bbh", BBH_FREE) == {"true"}
    assert flex_gold("bbh", BBH_NUM) == {"-14"}
    assert flex_gold("tydiqa", TYDIQA) == {"nile"}
    assert flex_gold("mgsm", Example("de/1", "de", "q", ("1.500",))) == {"1500"}


def test_majority_vote_counts_and_ties():
    assert majority_vote(["7", "8", "7", None, "8", "8"]) == "8"
    # Tie between 7 and 8 (two each): the answer seen first wins.
    assert majority_vote([None, "8", "7", "7", "8"]) == "8"
    assert majority_vote(["7", "8", "8", "7"]) == "7"
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
