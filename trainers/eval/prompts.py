"""Few-shot prompts for each benchmark and mode, in the formats of the papers' evaluations.

- MMLU direct: the 5 `dev` rows under the header "The following are multiple choice
  questions (with answers) about {subject}." with "Answer: X" lines (Hendrycks et al.).
  MMLU CoT: the same header, then the subject's CoT exemplars (`cot-prompts/{subject}.txt`)
  as "Q: ... A: Let's think step by step. ... So the answer is (X)."; without such a file the
  dev rows serve, answered "So the answer is (X)." without a rationale.
- BBH: the task description and the 3 exemplars of `cot-prompts/{task}.txt`; CoT keeps each
  rationale, direct answers "A: X" with the rationale removed.
- TyDiQA: 1-shot, the exemplar being the first other question of the same language.
- MGSM: 8-shot CoT from `exemplars/mgsm_{lang}.tsv` when present; otherwise the first 8
  other rows of the language's own file, answered "The answer is N." without a rationale.
CoT queries end with the zero-shot CoT trigger "Let's think step by step."

`eval.shots` sets how many exemplars a prompt shows (`Benchmark.k`): the paper's numbers by
default, 0 for zero-shot prompts in each benchmark's own format (header, options, answer cue),
which is what fits the short inputs small models train with.
"""

from __future__ import annotations

import re

from trainers.eval.extract import COT_TRIGGER
from trainers.eval.loaders import MMLU_LETTERS, Benchmark, Example, Shot

def _others(shots: tuple[Shot, ...], ex: Example, k: int) -> list[Shot]:
    """The first k shots that are not the evaluated example itself (when shots and
    evaluated items come from the same file)."""
    out: list[Shot] = []
    if k <= 0:
        return out
    for s in shots:
        if s.question == ex.question and s.context == ex.context:
            continue
        out.append(s)
        if len(out) == k:
            break
    return out


# ----------------------------------------------------------------------------------- MMLU

def _subject(subject: str) -> str:
    return subject.replace("_", " ")


def _mmlu_block(question: str, choices: tuple[str, ...]) -> str:
    return question + "".join(f"\n{letter}. {c}" for letter, c in zip(MMLU_LETTERS, choices))


def _mmlu_cot_question(question: str, choices: tuple[str, ...]) -> str:
    return question + "\nAnswer Choices: " + " ".join(f"({l}) {c}" for l, c in zip(MMLU_LETTERS, choices))


def _choice_text(shot: Shot) -> str:
    return shot.choices[MMLU_LETTERS.index(shot.answer)]


def mmlu_prompt(bench: Benchmark, ex: Example, cot: bool, answer_text: bool = False) -> str:
    """`answer_text`: the exemplars answer with the option's text instead of its letter (the
    rank-classification prompt, whose options are the texts)."""
    header = f"The following are multiple choice questions (with answers) about {_subject(ex.task)}.\n\n"
    if not cot:
        shots = bench.shots.get(ex.task, ())[: bench.k]
        body = "".join(f"{_mmlu_block(s.question, s.choices)}\nAnswer: {_choice_text(s) if answer_text else s.answer}\n\n"
                       for s in shots)
        return header + body + _mmlu_block(ex.question, ex.choices) + "\nAnswer:"
    if ex.task in bench.cot_shots:
        shots = bench.cot_shots[ex.task][: bench.k]
        body = "".join(f"Q: {s.question}\nA: {s.rationale}\n\n" for s in shots)
    else:
        shots = bench.shots.get(ex.task, ())[: bench.k]
        body = "".join(
            f"Q: {_mmlu_cot_question(s.question, s.choices)}\nA: So the answer is ({s.answer}).\n\n" for s in shots)
    return header + body + f"Q: {_mmlu_cot_question(ex.question, ex.choices)}\nA: {COT_TRIGGER}"


# ------------------------------------------------------------------------------------ BBH

_OPTION_LINE = re.compile(r"^\(([A-R])\)\s*(.*?)\s*$", re.MULTILINE)


def option_texts(question: str) -> dict[str, str]:
    """The options a BBH-style question lists, "(A) text" lines -> {"(A)": "text"}."""
    return {f"({letter})": text for letter, text in _OPTION_LINE.findall(question)}


def bbh_prompt(bench: Benchmark, ex: Example, cot: bool, answer_text: bool = False) -> str:
    """`answer_text`: direct exemplar answers "(X)" are written as the option's text (the
    rank-classification prompt of subtasks whose options are listed in the question)."""
    shots = bench.cot_shots.get(ex.task, ())[: bench.k]
    head = bench.descriptions.get(ex.task, "")
    parts = [head] if head else []
    for s in shots:
        answer = option_texts(s.question).get(s.answer, s.answer) if answer_text else s.answer
        parts.append(f"Q: {s.question}\nA: {s.rationale if cot else answer}")
    parts.append(f"Q: {ex.question}\nA:" + (f" {COT_TRIGGER}" if cot else ""))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------- TyDiQA

def _tydiqa_block(context: str, question: str) -> str:
    return f"Passage: {context}\nQuestion: {question}\nAnswer:"


def tydiqa_prompt(bench: Benchmark, ex: Example) -> str:
    shots = _others(bench.shots.get(ex.task, ()), ex, bench.k)
    body = "".join(f"{_tydiqa_block(s.context, s.question)} {s.answer}\n\n" for s in shots)
    return body + _tydiqa_block(ex.context, ex.question)


# ----------------------------------------------------------------------------------- MGSM

def mgsm_prompt(bench: Benchmark, ex: Example, cot: bool) -> str:
    if cot and ex.task in bench.cot_shots:
        shots = _others(bench.cot_shots[ex.task], ex, bench.k)
        body = "".join(f"Q: {s.question}\nA: {s.rationale}\n\n" for s in shots)
    else:
        shots = _others(bench.shots.get(ex.task, ()), ex, bench.k)
        body = "".join(f"Q: {s.question}\nA: The answer is {s.answer}.\n\n" for s in shots)
    return body + f"Q: {ex.question}\nA:" + (f" {COT_TRIGGER}" if cot else "")


def prompt(bench: Benchmark, ex: Example, mode: str) -> str:
    """The full prompt for one example; "sc" uses the CoT prompt and "rc" the direct one with
    exemplars answered by the option's text (the options are scored as continuations of the
    direct answer slot)."""
    cot = mode in ("cot", "sc")
    if bench.shape == "mmlu":
        return mmlu_prompt(bench, ex, cot, answer_text=mode == "rc")
    if bench.shape == "bbh":
        return bbh_prompt(bench, ex, cot, answer_text=mode == "rc")
    if bench.shape == "tydiqa":
        return tydiqa_prompt(bench, ex)
    return mgsm_prompt(bench, ex, cot)
