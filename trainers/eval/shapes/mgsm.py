"""The MGSM shape: arithmetic word problems answered by a number, per language.

Release: `mgsm_{lang}.tsv` (question, TAB, answer) and optional `exemplars/mgsm_{lang}.tsv`
(question, TAB, a step-by-step answer ending "The answer is N."); English (in the release, a
translation source) is left out. Prompts: 8-shot, CoT from the exemplars when present,
otherwise the first 8 other rows of the language's own file answered "The answer is N."
without a rationale. The answer is the first number after the language's answer trigger, else
the last number, read with the language's separators (tasks are named by language code).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from trainers.eval.extract import COT_TRIGGER, canonical_number, final_number, mgsm_language, numbers
from trainers.eval.prompts import others
from trainers.eval.shapes.base import EXEMPLAR_ANSWER, Benchmark, Example, Shape, Shot
from trainers.spec import UserError

if TYPE_CHECKING:
    from trainers.eval.benchmarks import BenchmarkInfo

LANGUAGES = ("bn", "de", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
EXCLUDED = {"en"}
_ANSWER = re.compile(r"^[-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$")


def _tsv_rows(path: Path) -> list[tuple[int, str, str]]:
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 2:
            raise UserError(f"{path}:{line_no}: expected 2 tab-separated columns (question, answer), got {len(cols)}")
        rows.append((line_no, cols[0], cols[1].strip()))
    return rows


def load_mgsm(root: Path, name: str = "mgsm") -> Benchmark:
    tasks, shots, cot_shots = {}, {}, {}
    for path in sorted(root.glob("mgsm_*.tsv")):
        lang = path.stem[len("mgsm_"):]
        if lang in EXCLUDED:
            continue
        items = []
        for i, (line_no, q, a) in enumerate(_tsv_rows(path)):
            if not _ANSWER.match(a):
                raise UserError(f"{path}:{line_no}: answer {a!r} is not a number (like 42 or 2,125)")
            items.append(Example(id=f"{lang}/{i}", task=lang, question=q, answers=(a,)))
        tasks[lang] = tuple(items)
        shots[lang] = tuple(Shot(e.question, "", e.answers[0]) for e in items)
        ex_path = root / "exemplars" / f"mgsm_{lang}.tsv"
        if ex_path.is_file():
            parsed = []
            for line_no, q, rationale in _tsv_rows(ex_path):
                m = list(EXEMPLAR_ANSWER.finditer(rationale))
                if not m:
                    raise UserError(f"{ex_path}:{line_no}: step-by-step answer has no 'The answer is N'")
                parsed.append(Shot(q, rationale, m[-1].group(1).strip().rstrip(".")))
            cot_shots[lang] = tuple(parsed)
    if not tasks:
        raise UserError(f"MGSM: no mgsm_{{lang}}.tsv files in {root}")
    return Benchmark(name, SHAPE, tasks, shots, cot_shots)


def _prompt(bench: Benchmark, ex: Example, cot: bool) -> str:
    if cot and ex.task in bench.cot_shots:
        shots = others(bench.cot_shots[ex.task], ex, bench.k)
        body = "".join(f"Q: {s.question}\nA: {s.rationale}\n\n" for s in shots)
    else:
        shots = others(bench.shots.get(ex.task, ()), ex, bench.k)
        body = "".join(f"Q: {s.question}\nA: The answer is {s.answer}.\n\n" for s in shots)
    return body + f"Q: {ex.question}\nA:" + (f" {COT_TRIGGER}" if cot else "")


class MGSMShape(Shape):
    name = "mgsm"
    id_form = "{lang}/{index}"
    average_modes = ("cot",)

    def load(self, root: Path, info: BenchmarkInfo, mmlu_split: str) -> Benchmark:
        return load_mgsm(root, name=info.name)

    def looks_like_root(self, path: Path) -> bool:
        return any(path.glob("mgsm_*.tsv"))

    def direct_prompt(self, bench: Benchmark, ex: Example) -> str:
        return _prompt(bench, ex, cot=False)

    def cot_prompt(self, bench: Benchmark, ex: Example) -> str:
        return _prompt(bench, ex, cot=True)

    def extract(self, mode: str, text: str, ex: Example) -> str | None:
        return final_number(text, ex.task)

    def gold(self, ex: Example) -> set[str]:
        lang = mgsm_language(ex.task)
        return {c for a in ex.answers if (c := canonical_number(a, lang)) is not None}

    def flex(self, mode: str, text: str, ex: Example) -> str | None:
        # lm-evaluation-harness's flexible extract: the last number anywhere.
        found = numbers(text, mgsm_language(ex.task))
        return found[-1] if found else None


SHAPE = MGSMShape()
