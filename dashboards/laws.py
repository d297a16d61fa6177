"""Scaling laws that respect their metric's domain, fitted robustly, with intervals that hold
up with few points. Pure (numpy/scipy), shared by the report and `flanscale fit`.

x is model parameters, number of finetuning tasks or FLOPs; u = ln(x / s) with s the
geometric mean of the fitted x (which keeps the optimiser conditioned over nine decades).

  loss kind      power          L = A (x/s)^-alpha                         (A > 0, alpha > 0)
                 power+offset   L = E + A (x/s)^-alpha                     (0 <= E < min L)
                 fitted in log L: a residual is a relative error.
  bounded kinds  sigmoid        y = lo + (100 - lo) sigmoid(a + b u)
                 sigmoid+ceiling y = lo + (T - lo) sigmoid(a + b u)        (max y < T < 100)
                 fitted in logit((y - lo) / (100 - lo)); lo is chance (accuracy) or the
                 all-wrong floor (score). Points within half a point of lo or 100 are read
                 as that half point (a logit of exactly chance is infinite).

Every parameter is a transform of an unconstrained one, so every law, and so every forecast
and interval drawn from laws, stays inside the domain by construction. Both forms are fitted
from 3 points on. The point law is the two-parameter one unless AICc (which can judge from 5
points) prefers the three-parameter variant (the irreducible loss E, the ceiling T) or an F
test rules the two-parameter law out. The point fit uses a robust loss (soft L1), so one bad
cell bends it less.

Intervals: a parametric bootstrap in the fitting space. Each replicate draws the noise scale
from its scaled-inverse-chi-square distribution (residual sum of squares over chi2(n - k)),
adds Gaussian noise of that scale (and never less than a point's own seed spread or the
metric's resolution) to a law form's fitted values, refits that form and predicts. Drawing the
scale, rather than plugging in the estimate, makes the interval t-like: wide with 3 points
instead of collapsing to the spread of pairwise lines (the drawn scale is capped at the
points' own spread); the spread over seeds, which measures the noise free of any misfit, is
pooled into the residuals with its own degrees of freedom. Each form the points cannot rule
out (an F test) is bootstrapped and the interval takes the percentiles of all their
replicates together: with 3 points a pure power law and one that levels off at E fit equally
well, and a forecast one decade on may lie anywhere between them, so the interval says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import least_squares
from scipy.special import expit, log_expit, logit

from dashboards.kinds import Domain

MIN_POINTS = 3  # two parameters and one degree of freedom for the noise
DEFAULT_BOOTSTRAP = 200
DEFAULT_LEVEL = 0.95
INTERVAL_METHOD = ("parametric bootstrap of each law form the points cannot rule out, pooled (noise scale drawn "
                   "from chi-square over the residuals and the seed spread; seed spread and resolution as floors)")
_EDGE = 0.5  # points: half a point from a bound is as close as a fit may read a score
_ALPHA = (math.log(1e-4), math.log(5.0))  # exponent range of the power laws
_WIDE = 60.0  # bound on the unconstrained parameters (keeps the optimiser finite)


def to_fit_space(domain: Domain, y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    if domain.kind == "loss":
        return np.log(np.maximum(domain.sign * y, 1e-12))
    span = domain.high - domain.low
    p = np.clip((y - domain.low) / span, _EDGE / span, 1 - _EDGE / span)
    return logit(p)


def _fit_space_slope(domain: Domain, y: np.ndarray) -> np.ndarray:
    """dz/dy at y: turns a spread in the metric into a spread in the fitting space."""
    y = np.asarray(y, dtype=float)
    if domain.kind == "loss":
        return 1.0 / np.maximum(np.abs(y), 1e-12)
    span = domain.high - domain.low
    p = np.clip((y - domain.low) / span, _EDGE / span, 1 - _EDGE / span)
    return 1.0 / (span * p * (1 - p))


@dataclass(frozen=True)
class Law:
    """One fitted law. `theta` holds the unconstrained parameters; `params()` the readable ones."""

    name: str  # "power" | "power+offset" | "sigmoid" | "sigmoid+ceiling"
    domain: Domain
    theta: tuple[float, ...]
    scale: float
    n: int
    rss: float  # in the fitting space
    y_ref: float  # loss kinds: the smallest loss (E lies below it); bounded: the largest y (T lies above it)

    @property
    def k(self) -> int:
        return len(self.theta)

    @property
    def aicc(self) -> float | None:
        if self.n - self.k - 1 <= 0:
            return None
        rss = max(self.rss, 1e-300)
        return self.n * math.log(rss / self.n) + 2 * self.k + 2 * self.k * (self.k + 1) / (self.n - self.k - 1)

    def z(self, x) -> np.ndarray:
        """The law in the fitting space."""
        return _z(self.name, np.asarray(self.theta, dtype=float), np.log(np.asarray(x, dtype=float) / self.scale),
                  self.domain, self.y_ref)

    def predict(self, x) -> np.ndarray:
        return _from_z(self.z(x), self.domain)

    def params(self) -> dict[str, float]:
        t = self.theta
        if self.name.startswith("power"):
            out = {"A": math.exp(t[0]), "alpha": math.exp(t[1])}
            if self.name == "power+offset":
                out["E"] = self.y_ref * float(expit(t[2]))
            return out
        out = {"a": t[0], "b": t[1], "floor" if self.domain.kind == "score" else "chance": self.domain.low}
        out["ceiling"] = _ceiling(self.domain, t, self.y_ref)
        return out

    def formula(self) -> str:
        p, s = self.params(), f"{self.scale:.3g}"
        if self.name.startswith("power"):
            lhs = "-y" if self.domain.sign < 0 else "y"
            off = f"{p['E']:.4g} + " if "E" in p else ""
            return f"{lhs} = {off}{p['A']:.4g} (x / {s})^-{p['alpha']:.3g}"
        lo, hi = self.domain.low, p["ceiling"]
        return (f"y = {lo:.4g} + {hi - lo:.4g} sigmoid({p['a']:.3g} {'+' if p['b'] >= 0 else '-'} {abs(p['b']):.3g} "
                f"ln(x / {s}))")


def _ceiling(domain: Domain, theta: Sequence[float], y_max: float) -> float:
    if len(theta) < 3:
        return domain.high
    return y_max + (domain.high - y_max) * float(expit(theta[2]))


def _z(name: str, t: np.ndarray, u: np.ndarray, domain: Domain, y_ref: float) -> np.ndarray:
    if name == "power":
        return t[0] - math.exp(t[1]) * u
    if name == "power+offset":
        log_e = math.log(max(y_ref, 1e-300)) + float(log_expit(t[2]))
        return np.logaddexp(log_e, t[0] - math.exp(t[1]) * u)
    lin = t[0] + t[1] * u
    if name == "sigmoid":
        return lin
    # With a ceiling the law's logit is no longer linear: logit(c * sigmoid(lin)), c < 1.
    span = domain.high - domain.low
    c = (_ceiling(domain, t, y_ref) - domain.low) / span
    p = np.clip(c * expit(lin), 1e-300, 1 - 1e-16)
    return np.log(p) - np.log1p(-p)


def _jac(name: str, t: np.ndarray, u: np.ndarray, domain: Domain, y_ref: float) -> np.ndarray:
    """d z / d theta, analytically: the bootstrap refits hundreds of times per series."""
    if name == "power":
        return np.stack([np.ones_like(u), -math.exp(t[1]) * u], axis=1)
    if name == "sigmoid":
        return np.stack([np.ones_like(u), u], axis=1)
    if name == "power+offset":
        alpha = math.exp(t[1])
        log_e = math.log(max(y_ref, 1e-300)) + float(log_expit(t[2]))
        w = expit(t[0] - alpha * u - log_e)  # share of the power term in E + A x^-alpha
        return np.stack([w, -alpha * u * w, (1 - w) * (1 - float(expit(t[2])))], axis=1)
    span = domain.high - domain.low
    g = float(expit(t[2]))
    c = (_ceiling(domain, t, y_ref) - domain.low) / span
    s = expit(t[0] + t[1] * u)
    p = np.clip(c * s, 1e-300, 1 - 1e-16)
    dz_dp = 1.0 / (p * (1 - p))
    dp_dlin = c * s * (1 - s)
    return np.stack([dz_dp * dp_dlin, dz_dp * dp_dlin * u, dz_dp * s * (domain.high - y_ref) * g * (1 - g) / span], axis=1)


def _from_z(z: np.ndarray, domain: Domain) -> np.ndarray:
    if domain.kind == "loss":
        return domain.sign * np.exp(z)
    return domain.low + (domain.high - domain.low) * expit(z)


def _start_points(name: str, u: np.ndarray, z: np.ndarray, y_ref: float) -> list[np.ndarray]:
    slope, icpt = np.polyfit(u, z, 1) if len(np.unique(u)) > 1 else (0.0, float(np.mean(z)))
    if name == "power":
        return [np.array([icpt, math.log(min(max(-slope, 1e-3), 4.0))])]
    if name == "sigmoid":
        return [np.array([icpt, slope])]
    if name == "sigmoid+ceiling":
        return [np.array([icpt + d, slope, c]) for c in (-2.0, 0.5, 3.0) for d in (0.0, 1.0)]
    # power+offset: for each (E, alpha) on a grid the best log A is closed-form; keep the best few.
    cands = []
    for frac in (0.05, 0.3, 0.6, 0.9, 0.98):
        log_e = math.log(y_ref * frac)
        rest = np.log(np.maximum(np.exp(z) - y_ref * frac, 1e-12))
        for alpha in np.geomspace(0.01, 3.0, 12):
            log_a = float(np.mean(rest + alpha * u))
            pred = np.logaddexp(log_e, log_a - alpha * u)
            cands.append((float(np.sum((pred - z) ** 2)), np.array([log_a, math.log(alpha), float(logit(frac))])))
    cands.sort(key=lambda c: c[0])
    return [c[1] for c in cands[:3]]


def _bounds(name: str) -> tuple[list[float], list[float]]:
    if name.startswith("power"):
        lo, hi = [-_WIDE, _ALPHA[0]], [_WIDE, _ALPHA[1]]
    else:
        lo, hi = [-_WIDE, -_WIDE], [_WIDE, _WIDE]
    if name in ("power+offset", "sigmoid+ceiling"):
        lo.append(-15.0)
        hi.append(15.0)
    return lo, hi


def fit_law(name: str, x: np.ndarray, y: np.ndarray, domain: Domain, scale: float | None = None,
            robust: bool = True, start: Sequence[np.ndarray] = ()) -> Law:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    scale = float(np.exp(np.mean(np.log(x)))) if scale is None else scale
    z = to_fit_space(domain, y)
    return _fit_z(name, np.log(x / scale), z, domain, scale, _y_ref(name, domain, y), robust, start)


def _y_ref(name: str, domain: Domain, y: np.ndarray) -> float:
    if domain.kind == "loss":
        return float(np.min(np.maximum(domain.sign * y, 1e-12)))
    # The ceiling lies above every point (and at least half a point below 100).
    return float(min(np.max(y), domain.high - _EDGE))


def _fit_z(name, u, z, domain, scale, y_ref, robust=True, start=()) -> Law:
    lo, hi = _bounds(name)
    starts = list(start) or _start_points(name, u, z, y_ref)
    # A robust loss needs a scale: residuals beyond it count linearly. Taken from the data's
    # own spread around a straight line in the fitting space, with a floor so that an exact
    # fit does not make every residual an outlier.
    f_scale = max(1.4826 * float(np.median(np.abs(z - np.polyval(np.polyfit(u, z, 1), u)))) if len(u) > 2 else 0.0,
                  0.02 if domain.kind == "loss" else 0.1)
    # Bootstrap refits start at the point fit and feed percentiles: 1e-6 is precise enough.
    tol = {} if robust else {"ftol": 1e-6, "xtol": 1e-6, "max_nfev": 60}
    best = None
    for s in starts:
        s = np.clip(s, np.array(lo) + 1e-9, np.array(hi) - 1e-9)
        r = least_squares(lambda t: _z(name, t, u, domain, y_ref) - z, s, bounds=(lo, hi),
                          jac=lambda t: _jac(name, t, u, domain, y_ref),
                          loss="soft_l1" if robust else "linear", f_scale=f_scale, x_scale="jac", **tol)
        if best is None or r.cost < best.cost:
            best = r
    theta = tuple(float(v) for v in best.x)
    rss = float(np.sum((_z(name, best.x, u, domain, y_ref) - z) ** 2))
    return Law(name, domain, theta, scale, len(u), rss, y_ref)


def candidates_for(domain: Domain) -> tuple[str, str]:
    return ("power", "power+offset") if domain.kind == "loss" else ("sigmoid", "sigmoid+ceiling")


@dataclass(frozen=True)
class Fit:
    law: Law  # the point law (see `fit`)
    candidates: tuple[Law, ...]
    boot: tuple[tuple[Law, ...], ...] | None  # per law form the interval spans, its replicates; None: no interval
    level: float
    note: str
    x: tuple[float, ...]

    def interval(self, x) -> tuple[np.ndarray, np.ndarray] | None:
        """Percentiles of every law form's replicates pooled, the forms weighted alike (an
        average over the forms the points cannot rule out), widened to hold the point law."""
        if self.boot is None:
            return None
        xs = np.atleast_1d(np.asarray(x, dtype=float))
        tail = (1 - self.level) / 2 * 100
        preds = np.concatenate([np.stack([b.predict(xs) for b in reps]) for reps in self.boot])
        point = self.law.predict(xs)
        lo = np.minimum(point, np.percentile(preds, tail, axis=0))
        return lo, np.maximum(point, np.percentile(preds, 100 - tail, axis=0))

    def extrapolation(self, x: float) -> float:
        """Decades beyond the fitted x (0 inside the range)."""
        lo, hi = min(self.x), max(self.x)
        if x > hi:
            return math.log10(x / hi)
        if x < lo:
            return math.log10(lo / x)
        return 0.0


def fit(x: Sequence[float], y: Sequence[float], domain: Domain, seed_sd: Sequence[float] | None = None,
        n_seeds: Sequence[int] | None = None, seed: int = 0, n_boot: int = DEFAULT_BOOTSTRAP,
        level: float = DEFAULT_LEVEL) -> Fit:
    """Fit both law forms of the domain to points (x > 0) and bootstrap each.

    The point law is AICc's choice where AICc can judge (5 points or more), else the
    two-parameter law, and the three-parameter law wherever an F test rules the
    two-parameter one out. The interval pools the bootstraps of the forms the points cannot
    rule out, so an irreducible loss (or a ceiling) the data may already show is not forecast
    away.
    `seed_sd`/`n_seeds`: the spread of each point over its seeds, when points are seed means;
    it sets a floor under the noise the bootstrap adds (and allows an interval at n = k).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or len(np.unique(x)) < 2:
        raise ValueError("a law needs at least two distinct x")
    if (x <= 0).any():
        raise ValueError("x must be > 0 (laws are in log x)")
    base, extended = candidates_for(domain)
    laws = [fit_law(base, x, y, domain)]
    notes = []
    if len(np.unique(x)) >= MIN_POINTS:
        laws.append(fit_law(extended, x, y, domain, scale=laws[0].scale))
    else:
        what = "irreducible loss E" if domain.kind == "loss" else "ceiling below 100"
        notes.append(f"{what} not identified by {len(x)} points; {base} law only")
    chosen, forms = laws[0], laws
    if len(laws) == 2:
        if laws[1].aicc is not None and laws[0].aicc is not None and laws[1].aicc < laws[0].aicc:
            chosen = laws[1]
        p_base = _f_test(laws[0], laws[1])
        if p_base is not None and p_base < 1 - level:
            chosen, forms = laws[1], laws[1:]
            notes.append(f"the {base} law is ruled out (F test p = {p_base:.2g}); interval from the {extended} law")
        else:
            notes.append(f"interval: the {base} and {extended} laws' bootstraps pooled (the points cannot tell "
                         "them apart)")
    boot = None
    sem = _seed_sem(domain, y, seed_sd, n_seeds)
    noise = chosen if len(x) > chosen.k else laws[0]
    if len(x) - noise.k < 1 and sem is None:
        notes.append(f"no interval: {len(x)} points leave no residual to estimate the noise from, and no seed spread")
    elif n_boot > 0:
        if len(x) - noise.k < 1:
            notes.append(f"interval from the seed spread alone ({len(x)} points leave no residual): "
                         "it does not include any misfit of the law")
        seed_df = float(np.sum(np.maximum(np.asarray(n_seeds, dtype=float) - 1, 0))) if sem is not None else 0.0
        boot = _bootstrap(forms, noise, x, sem, seed_df, seed, n_boot)
    return Fit(chosen, tuple(laws), boot, level, "; ".join(notes), tuple(float(v) for v in x))


def _f_test(small: Law, big: Law) -> float | None:
    """p-value of the extra parameter of `big` (nested: E -> 0 or T -> 100 gives `small`)."""
    from scipy.stats import f as f_dist

    df = big.n - big.k
    if df < 1:
        return None
    if big.rss <= 0:
        return 0.0 if small.rss > 0 else None
    stat = max(small.rss - big.rss, 0.0) / (big.k - small.k) / (big.rss / df)
    return float(f_dist.sf(stat, big.k - small.k, df))


def _seed_sem(domain, y, seed_sd, n_seeds) -> np.ndarray | None:
    if seed_sd is None or n_seeds is None:
        return None
    sd, n = np.asarray(seed_sd, dtype=float), np.asarray(n_seeds, dtype=float)
    if not (n >= 2).any():
        return None
    sem = np.where(n >= 2, np.nan_to_num(sd) / np.sqrt(np.maximum(n, 1)), 0.0)
    return sem * _fit_space_slope(domain, y)


def _bootstrap(forms: Sequence[Law], noise: Law, x: np.ndarray, sem: np.ndarray | None, seed_df: float, seed: int,
               n_boot: int) -> tuple[tuple[Law, ...], ...]:
    """Replicates drawn around each law form and refitted with it. The noise scale of a point
    (a mean over seeds) is drawn from the residuals of `noise` (the point law, or the
    two-parameter law where it has none) pooled with the spread over seeds, each with its
    degrees of freedom: seeds measure the noise free of any misfit, and with 3 points the
    residual alone (one degree of freedom) says almost nothing about it."""
    rng = np.random.default_rng(seed)
    u = np.log(x / noise.scale)
    df = len(x) - noise.k
    rss = noise.rss + (float(np.sum(seed_df / len(x) * sem ** 2)) if sem is not None else 0.0)
    df_all = max(df, 0) + seed_df
    # With one or two degrees of freedom the drawn scale has a very heavy tail; it is capped
    # at the spread of the points themselves: noise larger than all the points vary by would
    # leave no trend to fit.
    cap = max(float(np.std(noise.z(x), ddof=1)), math.sqrt(noise.rss / max(df, 1)))
    # Points that agree exactly (scores pinned at a bound, seeds that all gave the same answer)
    # leave no measured noise; a metric is never known better than its resolution, so the
    # interval never has zero width.
    y_hat = noise.predict(x)
    resolution = _fit_space_slope(noise.domain, y_hat) * noise.domain.resolution(y_hat)
    out = []
    for form in forms:
        z_hat = form.z(x)
        reps = []
        for _ in range(n_boot):
            sigma = min(math.sqrt(rss / rng.chisquare(df_all)), cap) if df_all >= 1 else 0.0
            sd = np.maximum(sigma, sem) if sem is not None else np.full(len(x), sigma)
            sd = np.maximum(sd, resolution)
            reps.append(_refit(form, u, z_hat + rng.normal(0.0, 1.0, len(x)) * sd))
        out.append(tuple(reps))
    return tuple(out)


def _refit(law: Law, u: np.ndarray, z: np.ndarray) -> Law:
    # The replicate's noise is Gaussian by construction, so plain least squares is the right refit.
    theta = _linear_refit(law, u, z) if law.name in ("power", "sigmoid") else _profile_refit(law, u, z)
    rss = float(np.sum((_z(law.name, theta, u, law.domain, law.y_ref) - z) ** 2))
    return Law(law.name, law.domain, tuple(float(t) for t in theta), law.scale, len(u), rss, law.y_ref)


_PROFILE = np.linspace(-8.0, 8.0, 65)  # the third parameter's grid (logit of E's or T's share)


def _profile_refit(law: Law, u: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Least squares of a three-parameter law, profiled: for each E (or ceiling T) on a grid
    the other two are a straight line in a transformed space, solved in closed form; the grid
    value with the least residual in the fitting space wins. With 3 or 4 points E and T lie on
    a long flat ridge that an iterative optimiser crawls along; the profile walks all of it at
    once, for every replicate of the bootstrap."""
    g = expit(_PROFILE)[:, None]
    if law.name == "power+offset":
        e = law.y_ref * g  # (G, 1)
        w = np.log(np.maximum(np.exp(z)[None, :] - e, 1e-12 * law.y_ref))  # ln(L - E) = ln A - alpha u
    else:
        span = law.domain.high - law.domain.low
        c = (law.y_ref + (law.domain.high - law.y_ref) * g - law.domain.low) / span
        q = np.clip(expit(z)[None, :] / c, 1e-9, 1 - 1e-9)
        w = np.log(q) - np.log1p(-q)  # logit(q) = a + b u
    uc = u - u.mean()
    slope = (w - w.mean(axis=1, keepdims=True)) @ uc / max(float(uc @ uc), 1e-300)
    if law.name == "power+offset":
        alpha = np.clip(-slope, math.exp(_ALPHA[0]), math.exp(_ALPHA[1]))
        thetas = np.stack([np.mean(w + alpha[:, None] * u, axis=1), np.log(alpha), _PROFILE], axis=1)
    else:
        slope = np.clip(slope, -_WIDE, _WIDE)
        thetas = np.stack([np.clip(w.mean(axis=1) - slope * u.mean(), -_WIDE, _WIDE), slope, _PROFILE], axis=1)
    rss = [float(np.sum((_z(law.name, t, u, law.domain, law.y_ref) - z) ** 2)) for t in thetas]
    return thetas[int(np.argmin(rss))]


def _linear_refit(law: Law, u: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Least squares of a law that is a straight line in the fitting space; the power law's
    exponent keeps its bounds (clamping the slope and refitting the intercept is the exact
    constrained optimum of a one-dimensional convex quadratic)."""
    slope, icpt = np.polyfit(u, z, 1)
    if law.name == "sigmoid":
        return np.clip(np.array([icpt, slope]), -_WIDE, _WIDE)
    alpha = float(np.clip(-slope, math.exp(_ALPHA[0]), math.exp(_ALPHA[1])))
    return np.array([float(np.mean(z + alpha * u)), math.log(alpha)])


@dataclass(frozen=True)
class Prediction:
    at: float
    value: float
    low: float | None
    high: float | None
    decades_beyond: float

    @property
    def extrapolation(self) -> bool:
        """Outside the range of the fitted x, by any distance."""
        return self.decades_beyond > 0


def predict(f: Fit, at: float) -> Prediction:
    iv = f.interval([at])
    lo, hi = (float(iv[0][0]), float(iv[1][0])) if iv is not None else (None, None)
    return Prediction(float(at), float(f.law.predict(at)), lo, hi, f.extrapolation(at))


@dataclass(frozen=True)
class Holdout:
    """The largest x predicted from a fit to the others."""

    held_out_x: float
    actual: float
    predicted: float
    low: float | None
    high: float | None
    law: str
    fitted_points: int

    @property
    def error(self) -> float:
        return self.predicted - self.actual

    @property
    def within(self) -> bool | None:
        if self.low is None or self.high is None:
            return None
        return self.low <= self.actual <= self.high


def holdout(x: Sequence[float], y: Sequence[float], domain: Domain, seed_sd=None, n_seeds=None, seed: int = 0,
            n_boot: int = DEFAULT_BOOTSTRAP, level: float = DEFAULT_LEVEL) -> Holdout | None:
    """Hold out the largest x and predict it from the rest by the forecasts' own procedure;
    None when the rest are fewer than the MIN_POINTS a forecast is made from."""
    order = np.argsort(np.asarray(x, dtype=float))
    xs, ys = np.asarray(x, dtype=float)[order], np.asarray(y, dtype=float)[order]
    if len(np.unique(xs[:-1])) < MIN_POINTS:
        return None
    sd = np.asarray(seed_sd, dtype=float)[order][:-1] if seed_sd is not None else None
    ns = np.asarray(n_seeds)[order][:-1] if n_seeds is not None else None
    f = fit(xs[:-1], ys[:-1], domain, sd, ns, seed=seed, n_boot=n_boot, level=level)
    p = predict(f, float(xs[-1]))
    return Holdout(float(xs[-1]), float(ys[-1]), p.value, p.low, p.high, f.law.name, len(xs) - 1)
