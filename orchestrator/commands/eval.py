"""`flanscale eval`: evaluate a checkpoint on the held-out benchmarks, or score predictions.

  flanscale eval --checkpoint CKPT [--sweep NAME] --benchmark mmlu [--mode direct|cot|sc] [--data-dir D]
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

from trainers.eval import benchmarks


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint on MMLU/BBH/TyDiQA/MGSM and the unseen-task benchmark, or score predictions",
        usage="flanscale eval --checkpoint CKPT [--benchmark B] [--mode M] [options]\n"
              "       flanscale eval score --benchmark B --predictions P.jsonl [--data-dir D] [--mode M] [options]",
        description="Evaluate a checkpoint on the held-out benchmarks (direct, CoT, self-consistency). "
                    "`flanscale eval score ...` scores a predictions file from any model instead.")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="a cell's checkpoint directory (finished or interrupted), a cell key (with --sweep, or "
                        "found under the home's checkpoints), a base-model directory (model.json + params/) or a "
                        "Hugging Face T5 directory (config.json + model.safetensors)")
    p.add_argument("--sweep", help="the sweep whose cell --checkpoint names by key (looked up in MLflow)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for --sweep (default: sqlite under FLANSCALE_HOME)")
    p.add_argument("--benchmark", default="mmlu",
                   help=f"{' | '.join(benchmarks.names())}, comma-separated for several, or 'all' (default mmlu)")
    p.add_argument("--mode", choices=benchmarks.MODES, help="prompting mode: direct, cot, sc (self-consistency) or "
                   "rc (rank classification of the answer options); default: the benchmark's usual one")
    p.add_argument("--mmlu-split", choices=benchmarks.MMLU_SPLITS, default="test",
                   help="split MMLU-shaped benchmarks evaluate (default test; dev supplies the shots)")
    p.add_argument("--data-dir", default="", help="benchmark data (default: the shipped stand-ins)")
    p.add_argument("--max-examples", type=int, default=0, help="examples per task (0 = all)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="generation length cap (EOS stops earlier)")
    p.add_argument("--batch-size", type=int, default=8, help="rows decoded together")
    p.add_argument("--max-prompt-tokens", type=int, default=0, help="keep only the last N prompt tokens (0 = all)")
    p.add_argument("--sc-samples", type=int, default=40, help="self-consistency samples per question")
    p.add_argument("--seed", type=int, default=0, help="sampling seed for self-consistency")
    p.add_argument("--predictions-out", help="write the model's outputs as JSON lines {id, prediction|samples}; "
                   "with several benchmarks the path must contain {benchmark}")
    p.add_argument("--mesh", metavar="DATA,FSDP,TENSOR",
                   help="evaluate on this mesh of the host's devices, parameters and decoding cache sharded as a "
                        "cell's are (e.g. 1,1,8 for a model that fits no one device; default: one device); on a "
                        "CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N devices")
    p.add_argument("--format", choices=("json", "table"), default="table")
    p.set_defaults(func=run_model, reads_store=True)

    actions = p.add_subparsers(dest="eval_action", metavar="score|average", title="optional action")
    s = actions.add_parser("score", help="score predictions (JSON lines) against a benchmark's answers",
                           description="Score predictions from any model: lines {\"id\", \"prediction\"} or "
                                       "{\"id\", \"samples\": [...]} (majority vote).")
    s.add_argument("--benchmark", required=True, help=" | ".join(benchmarks.names()))
    s.add_argument("--mmlu-split", choices=benchmarks.MMLU_SPLITS, default="test", help="split of MMLU-shaped data")
    s.add_argument("--data-dir", default="", help="benchmark data (default: the shipped stand-ins)")
    s.add_argument("--predictions", required=True, help="JSON lines file")
    s.add_argument("--mode", choices=[m for m in benchmarks.MODES if m != "rc"], help="extraction rule (default: sc when lines have samples, "
                   "else the benchmark's usual mode)")
    s.add_argument("--max-examples", type=int, default=0, help="score only the first N examples per task")
    s.add_argument("--format", choices=("json", "table"), default="json")
    s.set_defaults(func=score_predictions)

    av = actions.add_parser("average", prog="flanscale eval average", help="the normalized average from published benchmark-level or per-task scores",
                            description="The paper's normalized average of six scores from numbers already "
                                        "published (a paper's table, a leaderboard) or per-task scores. A BBH mean "
                                        "without per-subtask scores is normalized with the mean of the subtask "
                                        "baselines, an approximation the output names.")
    av.add_argument("--score", action="append", default=[], metavar="BENCH/MODE=VALUE",
                    help="a benchmark-level score in percent, e.g. mmlu/direct=52.4 (repeatable)")
    av.add_argument("--scores", help="JSON file: {\"mmlu/direct\": 52.4, \"bbh/cot\": {subtask: score, ...}} or "
                    "a list of `eval score --format json` results")
    av.add_argument("--suite", default="paper", help="whose average: " + ", ".join(benchmarks.SUITES) + " (default paper)")
    av.add_argument("--format", choices=("json", "table"), default="table")
    av.set_defaults(func=average_scores)


def average_scores(args: argparse.Namespace) -> int:
    from trainers.eval import published

    scores = published.read_scores(Path(args.scores)) if args.scores else {}
    scores.update(published.parse_flag(f) for f in args.score)
    if not scores:
        raise UserError("eval average: no scores; pass --score BENCH/MODE=VALUE (repeatable) or --scores FILE.json")
    result = published.normalized_average(scores, args.suite)
    if args.format == "json":
        print(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        print(published.format_table(result))
    return 0


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


STANDIN_NOTE = "on flanscale's synthetic stand-in data, not the real benchmark; give --data-dir"


def _score_json(score, data_dir: str) -> dict:
    """A score as JSON, with `standin`: whether it was scored on stand-in data."""
    return {**score.to_json(), "standin": benchmarks.standin(score.benchmark, data_dir)}


def _print_score(score, fmt: str, data_dir: str) -> None:
    if fmt == "json":
        print(json.dumps(_score_json(score, data_dir), indent=2, sort_keys=True))
        return
    width = max([len(t) for t in score.tasks] + [10])
    standin = benchmarks.standin(score.benchmark, data_dir)
    print(f"{score.benchmark} ({score.mode})" + (f" stand-in: {STANDIN_NOTE}" if standin else ""))
    for task, value in score.tasks.items():
        print(f"  {task:<{width}}  {value:6.2f}")
    print(f"  {'mean':<{width}}  {score.score:6.2f}")
    print(f"  {'normalized':<{width}}  {score.normalized:6.2f}")
    if score.flex is not None:
        print(f"  {'flexible':<{width}}  {score.flex.score:6.2f}")


def score_predictions(args: argparse.Namespace) -> int:
    from trainers.eval import loaders, runner, scoring

    benchmarks.get(args.benchmark, "--benchmark")
    if args.mode:
        runner.check_mode(args.benchmark, args.mode)
    outputs, has_samples = read_predictions(Path(args.predictions))
    mode = args.mode or ("sc" if has_samples else benchmarks.get(args.benchmark).default_mode)
    runner.check_mode(args.benchmark, mode)
    bench = loaders.load(args.benchmark, args.data_dir, args.mmlu_split)
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
    _print_score(score, args.format, args.data_dir)
    return 0


def run_model(args: argparse.Namespace) -> int:
    if not args.checkpoint:
        raise UserError("eval: --checkpoint is required (or use `flanscale eval score` to score predictions)")
    names = list(benchmarks.names()) if args.benchmark == "all" else [b.strip() for b in args.benchmark.split(",")]
    for b in names:
        benchmarks.get(b, "--benchmark")
    if args.predictions_out and len(names) > 1 and "{benchmark}" not in args.predictions_out:
        raise UserError(f"--predictions-out: {args.predictions_out!r} must contain '{{benchmark}}' when "
                        "several benchmarks run (one file per benchmark, each scorable with `eval score`)")
    from trainers.eval import runner

    if args.mode:
        for b in names:
            runner.check_mode(b, args.mode)
    from orchestrator.commands.export import resolve_model_dir
    from trainers import export

    from trainers.spec import EvalConfig, mesh_from_sizes

    mesh_cfg = mesh_from_sizes(args.mesh, "--mesh") if args.mesh else None
    checkpoint, record = resolve_model_dir(args.checkpoint, args.sweep, args.tracking_uri, "--checkpoint")
    cfg = EvalConfig(benchmarks=tuple(names), data_dir=args.data_dir, max_examples=args.max_examples,
                     max_new_tokens=args.max_new_tokens, sc_samples=args.sc_samples, mmlu_split=args.mmlu_split)
    # Bad data and a mesh the host's devices cannot form are reported before the model is loaded.
    data = runner.load_all(cfg)

    from trainers.data.tokenizer import load_tokenizer
    from trainers.eval.placement import EvalMesh

    placement = None
    if mesh_cfg is not None:
        from trainers import partitioning

        try:
            placement = EvalMesh(partitioning.make_mesh(mesh_cfg))
        except UserError as e:
            raise UserError(f"--mesh {args.mesh}: {str(e).removeprefix('mesh: ')}") from None
    loaded = export.load(checkpoint, record)
    model_cfg, params = loaded.model, loaded.params
    tokenizer = load_tokenizer(loaded.data, flanscale_home(), vocab_size=model_cfg.vocab_size)
    generate, scorer = runner.model_scorers(cfg, model_cfg, params, tokenizer, batch_size=args.batch_size,
                                            max_prompt_tokens=args.max_prompt_tokens, placement=placement)
    # The loop a cell runs, each benchmark in the given mode or its usual one.
    modes = {b: [args.mode or benchmarks.get(b).default_mode] for b in names}
    result = runner.run_eval(cfg, generate, scorer, args.seed, data=data, modes=modes,
                             keep_outputs=bool(args.predictions_out))
    if args.predictions_out:
        for (b, mode), rows in result.outputs.items():
            path = Path(args.predictions_out.replace("{benchmark}", b))
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as f:
                for ex_id, o in rows.items():
                    row = {"samples": o} if mode == "sc" else {"prediction": o[0]}
                    f.write(json.dumps({"id": ex_id, **row}, ensure_ascii=False) + "\n")
    standins = list(result.standins)
    if args.format == "json":
        print(json.dumps({"scores": [_score_json(s, args.data_dir) for s in result.scores], "metrics": result.metrics,
                          "standins": standins}, indent=2, sort_keys=True))
        return 0
    for score in result.scores:
        _print_score(score, args.format, args.data_dir)
    for key, value in result.metrics.items():
        print(f"{key} = {value:.2f}" + (" (stand-in)" if _standin_metric(key, standins) else ""))
    return 0


def _standin_metric(key: str, standins: list[str]) -> bool:
    """Whether metric `key` is a stand-in benchmark's score, or an average with one among its members."""
    parts = key.split("/")
    if len(parts) > 2 and parts[1] in standins:
        return True
    return any(key == benchmarks.average_metric(suite) and any(b in standins for b, _ in benchmarks.average_members(suite))
               for suite in benchmarks.SUITES)
