"""`flanscale pretrain --out DIR --model tiny-2 --steps N`: make a small base model.

Trains a catalog preset from scratch with T5 span corruption on the suite's text (or a
local corpus) and saves it where a sweep's `init_checkpoint` can point; its pretrain.json
carries the measured pretraining FLOPs, so the finetuning cells report a measured
FLOPs fraction instead of a nominal one.
"""

from __future__ import annotations

import argparse
import json

from trainers.home import flanscale_home
from trainers.spec import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a small base model (T5 span corruption) to finetune from",
        description="Pretrain a catalog model preset with T5 span corruption and save it "
        "(model.json, params/, pretrain.json with the measured FLOPs) to --out.",
    )
    p.add_argument("--out", required=True, help="directory to write the base model to")
    p.add_argument("--model", default="tiny-2", help="catalog preset name (default tiny-2)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--batch-size", type=int, default=16, help="packed rows per step (default 16)")
    p.add_argument("--input-length", type=int, default=128, help="encoder length (default 128)")
    p.add_argument("--target-length", type=int, default=32, help="decoder length (default 32)")
    p.add_argument("--learning-rate", type=float, default=1e-2, help="Adafactor learning rate (default 1e-2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", default=None, help=".txt/.jsonl file or directory (default: the suite's text)")
    p.add_argument("--tokenizer", default="byte", help='"byte", "spm" or a SentencePiece .model path')
    p.add_argument("--home", default=None, help="run-time directory (default $FLANSCALE_HOME or ./.flanscale)")
    p.add_argument("--every", type=int, default=10, help="print a loss line every N steps (default 10)")
    p.add_argument("--quiet", action="store_true",
                   help="print one line when done instead of loss lines and the JSON summary (pretrain.json has it)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    for flag in ("steps", "batch_size", "input_length", "target_length"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}: {getattr(args, flag)} must be >= 1")
    if args.learning_rate <= 0:
        raise UserError(f"--learning-rate: {args.learning_rate} must be > 0")
    from orchestrator.catalog import get_preset

    preset = get_preset(args.model)  # unknown names raise UserError with the closest match
    from orchestrator.preflight import check_out_dir

    check_out_dir(args.out, "--out")  # before training, not after

    from orchestrator.commands.train import ConsoleTracker
    from trainers.base_model import pretrain
    from trainers.tracking import NullTracker

    home = flanscale_home(args.home)
    summary = pretrain(
        preset.model,
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        input_length=args.input_length,
        target_length=args.target_length,
        learning_rate=args.learning_rate,
        seed=args.seed,
        corpus=args.corpus,
        tokenizer=args.tokenizer,
        home=home,
        tracker=NullTracker() if args.quiet else ConsoleTracker(args.every),
    )
    if args.quiet:
        print(f"pretrained {summary['model']} ({summary['params']:,} params, {summary['steps']} steps, "
              f"final loss {summary['final_loss']:.3f}, {summary['seconds']:.0f} s) -> {summary['out']}")
    else:
        print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
