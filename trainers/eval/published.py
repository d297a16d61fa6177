"""The normalized average from published scores: benchmark-level numbers (a paper's table, a
leaderboard) or per-task scores, instead of per-example predictions. JAX-free.

A benchmark with one random baseline (MMLU 25, TyDiQA and MGSM 0) normalizes its mean
exactly. BBH normalizes each subtask with its own baseline and averages those, so from a BBH
mean alone the normalized score is only approximated, with the mean of the subtask baselines
as the baseline; the result says which scores are approximate. Given per-subtask scores, it
is exact.

Scores are read from a JSON file shaped either as `{"mmlu/direct": 52.4, "bbh/cot":
{"boolean_expressions": 60.0, ...}, ...}` or as the list `flanscale eval score --format
json` objects (`{"benchmark", "mode", "tasks", "score"}`), and from `BENCH/MODE=VALUE` flags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from trainers.eval import benchmarks, scoring
from trainers.spec import UserError

Scores = dict[tuple[str, str], "float | dict[str, float]"]


@dataclass(frozen=True)
class Average:
    suite: str
    normalized: dict[str, float]  # "bench/mode" -> normalized score
    average: float | None  # None when a member is missing
    approximate: tuple[str, ...]  # members normalized from a mean with per-task baselines
    missing: tuple[str, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"suite": self.suite, "metric": benchmarks.average_metric(self.suite), "average": self.average,
                "normalized": self.normalized, "approximate": list(self.approximate), "missing": list(self.missing),
                "notes": list(self.notes)}


def normalized_score(benchmark: str, mode: str, score: float | Mapping[str, float]) -> tuple[float, bool]:
    """(normalized score, whether it is approximate) of a benchmark-level or per-task score."""
    info = benchmarks.get(benchmark)
    if isinstance(score, Mapping):
        return scoring.aggregate(benchmark, mode, dict(score)).normalized, False
    per_task = isinstance(info.baselines, Mapping)
    return scoring.normalize(float(score), info.chance), per_task


def normalized_average(scores: Scores, suite: str = "paper") -> Average:
    """The suite's normalized average of `scores` ((benchmark, mode) -> mean or per-task scores)."""
    if suite not in benchmarks.SUITES:
        raise UserError(f"--suite: unknown {suite!r}; allowed: {', '.join(benchmarks.SUITES)}")
    members = benchmarks.average_members(suite)
    normalized, approx, missing = {}, [], []
    for bench, mode in members:
        key = f"{bench}/{mode}"
        if (bench, mode) not in scores:
            missing.append(key)
            continue
        normalized[key], is_approx = normalized_score(bench, mode, scores[(bench, mode)])
        if is_approx:
            approx.append(key)
    notes = []
    if approx:
        chance = {k: benchmarks.get(k.split("/")[0]).chance for k in approx}
        notes.append("approximate: " + ", ".join(f"{k} normalized from its mean with the mean of its subtask "
                                                 f"baselines ({c:.1f}) instead of per subtask" for k, c in chance.items()))
    if missing:
        notes.append(f"no average without {', '.join(missing)}")
    avg = sum(normalized.values()) / len(members) if not missing else None
    return Average(suite, normalized, avg, tuple(approx), tuple(missing), tuple(notes))


def parse_flag(text: str) -> tuple[tuple[str, str], float]:
    """`mmlu/direct=52.4` -> (("mmlu", "direct"), 52.4)."""
    key, sep, value = text.partition("=")
    parts = key.strip().split("/")
    if not sep or len(parts) != 2:
        raise UserError(f"--score: expected BENCHMARK/MODE=VALUE such as mmlu/direct=52.4, got {text!r}")
    return _key(parts[0], parts[1], "--score"), _percent(value, f"--score {key.strip()}")


def read_scores(path: Path) -> Scores:
    if not path.is_file():
        raise UserError(f"--scores: {str(path)!r} is not a file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    out: Scores = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            parts = str(k).split("/")
            if len(parts) != 2:
                raise UserError(f"{path}: key {k!r} is not BENCHMARK/MODE (e.g. \"mmlu/direct\")")
            out[_key(parts[0], parts[1], str(path))] = _value(v, f"{path}: {k}")
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            if not (isinstance(item, dict) and all(isinstance(item.get(k), str) for k in ("benchmark", "mode"))):
                raise UserError(f"{path}: item {i} needs string fields 'benchmark' and 'mode'")
            v = item.get("tasks") if isinstance(item.get("tasks"), dict) and item["tasks"] else item.get("score")
            out[_key(item["benchmark"], item["mode"], str(path))] = _value(v, f"{path}: item {i}")
    else:
        raise UserError(f"{path}: expected an object {{\"mmlu/direct\": 52.4, ...}} or a list of `eval score` results")
    return out


def _key(bench: str, mode: str, where: str) -> tuple[str, str]:
    info = benchmarks.get(bench.strip(), field_name=f"{where}: benchmark")
    if mode.strip() not in info.modes:
        raise UserError(f"{where}: mode {mode.strip()!r} of {info.name}; allowed: {', '.join(info.modes)}")
    return info.name, mode.strip()


def _value(v: Any, where: str) -> float | dict[str, float]:
    if isinstance(v, dict):
        return {str(t): _percent(s, f"{where}/{t}") for t, s in v.items()}
    return _percent(v, where)


def _percent(v: Any, where: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {v!r} is not a number (a score in percent)") from None
    if not 0.0 <= x <= 100.0:
        raise UserError(f"{where}: {x:g} is outside 0..100 (a score in percent)")
    return x


def format_table(result: Average) -> str:
    lines = [f"{result.suite} normalized average"]
    for key, v in result.normalized.items():
        lines.append(f"  {key:<24} {v:7.2f}{'  (approximate)' if key in result.approximate else ''}")
    lines.append(f"  {'average':<24} {result.average:7.2f}" if result.average is not None else "  average: —")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)
