"""Flan formats: how one raw example becomes an (inputs, targets) pair.

Flan 2022 renders every example in one of four template types -- zero-shot or few-shot,
with or without the answer options spelled out -- and the chain-of-thought (CoT) datasets
in CoT formats whose targets carry a rationale. Few-shot exemplars come from the task's
own examples, are joined with a randomly chosen delimiter, and are dropped one at a time
(last first) until the input fits the input length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from trainers.spec import UserError, did_you_mean

STANDARD_FORMATS = ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt")
COT_FORMATS = ("cot_zs", "cot_fs")
FORMATS = STANDARD_FORMATS + COT_FORMATS
# Short names accepted in DataConfig.formats (the default config says "cot").
FORMAT_ALIASES = {
    "cot": COT_FORMATS,
    "zs": ("zs_opt", "zs_noopt"),
    "fs": ("fs_opt", "fs_noopt"),
    "opt": ("zs_opt", "fs_opt"),
    "noopt": ("zs_noopt", "fs_noopt"),
    "all": FORMATS,
}

COT_TRIGGER = "Let's think step by step."
# Flan's few-shot templates separate exemplars with one of several delimiters so the model
# does not overfit to one layout.
FEWSHOT_DELIMITERS = ("\n\n", "\n\n\n", "\n\n###\n\n", "\n\n---\n\n", "\n\n\n\n")
MAX_EXEMPLARS = 5


def normalize_formats(formats: Sequence[str], field: str = "data.formats") -> tuple[str, ...]:
    """Expand aliases and check names; keeps the canonical order of FORMATS."""
    chosen: set[str] = set()
    for f in formats:
        if f in FORMAT_ALIASES:
            chosen.update(FORMAT_ALIASES[f])
        elif f in FORMATS:
            chosen.add(f)
        else:
            allowed = list(FORMATS) + list(FORMAT_ALIASES)
            raise UserError(f"{field}: unknown format {f!r}{did_you_mean(f, allowed)}; allowed: {', '.join(allowed)}")
    if not chosen:
        raise UserError(f"{field}: no formats given; allowed: {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in chosen)


@dataclass(frozen=True)
class Example:
    """One raw example before templating."""

    question: str
    answer: str
    options: tuple[str, ...] = ()
    rationale: str = ""  # CoT tasks: the reasoning, without the final answer sentence


# How a template spells out answer options: Flan 2021's "OPTIONS:" list answered with the
# option's text, or lettered options ("A. x" / "(A) x", as many T0 and NIV2 prompts write them)
# answered with the letter.
OPTION_STYLES = ("list", "letters", "paren")
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Template:
    """One phrasing of a task: an instruction placed into a layout.

    `layout` has the fields {instruction}, {question} and optionally {options}; it decides
    where the instruction sits (Flan 2021 puts it before or after the input, NIV2 uses
    Definition/Input/Output). Without an {options} field the options go at the end, written
    in the template's `options` style (OPTION_STYLES).
    """

    instruction: str
    layout: str = "{instruction}\n\n{question}"
    options: str = "list"

    def _lettered(self, ex: Example) -> bool:
        return self.options != "list" and bool(ex.options) and len(ex.options) <= len(LETTERS)

    def zero_shot(self, ex: Example, with_options: bool) -> str:
        opts = ""
        if with_options and ex.options:
            if not self._lettered(ex):
                opts = "\n\nOPTIONS:\n" + "\n".join(f"- {o}" for o in ex.options)
            elif self.options == "letters":
                opts = "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(ex.options))
            else:
                opts = "\n" + "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(ex.options))
        text = self.layout.format(instruction=self.instruction, question=ex.question, options=opts)
        return text if "{options}" in self.layout else text + opts

    def target(self, ex: Example, with_options: bool) -> str:
        """The answer as this template asks for it: the option's letter when the options were
        lettered, else the answer itself."""
        if not (with_options and self._lettered(ex)) or ex.answer not in ex.options:
            return ex.answer
        letter = LETTERS[ex.options.index(ex.answer)]
        return letter if self.options == "letters" else f"({letter})"


def cot_target(ex: Example, template: Template) -> str:
    return f"{ex.rationale} So the answer is {template.target(ex, bool(ex.options))}."


def _cot_query(template: Template, ex: Example) -> str:
    return f"Q: {template.zero_shot(ex, with_options=bool(ex.options))}\nA: {COT_TRIGGER}"


def render(
    fmt: str,
    template: Template,
    ex: Example,
    exemplars: Sequence[Example],
    rng: random.Random,
    fits: Callable[[str], bool],
) -> tuple[str, str]:
    """Render `ex` in format `fmt`; `fits(inputs)` says whether an input is short enough."""
    if fmt in ("zs_opt", "zs_noopt"):
        return template.zero_shot(ex, fmt == "zs_opt"), template.target(ex, fmt == "zs_opt")
    if fmt == "cot_zs":
        return _cot_query(template, ex), cot_target(ex, template)
    if fmt in ("fs_opt", "fs_noopt"):
        opt = fmt == "fs_opt"
        shots = [f"{template.zero_shot(e, opt)}\n{template.target(e, opt)}" for e in exemplars]
        query, target = template.zero_shot(ex, opt), template.target(ex, opt)
    elif fmt == "cot_fs":
        shots = [f"{_cot_query(template, e)}\n{cot_target(e, template)}" for e in exemplars]
        query, target = _cot_query(template, ex), cot_target(ex, template)
    else:
        raise UserError(f"format {fmt!r} unknown; allowed: {', '.join(FORMATS)}")
    delimiter = rng.choice(FEWSHOT_DELIMITERS)
    while True:
        inputs = delimiter.join(shots + [query])
        if not shots or fits(inputs):
            return inputs, target
        shots.pop()  # drop exemplars one by one until the input fits
