"""Packing benchmark: best-fit decreasing vs sequential greedy vs one example per row.

Prints JSON: for each workload (the synthetic suite's mix, and a Flan-like long-tailed
length distribution at the paper's 2048/512) and family, the packing efficiency
(non-padding fraction of token slots), rows per 1,000 examples, and examples/s of packing
plus building the batch arrays.

    python bench/packing.py [--examples 20000] [--window 1024]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from trainers.data.packing import PACKERS, build_batch, truncate
from trainers.data.pipeline import EncodedMixture
from trainers.data.tokenizer import ByteTokenizer
from trainers.families import get_family
from trainers.spec import DataConfig


def synthetic_examples(n: int, task_count: int, input_length: int, target_length: int) -> list:
    cfg = DataConfig(task_count=task_count, input_length=input_length, target_length=target_length)
    stream = EncodedMixture(cfg, ByteTokenizer(), seed=0, home=".flanscale")
    return [stream.next() for _ in range(n)]


def flan_like_examples(n: int, seed: int = 0) -> list:
    """Lognormal lengths: inputs median ~200 tokens, targets median ~30, both long-tailed."""
    rng = np.random.default_rng(seed)
    lin = np.maximum(1, rng.lognormal(np.log(200), 0.9, n).astype(int))
    ltg = np.maximum(1, rng.lognormal(np.log(30), 1.0, n).astype(int))
    return [([5] * a + [1], [7] * b + [1]) for a, b in zip(lin, ltg)]


def run(examples: list, family: str, li: int, lt: int, window: int) -> dict:
    exs = [truncate(e, family, li, lt) for e in examples]
    tokens = sum(len(a) + len(b) for a, b in exs)
    # No packer can use fewer rows than the tokens need (per budget for two budgets).
    layout = get_family(family).batch_layout
    used = [sum(budget) for budget in zip(*layout.sizes(exs))]
    bound = max(n / cap for n, cap in zip(used, layout.budgets(li, lt)) if cap)
    out = {"min_rows_per_1k_examples": round(1000 * bound / len(exs), 1)}
    for name, packer in PACKERS.items():
        start = time.perf_counter()
        rows = 0
        for w in range(0, len(exs), window):
            chunk = exs[w : w + window]
            packed = packer(chunk, family, li, lt)
            rows += len(packed)
            for b in range(0, len(packed), 64):  # build the arrays too, 64 rows a batch
                build_batch([[chunk[k] for k in r] for r in packed[b : b + 64]], family, li, lt)
        secs = time.perf_counter() - start
        out[name] = {
            "efficiency": round(tokens / (rows * (li + lt)), 4),
            "rows_per_1k_examples": round(1000 * rows / len(exs), 1),
            "examples_per_s": round(len(exs) / secs),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=20000)
    ap.add_argument("--window", type=int, default=1024)
    args = ap.parse_args()
    n, w = args.examples, args.window
    syn = synthetic_examples(n, 1836, 512, 128)
    flan = flan_like_examples(n)
    result = {
        "examples": n,
        "window": w,
        "synthetic_1836_tasks_t5_512_128": run(syn, "t5", 512, 128, w),
        "synthetic_1836_tasks_decoder_640": run(syn, "decoder", 512, 128, w),
        "flan_like_t5_2048_512": run(flan, "t5", 2048, 512, w),
        "flan_like_decoder_2560": run(flan, "decoder", 2048, 512, w),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
