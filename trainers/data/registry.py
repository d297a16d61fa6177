"""Tasks and the explicit registry that holds them.

A task has a name, the sub-mixture it belongs to, an example source and templates. The
source knows how many examples the task has (per format) and renders example `i` into an
(inputs, targets) pair; synthetic tasks render through templates, Flan exports arrive
already rendered.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

from trainers.data.templates import MAX_EXEMPLARS, Example, Template, render
# Ladder order of the paper: 9 tasks = CoT, 89 = + Muffin, 282 = + T0-SF, 1,836 = + NIV2
# (trainers.spec.SUBMIXTURES and TASK_LADDER, which the control plane checks specs against).
from trainers.spec import SUBMIXTURES, UserError, did_you_mean  # noqa: F401
# Paper Table 23: tasks per sub-mixture and the per-task example cap.
PAPER_TASK_COUNTS = {"cot": 9, "muffin": 80, "t0sf": 193, "niv2": 1554}
PAPER_CAPS = {"cot": 100_000, "muffin": 30_000, "t0sf": 20_000, "niv2": 5_000}


class ExampleSource(Protocol):
    def size(self, formats: tuple[str, ...]) -> int:
        """Number of examples available in any of `formats`."""

    def render(
        self, task: "Task", index: int, formats: tuple[str, ...], rng: random.Random, fits: Callable[[str], bool]
    ) -> tuple[str, str]:
        """Example `index` (< size(formats)) as (inputs, targets)."""


@dataclass(frozen=True)
class Task:
    name: str
    submixture: str
    source: ExampleSource
    templates: tuple[Template, ...]
    formats: tuple[str, ...]  # formats the task can be rendered in

    def usable_formats(self, wanted: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(f for f in self.formats if f in wanted)

    def size(self, wanted: tuple[str, ...]) -> int:
        usable = self.usable_formats(wanted)
        return self.source.size(usable) if usable else 0

    def render(
        self, index: int, wanted: tuple[str, ...], rng: random.Random, fits: Callable[[str], bool]
    ) -> tuple[str, str]:
        return self.source.render(self, index, self.usable_formats(wanted), rng, fits)


@dataclass(frozen=True)
class GeneratedSource:
    """Examples produced on demand by a deterministic generator, seeded by task name and index.

    Nothing is stored: example i is regenerated whenever it is needed, so a task of any
    size costs nothing until it is sampled.
    """

    generate: Callable[[random.Random], Example]
    num_examples: int
    seed_key: str

    def example(self, index: int) -> Example:
        return self.generate(random.Random(f"{self.seed_key}/{index}"))

    def size(self, formats: tuple[str, ...]) -> int:
        return self.num_examples

    def render(self, task, index, formats, rng, fits):
        fmt = rng.choice(formats)
        template = rng.choice(task.templates)
        exemplars: list[Example] = []
        if fmt in ("fs_opt", "fs_noopt", "cot_fs") and self.num_examples > 1:
            k = rng.randint(1, min(MAX_EXEMPLARS, self.num_examples - 1))
            picks = rng.sample(range(self.num_examples - 1), k)
            query = self.example(index)
            # Skip the query's index, and exemplars that repeat its question (small synthetic
            # input spaces repeat) or each other, so an exemplar never gives the answer away.
            seen = {query.question}
            for j in picks:
                ex = self.example(j if j < index else j + 1)
                if ex.question not in seen:
                    seen.add(ex.question)
                    exemplars.append(ex)
            return render(fmt, template, query, exemplars, rng, fits)
        return render(fmt, template, self.example(index), exemplars, rng, fits)


class TaskRegistry:
    """Name -> Task. Duplicate names raise; unknown names suggest the closest one."""

    def __init__(self, tasks: Iterable[Task] = ()):
        self._tasks: dict[str, Task] = {}
        for t in tasks:
            self.add(t)

    def add(self, task: Task) -> Task:
        if task.name in self._tasks:
            raise ValueError(f"task {task.name!r} is already registered")
        if task.submixture not in SUBMIXTURES:
            raise ValueError(f"task {task.name!r}: sub-mixture {task.submixture!r} not in {SUBMIXTURES}")
        self._tasks[task.name] = task
        return task

    def get(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise UserError(
                f"unknown task {name!r}{did_you_mean(name, self._tasks)} ({len(self._tasks)} tasks registered)"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def names(self) -> list[str]:
        return list(self._tasks)

    def by_submixture(self, submixture: str) -> list[Task]:
        """Tasks of one sub-mixture in registration order (the order the ladder takes them in)."""
        return [t for t in self._tasks.values() if t.submixture == submixture]

    def counts(self) -> dict[str, int]:
        return {s: len(self.by_submixture(s)) for s in SUBMIXTURES}
