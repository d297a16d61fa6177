"""Answer extraction and comparison, one rule per benchmark, plus the self-consistency vote.

Every extractor maps a model's raw output text to a canonical answer string (or None when
no answer can be read) so that exact match is a string comparison and majority voting
counts equal answers together.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from decimal import Decimal, InvalidOperation
from typing import Sequence

ANSWER_TRIGGER = "the answer is"
COT_TRIGGER = "Let's think step by step."

_ANSWER_IS = re.compile(r"the answer is", re.IGNORECASE)
# An option letter: "(B)" followed by anything, or a bare "B" followed by the end or
# punctuation (so the article in "A dog ..." is not read as option A).
_MC = re.compile(r"^(?:\(([A-R])\)|([A-R])(?=$|[\n.,:;)]))")
_MC_TARGET = re.compile(r"^\(([A-R])\)$")
# A number: optional sign (ASCII or Unicode minus), digits with optional thousands
# separators, optional decimals. \d also matches other scripts' digits (Bengali, Thai, ...).
_NUMBER = re.compile(r"[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def after_answer_is(text: str) -> str | None:
    """The text after the first "the answer is" (case-insensitive), up to the end of that
    line, without surrounding spaces or a trailing period; None when the phrase is absent.

    The first occurrence counts because a few-shot model often goes on to invent the next
    question and answer after its own."""
    m = _ANSWER_IS.search(text)
    if m is None:
        return None
    rest = text[m.end():].lstrip(" :\t").split("\n", 1)[0]
    return _strip_period(rest) or None


def first_line(text: str) -> str:
    """Direct answers: the first non-empty line of the output (few-shot models continue
    with the next exemplar after a blank line)."""
    for line in text.strip().split("\n"):
        if line.strip():
            return line.strip()
    return ""


def _strip_period(s: str) -> str:
    s = s.strip()
    while s.endswith("."):
        s = s[:-1].rstrip()
    return s


def _mc_letter(span: str) -> str | None:
    m = _MC.match(span)
    return (m.group(1) or m.group(2)) if m else None


def mmlu_letter(text: str, cot: bool) -> str | None:
    """MMLU: the option letter A-D ("B", "(B)", "B.", "B) text"), read from the start of the
    direct answer or of the text after "the answer is"."""
    span = after_answer_is(text) if cot else first_line(text)
    if not span:
        return None
    letter = _mc_letter(span)
    return letter if letter and letter in "ABCD" else None


def bbh_answer(text: str, cot: bool, target: str | None = None) -> str | None:
    """BBH: the direct answer line, or the text after "the answer is" for CoT. Trailing
    periods go; for multiple-choice tasks (targets like "(A)") a bare or decorated letter
    ("A", "(A) 05/01/2021") is canonicalised to "(A)"."""
    span = after_answer_is(text) if cot else _strip_period(first_line(text))
    if not span:
        return None
    if target is not None and _MC_TARGET.match(target):
        letter = _mc_letter(span)
        return f"({letter})" if letter else span
    return span


def canonical_number(s: str) -> str | None:
    """"2,125" -> "2125", "-3.50" -> "-3.5", "7.0" -> "7", "\u22125" -> "-5"; None if not a number."""
    s = unicodedata.normalize("NFKC", s.strip()).replace("\u2212", "-").replace(",", "")
    s = "".join(str(unicodedata.digit(c)) if c.isdigit() else c for c in s)
    try:
        value = Decimal(s)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def final_number(text: str) -> str | None:
    """MGSM: the last number after "the answer is" if the phrase occurs, else the last
    number of the whole output; canonicalised (separators dropped, sign kept, a trailing
    period ignored, integral decimals as integers)."""
    span = after_answer_is(text)
    source = span if span and _NUMBER.search(span) else text
    found = _NUMBER.findall(source)
    return canonical_number(found[-1]) if found else None


def squad_normalize(s: str) -> str:
    """SQuAD v1.1 answer normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def extract(benchmark: str, mode: str, text: str, target: str | None = None) -> str | None:
    """The canonical answer a model gave in `text` for `benchmark` under `mode`."""
    cot = mode in ("cot", "sc")
    if benchmark == "mmlu":
        return mmlu_letter(text, cot)
    if benchmark == "bbh":
        return bbh_answer(text, cot, target)
    if benchmark == "mgsm":
        return final_number(text)
    if benchmark == "tydiqa":
        span = after_answer_is(text) if cot else first_line(text)
        return squad_normalize(span) if span else None
    raise ValueError(f"unknown benchmark {benchmark!r}")


def gold(benchmark: str, answers: Sequence[str]) -> set[str]:
    """The canonical forms of the gold answers, comparable with `extract`'s output."""
    if benchmark == "mgsm":
        return {c for a in answers if (c := canonical_number(a)) is not None}
    if benchmark == "tydiqa":
        return {squad_normalize(a) for a in answers}
    return {a.strip() for a in answers}


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """Self-consistency: the most frequent extracted answer, ignoring samples with none.
    Ties go to the answer whose first occurrence is earliest in sample order, so the vote
    is deterministic for a given sample order."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)
