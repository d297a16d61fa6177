"""Task selection (the paper's task-count ladder) and examples-proportional mixing with caps.

**Ladder.** Tasks are taken sub-mixture by sub-mixture in the order CoT, Muffin, T0-SF, NIV2
and, inside a sub-mixture, in registry order. So 9 = CoT, 89 = + Muffin, 282 = + T0-SF and
1,836 = + NIV2 exactly as in the paper, and any other count n takes whole sub-mixtures
while they fit and then the first tasks of the next one: every smaller mixture is a subset
of every larger one. `with_cot=False` then drops the CoT tasks (282 without CoT = 273 tasks).

**Mixing.** A draw picks a sub-mixture with the configured proportions (renormalised over
the sub-mixtures that have tasks), then a task with probability proportional to
min(#examples, cap), then that task's next example in a per-epoch pseudo-random order.
Caps are in the paper's units (examples of the Flan collection); for the synthetic suite
they are multiplied by `suite.cap_scale(examples_per_task)`.

**Determinism.** Draw n uses `random.Random(f"{seed}/{n}")`, and the example order within
a task is a keyed permutation of its counter, so the whole stream is a function of
(seed, n, per-task counters): `state()` is that small dict and `restore()` continues with
exactly the same examples.
"""

from __future__ import annotations

import random
import zlib
from itertools import accumulate
from pathlib import Path
from typing import Callable

from trainers.data.registry import PAPER_CAPS, SUBMIXTURES, Task, TaskRegistry
from trainers.data.templates import normalize_formats
from trainers.home import flanscale_home
from trainers.spec import DataConfig, UserError, did_you_mean

PRESETS = {
    "A": {"muffin": 52.0, "t0sf": 15.0, "niv2": 30.0, "cot": 3.0},  # scaling ablations
    "B": {"muffin": 46.0, "t0sf": 27.9, "niv2": 24.2, "cot": 1.8},  # final models
}


def _check_submixture(name: str, field: str) -> None:
    if name not in SUBMIXTURES:
        raise UserError(f"{field}: unknown sub-mixture {name!r}{did_you_mean(name, SUBMIXTURES)}; allowed: {', '.join(SUBMIXTURES)}")


def proportions(cfg: DataConfig) -> dict[str, float]:
    """Sub-mixture weights: a preset, with cfg.proportions overriding (all of them for 'custom')."""
    if cfg.mixture == "custom":
        if not cfg.proportions:
            raise UserError("data.proportions: empty; mixture 'custom' needs (sub-mixture, weight) pairs")
        base = {s: 0.0 for s in SUBMIXTURES}
    elif cfg.mixture in PRESETS:
        base = dict(PRESETS[cfg.mixture])
    else:
        raise UserError(f"data.mixture: {cfg.mixture!r} unknown; allowed: A, B, custom")
    for name, weight in cfg.proportions:
        _check_submixture(name, "data.proportions")
        if not weight >= 0:
            raise UserError(f"data.proportions: weight {weight!r} for {name!r} must be >= 0")
        base[name] = float(weight)
    return base


def caps(cfg: DataConfig) -> dict[str, int]:
    """Per-task example caps in the units of the configured source."""
    paper = dict(PAPER_CAPS)
    for name, cap in cfg.caps:
        _check_submixture(name, "data.caps")
        if int(cap) < 1:
            raise UserError(f"data.caps: cap {cap!r} for {name!r} must be >= 1")
        paper[name] = int(cap)
    if cfg.source != "synthetic":
        return paper
    from trainers.data.suite import cap_scale

    scale = cap_scale(cfg.examples_per_task)
    return {s: max(1, round(c * scale)) for s, c in paper.items()}


def build_registry(cfg: DataConfig, home: Path | str | None = None) -> TaskRegistry:
    if cfg.source == "synthetic":
        from trainers.data.suite import build_suite

        return build_suite(cfg.examples_per_task)
    if cfg.source == "flan":
        from trainers.data.flan import load_registry

        return load_registry(cfg.paths, flanscale_home(home))
    raise UserError(f"data.source: {cfg.source!r} unknown; allowed: synthetic, flan")


def select_tasks(registry: TaskRegistry, task_count: int, with_cot: bool = True) -> list[Task]:
    """The nested ladder subset of `task_count` tasks (see module docstring)."""
    if task_count < 1:
        raise UserError(f"data.task_count: {task_count} selects no finetuning data (0 = the base model, nothing to train on)")
    if task_count > len(registry):
        raise UserError(f"data.task_count: {task_count} but the data source has only {len(registry)} tasks {registry.counts()}")
    chosen: list[Task] = []
    for sub in SUBMIXTURES:
        chosen += registry.by_submixture(sub)[: task_count - len(chosen)]
    return [t for t in chosen if with_cot or t.submixture != "cot"]


def _permute(i: int, m: int, key: int) -> int:
    """A keyed bijection of range(m) (4-round Feistel network + cycle walking), so a task's
    examples are visited in a shuffled order without storing a permutation."""
    half = max(1, ((m - 1).bit_length() + 1) // 2)
    mask = (1 << half) - 1
    x = i
    while True:
        left, right = x >> half, x & mask
        for r in range(4):
            h = (right * 0x9E3779B1 + key + r * 0x85EBCA77) & 0xFFFFFFFF
            h ^= h >> 15
            left, right = right, left ^ (h & mask)
        x = (left << half) | right
        if x < m:
            return x


class MixtureStream:
    """Endless, deterministic, resumable stream of (task name, inputs, targets)."""

    def __init__(self, registry: TaskRegistry, cfg: DataConfig, seed: int, length_fn: Callable[[str], int]):
        self.formats = normalize_formats(cfg.formats)
        self.seed = seed
        tasks = select_tasks(registry, cfg.task_count, cfg.with_cot)
        if not tasks:
            raise UserError(f"data.with_cot: false leaves none of the {cfg.task_count} selected tasks (they are all CoT)")
        weights, cap = proportions(cfg), caps(cfg)
        self._groups: list[tuple[str, list[Task], list[float], list[int]]] = []
        for sub in SUBMIXTURES:
            members = [(t, min(t.size(self.formats), cap[sub])) for t in tasks if t.submixture == sub]
            members = [(t, n) for t, n in members if n > 0]
            if members and weights[sub] > 0:
                sizes = [n for _, n in members]
                self._groups.append((sub, [t for t, _ in members], list(accumulate(sizes)), sizes))
        if not self._groups:
            raise UserError(
                f"data.formats: none of the {len(tasks)} selected tasks has examples in formats {', '.join(self.formats)}"
                f" with non-zero proportion (CoT tasks come only in cot formats, the others never do)"
            )
        total = sum(weights[g[0]] for g in self._groups)
        self.rates = {g[0]: weights[g[0]] / total for g in self._groups}  # renormalised over present sub-mixtures
        self._sub_cum = list(accumulate(self.rates[g[0]] for g in self._groups))
        input_length = cfg.input_length
        self._fits = lambda s: length_fn(s) + 1 <= input_length  # +1: the EOS packing appends
        self.drawn = 0
        self.counters: dict[str, int] = {}

    @property
    def tasks(self) -> list[Task]:
        return [t for g in self._groups for t in g[1]]

    def task_rates(self) -> dict[str, float]:
        """Probability that a draw comes from each task (the effective mixing rates)."""
        out = {}
        for sub, tasks, cum, sizes in self._groups:
            for t, n in zip(tasks, sizes):
                out[t.name] = self.rates[sub] * n / cum[-1]
        return out

    def next(self) -> tuple[str, str, str]:
        rng = random.Random(f"{self.seed}/{self.drawn}")
        self.drawn += 1
        _, tasks, cum, sizes = rng.choices(self._groups, cum_weights=self._sub_cum)[0]
        j = rng.choices(range(len(tasks)), cum_weights=cum)[0]
        task, m = tasks[j], sizes[j]
        c = self.counters.get(task.name, 0)
        self.counters[task.name] = c + 1
        epoch, pos = divmod(c, m)
        key = zlib.crc32(f"{self.seed}/{task.name}/{epoch}".encode())
        inputs, targets = task.render(_permute(pos, m, key), self.formats, rng, self._fits)
        return task.name, inputs, targets

    def state(self) -> dict:
        return {"seed": self.seed, "drawn": self.drawn, "counters": dict(self.counters)}

    def restore(self, state: dict) -> None:
        self.seed, self.drawn, self.counters = int(state["seed"]), int(state["drawn"]), dict(state["counters"])
