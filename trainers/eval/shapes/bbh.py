"""The BBH shape: subtasks with a task description and worked CoT exemplars, answered by an
option letter "(X)" or free text.

Release: `bbh/{task}.json` ({"examples": [{"input", "target"}]}) and `cot-prompts/{task}.txt`
(a canary line, a line `-----`, the description, then exemplars `Q: ...` / `A: Let's think
step by step. ... So the answer is X.`); every task needs a random baseline in the benchmark's
entry. Prompts: the description and the 3 exemplars; CoT keeps each rationale, direct answers
"A: X" with the rationale removed. The answer is the answer line (direct) or the text after
"the answer is" (CoT), an option letter canonicalised to "(X)". Rank classification scores
the texts of the "(X) ..." options a question lists, or a subtask's small fixed answer set
(True/False, Yes/No, ...); free-form subtasks are left out.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from trainers.eval.extract import COT_TRIGGER, MC_TARGET, after_label, bbh_answer, choice_letter, loose
from trainers.eval.shapes.base import EXEMPLAR_ANSWER, Benchmark, Choices, Example, Shape, Shot, is_cot
from trainers.spec import UserError, did_you_mean

if TYPE_CHECKING:
    from trainers.eval.benchmarks import BenchmarkInfo

# A subtask whose targets take more distinct values than this is free-form, not multiple choice.
MAX_FIXED_OPTIONS = 8
_OPTION_LINE = re.compile(r"^\(([A-R])\)\s*(.*?)\s*$", re.MULTILINE)
# The options the flexible reading matches an answer's text against: lines with a text.
_LISTED_OPTION = re.compile(r"^\(([A-R])\)\s*(.+?)\s*$", re.MULTILINE)


# ---------------------------------------------------------------------------------- data

def parse_cot_prompt(path: Path) -> tuple[str, tuple[Shot, ...]]:
    """A BBH CoT prompt file -> (task description, exemplars).

    Layout: a canary line, a line `-----`, the description, then exemplars
    `Q: ...\\nA: Let's think step by step.\\n... So the answer is X.` separated by blank lines.
    """
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    try:
        sep = next(i for i, ln in enumerate(lines[:3]) if ln.strip() == "-----")
    except StopIteration:
        raise UserError(f"{path}:2: expected a line '-----' after the canary line") from None
    body = "\n".join(lines[sep + 1:]).strip("\n")
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=\n\n))Q: ", body)]
    if not starts:
        raise UserError(f"{path}: no exemplars (blocks starting with 'Q: ')")
    description = body[: starts[0]].strip()
    shots = []
    for a, b in zip(starts, starts[1:] + [len(body)]):
        block = body[a:b].strip("\n")
        line_no = sep + 2 + body[:a].count("\n")
        q, sep_a, ans = block.partition("\nA: ")
        if not sep_a:
            raise UserError(f"{path}:{line_no}: exemplar has no line starting with 'A: '")
        matches = list(EXEMPLAR_ANSWER.finditer(ans))
        if not matches:
            raise UserError(f"{path}:{line_no}: exemplar answer has no 'the answer is X'")
        final = matches[-1].group(1).strip().rstrip(".").strip()
        shots.append(Shot(question=q[len("Q: "):], rationale=ans.strip(), answer=final))
    return description, tuple(shots)


def load_bbh(root: Path, name: str, baselines: Mapping[str, float]) -> Benchmark:
    """`baselines`: the benchmark's random baseline per subtask, which names its subtasks."""
    data, prompts = root / "bbh", root / "cot-prompts"
    if not data.is_dir() or not prompts.is_dir():
        raise UserError(f"BBH: {root} needs the folders bbh/ ({{task}}.json) and cot-prompts/ ({{task}}.txt)")
    tasks, cot_shots, descriptions = {}, {}, {}
    for path in sorted(data.glob("*.json")):
        task = path.stem
        if task not in baselines:
            raise UserError(f"{path}: unknown {name} task {task!r}{did_you_mean(task, baselines)}")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        examples = obj.get("examples") if isinstance(obj, dict) else None
        if not isinstance(examples, list):
            raise UserError(f"{path}: expected an object with a list 'examples'")
        items = []
        for i, ex in enumerate(examples):
            if not (isinstance(ex, dict) and isinstance(ex.get("input"), str) and isinstance(ex.get("target"), str)):
                raise UserError(f"{path}: examples[{i}] needs string fields 'input' and 'target'")
            items.append(Example(id=f"{task}/{i}", task=task, question=ex["input"], answers=(ex["target"],)))
        cot = prompts / f"{task}.txt"
        if not cot.is_file():
            raise UserError(f"BBH: {cot} is missing (CoT prompt for task {task!r})")
        descriptions[task], cot_shots[task] = parse_cot_prompt(cot)
        tasks[task] = tuple(items)
    if not tasks:
        raise UserError(f"BBH: no {{task}}.json files in {data}")
    return Benchmark(name, SHAPE, tasks, cot_shots, cot_shots, descriptions)


# ------------------------------------------------------------------------------- prompts

def option_texts(question: str) -> dict[str, str]:
    """The options a BBH-style question lists, "(A) text" lines -> {"(A)": "text"}."""
    return {f"({letter})": text for letter, text in _OPTION_LINE.findall(question)}


def _prompt(bench: Benchmark, ex: Example, cot: bool, answer_text: bool = False) -> str:
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


class BBHShape(Shape):
    name = "bbh"
    id_form = "{task}/{index}"
    average_modes = ("direct", "cot")
    rankable = True

    def load(self, root: Path, info: BenchmarkInfo, mmlu_split: str) -> Benchmark:
        # A BBH-shaped benchmark has a random baseline per subtask, which names the subtasks.
        return load_bbh(root, info.name, info.baselines)  # type: ignore[arg-type]

    def looks_like_root(self, path: Path) -> bool:
        # BBH's own root holds a folder named bbh/, so "has a child named like the benchmark"
        # alone cannot tell a benchmark root from a directory of benchmarks.
        return (path / "bbh").is_dir() and (path / "cot-prompts").is_dir()

    def direct_prompt(self, bench: Benchmark, ex: Example) -> str:
        return _prompt(bench, ex, cot=False)

    def cot_prompt(self, bench: Benchmark, ex: Example) -> str:
        return _prompt(bench, ex, cot=True)

    def rc_prompt(self, bench: Benchmark, ex: Example) -> str:
        return _prompt(bench, ex, cot=False, answer_text=True)

    def extract(self, mode: str, text: str, ex: Example) -> str | None:
        """The direct answer line, or the text after "the answer is" for CoT; a letter
        canonicalised to "(X)" where the gold answer is one."""
        return bbh_answer(text, is_cot(mode), ex.answers[0] if ex.answers else None)

    def flex(self, mode: str, text: str, ex: Example) -> str | None:
        cot = is_cot(mode)
        if MC_TARGET.match(ex.answers[0].strip()):
            options = {m.group(1): m.group(2) for m in _LISTED_OPTION.finditer(ex.question)}
            letter = choice_letter(text, cot, "".join(options) or string.ascii_uppercase[:18], options)
            return f"({letter})" if letter else None
        span = after_label(text)
        if span is None:
            lines = [ln for ln in text.strip().split("\n") if ln.strip()]
            span = (lines[-1] if cot else lines[0]) if lines else ""
        return loose(span) or None

    def flex_gold(self, ex: Example) -> set[str]:
        return {a.strip() if MC_TARGET.match(a.strip()) else loose(a) for a in ex.answers}

    def rc_options(self, bench: Benchmark, task: str) -> dict[str, Choices] | None:
        examples = bench.tasks[task]
        if not examples:
            return None
        targets = [ex.answers[0].strip() for ex in examples]
        if all(MC_TARGET.match(t) for t in targets):
            out = {}
            for ex, target in zip(examples, targets):
                listed = option_texts(ex.question)
                if target not in listed:
                    return None  # the question does not list its options: not rankable
                out[ex.id] = Choices(tuple(listed.values()), tuple(listed), list(listed).index(target))
            return out
        fixed = tuple(sorted(set(targets)))
        if len(fixed) > MAX_FIXED_OPTIONS or bench.info.baseline(task) == 0.0:
            return None
        return {ex.id: Choices(fixed, fixed, fixed.index(t)) for ex, t in zip(examples, targets)}


SHAPE = BBHShape()
