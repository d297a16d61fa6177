"""The `flanscale` command. Thin: each command group lives in orchestrator/commands/ and
calls library functions; this module only builds the parser and turns UserError into one line."""

from __future__ import annotations

import argparse
import importlib
import sys

from trainers.spec import UserError

# Command groups, each a module in orchestrator/commands/ with `register(subparsers)`;
# a handler is stored as `func` on the parsed namespace.
COMMAND_MODULES = ("plan", "sweep", "report", "fit", "train", "pretrain", "eval", "export", "convert", "k8s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flanscale",
        description="Plan, run, track and analyse instruction-finetuning scaling sweeps.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"orchestrator.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"flanscale: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flanscale: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
