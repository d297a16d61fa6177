"""The benchmark registry: one entry per benchmark, read by spec validation, the CLI, the
evaluation runner and the reports. JAX-free.

An entry points at its *shape* (`trainers/eval/shapes/`: `mmlu`, `bbh`, `tydiqa`, `mgsm`),
the object that loads the release file format, builds the few-shot prompts, reads answers,
lists rank-classification options and names the shape's members of the normalized average.
The paper's four benchmarks are one shape each; the built-in unseen-task benchmark reuses the
same four shapes on tasks that no finetuning mixture contains (`trainers/data/heldout.py`), so
both are loaded, prompted, extracted and scored by the same code. Adding a benchmark of a known
shape is its data and one `register` call here; adding a shape is one module under
`trainers/eval/shapes/` and the `register` call of a benchmark naming it.

Without data of their own (`eval.data_dir`), the paper's benchmarks are scored on small
synthetic stand-ins in the release formats; `standin` says when, so that such scores are
never taken for the real benchmarks'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from trainers.data.heldout import QA_CANDIDATES, REASONING_BASELINES
from trainers.eval.shapes import bbh, mgsm, mmlu, tydiqa
from trainers.eval.shapes.base import Shape
from trainers.spec import UserError, did_you_mean

# Every prompting mode the runner knows. rc (rank classification) scores each answer option
# by its log-probability instead of generating, so it only applies to shapes whose answers it
# can rank (`Shape.rankable`).
MODES = ("direct", "cot", "sc", "rc")
# How tables title a mode's scores ("MMLU CoT").
MODE_TITLES = {"direct": "Direct", "cot": "CoT", "sc": "SC", "rc": "RC"}
MMLU_SPLITS = mmlu.SPLITS  # files of an MMLU-shaped release; dev supplies the shots
_EVAL_DIR = Path(__file__).resolve().parent
STANDINS = _EVAL_DIR / "standins"
UNSEEN = _EVAL_DIR / "unseen"

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
    shape: Shape
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
    title: str = ""  # how tables name it ("TyDiQA"); "" = the name in capitals

    @property
    def display(self) -> str:
        return self.title or self.name.upper()

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
# suite -> {shape name: benchmark name}: the benchmarks whose scores make up the suite's average.
SUITES: dict[str, dict[str, str]] = {}
# The shapes the entries point at, by name.
_SHAPES: dict[str, Shape] = {}


def register(info: BenchmarkInfo) -> BenchmarkInfo:
    if info.name in _REGISTRY:
        raise ValueError(f"benchmark {info.name!r} is already registered")
    if not isinstance(info.shape, Shape) or not info.shape.name:
        raise ValueError(f"benchmark {info.name!r}: shape {info.shape!r} is not a named Shape (trainers/eval/shapes)")
    known = _SHAPES.get(info.shape.name, info.shape)
    if known is not info.shape:
        raise ValueError(f"benchmark {info.name!r}: another shape is already named {info.shape.name!r}")
    unknown = [m for m in info.modes if m not in MODES]
    if unknown or info.default_mode not in info.modes:
        raise ValueError(f"benchmark {info.name!r}: modes {info.modes} / default {info.default_mode!r} not in {MODES}")
    if not set(info.shape.average_modes) <= set(info.modes):
        raise ValueError(f"benchmark {info.name!r}: modes {info.modes} lack its shape's averaged {info.shape.average_modes}")
    if "rc" in info.modes and not info.shape.rankable:
        raise ValueError(f"benchmark {info.name!r}: rc needs a shape whose answers it can rank, not {info.shape.name}")
    suite = SUITES.setdefault(info.suite, {})
    if info.shape.name in suite:
        raise ValueError(f"suite {info.suite!r} already has a {info.shape.name}-shaped benchmark ({suite[info.shape.name]})")
    suite[info.shape.name] = info.name
    _SHAPES[info.shape.name] = info.shape
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


def shape(name: Shape | str) -> Shape:
    """The shape of that name that an entry points at (a Shape is returned as it is)."""
    if isinstance(name, Shape):
        return name
    try:
        return _SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown benchmark shape {name!r}; known: {', '.join(_SHAPES)}") from None


def average_members(suite: str) -> tuple[tuple[str, str], ...]:
    """The (benchmark, mode) pairs whose normalized scores make up `suite`'s average: each of
    its benchmarks in its shape's `average_modes` (the paper's six: MMLU and BBH direct and
    CoT, TyDiQA direct, MGSM CoT)."""
    return tuple((b, m) for b in SUITES[suite].values() for m in _REGISTRY[b].shape.average_modes)


def average_titles(suite: str = "paper") -> tuple[tuple[str, str], ...]:
    """(title, metric) of each member of `suite`'s average, in order ("MMLU CoT", "eval/mmlu/cot")."""
    return tuple((f"{_REGISTRY[b].display} {MODE_TITLES[m]}", f"eval/{b}/{m}") for b, m in average_members(suite))


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
    if (base / benchmark).is_dir() and not info.shape.looks_like_root(base):
        return base / benchmark
    if info.suite != "paper":
        return info.shipped
    return base


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


register(BenchmarkInfo("mmlu", mmlu.SHAPE, "paper", ("direct", "cot", "sc", "rc"), "direct", 5, 25.0, STANDINS / "mmlu",
                       "MMLU, 57 subjects, 5-shot from dev"))
register(BenchmarkInfo("bbh", bbh.SHAPE, "paper", ("direct", "cot", "sc", "rc"), "direct", 3, BBH_BASELINES, STANDINS / "bbh",
                       "BIG-Bench Hard, 27 subtasks, 3-shot CoT prompts"))
register(BenchmarkInfo("tydiqa", tydiqa.SHAPE, "paper", ("direct",), "direct", 1, 0.0, STANDINS / "tydiqa",
                       "TyDiQA GoldP, 8 languages, 1-shot", title="TyDiQA"))
register(BenchmarkInfo("mgsm", mgsm.SHAPE, "paper", ("direct", "cot", "sc"), "cot", 8, 0.0, STANDINS / "mgsm",
                       "MGSM, 10 languages, 8-shot CoT"))
register(BenchmarkInfo("unseen_mc", mmlu.SHAPE, "unseen", ("direct", "cot", "sc", "rc"), "direct", 5, 25.0, UNSEEN / "mc",
                       "held-out multiple-choice knowledge questions (MMLU-shaped)"))
register(BenchmarkInfo("unseen_reasoning", bbh.SHAPE, "unseen", ("direct", "cot", "sc", "rc"), "direct", 3,
                       REASONING_BASELINES, UNSEEN / "reasoning",
                       "held-out multi-step reasoning with CoT rationales (BBH-shaped)"))
register(BenchmarkInfo("unseen_qa", tydiqa.SHAPE, "unseen", ("direct", "rc"), "direct", 1, 0.0, UNSEEN / "qa",
                       "held-out extractive question answering (TyDiQA-shaped; rc ranks the passage's candidate spans)",
                       rc_baseline=100.0 / QA_CANDIDATES))
register(BenchmarkInfo("unseen_arith", mgsm.SHAPE, "unseen", ("direct", "cot", "sc"), "cot", 8, 0.0, UNSEEN / "arith",
                       "held-out arithmetic word problems with rationales (MGSM-shaped)"))
