"""`flanscale fit FILE.csv --x COLUMN --y COLUMN`: fit a scaling law to any table of points
with the report's code (a user's own results, or the paper's Table 5 as `paper:table5`)."""

from __future__ import annotations

import argparse
import json
import sys

from trainers.spec import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit",
        help="fit a scaling law to a CSV of points and forecast beyond them",
        description="Fit the law of the metric's kind (loss: E + A x^-alpha; accuracy and scores: a sigmoid in "
        "log x between chance and 100) to the points of a CSV file, with the same code as `flanscale report`: "
        "robust fit, bootstrap interval, forecasts that stay in the metric's domain, and a back-test that holds "
        "out the largest x. Rows with the same x are averaged (seeds). FILE may be paper:table5, the paper's "
        "held-out results shipped with flanscale.",
    )
    p.add_argument("file", metavar="FILE", help="CSV with a header row, or paper:table5")
    p.add_argument("--x", required=True, metavar="COLUMN", help="x column: parameters, task count or FLOPs (> 0; "
                   "suffixes K/M/B/T allowed, e.g. 80M)")
    p.add_argument("--y", required=True, metavar="COLUMN", help="y column: the metric")
    p.add_argument("--kind", choices=("loss", "accuracy", "score"),
                   help="the metric's kind (default: from the y column's name, e.g. eval/loss, eval/mmlu/direct)")
    p.add_argument("--chance", type=float, metavar="R",
                   help="accuracy: the chance level in percent (default: the benchmark's, else 0); "
                   "score: the lowest possible score (default: from the name, else -100)")
    p.add_argument("--at", action="extend", nargs="+", default=[], type=positive_number, metavar="X",
                   help="forecast at these x, e.g. --at 62e9 540e9")
    p.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                   help="keep only rows with this value (repeatable), e.g. --where family=t5")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    p.add_argument("--bootstrap", type=int, default=200, metavar="N", help="bootstrap replicates (default 200)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=run)


def positive_number(s: str) -> float:
    """argparse type: a positive number, written plainly (540e9) or with a size suffix (62B)."""
    from dashboards.fitting import number

    try:
        v = number(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 540e9 or 62B, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s!r}")
    return v


def run(args: argparse.Namespace) -> int:
    from dashboards import fitting, paper
    from dashboards.kinds import domain_for

    if args.bootstrap < 0:
        raise UserError(f"--bootstrap: must be >= 0, got {args.bootstrap}")
    points = fitting.read_points(args.file, args.x, args.y, args.where)
    # Table 5's columns are metrics flanscale knows: their kind and chance come with them.
    metric = paper.COLUMN_METRICS.get(args.y, args.y) if args.file == paper.TABLE5_ALIAS else args.y
    domain = domain_for(metric, args.kind, args.chance)
    if args.chance is not None and domain.kind == "loss":
        raise UserError(f"--chance: {args.chance:g} given for a loss; chance applies to --kind accuracy or score")
    fitting.check_domain(points, domain, args.y, args.chance is not None)
    result = fitting.fit_points(points, domain, args.at, seed=args.seed, n_boot=args.bootstrap)
    if args.format == "json":
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(fitting.format_table(result))
    return 0
