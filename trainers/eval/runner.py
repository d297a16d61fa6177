"""Evaluate a model on the held-out benchmarks: load, prompt, generate or rank, extract, score.

`run_benchmark` takes any generate function (prompts -> continuations) and `run_rank` any
option scorer (prompts, options -> log-probabilities), so the same path scores a JAX model, a
fake in tests, or is bypassed by `score_outputs` for predictions made elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from trainers.eval import benchmarks, loaders, prompts, rc, scoring
from trainers.spec import EvalConfig, UserError


class Generate(Protocol):
    def __call__(self, prompts: Sequence[str], *, num_samples: int = 1, temperature: float = 0.0,
                 top_k: int = 0, seed: int = 0) -> list[list[str]]: ...


@dataclass(frozen=True)
class BenchmarkRun:
    score: scoring.Score
    outputs: dict[str, list[str]]  # example id -> raw continuations (one, or the SC samples)


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
    else:
        samples = generate(texts)
    outputs = {ex.id: list(s) for ex, s in zip(examples, samples)}
    return BenchmarkRun(scoring.score_outputs(bench, mode, outputs), outputs)


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
    return {b: loaders.load(b, cfg.data_dir, cfg.mmlu_split).limited(cfg.max_examples) for b in cfg.benchmarks}


def run_all(cfg: EvalConfig, generate: Generate, score_options: rc.ScoreOptions | None = None,
            seed: int = 0) -> dict[str, float]:
    """Every configured benchmark in every configured mode it supports -> the metrics dict
    (see `evaluate`). rc runs only when an option scorer is given."""
    data = load_all(cfg)
    scores: list[scoring.Score] = []
    out: dict[str, float] = {}
    for b in cfg.benchmarks:
        for mode in modes_for(cfg, b):
            if mode == "rc":
                if score_options is not None:
                    out.update(rc.run_rank(data[b], score_options).metrics())
                continue
            scores.append(run_benchmark(data[b], mode, generate, cfg, seed).score)
    return {**scoring.metrics(scores), **out}


def evaluate(cfg: EvalConfig, model_cfg, params, tokenizer, *, batch_size: int = 8,
             max_prompt_tokens: int = 0, seed: int = 0) -> dict[str, float]:
    """Metrics eval/<benchmark>/<mode> (percent), eval/<benchmark>/<mode>/normalized, the rc
    scores, and each suite's normalized average when its six scores were all run."""
    from trainers.eval.decoding import DEFAULT_STOP, TextGenerator
    from trainers.eval.rank import OptionScorer

    generate = TextGenerator(model_cfg, params, tokenizer, max_new_tokens=cfg.max_new_tokens,
                             batch_size=batch_size, max_prompt_tokens=max_prompt_tokens, stop_sequences=DEFAULT_STOP)
    scorer = OptionScorer(model_cfg, params, tokenizer, batch_size=batch_size, max_prompt_tokens=max_prompt_tokens)
    return run_all(cfg, generate, scorer, seed)
