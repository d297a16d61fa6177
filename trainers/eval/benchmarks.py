"""The benchmark registry: one entry per benchmark, read by spec validation, the CLI, the
evaluation runner and the reports. JAX-free.

An entry names its *shape* (`mmlu`, `bbh`, `tydiqa`, `mgsm`): the release file format its
loader reads, the few-shot prompt builder and the answer extraction. The paper's four
benchmarks are one shape each; the built-in unseen-task benchmark reuses the same four shapes
on tasks that no finetuning mixture contains (`trainers/data/heldout.py`), so both are
loaded, prompted, extracted and scored by the same code. Adding a benchmark is one module
(its data or loader) and one `register` call here.

Without data of their own (`eval.data_dir`), the paper's benchmarks are scored on small
synthetic stand-ins in the release formats; `standin` says when, so that such scores are
never taken for the real benchmarks'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from trainers.data.heldout import QA_CANDIDATES, REASONING_BASELINES
from trainers.spec import UserError, did_you_mean

SHAPES = ("mmlu", "bbh", "tydiqa", "mgsm")
# Every prompting mode the runner knows. rc (rank classification) scores each answer option
# by its log-probability instead of generating, so it only applies to multiple-choice shapes.
MODES = ("direct", "cot", "sc", "rc")
RC_SHAPES = ("mmlu", "bbh", "tydiqa")  # tydiqa: when its file lists candidate spans
MMLU_SPLITS = ("dev", "val", "test")  # files of an MMLU-shaped release; dev supplies the shots
_EVAL_DIR = Path(__file__).resolve().parent
STANDINS = _EVAL_DIR / "standins"
UNSEEN = _EVAL_DIR / "unseen"

# The six (benchmark, mode) scores of the paper's normalized average, by shape; each suite
# averages its own benchmarks of these shapes the same way.
AVERAGE_OF_SHAPES = (("mmlu", "direct"), ("mmlu", "cot"), ("bbh", "direct"), ("bbh", "cot"),
                     ("tydiqa", "direct"), ("mgsm", "cot"))

# The 27 BBH subtasks (file names of the release) with their random baselines in percent
# (the paper's section 5; the values as it lists them).
BBH_BASELINES: dict[str, float] = {
    **{t: 50.0 for t in (
        "boolean_expressions", "causal_judgement", "formal_fallacies", "hyperbaton",
        "navigate", "snarks", "sports_understanding", "web_of_lies")},
    "date_understanding": 100 / 6,
    "disambiguation_qa": 33.3,
    "movie_recommendation": 25.0,
    "ruin_names": 25.0,
    "temporal_sequences": 25.0,
    "salient_translation_error_detection": 100 / 6,
    "penguins_in_a_table": 20.0,
    "logical_deduction_three_objects": 33.3,
    "logical_deduction_five_objects": 20.0,
    "logical_deduction_seven_objects": 14.3,
    "tracking_shuffled_objects_three_objects": 33.3,
    "tracking_shuffled_objects_five_objects": 20.0,
    "tracking_shuffled_objects_seven_objects": 14.3,
    "reasoning_about_colored_objects": 100 / 18,
    **{t: 0.0 for t in (
        "dyck_languages", "multistep_arithmetic_two", "object_counting", "word_sorting",
        "geometric_shapes")},
}


@dataclass(frozen=True)
class BenchmarkInfo:
    """What every part of flanscale needs to know about one benchmark."""

    name: str
    shape: str
    suite: str  # "paper" | "unseen": which normalized average it enters
    modes: tuple[str, ...]
    default_mode: str
    shots: int
    # Random baseline in percent: one number, or one per task (BBH-shaped subtasks).
    baselines: float | Mapping[str, float]
    shipped: Path  # the data flanscale ships for it (stand-ins, or the benchmark itself)
    description: str = ""
    # Rank classification's baseline where it is not the generative one: a span question
    # ranked among its k candidate spans has chance 100/k, generating the span has 0.
    rc_baseline: float | None = None

    def baseline(self, task: str, mode: str = "") -> float:
        if self.rc_baseline is not None and mode.startswith("rc"):
            return self.rc_baseline
        if isinstance(self.baselines, Mapping):
            if task not in self.baselines:
                raise UserError(f"{self.name}: no random baseline for task {task!r}{did_you_mean(task, self.baselines)}; "
                                f"known: {', '.join(sorted(self.baselines))}")
            return float(self.baselines[task])
        return float(self.baselines)

    @property
    def chance(self) -> float:
        """The benchmark-level random baseline in percent (the mean over subtasks for BBH)."""
        return self.chance_for("")

    def chance_for(self, mode: str) -> float:
        """The random baseline in percent of `mode`'s scores (rank classification may differ)."""
        if self.rc_baseline is not None and mode.startswith("rc"):
            return self.rc_baseline
        if isinstance(self.baselines, Mapping):
            return sum(self.baselines.values()) / len(self.baselines)
        return float(self.baselines)


_REGISTRY: dict[str, BenchmarkInfo] = {}
# suite -> {shape: benchmark name}: the benchmarks whose scores make up the suite's average.
SUITES: dict[str, dict[str, str]] = {}


def register(info: BenchmarkInfo) -> BenchmarkInfo:
    if info.name in _REGISTRY:
        raise ValueError(f"benchmark {info.name!r} is already registered")
    if info.shape not in SHAPES:
        raise ValueError(f"benchmark {info.name!r}: shape {info.shape!r} not in {SHAPES}")
    unknown = [m for m in info.modes if m not in MODES]
    if unknown or info.default_mode not in info.modes:
        raise ValueError(f"benchmark {info.name!r}: modes {info.modes} / default {info.default_mode!r} not in {MODES}")
    if "rc" in info.modes and info.shape not in RC_SHAPES:
        raise ValueError(f"benchmark {info.name!r}: rc needs a multiple-choice shape {RC_SHAPES}")
    suite = SUITES.setdefault(info.suite, {})
    if info.shape in suite:
        raise ValueError(f"suite {info.suite!r} already has a {info.shape}-shaped benchmark ({suite[info.shape]})")
    suite[info.shape] = info.name
    _REGISTRY[info.name] = info
    return info


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name: str, field_name: str = "benchmark") -> BenchmarkInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"{field_name}: unknown {name!r}{did_you_mean(name, _REGISTRY)}; "
                        f"allowed: {', '.join(_REGISTRY)}") from None


def average_members(suite: str) -> tuple[tuple[str, str], ...]:
    """The six (benchmark, mode) pairs whose normalized scores make up `suite`'s average."""
    shapes = SUITES[suite]
    return tuple((shapes[s], m) for s, m in AVERAGE_OF_SHAPES if s in shapes)


def average_metric(suite: str) -> str:
    """The metric name of a suite's normalized average."""
    return "eval/normalized_average" if suite == "paper" else f"eval/{suite}/normalized_average"


def benchmark_root(benchmark: str, data_dir: str | Path = "") -> Path:
    """The directory holding `benchmark`'s files: `data_dir/<benchmark>` if it exists, else
    `data_dir` itself for the paper's benchmarks; the shipped data when `data_dir` is empty
    (and always for a built-in benchmark that `data_dir` does not hold)."""
    info = get(benchmark)
    if not data_dir:
        return info.shipped
    base = Path(data_dir)
    if not base.is_dir():
        raise UserError(f"eval data_dir: {str(base)!r} is not a directory")
    if (base / benchmark).is_dir() and not _looks_like_root(info.shape, base):
        return base / benchmark
    if info.suite != "paper":
        return info.shipped
    return base


def _looks_like_root(shape: str, path: Path) -> bool:
    # BBH's own root holds a folder named bbh/, so "has a child named like the benchmark"
    # alone cannot tell a benchmark root from a directory of benchmarks.
    if shape == "mmlu":
        return (path / "data" / "dev").is_dir() or (path / "dev").is_dir()
    if shape == "bbh":
        return (path / "bbh").is_dir() and (path / "cot-prompts").is_dir()
    if shape == "mgsm":
        return any(path.glob("mgsm_*.tsv"))
    return any(path.glob("*.json"))


def standin(benchmark: str, data_dir: str | Path = "") -> bool:
    """Whether `benchmark` read from `data_dir` is scored on flanscale's synthetic stand-ins
    (the files under STANDINS) rather than on the benchmark it is named after: a paper
    benchmark without data of its own. The built-in unseen-task benchmarks are real data."""
    return benchmark_root(benchmark, data_dir).resolve().is_relative_to(STANDINS)


# The run param naming the benchmarks of a cell that are scored on stand-ins.
STANDINS_PARAM = "eval_standins"


def standins_param(names: Sequence[str], data_dir: str | Path = "") -> dict[str, str]:
    """{STANDINS_PARAM: the stand-in benchmarks among `names`, comma-separated in their order
    ("" when none)}: the one value the controller and the cell's job both log."""
    return {STANDINS_PARAM: ",".join(b for b in names if standin(b, data_dir))}


register(BenchmarkInfo("mmlu", "mmlu", "paper", ("direct", "cot", "sc", "rc"), "direct", 5, 25.0, STANDINS / "mmlu",
                       "MMLU, 57 subjects, 5-shot from dev"))
register(BenchmarkInfo("bbh", "bbh", "paper", ("direct", "cot", "sc", "rc"), "direct", 3, BBH_BASELINES, STANDINS / "bbh",
                       "BIG-Bench Hard, 27 subtasks, 3-shot CoT prompts"))
register(BenchmarkInfo("tydiqa", "tydiqa", "paper", ("direct",), "direct", 1, 0.0, STANDINS / "tydiqa",
                       "TyDiQA GoldP, 8 languages, 1-shot"))
register(BenchmarkInfo("mgsm", "mgsm", "paper", ("direct", "cot", "sc"), "cot", 8, 0.0, STANDINS / "mgsm",
                       "MGSM, 10 languages, 8-shot CoT"))
register(BenchmarkInfo("unseen_mc", "mmlu", "unseen", ("direct", "cot", "sc", "rc"), "direct", 5, 25.0, UNSEEN / "mc",
                       "held-out multiple-choice knowledge questions (MMLU-shaped)"))
register(BenchmarkInfo("unseen_reasoning", "bbh", "unseen", ("direct", "cot", "sc", "rc"), "direct", 3,
                       REASONING_BASELINES, UNSEEN / "reasoning",
                       "held-out multi-step reasoning with CoT rationales (BBH-shaped)"))
register(BenchmarkInfo("unseen_qa", "tydiqa", "unseen", ("direct", "rc"), "direct", 1, 0.0, UNSEEN / "qa",
                       "held-out extractive question answering (TyDiQA-shaped; rc ranks the passage's candidate spans)",
                       rc_baseline=100.0 / QA_CANDIDATES))
register(BenchmarkInfo("unseen_arith", "mgsm", "unseen", ("direct", "cot", "sc"), "cot", 8, 0.0, UNSEEN / "arith",
                       "held-out arithmetic word problems with rationales (MGSM-shaped)"))
