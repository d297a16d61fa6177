"""Look at a cell's data without training: `python -m trainers.data {mixture,sample,pack} ...`.

    mixture  the selected tasks per sub-mixture, caps and mixing rates (JSON)
    sample   a few rendered (inputs, targets) pairs as the model would see them
    pack     packing efficiency and throughput of the cell's batches (JSON)
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time

from trainers.home import flanscale_home
from trainers.spec import DataConfig, UserError


def _config(args: argparse.Namespace) -> DataConfig:
    return DataConfig(
        source=args.source, paths=tuple(args.paths), task_count=args.task_count, mixture=args.mixture,
        formats=tuple(args.formats), with_cot=not args.no_cot, input_length=args.input_length,
        target_length=args.target_length, tokenizer=args.tokenizer, examples_per_task=args.examples_per_task,
    )


def _mixture(args: argparse.Namespace, cfg: DataConfig) -> None:
    from trainers.data.mixtures import MixtureStream, build_registry, caps

    stream = MixtureStream(build_registry(cfg, args.home), cfg, args.seed, length_fn=len)
    rates = stream.task_rates()
    per_sub = collections.Counter(t.submixture for t in stream.tasks)
    top = sorted(rates.items(), key=lambda kv: -kv[1])[: args.top]
    print(json.dumps({"tasks": len(stream.tasks), "tasks_per_submixture": per_sub, "formats": stream.formats,
                      "submixture_rates": stream.rates, "caps": caps(cfg),
                      "top_tasks": {k: round(v, 6) for k, v in top}}, indent=1))


def _sample(args: argparse.Namespace, cfg: DataConfig) -> None:
    from trainers.data.mixtures import MixtureStream, build_registry

    stream = MixtureStream(build_registry(cfg, args.home), cfg, args.seed, length_fn=lambda s: len(s.encode()))
    for _ in range(args.n):
        name, inputs, targets = stream.next()
        print(f"=== {name}\n--- inputs\n{inputs}\n--- targets\n{targets}\n")


def _pack(args: argparse.Namespace, cfg: DataConfig) -> None:
    from trainers.data.pipeline import make_batches

    start = time.perf_counter()
    it = make_batches(cfg, args.family, args.batch_size, args.seed, args.home, packer=args.packer)
    effs = [next(it) and it.last_efficiency for _ in range(args.batches)]
    secs = time.perf_counter() - start
    print(json.dumps({"family": args.family, "packer": args.packer, "batches": args.batches,
                      "mean_efficiency": round(sum(effs) / len(effs), 4), "batches_per_s": round(args.batches / secs, 2),
                      "tokenizer_vocab": it.tokenizer.vocab_size}, indent=1))


def main(argv: list[str] | None = None) -> int:
    from trainers.data.packing import PACKERS

    ap = argparse.ArgumentParser(prog="python -m trainers.data", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("mixture", "sample", "pack"))
    d = DataConfig()
    ap.add_argument("--source", default=d.source, help="synthetic | flan")
    ap.add_argument("--paths", nargs="*", default=[], help="Flan JSONL files or directories (source flan)")
    ap.add_argument("--task-count", type=int, default=d.task_count)
    ap.add_argument("--mixture", default=d.mixture, help="A | B")
    ap.add_argument("--formats", nargs="*", default=list(d.formats))
    ap.add_argument("--no-cot", action="store_true", help="drop the CoT tasks")
    ap.add_argument("--input-length", type=int, default=d.input_length)
    ap.add_argument("--target-length", type=int, default=d.target_length)
    ap.add_argument("--tokenizer", default=d.tokenizer)
    ap.add_argument("--examples-per-task", type=int, default=d.examples_per_task)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", default=str(flanscale_home()))
    ap.add_argument("-n", type=int, default=3, help="sample: examples to show")
    ap.add_argument("--top", type=int, default=10, help="mixture: tasks with the highest rates to list")
    ap.add_argument("--family", default="t5", help="pack: t5 | decoder")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--packer", default="best_fit", choices=sorted(PACKERS))
    args = ap.parse_args(argv)
    try:
        cfg = _config(args)
        {"mixture": _mixture, "sample": _sample, "pack": _pack}[args.command](args, cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
