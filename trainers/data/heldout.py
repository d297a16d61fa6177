"""Held-out task families: the content of the unseen-task benchmark and of the held-out loss set.

No rung of the task ladder trains on these tasks: they are not in `suite.build_suite`'s
registry, and their instructions and question phrasings appear in no training task (a unit
test renders every rung and checks). What they share with training is *skills*: the words of
`suite_families.DOMAINS`, classifying words into those domains, counting letters, comparing
lengths and alphabetical order, addition and multiplication, copying a span. So a finetuned
model can only do better than its base model here by transferring those skills to new
instructions and new task definitions, which is what the paper's held-out benchmarks measure.

Four shapes, one per benchmark the paper evaluates (`trainers.eval.make_unseen` writes them in
the release file formats):
- `mc` (MMLU-shaped): knowledge questions with four options A-D, answer letters balanced.
- `reasoning` (BBH-shaped): two trained skills composed; CoT rationales; every subtask has a
  finite option set (`REASONING_OPTIONS`) and a random baseline (`REASONING_BASELINES`).
- `qa` (TyDiQA-GoldP-shaped): a passage of generated facts, the answer a span of it.
- `arith` (MGSM-shaped): arithmetic word problems with integer answers and rationales.

The generators and question phrasings are in `heldout_families`; this module names the tasks,
their held-out instructions and splits, and draws the items.

Item i of split s of task t comes from `random.Random(f"heldout/{t}/{s}/{i}/{attempt}")`;
splits are drawn in the order of `SPLITS` and then the loss split, and a draw that repeats an
earlier question of the task is redrawn, so the loss set shares no question with the benchmark.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Callable

from trainers.data.heldout_families import FAMILIES, LETTERS, QA_CANDIDATES, REASONING_OPTIONS, Item
from trainers.data.templates import Example, Template, render

SHAPES = ("mc", "reasoning", "qa", "arith")
# Items per split; the benchmark's few-shot exemplars come from dev (TyDiQA-shaped tasks take
# their one shot from another test question, as the real release's loader does).
# 32 test items per task: 160-192 per benchmark, a standard error of at most 4 points on an
# accuracy anywhere between 0 and 100.
SPLITS = {
    "mc": {"dev": 5, "val": 4, "test": 32},
    "reasoning": {"dev": 3, "test": 32},
    "qa": {"test": 32},
    "arith": {"dev": 8, "test": 32},
}
MAX_ATTEMPTS = 500
# Random baselines in percent (one over the number of options), like the BBH subtasks'.
REASONING_BASELINES: dict[str, float] = {t: 100 / len(o) for t, o in REASONING_OPTIONS.items()}


@dataclass(frozen=True)
class HeldoutTask:
    name: str
    shape: str
    phrasings: tuple[str, ...]  # the question patterns its items are formatted from ({field}s)
    instructions: tuple[str, ...]  # held-out instructions the loss set renders it with
    make: Callable[[random.Random, int], Item]  # (rng, wanted answer index) -> item
    description: str = ""  # reasoning: the CoT prompt's task description
    answer_set: tuple[str, ...] = ()  # reasoning: the finite set its targets lie in


# ---------------------------------------------------------------------------- the tasks

_INSTRUCTIONS = {
    "word_categories": ("Choose the word that matches the kind of thing the question asks about.",
                        "Only one listed word fits the description in the question; reply with it."),
    "word_length": ("Measure each candidate word in letters and reply with the right one.",
                    "Reply with the option whose length satisfies the question."),
    "addition": ("Do the sum in your head, then reply with the matching candidate.",
                 "Add up the two numbers mentioned and choose among the candidates."),
    "alphabetical_order": ("Think of dictionary order and reply with the word the question asks for.",
                           "Order the candidates alphabetically, then answer."),
    "letter_counting": ("Spell the word letter by letter and reply with the correct count.",
                        "Reply with the candidate giving how often the letter shows up."),
    "largest_number": ("Compare the sizes of the listed values and reply with the one requested.",
                       "Look at how big each candidate number is, then answer."),
    "odd_one_out": ("Sort the words into their kinds and name the outsider's letter.",
                    "Spot the intruder among the four words."),
    "sorted_position": ("Put the words in dictionary order, count to the asked place and give that option's letter.",
                        "Reorder the words as a dictionary would, then answer with a letter."),
    "sum_parity": ("Work out the total, then say whether it has the asked parity.",
                   "Reply Yes or No after adding the two numbers."),
    "letter_total": ("Add up the lengths of both words and judge the statement.",
                     "Judge the statement about the word lengths as True or False."),
    "category_majority": ("Tally the words of each kind before replying Yes or No.",
                          "Group the listed words by kind and compare the two groups' sizes."),
    "largest_total": ("Total each pair and give the letter of the biggest total.",
                      "Find the pair whose numbers add up to the most."),
    "pets": ("Copy from the passage the animal the question is about.", "Read the facts and reply with a span of the text."),
    "instruments": ("Copy from the passage the instrument the question is about.",
                    "Reply with the words of the passage that answer the question."),
    "journeys": ("Copy the place or the means of travel from the passage.", "Read the facts and reply with a span of the text."),
    "gardens": ("Copy from the passage the plant the question is about.",
                "Reply with the words of the passage that answer the question."),
    "hobbies": ("Copy from the passage the sport the question is about.", "Read the facts and reply with a span of the text."),
    "shopping": ("Find the total cost of the purchase.", "Work through the story's numbers to reach the final amount."),
    "bus_ride": ("Keep track of the passengers and report how many remain.",
                 "Work through the story's numbers to reach the final amount."),
    "equal_shares": ("Split the items evenly and give one share.", "Work through the story's numbers to reach the final amount."),
    "garden_rows": ("Count the plants that remain in the garden.", "Work through the story's numbers to reach the final amount."),
    "ages": ("Work out the person's age at the given time.", "Work through the story's numbers to reach the final amount."),
    "savings": ("Track the money saved and spent and give what remains.",
                "Work through the story's numbers to reach the final amount."),
}
_DESCRIPTIONS = {
    "odd_one_out": "Spot the one word whose kind differs from the other three.",
    "sorted_position": "Order words alphabetically and pick the word at a given place.",
    "sum_parity": "Decide whether the sum of two numbers is even or odd.",
    "letter_total": "Check a statement about the total length of two words.",
    "category_majority": "Compare how many words of two kinds a list holds.",
    "largest_total": "Pick the pair of numbers with the largest sum.",
}
TASKS: dict[str, HeldoutTask] = {
    name: HeldoutTask(name, shape, phrasings[name], _INSTRUCTIONS[name], make, _DESCRIPTIONS.get(name, ""),
                      REASONING_OPTIONS.get(name, ()))
    for shape, (phrasings, makers) in FAMILIES.items() for name, make in makers.items()
}


def tasks(shape: str) -> list[HeldoutTask]:
    return [t for t in TASKS.values() if t.shape == shape]


def _wanted(task: HeldoutTask, split: str, i: int) -> int:
    """The answer index item i should have: each block of k items holds every one of the k
    option positions (or answer values) once, in a seeded order, so answers are balanced."""
    k = 4 if task.shape == "mc" else len(task.answer_set) or 1
    order = list(range(k))
    random.Random(f"heldout/{task.name}/{split}/block{i // k}").shuffle(order)
    return order[i % k]


@functools.lru_cache(maxsize=None)
def _draw(name: str, loss_items: int) -> dict[str, tuple[Item, ...]]:
    task = TASKS[name]
    seen: set[tuple] = set()
    out: dict[str, tuple[Item, ...]] = {}
    for split, n in [*SPLITS[task.shape].items(), ("loss", loss_items)]:
        drawn = []
        for i in range(n):
            for attempt in range(MAX_ATTEMPTS):
                item = task.make(random.Random(f"heldout/{name}/{split}/{i}/{attempt}"), _wanted(task, split, i))
                key = (item.question, tuple(sorted(item.options)), item.context)
                if key not in seen:
                    break
            else:
                raise RuntimeError(f"held-out task {name}: no new question after {MAX_ATTEMPTS} draws")
            seen.add(key)
            drawn.append(item)
        out[split] = tuple(drawn)
    return out


def items(name: str, split: str) -> tuple[Item, ...]:
    """The benchmark's items of one task and split (see SPLITS)."""
    return _draw(name, 0)[split]


def _render(task: HeldoutTask, item: Item, k: int) -> tuple[str, str]:
    template = Template(task.instructions[k % len(task.instructions)])
    if task.shape == "mc":
        return template.zero_shot(Example(item.question, item.answer, item.options), with_options=True), item.answer
    if task.shape == "qa":
        return template.zero_shot(Example(f"{item.context}\nQuestion: {item.question}", item.answer), False), item.answer
    # reasoning and arith: a zero-shot CoT query; the target is the rationale and the answer,
    # as the suite's CoT training targets read.
    ex = Example(item.question, item.answer, rationale=item.rationale.replace("\n", " "))
    return render("cot_zs", template, ex, (), random.Random(0), lambda s: True)


def loss_set(per_group: int = 48) -> list[tuple[str, str, str]]:
    """(group, inputs, targets) of the held-out loss set: per_group zero-shot examples per shape,
    round-robin over the shape's tasks and their instructions. Deterministic; the examples
    share no question with the benchmark's items, and a smaller set is a prefix of a larger one
    within each group."""
    out = []
    for shape in SHAPES:
        group = tasks(shape)
        need = -(-per_group // len(group))
        for j in range(per_group):
            task, k = group[j % len(group)], j // len(group)
            out.append((shape, *_render(task, _draw(task.name, need)["loss"][k], k)))
    return out
