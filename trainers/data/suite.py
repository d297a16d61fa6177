"""The built-in synthetic suite: 1,836 deterministic tasks laid out like the Flan collection.

9 CoT tasks, 80 Muffin-like, 193 T0-SF-like and 1,554 NIV2-like tasks, drawn from the rule-based
families of `suite_families` (arithmetic, ciphers, string and list manipulation,
classification by rule, extraction, comparisons, counting, base conversion, ...). The
family tasks are dealt to the three non-CoT sub-mixtures one family at a time, so each
sub-mixture, and each rung of the ladder, spans every family; what tells the sub-mixtures apart is their template
style (Flan 2021 instructions, T0 prompts, NIV2 Definition/Input/Output).

Nothing is generated up front: example i of task t comes from `random.Random(f"{t}/{i}")`
when the mixture samples it, so building the registry and drawing a batch take
milliseconds. The suite is the embedded default that lets a sweep run with no download.

**Sizes and caps.** Real Flan tasks differ in size, which is what examples-proportional
mixing with a cap responds to. A synthetic task's size is `cap * u`, where `cap` is its
sub-mixture's paper cap scaled by `cap_scale(examples_per_task) = examples_per_task / 5000`
(so the NIV2 cap of 5,000 becomes `examples_per_task`, Muffin's 30,000 becomes 6x that) and
`u` is a per-task lognormal draw (median 0.6), so roughly a third of the tasks exceed the cap.
CoT tasks take the paper's dataset sizes times the same scale.
"""

from __future__ import annotations

import functools
import math
import random
from typing import Iterator

from trainers.data.registry import PAPER_CAPS, PAPER_TASK_COUNTS, GeneratedSource, Task, TaskRegistry
from trainers.data.suite_cot import COT_TASKS, PAPER_COT_SIZES
from trainers.data.suite_families import FAMILIES
from trainers.data.templates import COT_FORMATS, STANDARD_FORMATS, Template, cot_target

CAP_REFERENCE = PAPER_CAPS["niv2"]
MIN_TASK_SIZE = 8

LAYOUTS = {
    "muffin": ("{instruction}\n\n{question}", "{question}\n\n{instruction}", "{instruction}\n{question}"),
    "t0sf": ("{question}\n\nQuestion: {instruction}", "Input: {question}\n{instruction}", "{instruction}\nText: {question}{options}\nAnswer:"),
    "niv2": ("Definition: {instruction}\n\nInput: {question}{options}\nOutput:", "Task: {instruction}\nInput: {question}{options}\nOutput:",
             "{instruction}\n\nInput: {question}"),
    "cot": ("{instruction}\n{question}", "{question}\n{instruction}"),
}


# The option styles (templates.OPTION_STYLES) a task's templates take in turn.
_STYLE_TURNS = ("list", "letters", "list", "paren")


def cap_scale(examples_per_task: int) -> float:
    """Factor that maps the paper's per-task caps onto the synthetic suite's sizes."""
    return examples_per_task / CAP_REFERENCE


def _templates(sub: str, instructions: tuple[str, ...]) -> tuple[Template, ...]:
    """Every instruction in every layout of the sub-mixture; the non-CoT templates take turns
    at the option styles (`_STYLE_TURNS`), so a task's options are listed and answered by text
    in half of its templates and lettered and answered by letter in the other half. The CoT
    datasets keep their own answer forms."""
    pairs = [(i, layout) for i in instructions for layout in LAYOUTS[sub]]
    return tuple(Template(i, layout, "list" if sub == "cot" else _STYLE_TURNS[j % len(_STYLE_TURNS)])
                 for j, (i, layout) in enumerate(pairs))


def _dealt(family_tasks: list[list]) -> list:
    """The family tasks in the order the sub-mixtures take them: each family's tasks in a
    seeded order, then dealt one family at a time, so every rung of the ladder (its first 80,
    273, 1,827 tasks) draws on every family: the skills a rung teaches grow with it instead of
    depending on where a shuffle put them."""
    for i, tasks in enumerate(family_tasks):
        random.Random(f"flanscale-suite-2/{i}").shuffle(tasks)
    out, depth = [], max(map(len, family_tasks))
    for j in range(depth):
        out += [tasks[j] for tasks in family_tasks if j < len(tasks)]
    return out


def _size(name: str, sub: str, examples_per_task: int) -> int:
    cap = PAPER_CAPS[sub] * cap_scale(examples_per_task)
    u = random.Random(f"size/{name}").lognormvariate(math.log(0.6), 1.0)
    return max(MIN_TASK_SIZE, round(cap * min(u, 3.0)))


@functools.lru_cache(maxsize=8)
def build_suite(examples_per_task: int = 200) -> TaskRegistry:
    """The registry of all 1,836 tasks (CoT, Muffin, T0-SF, NIV2, in ladder order)."""
    if examples_per_task < 1:
        from trainers.spec import UserError

        raise UserError(f"data.examples_per_task: {examples_per_task} must be >= 1")
    reg = TaskRegistry()
    scale = cap_scale(examples_per_task)
    for short, (gen, instructions) in COT_TASKS.items():
        name = f"cot/{short}"
        size = max(MIN_TASK_SIZE, round(PAPER_COT_SIZES[short] * scale))
        reg.add(Task(name, "cot", GeneratedSource(gen, size, name), _templates("cot", instructions), COT_FORMATS))
    family_tasks = _dealt([list(fam()) for fam in FAMILIES])
    start = 0
    for sub in ("muffin", "t0sf", "niv2"):
        for task_id, gen, instructions in family_tasks[start : start + PAPER_TASK_COUNTS[sub]]:
            name = f"{sub}/{task_id}"
            source = GeneratedSource(gen, _size(name, sub, examples_per_task), name)
            reg.add(Task(name, sub, source, _templates(sub, instructions), STANDARD_FORMATS))
        start += PAPER_TASK_COUNTS[sub]
    return reg


def corpus_document(index: int, examples_per_task: int = 200) -> str:
    """Plain text document `index` of the suite's corpus (for pretraining and tokenizers).

    A document strings together zero-shot renderings of a few random tasks' examples with
    their answers (and rationales for CoT tasks), so the text covers the suite's vocabulary.
    """
    tasks = _task_list(examples_per_task)
    rng = random.Random(f"corpus/{index}")
    parts = []
    for _ in range(rng.randint(3, 8)):
        task = tasks[rng.randrange(len(tasks))]
        source = task.source
        ex = source.example(rng.randrange(source.num_examples))
        template, with_options = rng.choice(task.templates), rng.random() < 0.3
        text = template.zero_shot(ex, with_options)
        answer = cot_target(ex, template) if ex.rationale else template.target(ex, with_options)
        parts.append(f"{text}\n{answer}")
    return "\n\n".join(parts)


@functools.lru_cache(maxsize=8)
def _task_list(examples_per_task: int) -> list[Task]:
    return list(build_suite(examples_per_task))


def text_corpus(start: int = 0, examples_per_task: int = 200) -> Iterator[str]:
    """Endless deterministic stream of corpus documents from `start`."""
    i = start
    while True:
        yield corpus_document(i, examples_per_task)
        i += 1
