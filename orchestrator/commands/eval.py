"""`flanscale eval`: evaluate a checkpoint on the held-out benchmarks, or score predictions.

  flanscale eval --checkpoint CKPT --benchmark mmlu [--mode direct|cot|sc] [--data-dir D]
                 [--max-examples N] [--predictions-out P.jsonl]
  flanscale eval score --benchmark mmlu --data-dir D --predictions P.jsonl [--mode M]
                 [--format json|table]

`eval` is a command of its own and also the parent of the `score` action: the action is an
optional sub-command, so `eval --checkpoint ...` runs a model and `eval score ...` scores.
Heavy modules (JAX, the model) are imported inside the handlers only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trainers.home import flanscale_home
from trainers.spec import UserError

MODES = ("direct", "cot", "sc")
BENCHMARK_NAMES = ("mmlu", "bbh", "tydiqa", "mgsm")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint on MMLU/BBH/TyDiQA/MGSM, or score predictions (eval score)",
        usage="flanscale eval --checkpoint CKPT [--benchmark B] [--mode M] [options]\n"
              "       flanscale eval score --benchmark B --predictions P.jsonl [--data-dir D] [--mode M] [options]",
        description="Evaluate a checkpoint on the held-out benchmarks (direct, CoT, self-consistency). "
                    "`flanscale eval score ...` scores a predictions file from any model instead.")
    p.add_argument("--checkpoint", help="checkpoint directory (loaded with trainers.models.load_pretrained)")
    p.add_argument("--benchmark", default="mmlu",
                   help="mmlu | bbh | tydiqa | mgsm, comma-separated for several, or 'all' (default mmlu)")
    p.add_argument("--mode", choices=MODES, help="prompting mode (default: the benchmark's usual one; "
                   "mgsm: cot, others: direct)")
    p.add_argument("--data-dir", default="", help="benchmark data (default: the shipped stand-ins)")
    p.add_argument("--max-examples", type=int, default=0, help="examples per task (0 = all)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="generation length cap (EOS stops earlier)")
    p.add_argument("--batch-size", type=int, default=8, help="rows decoded together")
    p.add_argument("--max-prompt-tokens", type=int, default=0, help="keep only the last N prompt tokens (0 = all)")
    p.add_argument("--sc-samples", type=int, default=40, help="self-consistency samples per question")
    p.add_argument("--seed", type=int, default=0, help="sampling seed for self-consistency")
    p.add_argument("--predictions-out", help="write the model's outputs as JSON lines {id, prediction|samples}; "
                   "with several benchmarks the path must contain {benchmark}")
    p.add_argument("--format", choices=("json", "table"), default="table")
    p.set_defaults(func=run_model)

    actions = p.add_subparsers(dest="eval_action", metavar="score", title="optional action")
    s = actions.add_parser("score", help="score predictions (JSON lines) against a benchmark's answers",
                           description="Score predictions from any model: lines {\"id\", \"prediction\"} or "
                                       "{\"id\", \"samples\": [...]} (majority vote).")
    s.add_argument("--benchmark", required=True, help="mmlu | bbh | tydiqa | mgsm")
    s.add_argument("--data-dir", default="", help="benchmark data (default: the shipped stand-ins)")
    s.add_argument("--predictions", required=True, help="JSON lines file")
    s.add_argument("--mode", choices=MODES, help="extraction rule (default: sc when lines have samples, "
                   "else the benchmark's usual mode)")
    s.add_argument("--max-examples", type=int, default=0, help="score only the first N examples per task")
    s.add_argument("--format", choices=("json", "table"), default="json")
    s.set_defaults(func=score_predictions)


def read_predictions(path: Path) -> tuple[dict[str, list[str]], bool]:
    """-> (id -> outputs, whether any line carried samples)."""
    if not path.is_file():
        raise UserError(f"--predictions: {str(path)!r} is not a file")
    out: dict[str, list[str]] = {}
    has_samples = False
    from trainers.jsonl import read_objects

    for line_no, row in read_objects(path):
        if not isinstance(row.get("id"), str):
            raise UserError(f"{path}:{line_no}: expected an object with a string 'id'")
        if isinstance(row.get("prediction"), str):
            outputs = [row["prediction"]]
        elif isinstance(row.get("samples"), list) and all(isinstance(x, str) for x in row["samples"]):
            outputs, has_samples = list(row["samples"]), True
        else:
            raise UserError(f"{path}:{line_no}: needs 'prediction' (string) or 'samples' (list of strings)")
        if row["id"] in out:
            raise UserError(f"{path}:{line_no}: duplicate id {row['id']!r}")
        out[row["id"]] = outputs
    return out, has_samples


def _print_score(score, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(score.to_json(), indent=2, sort_keys=True))
        return
    width = max([len(t) for t in score.tasks] + [10])
    print(f"{score.benchmark} ({score.mode})")
    for task, value in score.tasks.items():
        print(f"  {task:<{width}}  {value:6.2f}")
    print(f"  {'mean':<{width}}  {score.score:6.2f}")
    print(f"  {'normalized':<{width}}  {score.normalized:6.2f}")


def score_predictions(args: argparse.Namespace) -> int:
    from trainers.eval import loaders, prompts, runner, scoring

    if args.benchmark not in BENCHMARK_NAMES:
        raise UserError(f"--benchmark: unknown {args.benchmark!r}; allowed: {', '.join(BENCHMARK_NAMES)}")
    if args.mode:
        runner.check_mode(args.benchmark, args.mode)
    outputs, has_samples = read_predictions(Path(args.predictions))
    mode = args.mode or ("sc" if has_samples else prompts.DEFAULT_MODE[args.benchmark])
    runner.check_mode(args.benchmark, mode)
    bench = loaders.load(args.benchmark, args.data_dir)
    if args.max_examples > 0:
        # Ids beyond the limit are still known ids: check them against the full data first.
        scoring.score_outputs(bench, mode, outputs)
        bench = bench.limited(args.max_examples)
        kept = bench.by_id()
        outputs = {i: o for i, o in outputs.items() if i in kept}
    score = scoring.score_outputs(bench, mode, outputs)
    if score.missing:
        total = sum(len(e) for e in bench.tasks.values())
        print(f"flanscale: {score.missing} of {total} examples have no prediction (counted wrong)", file=sys.stderr)
    _print_score(score, args.format)
    return 0


def _tokenizer_config(checkpoint: Path):
    """The DataConfig a checkpoint's tokenizer is described by, if a JSON next to it records
    one (a cell spec with a "data" section, a DataConfig, or pretrain.json's "tokenizer");
    else the byte tokenizer."""
    from dataclasses import fields

    from trainers.spec import DataConfig, from_dict

    known = {f.name for f in fields(DataConfig)}
    for folder in (checkpoint, checkpoint.parent):
        for name in ("cell.json", "spec.json", "data_config.json", "pretrain.json"):
            path = folder / name
            if not path.is_file():
                continue
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
            spec = obj.get("spec") if isinstance(obj, dict) else None
            for candidate in ((spec or {}).get("data") if isinstance(spec, dict) else None,
                              obj.get("data") if isinstance(obj, dict) else None, obj):
                if isinstance(candidate, dict) and isinstance(candidate.get("tokenizer"), str):
                    return from_dict(DataConfig, {k: v for k, v in candidate.items() if k in known})
    return DataConfig(tokenizer="byte")


def run_model(args: argparse.Namespace) -> int:
    if not args.checkpoint:
        raise UserError("eval: --checkpoint is required (or use `flanscale eval score` to score predictions)")
    names = list(BENCHMARK_NAMES) if args.benchmark == "all" else [b.strip() for b in args.benchmark.split(",")]
    for b in names:
        if b not in BENCHMARK_NAMES:
            raise UserError(f"--benchmark: unknown {b!r}; allowed: {', '.join(BENCHMARK_NAMES)}, all")
    if args.predictions_out and len(names) > 1 and "{benchmark}" not in args.predictions_out:
        raise UserError(f"--predictions-out: {args.predictions_out!r} must contain '{{benchmark}}' when "
                        "several benchmarks run (one file per benchmark, each scorable with `eval score`)")
    from trainers.eval import loaders, prompts, runner, scoring

    if args.mode:
        for b in names:
            runner.check_mode(b, args.mode)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise UserError(f"--checkpoint: {str(checkpoint)!r} does not exist")
    # Bad data is reported before the model is loaded.
    benches = {b: loaders.load(b, args.data_dir).limited(args.max_examples) for b in names}

    from trainers import models
    from trainers.data.tokenizer import load_tokenizer
    from trainers.eval.decoding import TextGenerator
    from trainers.spec import EvalConfig

    model_cfg, params = models.load_pretrained(str(checkpoint))
    tokenizer = load_tokenizer(_tokenizer_config(checkpoint), flanscale_home(), vocab_size=model_cfg.vocab_size)
    cfg = EvalConfig(benchmarks=tuple(names), data_dir=args.data_dir, max_examples=args.max_examples,
                     max_new_tokens=args.max_new_tokens, sc_samples=args.sc_samples)
    generate = TextGenerator(model_cfg, params, tokenizer, max_new_tokens=args.max_new_tokens,
                             batch_size=args.batch_size, max_prompt_tokens=args.max_prompt_tokens)
    runs = []
    for b in names:
        mode = args.mode or prompts.DEFAULT_MODE[b]
        runs.append(runner.run_benchmark(benches[b], mode, generate, cfg, seed=args.seed))
    if args.predictions_out:
        for b, run in zip(names, runs):
            path = Path(args.predictions_out.replace("{benchmark}", b))
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as f:
                for ex_id, outs in run.outputs.items():
                    row = {"id": ex_id, "samples": outs} if run.score.mode == "sc" else {"id": ex_id, "prediction": outs[0]}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    metrics = scoring.metrics([r.score for r in runs])
    if args.format == "json":
        print(json.dumps({"scores": [r.score.to_json() for r in runs], "metrics": metrics}, indent=2, sort_keys=True))
        return 0
    for run in runs:
        _print_score(run.score, args.format)
    for key, value in metrics.items():
        print(f"{key} = {value:.2f}")
    return 0
