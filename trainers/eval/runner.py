"""Evaluate a model on the held-out benchmarks: load, prompt, generate or rank, extract, score.

`run_benchmark` takes any generate function (prompts -> continuations) and `run_rank` any
option scorer (prompts, options -> log-probabilities), so the same path scores a JAX model, a
fake in tests, or is bypassed by `score_outputs` for predictions made elsewhere.

`run_eval` / `evaluate_run` return, beside the metrics, the scores they were computed from
and a sample of the predictions (prompt, output, extracted answer, gold, correct) for people
to read; `run_all` / `evaluate` return the metrics alone, which are the same either way.
`run_eval` is the one evaluation loop: a cell runs it (`evaluate_run`, through `trainers.job`)
and so does `flanscale eval` on a checkpoint, with the same model wrappers (`model_scorers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Container, Mapping, Protocol, Sequence

from trainers.eval import benchmarks, loaders, prompts, rc, scoring
from trainers.spec import EvalConfig, UserError


class Generate(Protocol):
    def __call__(self, prompts: Sequence[str], *, num_samples: int = 1, temperature: float = 0.0,
                 top_k: int = 0, seed: int = 0, max_new_tokens: int | None = None) -> list[list[str]]: ...


@dataclass(frozen=True)
class BenchmarkRun:
    score: scoring.Score
    outputs: dict[str, list[str]]  # example id -> raw continuations (one, or the SC samples)
    prompts: dict[str, str] = field(default_factory=dict)  # example id -> the prompt it was given


@dataclass(frozen=True)
class Prediction:
    """One evaluated example as a person reads it. For self-consistency `output` is the first
    sample and `answer` the vote; for rank classification both are the chosen option."""

    benchmark: str
    mode: str
    task: str
    id: str
    prompt: str
    output: str
    answer: str
    gold: str  # the accepted answers, " | "-separated
    correct: bool
    correct_flex: bool  # under the flexible reading (= correct for rc)


@dataclass(frozen=True)
class EvalRun:
    metrics: dict[str, float]
    scores: tuple[scoring.Score, ...]  # strict generative scores (flexible twin inside), rc and rc_norm
    predictions: tuple[Prediction, ...]  # up to `predictions` per benchmark and mode
    standins: tuple[str, ...] = ()  # the benchmarks scored on flanscale's stand-in data (benchmarks.standin)
    # (benchmark, mode) -> example id -> raw outputs (one, or the SC samples; rc: the chosen
    # option's label), kept when asked for (`keep_outputs`).
    outputs: dict[tuple[str, str], dict[str, list[str]]] = field(default_factory=dict)


def check_mode(benchmark: str, mode: str) -> None:
    allowed = benchmarks.get(benchmark).modes
    if mode not in allowed:
        raise UserError(f"mode: {mode!r} is not evaluated for {benchmark}; allowed: {', '.join(allowed)}")


def run_benchmark(bench: loaders.Benchmark, mode: str, generate: Generate, cfg: EvalConfig,
                  seed: int = 0) -> BenchmarkRun:
    """Prompt every example of `bench` in a generative `mode`, generate, and score.
    Self-consistency ("sc") draws `cfg.sc_samples` CoT samples at `cfg.sc_temperature` /
    `cfg.sc_top_k` and votes."""
    check_mode(bench.name, mode)
    if mode == "rc":
        raise UserError("mode: 'rc' ranks options instead of generating; use run_rank")
    examples = [ex for task in bench.tasks.values() for ex in task]
    texts = [prompts.prompt(bench, ex, mode) for ex in examples]
    if mode == "sc":
        samples = generate(texts, num_samples=cfg.sc_samples, temperature=cfg.sc_temperature,
                           top_k=cfg.sc_top_k, seed=seed)
    elif mode == "direct" and cfg.direct_max_new_tokens:
        samples = generate(texts, max_new_tokens=cfg.direct_max_new_tokens)
    else:
        samples = generate(texts)
    outputs = {ex.id: list(s) for ex, s in zip(examples, samples)}
    return BenchmarkRun(scoring.score_outputs(bench, mode, outputs), outputs,
                        {ex.id: text for ex, text in zip(examples, texts)})


def modes_for(cfg: EvalConfig, benchmark: str) -> list[str]:
    """The configured modes this benchmark is evaluated in (TyDiQA has no CoT variant, rc
    needs multiple-choice answers)."""
    return [m for m in cfg.modes if m in benchmarks.get(benchmark).modes]


def check_config(cfg: EvalConfig) -> None:
    """Every benchmark and mode named in `cfg` exists (one-line errors)."""
    for b in cfg.benchmarks:
        benchmarks.get(b, "eval.benchmarks")
    for mode in cfg.modes:
        if mode not in benchmarks.MODES:
            raise UserError(f"eval.modes: unknown {mode!r}; allowed: {', '.join(benchmarks.MODES)}")
    if cfg.mmlu_split not in loaders.MMLU_SPLITS:
        raise UserError(f"eval.mmlu_split: {cfg.mmlu_split!r} is not an MMLU split; allowed: {', '.join(loaders.MMLU_SPLITS)}")


def load_all(cfg: EvalConfig) -> dict[str, loaders.Benchmark]:
    check_config(cfg)
    return {b: loaders.load(b, cfg.data_dir, cfg.mmlu_split).limited(cfg.max_examples).with_shots(cfg.shots) for b in cfg.benchmarks}


def sample_examples(bench: loaders.Benchmark, n: int, ids: Container[str] | None = None) -> list[loaders.Example]:
    """Up to `n` examples (of those in `ids`, when given) taken from the tasks in turn: the
    first of each task, then the second, ..., so a sample of a many-task benchmark shows many
    tasks. Deterministic."""
    if n <= 0:
        return []
    columns = [[e for e in ex if ids is None or e.id in ids] for ex in bench.tasks.values()]
    out: list[loaders.Example] = []
    for i in range(max((len(c) for c in columns), default=0)):
        out += [c[i] for c in columns if i < len(c)]
        if len(out) >= n:
            break
    return out[:n]


def generated_predictions(bench: loaders.Benchmark, run: BenchmarkRun, n: int) -> list[Prediction]:
    mode = run.score.mode
    out = []
    for ex in sample_examples(bench, n):
        outputs = run.outputs.get(ex.id) or []
        answer = scoring.answer_of(bench.shape, mode, ex, outputs) if outputs else None
        strict, lenient = scoring.judge(bench.shape, mode, ex, outputs) if outputs else (False, False)
        out.append(Prediction(bench.name, mode, ex.task, ex.id, run.prompts.get(ex.id, ""),
                              outputs[0] if outputs else "", answer or "", " | ".join(ex.answers), strict, lenient))
    return out


def ranked_predictions(bench: loaders.Benchmark, ranked: rc.RankResult, n: int) -> list[Prediction]:
    out = []
    for ex in sample_examples(bench, n, ranked.chosen):  # free-form tasks have no options to rank
        choice = ranked.chosen[ex.id][0]
        right = choice == ex.answers[0].strip()
        out.append(Prediction(bench.name, "rc", ex.task, ex.id, prompts.prompt(bench, ex, "rc"), choice, choice,
                              ex.answers[0].strip(), right, right))
    return out


def run_eval(cfg: EvalConfig, generate: Generate, score_options: rc.ScoreOptions | None = None,
             seed: int = 0, predictions: int = 0, *, data: Mapping[str, loaders.Benchmark] | None = None,
             modes: Mapping[str, Sequence[str]] | None = None, keep_outputs: bool = False) -> EvalRun:
    """Every configured benchmark in every configured mode it supports: the metrics dict (see
    `evaluate`), the scores and up to `predictions` predictions per benchmark and mode. rc
    runs only when an option scorer is given. `data`: the benchmarks already loaded
    (`load_all(cfg)`); `modes`: the modes to run per benchmark instead of `modes_for`;
    `keep_outputs`: keep every raw output in `EvalRun.outputs`."""
    data = load_all(cfg) if data is None else data
    scores: list[scoring.Score] = []
    ranked: list[scoring.Score] = []
    sample: list[Prediction] = []
    out: dict[str, float] = {}
    kept: dict[tuple[str, str], dict[str, list[str]]] = {}
    for b in cfg.benchmarks:
        for mode in (modes_for(cfg, b) if modes is None else modes[b]):
            if mode == "rc":
                if score_options is not None:
                    result = rc.run_rank(data[b], score_options)
                    out.update(result.metrics())
                    ranked += [result.rc, result.rc_norm]
                    sample += ranked_predictions(data[b], result, predictions)
                    if keep_outputs:
                        kept[(b, mode)] = {i: [c[0]] for i, c in result.chosen.items()}
                continue
            run = run_benchmark(data[b], mode, generate, cfg, seed)
            scores.append(run.score)
            sample += generated_predictions(data[b], run, predictions)
            if keep_outputs:
                kept[(b, mode)] = run.outputs
    standins = tuple(b for b in cfg.benchmarks if benchmarks.standin(b, cfg.data_dir))
    return EvalRun({**scoring.metrics(scores), **out}, (*scores, *ranked), tuple(sample), standins, kept)


def run_all(cfg: EvalConfig, generate: Generate, score_options: rc.ScoreOptions | None = None,
            seed: int = 0) -> dict[str, float]:
    """The metrics of `run_eval`."""
    return run_eval(cfg, generate, score_options, seed).metrics


def model_scorers(cfg: EvalConfig, model_cfg, params, tokenizer, *, batch_size: int = 8,
                  max_prompt_tokens: int = 0, placement=None):
    """(generate, score_options) of a model: its TextGenerator (up to `cfg.max_new_tokens`,
    stopping at the exemplar separators) and OptionScorer, on `placement` (default one local
    device)."""
    from trainers.eval.decoding import DEFAULT_STOP, TextGenerator
    from trainers.eval.rank import OptionScorer

    generate = TextGenerator(model_cfg, params, tokenizer, max_new_tokens=cfg.max_new_tokens,
                             batch_size=batch_size, max_prompt_tokens=max_prompt_tokens, stop_sequences=DEFAULT_STOP,
                             placement=placement)
    scorer = OptionScorer(model_cfg, generate.params, tokenizer, batch_size=batch_size,
                          max_prompt_tokens=max_prompt_tokens, placement=generate.placement)
    return generate, scorer


def evaluate_run(cfg: EvalConfig, model_cfg, params, tokenizer, *, batch_size: int = 8,
                 max_prompt_tokens: int = 0, seed: int = 0, predictions: int = 0, placement=None) -> EvalRun:
    """`evaluate`, with the scores and a sample of predictions (see `run_eval`)."""
    generate, scorer = model_scorers(cfg, model_cfg, params, tokenizer, batch_size=batch_size,
                                     max_prompt_tokens=max_prompt_tokens, placement=placement)
    return run_eval(cfg, generate, scorer, seed, predictions)


def evaluate(cfg: EvalConfig, model_cfg, params, tokenizer, *, batch_size: int = 8,
             max_prompt_tokens: int = 0, seed: int = 0, placement=None) -> dict[str, float]:
    """Metrics eval/<benchmark>/<mode> (percent), eval/<benchmark>/<mode>/normalized, the rc
    scores, and each suite's normalized average when its six scores were all run. Models run
    on `placement` (a trainers.eval.placement.EvalMesh; default one local device)."""
    return evaluate_run(cfg, model_cfg, params, tokenizer, batch_size=batch_size,
                        max_prompt_tokens=max_prompt_tokens, seed=seed, placement=placement).metrics
