"""What a benchmark shape is, JAX-free, and the items every shape reads and writes.

A *shape* is everything about a benchmark that follows from the form of its data: the release
file format its loader reads, its few-shot prompts (direct, CoT, and the rank-classification
variant), how an answer is read out of a model's output (strictly, as the paper's tables do,
and flexibly), the canonical form of its gold answers, the options rank classification scores
and which of its scores enter a suite's normalized average. One `Shape` subclass per module
of this package answers all of it; a benchmark entry (`trainers/eval/benchmarks.py`) names its
shape object, and loading, prompting, extraction and scoring ask the shape, never its name.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainers.eval.benchmarks import BenchmarkInfo

# Modes whose prompts end with the CoT trigger and whose answers follow "the answer is".
COT_MODES = ("cot", "sc")
# The final answer of a release's worked exemplar: what follows its last "the answer is".
EXEMPLAR_ANSWER = re.compile(r"the answer is\s*(.*)", re.IGNORECASE | re.DOTALL)


def is_cot(mode: str) -> bool:
    return mode in COT_MODES


@dataclass(frozen=True)
class Example:
    """One evaluated item. `answers` holds every accepted gold answer (TyDiQA may have several)."""

    id: str
    task: str
    question: str
    answers: tuple[str, ...]
    choices: tuple[str, ...] = ()  # MMLU options A-D; TyDiQA-shaped: candidate spans of the passage, when the file lists them
    context: str = ""  # TyDiQA passage


@dataclass(frozen=True)
class Shot:
    """A few-shot exemplar: question text, the CoT answer text (rationale ending in
    "So the answer is X."; "" when only the final answer is known) and the final answer."""

    question: str
    rationale: str
    answer: str
    choices: tuple[str, ...] = ()
    context: str = ""


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark: its examples per task and the few-shot material its prompts need."""

    name: str
    shape: Shape  # how it is prompted and its answers read
    tasks: dict[str, tuple[Example, ...]]
    shots: dict[str, tuple[Shot, ...]] = field(default_factory=dict)  # per task
    cot_shots: dict[str, tuple[Shot, ...]] = field(default_factory=dict)  # per task, with rationales
    descriptions: dict[str, str] = field(default_factory=dict)  # BBH task descriptions
    num_shots: int = -1  # exemplars per prompt; -1 = the registry's (the paper's) number

    @property
    def info(self) -> BenchmarkInfo:
        """The registry's entry of this benchmark."""
        from trainers.eval import benchmarks

        return benchmarks.get(self.name)

    @property
    def k(self) -> int:
        """How many exemplars a prompt of this benchmark shows."""
        return self.info.shots if self.num_shots < 0 else self.num_shots

    def limited(self, max_examples: int) -> Benchmark:
        """The first `max_examples` examples of each task (0 = all)."""
        if max_examples <= 0:
            return self
        return replace(self, tasks={t: ex[:max_examples] for t, ex in self.tasks.items()})

    def with_shots(self, shots: int) -> Benchmark:
        """Prompts with `shots` exemplars (0 = zero-shot; -1 = the benchmark's own number)."""
        return replace(self, num_shots=shots)

    def by_id(self) -> dict[str, Example]:
        return {e.id: e for ex in self.tasks.values() for e in ex}


@dataclass(frozen=True)
class Choices:
    """One question's options for rank classification: the texts scored as continuations, how
    each is written as an answer (MMLU's letter, BBH's "(X)"), and which one is right."""

    options: tuple[str, ...]
    labels: tuple[str, ...]
    gold: int


class Shape(ABC):
    """One benchmark shape. Subclasses set the class attributes and implement `load`, the
    prompts and `extract`; the defaults suit a shape whose gold answers compare as written
    and that rank classification cannot score."""

    name: str = ""
    id_form: str = ""  # how its example ids read, e.g. "{task}/{index}" (for error messages)
    # The modes whose strict scores enter a suite's normalized average, for the suite's
    # benchmark of this shape (the paper's six: MMLU and BBH direct and CoT, TyDiQA direct,
    # MGSM CoT); () = none.
    average_modes: tuple[str, ...] = ()
    # Whether rank classification (mode rc) can score it: `rc_options` lists answer options.
    rankable: bool = False

    # ------------------------------------------------------------------------------ data

    @abstractmethod
    def load(self, root: Path, info: BenchmarkInfo, mmlu_split: str) -> Benchmark:
        """The benchmark `info` from its release-format files under `root`; malformed input
        raises UserError naming the file (and line) and what was expected. `mmlu_split` is the
        split an MMLU-shaped release evaluates (other shapes ignore it)."""

    def looks_like_root(self, path: Path) -> bool:
        """Whether `path` is itself a benchmark root of this shape rather than a directory of
        benchmarks (one of them named like the benchmark)."""
        return False

    # --------------------------------------------------------------------------- prompts

    def prompt(self, bench: Benchmark, ex: Example, mode: str) -> str:
        """The full prompt for one example: "sc" uses the CoT prompt, "rc" the direct one with
        its exemplars answered by the option's text (the options are scored as continuations of
        the direct answer slot)."""
        if is_cot(mode):
            return self.cot_prompt(bench, ex)
        if mode == "rc":
            return self.rc_prompt(bench, ex)
        return self.direct_prompt(bench, ex)

    @abstractmethod
    def direct_prompt(self, bench: Benchmark, ex: Example) -> str:
        """`bench.k` exemplars answered directly, then the question."""

    def cot_prompt(self, bench: Benchmark, ex: Example) -> str:
        """`bench.k` worked exemplars, then the question and the CoT trigger; the direct
        prompt for a shape without a CoT variant."""
        return self.direct_prompt(bench, ex)

    def rc_prompt(self, bench: Benchmark, ex: Example) -> str:
        """The prompt whose continuations rank classification scores."""
        return self.direct_prompt(bench, ex)

    # ------------------------------------------------------------------------ extraction

    @abstractmethod
    def extract(self, mode: str, text: str, ex: Example) -> str | None:
        """The canonical answer `text` gives to `ex` under `mode`, read as the paper reads it
        (comparable with `gold`); None when no answer can be read."""

    def gold(self, ex: Example) -> set[str]:
        """The canonical forms of `ex`'s gold answers."""
        return {a.strip() for a in ex.answers}

    def flex(self, mode: str, text: str, ex: Example) -> str | None:
        """The answer read leniently (comparable with `flex_gold`): also answers whose form
        strays from the exemplars'."""
        return self.extract(mode, text, ex)

    def flex_gold(self, ex: Example) -> set[str]:
        """The gold answers in `flex`'s canonical forms."""
        return self.gold(ex)

    # ---------------------------------------------------------------- rank classification

    def rc_options(self, bench: Benchmark, task: str) -> dict[str, Choices] | None:
        """Example id -> its choices, for every example of `task`; None when the task is not
        multiple choice (then rank classification skips it)."""
        return None

    def __repr__(self) -> str:
        return f"<shape {self.name}>"
