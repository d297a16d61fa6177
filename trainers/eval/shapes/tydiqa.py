"""The TyDiQA shape: extractive question answering over a passage, per language.

Release (GoldP): every `*.json` under the root in the SQuAD 1.1 layout, except `*train*`
files; question ids start with the language's English name, tasks are named by ISO code, and
English (in the release, not among the paper's eight languages) is left out. A question may
list `options`, candidate spans of its passage, which rank classification scores. Prompts:
1-shot, the exemplar being the first other question of the same language, "Passage: ...
Question: ... Answer:". The answer is the first line (or the text after "the answer is"),
compared by SQuAD exact match.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from trainers.eval.extract import after_answer_is, after_label, first_line, squad_normalize
from trainers.eval.prompts import others
from trainers.eval.shapes.base import Benchmark, Choices, Example, Shape, Shot, is_cot
from trainers.spec import UserError

if TYPE_CHECKING:
    from trainers.eval.benchmarks import BenchmarkInfo

LANGUAGES = {
    "arabic": "ar", "bengali": "bn", "finnish": "fi", "indonesian": "id", "korean": "ko",
    "russian": "ru", "swahili": "sw", "telugu": "te",
}
EXCLUDED = {"english"}


def load_tydiqa(root: Path, name: str = "tydiqa") -> Benchmark:
    # The GoldP release ships its training split next to dev; only dev is held out.
    files = sorted(p for p in root.rglob("*.json") if "train" not in p.name)
    if not files:
        raise UserError(f"TyDiQA: no SQuAD-format *.json files under {root}")
    by_lang: dict[str, list[Example]] = {}
    seen: dict[str, Path] = {}
    for path in files:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        try:
            for article in obj["data"]:
                for para in article["paragraphs"]:
                    context = para["context"]
                    for qa in para["qas"]:
                        qid = qa["id"]
                        if qid in seen:
                            raise UserError(f"{path}: question id {qid!r} also appears in {seen[qid]}")
                        seen[qid] = path
                        prefix = qid.split("-", 1)[0]
                        if prefix in EXCLUDED:
                            continue
                        answers = tuple(a["text"] for a in qa["answers"])
                        if not answers:
                            raise UserError(f"{path}: question {qid!r} has no answers")
                        lang = LANGUAGES.get(prefix, prefix)
                        by_lang.setdefault(lang, []).append(
                            Example(id=qid, task=lang, question=qa["question"], answers=answers, context=context,
                                    choices=tuple(qa.get("options", ()))))
        except (KeyError, TypeError) as e:
            raise UserError(f"{path}: not SQuAD 1.1 JSON (data[].paragraphs[].context/qas[].id/question/answers[].text): missing {e}") from None
    if not by_lang:
        raise UserError(f"TyDiQA: no evaluated questions under {root} (English is excluded)")
    tasks = {lang: tuple(ex) for lang, ex in sorted(by_lang.items())}
    # 1-shot: the exemplar is drawn from the same language's questions (the prompt skips
    # the evaluated one), so shots and tasks hold the same items.
    shots = {lang: tuple(Shot(e.question, "", e.answers[0], context=e.context) for e in ex) for lang, ex in tasks.items()}
    return Benchmark(name, SHAPE, tasks, shots)


def _block(context: str, question: str) -> str:
    return f"Passage: {context}\nQuestion: {question}\nAnswer:"


class TyDiQAShape(Shape):
    name = "tydiqa"
    id_form = "the question's id"
    average_modes = ("direct",)
    rankable = True  # where the file lists candidate spans

    def load(self, root: Path, info: BenchmarkInfo, mmlu_split: str) -> Benchmark:
        return load_tydiqa(root, name=info.name)

    def looks_like_root(self, path: Path) -> bool:
        return any(path.glob("*.json"))

    def direct_prompt(self, bench: Benchmark, ex: Example) -> str:
        shots = others(bench.shots.get(ex.task, ()), ex, bench.k)
        body = "".join(f"{_block(s.context, s.question)} {s.answer}\n\n" for s in shots)
        return body + _block(ex.context, ex.question)

    def extract(self, mode: str, text: str, ex: Example) -> str | None:
        span = after_answer_is(text) if is_cot(mode) else first_line(text)
        return squad_normalize(span) if span else None

    def gold(self, ex: Example) -> set[str]:
        return {squad_normalize(a) for a in ex.answers}

    def flex(self, mode: str, text: str, ex: Example) -> str | None:
        span = after_label(text) or first_line(text)
        span = re.split(r"(?<=[.!?。])\s", span, maxsplit=1)[0]  # the first sentence
        return squad_normalize(span) or None

    def rc_options(self, bench: Benchmark, task: str) -> dict[str, Choices] | None:
        # Span questions are rankable where the file lists candidate spans of the passage.
        examples = bench.tasks[task]
        if not examples or not all(ex.choices and ex.answers[0] in ex.choices for ex in examples):
            return None
        return {ex.id: Choices(tuple(ex.choices), tuple(ex.choices), ex.choices.index(ex.answers[0])) for ex in examples}


SHAPE = TyDiQAShape()
