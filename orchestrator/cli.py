"""The `flanscale` command. Thin: each command group lives in orchestrator/commands/ and
calls library functions; this module only builds the parser and turns UserError into one line."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from orchestrator import preflight
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
    # Every command that reaches a Ray cluster or a tracking store checks it first (main), so
    # each gets the same bound on how long that check may wait.
    for p in _parsers(parser):
        if {"--tracking-uri", "--ray-address"} & set(p._option_string_actions):
            p.add_argument("--connect-timeout", type=float, metavar="SECONDS",
                           help="give up on an unreachable Ray cluster or tracking server after this long "
                                f"(default: ${preflight.TIMEOUT_ENV}, else {preflight.CONNECT_TIMEOUT_S:g})")
    return parser


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`parser` and every sub-command parser under it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share one parser
                found += _parsers(child)
    return found


class Terminated(KeyboardInterrupt):
    """SIGTERM: a command ends as it does on Ctrl-C (a running sweep handles it itself)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _detach_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a stdout without a descriptor (a test's capture)
        pass


def main(argv: list[str] | None = None) -> int:
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "flags_checked_by_command", False):
            preflight.check_flags(args)
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`flanscale ... | head`): end as quietly as a program killed by
        # SIGPIPE, with nothing left for the interpreter to flush into the closed pipe.
        _detach_stdout()
        return 128 + signal.SIGPIPE
    except UserError as e:
        print(f"flanscale: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("flanscale: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("flanscale: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
