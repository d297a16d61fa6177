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
and interval drawn from laws, stays inside the domain by construction. The three-parameter
variant (the irreducible loss E, the ceiling T) is tried from 5 points and kept only when
AICc prefers it; otherwise E or T is not identified by the points and the two-parameter law
stands. The point fit uses a robust loss (soft L1), so one bad cell bends it less.

Intervals: a parametric bootstrap in the fitting space. Each replicate draws the noise scale
from its scaled-inverse-chi-square distribution (residual sum of squares over chi2(n - k)),
adds Gaussian noise of that scale (and never less than a point's own seed spread) to the
fitted values, refits and predicts. Drawing the scale, rather than plugging in the estimate,
makes the interval t-like: wide with 3 points instead of collapsing to the spread of
pairwise lines (the drawn scale is capped at the points' own spread). On each replicate every
candidate law is refitted and AICc chooses again, so the doubt about the law is in the interval.
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
MIN_POINTS_3PARAM = 5  # AICc with 3 parameters needs n - k - 1 > 0, and one point to spare
DEFAULT_BOOTSTRAP = 200
DEFAULT_LEVEL = 0.95
INTERVAL_METHOD = ("parametric bootstrap (noise scale drawn from chi-square, seed spread as floor, "
                   "law re-chosen per replicate)")
EXTRAPOLATION_DECADES = 1.0
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
    law: Law
    candidates: tuple[Law, ...]
    boot: tuple[Law, ...] | None  # the laws refitted to each replicate; None when no interval
    level: float
    note: str
    x: tuple[float, ...]

    def interval(self, x) -> tuple[np.ndarray, np.ndarray] | None:
        if self.boot is None:
            return None
        xs = np.atleast_1d(np.asarray(x, dtype=float))
        preds = np.stack([b.predict(xs) for b in self.boot])
        tail = (1 - self.level) / 2 * 100
        lo, hi = np.percentile(preds, tail, axis=0), np.percentile(preds, 100 - tail, axis=0)
        return np.minimum(lo, hi), np.maximum(lo, hi)

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
    """Fit the domain's laws to points (x > 0), keep the better by AICc, bootstrap it.

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
    if len(x) >= MIN_POINTS_3PARAM:
        laws.append(fit_law(extended, x, y, domain, scale=laws[0].scale))
    else:
        what = "irreducible loss E" if domain.kind == "loss" else "ceiling below 100"
        notes.append(f"{what} not identified by {len(x)} points (needs {MIN_POINTS_3PARAM}); {base} law")
    chosen = laws[0]
    if len(laws) == 2 and laws[1].aicc is not None and laws[0].aicc is not None and laws[1].aicc < laws[0].aicc:
        chosen = laws[1]
    boot = None
    sem = _seed_sem(domain, y, seed_sd, n_seeds)
    df = len(x) - chosen.k
    if df < 1 and sem is None:
        notes.append(f"no interval: {len(x)} points leave no residual to estimate the noise from, and no seed spread")
    elif n_boot > 0:
        if df < 1:
            notes.append(f"interval from the seed spread alone ({len(x)} points leave no residual): "
                         "it does not include any misfit of the law")
        boot = _bootstrap(chosen, laws, x, sem, seed, n_boot)
    return Fit(chosen, tuple(laws), boot, level, "; ".join(notes), tuple(float(v) for v in x))


def _seed_sem(domain, y, seed_sd, n_seeds) -> np.ndarray | None:
    if seed_sd is None or n_seeds is None:
        return None
    sd, n = np.asarray(seed_sd, dtype=float), np.asarray(n_seeds, dtype=float)
    if not (n >= 2).any():
        return None
    sem = np.where(n >= 2, np.nan_to_num(sd) / np.sqrt(np.maximum(n, 1)), 0.0)
    return sem * _fit_space_slope(domain, y)


def _bootstrap(chosen: Law, candidates: Sequence[Law], x: np.ndarray, sem: np.ndarray | None, seed: int,
               n_boot: int) -> tuple[Law, ...]:
    """Replicates drawn around the chosen law; on each, every candidate is refitted and AICc
    picks again, so the interval carries the doubt about the choice of law too."""
    rng = np.random.default_rng(seed)
    u = np.log(x / chosen.scale)
    z_hat = chosen.z(x)
    df = len(x) - chosen.k
    # With one or two degrees of freedom the drawn scale has a very heavy tail; it is capped
    # at the spread of the points themselves: noise larger than all the points vary by would
    # leave no trend to fit.
    cap = max(float(np.std(z_hat, ddof=1)), math.sqrt(chosen.rss / max(df, 1)))
    # Points that agree exactly (scores pinned at a bound, seeds that all gave the same answer)
    # leave no measured noise; a metric is never known better than its resolution, half a
    # point of a score or 1% of a loss, so the interval never has zero width.
    y_hat = chosen.predict(x)
    dom = chosen.domain
    resolution = _fit_space_slope(dom, y_hat) * (0.01 * np.abs(y_hat) if dom.kind == "loss" else _EDGE)
    reps = []
    for _ in range(n_boot):
        sigma = min(math.sqrt(chosen.rss / rng.chisquare(df)), cap) if df >= 1 else 0.0
        sd = np.maximum(sigma, sem) if sem is not None else np.full(len(x), sigma)
        sd = np.maximum(sd, resolution)
        z = z_hat + rng.normal(0.0, 1.0, len(x)) * sd
        refits = [_refit(c, u, z) for c in candidates]
        scored = [r for r in refits if r.aicc is not None]
        reps.append(min(scored, key=lambda r: r.aicc) if len(scored) == len(refits) else _refit(chosen, u, z))
    return tuple(reps)


def _refit(law: Law, u: np.ndarray, z: np.ndarray) -> Law:
    # The replicate's noise is Gaussian by construction, so plain least squares is the right
    # refit; started from the point fit, which is close.
    if law.name in ("power", "sigmoid"):
        theta = _linear_refit(law, u, z)
        rss = float(np.sum((_z(law.name, theta, u, law.domain, law.y_ref) - z) ** 2))
        return Law(law.name, law.domain, tuple(float(t) for t in theta), law.scale, len(u), rss, law.y_ref)
    return _fit_z(law.name, u, z, law.domain, law.scale, law.y_ref, robust=False, start=[np.array(law.theta)])


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
        return self.decades_beyond > EXTRAPOLATION_DECADES


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
    """Hold out the largest x and predict it with an interval; None when the rest cannot give
    one (fewer than 3 points, or 2 without a seed spread)."""
    order = np.argsort(np.asarray(x, dtype=float))
    xs, ys = np.asarray(x, dtype=float)[order], np.asarray(y, dtype=float)[order]
    if len(np.unique(xs[:-1])) < 2:
        return None
    sd = np.asarray(seed_sd, dtype=float)[order][:-1] if seed_sd is not None else None
    ns = np.asarray(n_seeds)[order][:-1] if n_seeds is not None else None
    f = fit(xs[:-1], ys[:-1], domain, sd, ns, seed=seed, n_boot=n_boot, level=level)
    if len(xs) - 1 < MIN_POINTS and f.boot is None:
        return None  # a line through two points with no noise estimate checks nothing
    p = predict(f, float(xs[-1]))
    return Holdout(float(xs[-1]), float(ys[-1]), p.value, p.low, p.high, f.law.name, len(xs) - 1)
