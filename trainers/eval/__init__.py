"""Held-out evaluation: MMLU, BBH, TyDiQA GoldP and MGSM in direct, chain-of-thought and
self-consistency modes, scored as in the paper (exact match, normalized average)."""

from trainers.eval.runner import evaluate, run_all, run_benchmark

__all__ = ["evaluate", "run_all", "run_benchmark"]
