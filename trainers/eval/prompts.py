"""Few-shot prompts: each benchmark's shape builds them (`Shape.prompt`, trainers/eval/shapes/),
in the formats of the papers' evaluations; this module is what callers and shapes share.

CoT queries end with the zero-shot CoT trigger "Let's think step by step." `eval.shots` sets
how many exemplars a prompt shows (`Benchmark.k`): the paper's numbers by default, 0 for
zero-shot prompts in each benchmark's own format (header, options, answer cue), which is what
fits the short inputs small models train with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainers.eval.shapes.base import Benchmark, Example, Shot


def others(shots: tuple[Shot, ...], ex: Example, k: int) -> list[Shot]:
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


def prompt(bench: Benchmark, ex: Example, mode: str) -> str:
    """The full prompt for one example of `bench` in `mode` (see `Shape.prompt`)."""
    return bench.shape.prompt(bench, ex, mode)
