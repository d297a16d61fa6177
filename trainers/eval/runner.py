"""Evaluate a model on the held-out benchmarks: load, prompt, generate, extract, score.

`run_benchmark` takes any generate function (prompts -> continuations), so the same path
scores a JAX model, a fake in tests, or is bypassed by `score_outputs` for predictions
made elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from trainers.eval import loaders, prompts, scoring
from trainers.spec import EvalConfig, UserError


class Generate(Protocol):
    def __call__(self, prompts: Sequence[str], *, num_samples: int = 1, temperature: float = 0.0,
                 top_k: int = 0, seed: int = 0) -> list[list[str]]: ...


@dataclass(frozen=True)
class BenchmarkRun:
    score: scoring.Score
    outputs: dict[str, list[str]]  # example id -> raw continuations (one, or the SC samples)


def check_mode(benchmark: str, mode: str) -> None:
    if mode not in prompts.MODES.get(benchmark, ()):
        raise UserError(f"mode: {mode!r} is not evaluated for {benchmark}; allowed: {', '.join(prompts.MODES[benchmark])}")


def run_benchmark(bench: loaders.Benchmark, mode: str, generate: Generate, cfg: EvalConfig,
                  seed: int = 0) -> BenchmarkRun:
    """Prompt every example of `bench` in `mode`, generate, and score. Self-consistency ("sc")
    draws `cfg.sc_samples` CoT samples at `cfg.sc_temperature` / `cfg.sc_top_k` and votes."""
    check_mode(bench.name, mode)
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
    """The configured modes this benchmark is evaluated in (TyDiQA has no CoT variant)."""
    return [m for m in cfg.modes if m in prompts.MODES[benchmark]]


def run_all(cfg: EvalConfig, generate: Generate, seed: int = 0) -> list[BenchmarkRun]:
    for mode in cfg.modes:
        if mode not in ("direct", "cot", "sc"):
            raise UserError(f"eval.modes: unknown {mode!r}; allowed: direct, cot, sc")
    data = {b: loaders.load(b, cfg.data_dir).limited(cfg.max_examples) for b in cfg.benchmarks}
    return [run_benchmark(data[b], mode, generate, cfg, seed) for b in cfg.benchmarks for mode in modes_for(cfg, b)]


def evaluate(cfg: EvalConfig, model_cfg, params, tokenizer, *, batch_size: int = 8,
             max_prompt_tokens: int = 0, seed: int = 0) -> dict[str, float]:
    """Metrics eval/<benchmark>/<mode> (percent), eval/<benchmark>/<mode>/normalized, and
    eval/normalized_average when the six scores of the paper's average were all run."""
    from trainers.eval.decoding import TextGenerator

    generate = TextGenerator(model_cfg, params, tokenizer, max_new_tokens=cfg.max_new_tokens,
                             batch_size=batch_size, max_prompt_tokens=max_prompt_tokens)
    return scoring.metrics([r.score for r in run_all(cfg, generate, seed)])
