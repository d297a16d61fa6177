"""Reading answers out of model outputs: the readers the benchmark shapes
(`trainers/eval/shapes/`) compose into their extractors, plus the self-consistency vote.

Every reader maps a model's raw output text to a canonical answer string (or None when no
answer can be read), so that exact match is a string comparison and majority voting counts
equal answers together. Two readings exist, as lm-evaluation-harness reports both:

- strict (`Shape.extract`, compared with `Shape.gold`): the paper's conventions, the numbers
  its tables use;
- flexible (`Shape.flex`, compared with `Shape.flex_gold`): also credits answers whose form
  strays from the exemplars' ("The answer is (C)." in direct mode, "C Paris", "c", "true" for
  "True", "A" for "(A)", an option's text instead of its letter, MGSM's last number anywhere).

Which reader a benchmark uses is its shape's choice, so every benchmark of a shape (the
paper's and the built-in unseen-task ones) reads answers the same way; `extract`, `gold`,
`flex` and `flex_gold` here ask a shape given by object or registered name. Numbers are read
per language (MGSM-shaped tasks are named by language code; anything else uses the English
conventions and accepts every language's answer trigger).
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections import Counter
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from trainers.eval.shapes.base import Example, Shape

ANSWER_TRIGGER = "the answer is"
COT_TRIGGER = "Let's think step by step."

_ANSWER_IS = re.compile(ANSWER_TRIGGER, re.IGNORECASE)
# An option letter: "(B)" followed by anything, or a bare "B" followed by the end or
# punctuation (so the article in "A dog ..." is not read as option A).
_MC = re.compile(r"^(?:\(([A-R])\)|([A-R])(?=$|[\n.,:;)]))")
MC_TARGET = re.compile(r"^\(([A-R])\)$")

# MGSM answer triggers, from the release's native-language exemplars (url-nlp
# mgsm/exemplars.py: "Die Antwort lautet 11.", "答えは11です。", "Ответ — 11."); German also as
# "Die Antwort ist" (one release exemplar), Telugu's "సమాధానం" not when it is the
# "step-by-step answer:" header. English is accepted in every language: English CoT
# exemplars and flanscale's stand-ins answer "The answer is N." whatever the language.
MGSM_TRIGGERS: dict[str, tuple[str, ...]] = {
    "en": (r"the\s+answer\s+is",),
    "bn": (r"উত্তর\s+হল",),
    "de": (r"die\s+antwort\s+lautet", r"die\s+antwort\s+ist"),
    "es": (r"la\s+respuesta\s+es",),
    "fr": (r"la\s+réponse\s+est",),
    "ja": (r"答えは",),
    "ru": (r"ответ\s*[—–:-]",),
    "sw": (r"jibu\s+ni",),
    "te": (r"సమాధానం(?!\s*:)",),
    "th": (r"คำตอบคือ",),
    "zh": (r"答案是",),
}
# Languages writing a decimal comma ("2,5") and grouping thousands with "." or a space
# ("1.000", "1 000"); the others group with "," and write a decimal point.
DECIMAL_COMMA = frozenset({"de", "es", "fr", "ru"})
# Indian digit grouping: "1,00,000" is a hundred thousand.
LAKH_GROUPING = frozenset({"bn", "te"})


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
    if target is not None and MC_TARGET.match(target):
        letter = _mc_letter(span)
        return f"({letter})" if letter else span
    return span


# ----------------------------------------------------------------------------- numbers

@functools.lru_cache(maxsize=None)
def _number_re(lang: str) -> re.Pattern:
    """Numbers as `lang` writes them. "," or "." followed by groups of exactly three digits
    groups thousands in every language: MGSM's answers are whole numbers (GSM8K's), and models
    write "1,360" in a German answer as readily as "1.360". Languages with a decimal comma
    also group with spaces ("1 000"); other fraction lengths follow the language ("2,5" is
    2.5 in German; in English the comma ends the number)."""
    seps = ",. " if lang in DECIMAL_COMMA else ",."
    lakh = r"(?!0)\d{1,2}(?:,\d{2})+,\d{3}(?!\d)|" if lang in LAKH_GROUPING else ""
    grouped = rf"(?!0)\d{{1,3}}(?P<sep>[{seps}])\d{{3}}(?:(?P=sep)\d{{3}})*(?!\d)"
    fraction = r"[.,]\d+" if lang in DECIMAL_COMMA else r"\.\d+"
    # A sign right after a digit is an operator ("20-12"), not part of the number.
    return re.compile(rf"(?P<sign>(?<!\d)[-+\u2212])?(?<!\d)(?P<int>{lakh}{grouped}|\d+)(?P<frac>{fraction})?")


def _canonical(m: re.Match) -> str | None:
    digits = "".join(str(unicodedata.digit(c)) for c in m.group("int") if c.isdigit())
    frac = m.group("frac")
    text = ("-" if m.group("sign") in ("-", "\u2212") else "") + digits
    if frac:
        text += "." + "".join(str(unicodedata.digit(c)) for c in frac[1:])
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def canonical_number(s: str, lang: str = "") -> str | None:
    """"2,125" -> "2125", "-3.50" -> "-3.5", "7.0" -> "7", "\u22125" -> "-5", "১২" -> "12";
    with `lang` "de", "1.000" -> "1000" and "2,5" -> "2.5". None if `s` is not one number."""
    m = _number_re(lang).fullmatch(unicodedata.normalize("NFKC", s.strip()))
    return _canonical(m) if m else None


def numbers(text: str, lang: str = "") -> list[str]:
    """Every number in `text`, canonicalised, in order."""
    found = (_canonical(m) for m in _number_re(lang).finditer(unicodedata.normalize("NFKC", text)))
    return [n for n in found if n is not None]


@functools.lru_cache(maxsize=None)
def _trigger_re(lang: str) -> re.Pattern:
    phrases = MGSM_TRIGGERS[lang] + MGSM_TRIGGERS["en"] if lang in MGSM_TRIGGERS else sum(MGSM_TRIGGERS.values(), ())
    # Outputs are read in NFKC form, which also rewrites some letters (Thai's SARA AM in "คำ").
    return re.compile(unicodedata.normalize("NFKC", "|".join(phrases)), re.IGNORECASE)


def mgsm_language(task: str) -> str:
    """The language whose conventions read a task's numbers ("" = English, any trigger)."""
    return task if task in MGSM_TRIGGERS else ""


def final_number(text: str, task: str = "") -> str | None:
    """MGSM: the first number after the first answer trigger that has one on its line ("The
    answer is", "Die Antwort lautet", "答案是", ... by language), else the last number of the
    whole output; canonicalised by the language's separators."""
    lang = mgsm_language(task)
    text = unicodedata.normalize("NFKC", text)
    for m in _trigger_re(lang).finditer(text):
        found = numbers(text[m.end():].split("\n", 1)[0], lang)
        if found:
            return found[0]
    found = numbers(text, lang)
    return found[-1] if found else None


def squad_normalize(s: str) -> str:
    """SQuAD v1.1 answer normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


# ---------------------------------------------------------------------------- flexible

_LABEL = re.compile(r"answer(?:\s+is|\s*:)", re.IGNORECASE)
# Option letters at the start of a span: "(c)", "C", "C Paris", "C.", "c", "c)"; a bare lower
# case letter only on its own, since "a dog" is an article.
_FLEX_LETTER = re.compile(r"(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z0-9])|([a-z])(?![A-Za-z0-9 ]))")
_PAREN_LETTER = re.compile(r"\(([A-Za-z])\)")
_DECORATION = " \t*`\"'“”«»"


def after_label(text: str) -> str | None:
    """The rest of the line after the first "answer is" / "answer:" (any case)."""
    m = _LABEL.search(text)
    if m is None:
        return None
    return _strip_period(text[m.end():].split("\n", 1)[0].strip(_DECORATION + ":")).strip(_DECORATION) or None


def _letter(span: str, letters: str, options: dict[str, str]) -> str | None:
    m = _FLEX_LETTER.match(span.strip(_DECORATION))
    if m:
        letter = (m.group(1) or m.group(2) or m.group(3)).upper()
        if letter in letters:
            return letter
    key = squad_normalize(_strip_period(span))
    return next((letter for letter, text in options.items() if key and key == squad_normalize(text)), None)


def choice_letter(text: str, cot: bool, letters: str, options: dict[str, str]) -> str | None:
    """A multiple-choice letter read leniently: after "answer is"/"answer:" anywhere, from the
    start of a direct answer, or as an option's text; else the first "(X)" of a direct answer
    or the last of a rationale (its conclusion)."""
    spans = [after_label(text)] + ([] if cot else [first_line(text)])
    for span in spans:
        if span and (letter := _letter(span, letters, options)):
            return letter
    found = [x.upper() for x in _PAREN_LETTER.findall(text) if x.upper() in letters]
    return (found[-1] if cot else found[0]) if found else None


def loose(s: str) -> str:
    """Free-form answers compared loosely: NFKC, any case, no decoration or trailing period,
    single spaces; numbers canonical ("-35.0" == "\u221235")."""
    s = _strip_period(unicodedata.normalize("NFKC", s).strip(_DECORATION))
    number = canonical_number(s)
    return number if number is not None else " ".join(s.casefold().split())


# ----------------------------------------------------------------------- by shape name

def _example(answers: Sequence[str], task: str) -> Example:
    from trainers.eval.shapes.base import Example

    return Example(id="", task=task, question="", answers=tuple(answers))


def extract(shape: Shape | str, mode: str, text: str, target: str | None = None, task: str = "") -> str | None:
    """The canonical answer a model gave in `text` for a benchmark of `shape` under `mode`
    (`target`: a gold answer, telling BBH's multiple-choice tasks apart; `task`: MGSM's
    language): `Shape.extract` of the shape or registered shape name."""
    return _shape(shape).extract(mode, text, _example(() if target is None else (target,), task))


def gold(shape: Shape | str, answers: Sequence[str], task: str = "") -> set[str]:
    """The canonical forms of the gold answers, comparable with `extract`'s output."""
    return _shape(shape).gold(_example(answers, task))


def flex(shape: Shape | str, mode: str, text: str, ex: Example) -> str | None:
    """The answer `text` gives to `ex` read leniently, comparable with `flex_gold`."""
    return _shape(shape).flex(mode, text, ex)


def flex_gold(shape: Shape | str, ex: Example) -> set[str]:
    """The gold answers of `ex` in `flex`'s canonical forms."""
    return _shape(shape).flex_gold(ex)


def _shape(shape: Shape | str) -> Shape:
    from trainers.eval import benchmarks

    return benchmarks.shape(shape)


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """Self-consistency: the most frequent extracted answer, ignoring samples with none.
    Ties go to the answer whose first occurrence is earliest in sample order, so the vote
    is deterministic for a given sample order."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)
