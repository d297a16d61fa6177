"""Forecast-interval coverage benchmark: how often the report's 95% forecast interval holds
the truth one decade beyond the data, and how wide it is.

Synthetic series are drawn from known laws: a loss with an irreducible term (L = E + A x^-alpha,
with relative Gaussian noise per seed) and a bounded accuracy (chance 25 + 75 sigmoid(a + b ln x),
each seed scoring a benchmark of --items questions, so binomial noise). Each series has 3-5
sizes a factor of 4 apart and 2-3 seeds; the laws are fitted to the seed means exactly as the
report fits them (dashboards/laws.py: both law forms, bootstrap, union) and forecast at 10x
the largest size. Prints JSON: coverage and median interval width per kind, overall and per
setting (sizes x seeds).

    python bench/fit_coverage.py [--series 30] [--sizes 3 4 5] [--seeds 2 3] [--bootstrap 200]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from dashboards import laws
from dashboards.kinds import domain_for

FACTOR = 4.0  # between neighbouring sizes
SMALLEST = 5e5
CHANCE = 25.0


def loss_series(rng: np.random.Generator, x: np.ndarray, seeds: int, at: float) -> tuple[np.ndarray, float]:
    """(seed x size values, truth at `at`) of a loss with an irreducible term."""
    e, alpha = rng.uniform(1.0, 3.0), rng.uniform(0.1, 0.5)
    a = rng.uniform(0.5, 2.0) * x[0] ** alpha  # the smallest model lies 0.5-2 nats above E
    sd = rng.uniform(0.003, 0.01)  # relative, per seed
    truth = e + a * x ** -alpha
    values = truth * np.exp(rng.normal(0.0, sd, (seeds, len(x))))
    return values, float(e + a * at ** -alpha)


def accuracy_series(rng: np.random.Generator, x: np.ndarray, seeds: int, at: float,
                    items: int) -> tuple[np.ndarray, float]:
    """(seed x size values, truth at `at`) of an accuracy scored on `items` questions."""
    a, b = rng.uniform(-3.0, -0.5), rng.uniform(0.15, 0.6)
    u = np.log(x / x[0])

    def law(v):
        return CHANCE + (100 - CHANCE) / (1 + np.exp(-(a + b * v)))

    p = law(u) / 100
    values = rng.binomial(items, np.broadcast_to(p, (seeds, len(x)))) / items * 100
    return values, float(law(np.log(at / x[0])))


def run_setting(kind: str, sizes: int, seeds: int, series: int, n_boot: int, items: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    domain = domain_for("eval/loss") if kind == "loss" else domain_for("y", "accuracy", CHANCE)
    x = SMALLEST * FACTOR ** np.arange(sizes)
    at = 10.0 * x[-1]
    hits, widths = [], []
    for i in range(series):
        values, truth = (loss_series(rng, x, seeds, at) if kind == "loss"
                         else accuracy_series(rng, x, seeds, at, items))
        f = laws.fit(x, values.mean(axis=0), domain, values.std(axis=0, ddof=1), [seeds] * sizes,
                     seed=seed * 1000 + i, n_boot=n_boot)
        p = laws.predict(f, at)
        if p.low is None or p.high is None:
            continue
        hits.append(p.low <= truth <= p.high)
        widths.append(p.high - p.low)
    return {"kind": kind, "sizes": sizes, "seeds": seeds, "series": len(hits),
            "coverage": round(float(np.mean(hits)), 3) if hits else None,
            "median_width": round(float(np.median(widths)), 4) if widths else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=30, help="series per kind and setting (default 30)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[3, 4, 5], help="sizes per series (default 3 4 5)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[2, 3], help="seeds per size (default 2 3)")
    ap.add_argument("--bootstrap", type=int, default=laws.DEFAULT_BOOTSTRAP, help="replicates per fit (default 200)")
    ap.add_argument("--items", type=int, default=500, help="questions of the accuracy's benchmark (default 500)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.series < 1 or args.bootstrap < 1 or args.items < 1:
        ap.error("--series, --bootstrap and --items must be >= 1")
    if min(args.sizes) < laws.MIN_POINTS or min(args.seeds) < 1:
        ap.error(f"--sizes must be >= {laws.MIN_POINTS} (a law's fewest points) and --seeds >= 1")
    start = time.perf_counter()
    settings = [run_setting(kind, n, s, args.series, args.bootstrap, args.items, args.seed + 7 * j)
                for kind in ("loss", "accuracy") for j, (n, s) in
                enumerate((n, s) for n in args.sizes for s in args.seeds)]
    out: dict = {"level": laws.DEFAULT_LEVEL, "forecast_at": "10x the largest size", "bootstrap": args.bootstrap,
                 "items": args.items}
    for kind in ("loss", "accuracy"):
        mine = [s for s in settings if s["kind"] == kind and s["series"]]
        n = sum(s["series"] for s in mine)
        out[kind] = {"series": n,
                     "coverage": round(sum(s["coverage"] * s["series"] for s in mine) / n, 3) if n else None,
                     "median_width_of_settings": [s["median_width"] for s in mine]}
    out["settings"] = settings
    out["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
