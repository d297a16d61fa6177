"""The MMLU shape: four-option multiple-choice questions per subject.

Release: `data/{dev,val,test}/{subject}_{split}.csv` (question, A, B, C, D, answer letter; the
`data/` level may be omitted), `dev` supplying the shots; optional `cot-prompts/{subject}.txt`
(BBH CoT-prompt format) with worked rationales.

Prompts (Hendrycks et al.): direct, the `dev` rows under the header "The following are
multiple choice questions (with answers) about {subject}." with "Answer: X" lines; CoT, the same
header, then the subject's CoT exemplars as "Q: ... A: Let's think step by step. ... So the
answer is (X)." (without a CoT file the dev rows serve, answered "So the answer is (X)." without
a rationale). The answer is the option letter A-D; rank classification scores the four option
texts.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from trainers.eval.extract import COT_TRIGGER, choice_letter, mmlu_letter
from trainers.eval.shapes.base import Benchmark, Choices, Example, Shape, Shot, is_cot
from trainers.eval.shapes.bbh import parse_cot_prompt
from trainers.spec import UserError

if TYPE_CHECKING:
    from trainers.eval.benchmarks import BenchmarkInfo

LETTERS = ("A", "B", "C", "D")
SPLITS = ("dev", "val", "test")  # files of an MMLU-shaped release; dev supplies the shots


# ---------------------------------------------------------------------------------- data

def _rows(path: Path) -> list[tuple[str, tuple[str, ...], str]]:
    rows = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            for row in reader:
                line = reader.line_num
                if len(row) != 6:
                    raise UserError(f"{path}:{line}: expected 6 CSV columns (question, A, B, C, D, answer), got {len(row)}")
                answer = row[5].strip()
                if answer not in LETTERS:
                    raise UserError(f"{path}:{line}: answer {answer!r} is not one of A, B, C, D")
                rows.append((row[0], tuple(row[1:5]), answer))
    except (csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a UTF-8 CSV file: {e}") from None
    return rows


def load_mmlu(root: Path, split: str = "test", name: str = "mmlu") -> Benchmark:
    if split not in SPLITS:
        raise UserError(f"eval.mmlu_split: {split!r} is not an MMLU split; allowed: {', '.join(SPLITS)}")
    data = root / "data" if (root / "data").is_dir() else root
    if not (data / split).is_dir() or not (data / "dev").is_dir():
        raise UserError(f"MMLU: {data} needs the folders dev/ and {split}/ ({{subject}}_{{split}}.csv files)")
    tasks: dict[str, tuple[Example, ...]] = {}
    shots: dict[str, tuple[Shot, ...]] = {}
    cot_shots: dict[str, tuple[Shot, ...]] = {}
    suffix = f"_{split}.csv"
    for path in sorted((data / split).glob(f"*{suffix}")):
        subject = path.name[: -len(suffix)]
        dev = data / "dev" / f"{subject}_dev.csv"
        if not dev.is_file():
            raise UserError(f"MMLU: {dev} is missing (5-shot exemplars for subject {subject!r})")
        tasks[subject] = tuple(
            Example(id=f"{subject}/{split}/{i}", task=subject, question=q, answers=(a,), choices=c)
            for i, (q, c, a) in enumerate(_rows(path)))
        shots[subject] = tuple(Shot(q, "", a, choices=c) for q, c, a in _rows(dev))
        cot = root / "cot-prompts" / f"{subject}.txt"
        if cot.is_file():
            _, cot_shots[subject] = parse_cot_prompt(cot)
    if not tasks:
        raise UserError(f"MMLU: no {{subject}}{suffix} files in {data / split}")
    return Benchmark(name, SHAPE, tasks, shots, cot_shots)


# ------------------------------------------------------------------------------- prompts

def _subject(subject: str) -> str:
    return subject.replace("_", " ")


def _block(question: str, choices: tuple[str, ...]) -> str:
    return question + "".join(f"\n{letter}. {c}" for letter, c in zip(LETTERS, choices))


def _cot_question(question: str, choices: tuple[str, ...]) -> str:
    return question + "\nAnswer Choices: " + " ".join(f"({l}) {c}" for l, c in zip(LETTERS, choices))


def _choice_text(shot: Shot) -> str:
    return shot.choices[LETTERS.index(shot.answer)]


def _header(ex: Example) -> str:
    return f"The following are multiple choice questions (with answers) about {_subject(ex.task)}.\n\n"


def _direct(bench: Benchmark, ex: Example, answer_text: bool) -> str:
    """`answer_text`: the exemplars answer with the option's text instead of its letter (the
    rank-classification prompt, whose options are the texts)."""
    shots = bench.shots.get(ex.task, ())[: bench.k]
    body = "".join(f"{_block(s.question, s.choices)}\nAnswer: {_choice_text(s) if answer_text else s.answer}\n\n"
                   for s in shots)
    return _header(ex) + body + _block(ex.question, ex.choices) + "\nAnswer:"


class MMLUShape(Shape):
    name = "mmlu"
    id_form = "{subject}/{split}/{row}"
    average_modes = ("direct", "cot")
    rankable = True

    def load(self, root: Path, info: BenchmarkInfo, mmlu_split: str) -> Benchmark:
        return load_mmlu(root, mmlu_split, name=info.name)

    def looks_like_root(self, path: Path) -> bool:
        return (path / "data" / "dev").is_dir() or (path / "dev").is_dir()

    def direct_prompt(self, bench: Benchmark, ex: Example) -> str:
        return _direct(bench, ex, answer_text=False)

    def rc_prompt(self, bench: Benchmark, ex: Example) -> str:
        return _direct(bench, ex, answer_text=True)

    def cot_prompt(self, bench: Benchmark, ex: Example) -> str:
        if ex.task in bench.cot_shots:
            shots = bench.cot_shots[ex.task][: bench.k]
            body = "".join(f"Q: {s.question}\nA: {s.rationale}\n\n" for s in shots)
        else:
            shots = bench.shots.get(ex.task, ())[: bench.k]
            body = "".join(f"Q: {_cot_question(s.question, s.choices)}\nA: So the answer is ({s.answer}).\n\n"
                           for s in shots)
        return _header(ex) + body + f"Q: {_cot_question(ex.question, ex.choices)}\nA: {COT_TRIGGER}"

    def extract(self, mode: str, text: str, ex: Example) -> str | None:
        """The option letter A-D ("B", "(B)", "B.", "B) text") at the start of the direct answer
        or of the text after "the answer is"."""
        return mmlu_letter(text, is_cot(mode))

    def flex(self, mode: str, text: str, ex: Example) -> str | None:
        letters = "ABCD"[: len(ex.choices) or 4]
        return choice_letter(text, is_cot(mode), letters, dict(zip(letters, ex.choices)))

    def flex_gold(self, ex: Example) -> set[str]:
        return {a.strip().upper() for a in ex.answers}

    def rc_options(self, bench: Benchmark, task: str) -> dict[str, Choices] | None:
        return {ex.id: Choices(tuple(ex.choices), LETTERS[: len(ex.choices)], LETTERS.index(ex.answers[0]))
                for ex in bench.tasks[task]}


SHAPE = MMLUShape()
