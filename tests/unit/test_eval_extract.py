"""Answer extraction edge cases and the self-consistency vote."""

import pytest

from trainers.eval.extract import (after_answer_is, bbh_answer, canonical_number, extract, final_number,
                                   gold, majority_vote, mmlu_letter, squad_normalize)


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
    ("1,000,000", "1000000"), ("abc", None), ("0.25", "0.25"),
])
def test_canonical_number(s, expected):
    assert canonical_number(s) == expected


@pytest.mark.parametrize("text, expected", [
    ("She sells 9 eggs at $2 each, 9 * 2 = 18. The answer is 18.", "18"),
    ("The answer is 2,125.", "2125"),
    ("The answer is $1,234.50 in total.", "1234.5"),
    ("Temperatures drop by 8 to -5. The answer is -5.", "-5"),
    ("First 3 + 4 = 7, then 7 * 2 = 14.", "14"),  # no phrase: the last number of the output
    ("The answer is 12.\n\nQ: Tom has 30 apples", "12"),  # later invented questions are ignored
    ("The answer is twelve, since 3 * 4 = 12", "12"),
    ("no numbers here", None),
    ("1, 2, 3", "3"),
])
def test_final_number(text, expected):
    assert final_number(text) == expected


def test_squad_normalize_and_tydiqa_exact_match():
    assert squad_normalize("The  Eiffel-Tower!") == "eiffeltower"
    assert squad_normalize("an apple, a pear") == "apple pear"
    assert extract("tydiqa", "direct", " The Nile.\nQuestion: x") == squad_normalize("Nile")
    assert extract("tydiqa", "direct", "القاهرة") in gold("tydiqa", ["القاهرة", "مصر"])


def test_gold_canonical_forms():
    assert gold("mgsm", ["2,125"]) == {"2125"}
    assert extract("mgsm", "cot", "So 2125 dollars. The answer is 2125.") in gold("mgsm", ["2,125"])
    assert gold("bbh", [" (A) "]) == {"(A)"}


def test_majority_vote_counts_and_ties():
    assert majority_vote(["7", "8", "7", None, "8", "8"]) == "8"
    # Tie between 7 and 8 (two each): the answer seen first wins.
    assert majority_vote([None, "8", "7", "7", "8"]) == "8"
    assert majority_vote(["7", "8", "8", "7"]) == "7"
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
