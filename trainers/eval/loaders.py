"""Loading a registered benchmark from its release-format files: the benchmark's shape reads
them (`Shape.load`, trainers/eval/shapes/) into a `Benchmark`, the evaluated examples per task
(subject, subtask or language) and the few-shot material the prompts need. Malformed input
raises `UserError` naming the file (and line or row) and what was expected, before any model
runs.

Roots (see `benchmarks.benchmark_root`): a data directory may hold all four paper benchmarks
as `<dir>/{mmlu,bbh,tydiqa,mgsm}/...`, or be one benchmark's root itself.
"""

from __future__ import annotations

from pathlib import Path

from trainers.eval import benchmarks
from trainers.eval.shapes.base import Benchmark, Example, Shot  # noqa: F401  (the items loaders return)
from trainers.eval.shapes.bbh import parse_cot_prompt  # noqa: F401
from trainers.eval.shapes.mgsm import load_mgsm  # noqa: F401
from trainers.eval.shapes.mmlu import load_mmlu  # noqa: F401
from trainers.eval.shapes.tydiqa import load_tydiqa  # noqa: F401

STANDINS = benchmarks.STANDINS
BBH_BASELINES = benchmarks.BBH_BASELINES
MMLU_SPLITS = benchmarks.MMLU_SPLITS


def load(benchmark: str, data_dir: str | Path = "", mmlu_split: str = "test") -> Benchmark:
    """Load a registered benchmark from its release-format files; `mmlu_split` is the split
    MMLU-shaped benchmarks evaluate (`dev` always supplies the 5 shots)."""
    info = benchmarks.get(benchmark)
    return info.shape.load(benchmarks.benchmark_root(benchmark, data_dir), info, mmlu_split)
