"""Multilevel Monte Carlo, the algorithm: Giles' adaptive MLMC, the computations
of his ``mlmc_test`` (convergence and complexity tests) and the MSE split of plain
Monte Carlo (Spence, Brolly and Xue, "Efficient Approximation of Pricing Functions",
section 2.2), generic over a level function.

This is the ``mlmc`` pricer's driver (:mod:`.mlmc`); the ``pricebench
mlmc-test`` command that presents :func:`mlmc_test`'s result (tables, CSV,
report.txt, summary.json, plots) is :mod:`._mlmc_test`. Nothing here prints
or writes files. NumPy only at import: pandas, which the tests' tables need,
is imported by the functions that build them, so the pricer never loads it.

References
----------
- M. B. Giles, "Multilevel Monte Carlo path simulation", Operations Research
  56(3):607-617, 2008 (the algorithm and the GBM experiments).
- M. B. Giles, "Multilevel Monte Carlo methods", Acta Numerica 24:259-328,
  2015 (the adaptive algorithm with fitted rates, section 2.2 and 3).
- Giles' MATLAB ``mlmc.m`` / ``mlmc_test.m`` and their Python port ``pymlmc``
  (P. E. Farrell et al.): the safeguards for small means and variances and
  the robust remaining-bias estimate follow that code (except that the bias
  estimate never uses level 0; see step 4 below).

Level functions
---------------
Everything here works on a *level function*::

    sums, cost = level_fn(l, N)

``N`` is an int64 array of shape (B,), one sample count per batch entry
(0 = nothing to do for that entry); ``sums`` is a float array (B, 6) with,
per entry, the sums over its N samples of Y, Y^2, Y^3, Y^4, P_f and P_f^2,
where Y = P_f - P_c is the level-l correction (P_c = 0 on level 0) and P_f
the fine estimate; ``cost`` (B,) is the cost of those samples (any unit;
path steps for the pricer). Each call must draw *fresh* samples. A batch
entry is either an option of a batch (the ``mlmc`` pricer) or an independent
replica of one problem (``mlmc_test`` runs R replicas at once this way).
A level function may also offer ``fine_cost(l)``, the cost of one sample of
the fine estimator P_l alone (used for the plain-MC comparison; without it
the level's cost C_l is used, as Giles' ``mlmc_test`` does). And, where the
model has an exact path solution (GBM), ``exact_coupling(l, N) -> (sums, cost)``
with ``sums`` (B, 4): the sums of D = P_l - P_exact, D^2, P_exact, P_exact^2,
P_exact the payoff of the exact solution on the *same* Brownian path as the
scheme's path with h_l (Spence, Brolly and Xue's comparison); E[D] = E[P_l] - P is then the
scheme's bias, measured with the small variance V[D] instead of V[P_l].
:func:`scalar_level` adapts a Giles-style function ``fn(l, N) -> (sums[6], cost)``.

Rates are in h units: with h_l = T / M^l, |E[Y_l]| ~ M^(-alpha l) = h^alpha,
V[Y_l] ~ h^beta, C_l ~ h^(-gamma) (Giles' published code fits them per level
in log2, which is the same thing for M = 2).

The adaptive algorithm (:func:`mlmc`), per batch entry
----------------------------------------------------
1. Levels 0..L with L = Lmin, N0 pilot samples on each.
2. From the samples: m_l = |mean Y_l|, V_l, C_l (cost per sample); for
   l >= 2 the safeguards m_l >= m_{l-1} / (2 M^alpha) and
   V_l >= V_{l-1} / (2 M^beta) (few samples can give near-zero estimates);
   alpha, beta, gamma fitted by least squares over levels 1..L unless given
   (alpha, beta at least 0.5).
3. N_l = ceil(sqrt(V_l / C_l) sum_k sqrt(V_k C_k) / ((1 - theta) eps^2)):
   the sample sizes minimising cost for variance (1 - theta) eps^2; with
   theta = 0.5 (the default) this is N_l = ceil(2 eps^-2 sqrt(V_l/C_l)
   sum_k sqrt(V_k C_k)). Extra samples are drawn where N_l exceeds what a
   level has.
4. Once no level needs more than 1% extra samples, the remaining bias is
   estimated from the decay of the corrections,
   max_k m_{L-k} M^(-k alpha) / (M^alpha - 1) (= |E[Y_L]| / (M^alpha - 1)
   when the decay is clean; the max over several levels is Giles' 2018 fix
   for erratic means), over k = 0..min(3, L) - 1, i.e. the last three levels
   but never level 0: with L = 2 only levels 2 and 1. This departs from
   ``mlmc.m``, whose range = -2:0 takes levels 0..2 when L = 2: level 0's
   mean is the price itself, not a correction, so its size says nothing
   about the remaining bias (it would only inflate the estimate and add
   levels needlessly). If it exceeds sqrt(theta) eps (eps / sqrt 2) a level is
   added: its V and C extrapolated with beta and gamma, all N_l recomputed,
   and at least N0 pilot samples drawn on it. At Lmax the entry is flagged
   instead (``lmax_hit``) and a :class:`MLMCWarning` issued.
5. The estimate is sum_l mean(Y_l), its standard error sqrt(sum_l V_l / N_l).

The whole batch advances together: every iteration calls the level function
once per level with each entry's extra sample count, so a compiled level
function does one pass per level over every option that needs samples.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "MLMCResult", "MLMCTestResult", "MLMCWarning", "BIAS_INDEPENDENT", "BIAS_SAME_PATH", "fit_rate", "mlmc",
    "mlmc_test", "scalar_level",
]

LevelFunction = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]


class MLMCWarning(RuntimeWarning):
    """The adaptive algorithm stopped short: Lmax reached before the bias
    estimate fell below eps/sqrt(2), or non-finite samples."""


def scalar_level(fn: Callable[[int, int], tuple[Sequence[float], float]]) -> LevelFunction:
    """Adapt ``fn(l, N) -> (sums[6], cost)`` (one problem, Giles' interface)
    to the batch interface; every batch entry calls ``fn`` in turn."""

    def level(l: int, N: np.ndarray):
        N = np.atleast_1d(np.asarray(N, dtype=np.int64))
        sums = np.zeros((N.size, 6))
        cost = np.zeros(N.size)
        for b, n in enumerate(N):
            if n > 0:
                s, c = fn(l, int(n))
                sums[b] = np.asarray(s, dtype=np.float64)[:6]
                cost[b] = float(c)
        return sums, cost

    return level


# --------------------------------------------------------------------------- rates


def _masked_slope(y: np.ndarray, mask: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Least-squares slope of y against x per row, over the columns where mask (NaN if < 2 points)."""
    mask = mask & np.isfinite(y)
    w = mask.astype(np.float64)
    n = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xb = (w * x).sum(axis=1) / n
        yv = np.where(mask, y, 0.0)
        yb = (w * yv).sum(axis=1) / n
        dx = np.where(mask, x[None, :] - xb[:, None], 0.0)
        sxy = (dx * (yv - yb[:, None])).sum(axis=1)
        sxx = (dx * dx).sum(axis=1)
        slope = sxy / sxx
    return np.where(n >= 2, slope, np.nan)


def fit_rate(values: Sequence[float], M: int, levels: Sequence[int] | None = None) -> tuple[float, float]:
    """Fit log_M |values_l| = c + s l by least squares; returns (s, c).

    ``levels`` defaults to 0, 1, ...; non-finite or zero values are left out.
    The decay rate in h units is -s (so alpha = -s for the means, beta = -s
    for the variances, gamma = +s for the costs); times log2(M) it is the
    per-level decay in log2.
    """
    v = np.abs(np.asarray(values, dtype=np.float64))
    x = np.arange(v.size, dtype=np.float64) if levels is None else np.asarray(levels, dtype=np.float64)
    with np.errstate(divide="ignore"):
        y = np.log(v) / math.log(M)
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return math.nan, math.nan
    s, c = np.polyfit(x[ok], y[ok], 1)
    return float(s), float(c)


# --------------------------------------------------------------------------- the adaptive algorithm


@dataclass
class MLMCResult:
    """Outcome of :func:`mlmc` for a batch of B entries (per-level arrays are
    (B, Lmax + 1), NaN / 0 above each entry's final level)."""

    price: np.ndarray  # (B,) the MLMC estimate sum_l mean(Y_l)
    stderr: np.ndarray  # (B,) sqrt(sum_l V_l / N_l)
    L: np.ndarray  # (B,) finest level used
    Nl: np.ndarray  # (B, Lmax+1) samples per level
    Cl: np.ndarray  # cost per sample on each level
    Vl: np.ndarray  # sample variance of Y_l
    ml: np.ndarray  # sample mean of Y_l (signed)
    cost: np.ndarray  # (B,) sum_l N_l C_l
    bias: np.ndarray  # (B,) final remaining-bias estimate
    alpha: np.ndarray  # (B,) rates used (fitted or given), h units
    beta: np.ndarray
    gamma: np.ndarray
    lmax_hit: np.ndarray  # (B,) bias estimate still > eps/sqrt(2) at Lmax
    reason: np.ndarray  # (B,) "" or why the entry is NaN
    iterations: int = 0
    eps: np.ndarray = field(default=None)

    @property
    def converged(self) -> np.ndarray:
        return ~self.lmax_hit & (self.reason == "")


def _check_args(eps, M, N0, Lmin, Lmax, theta):
    if not (isinstance(M, (int, np.integer)) and M >= 2):
        raise ValueError(f"M must be an integer >= 2, got {M!r}")
    if not (isinstance(N0, (int, np.integer)) and N0 >= 1):
        raise ValueError(f"N0 must be an integer >= 1, got {N0!r}")
    if not (isinstance(Lmin, (int, np.integer)) and Lmin >= 2):
        raise ValueError(f"Lmin must be an integer >= 2 (the rates are fitted over levels 1..L), got {Lmin!r}")
    if not (isinstance(Lmax, (int, np.integer)) and Lmax >= Lmin):
        raise ValueError(f"Lmax must be an integer >= Lmin = {Lmin}, got {Lmax!r}")
    if not (0.0 < theta < 1.0):
        raise ValueError(f"theta must lie in (0, 1), got {theta!r}")
    if not (np.all(np.isfinite(eps)) and np.all(eps > 0)):
        raise ValueError(f"eps must be positive and finite, got {eps!r}")


def _rate(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive (or None to fit it), got {value!r}")
    return value


def _optimal_N(Vl, Cl, active, eps, theta):
    """Giles' optimal sample sizes for variance (1 - theta) eps^2, over the active levels."""
    with np.errstate(invalid="ignore", divide="ignore"):
        root = np.where(active, np.sqrt(Vl * Cl), 0.0).sum(axis=1)
        ns = np.ceil(np.sqrt(np.where(active, Vl / Cl, 0.0)) * root[:, None] / ((1.0 - theta) * eps[:, None] ** 2))
    ns = np.where(np.isfinite(ns), ns, 0.0)
    return np.minimum(ns, 2.0 ** 62).astype(np.int64)


def mlmc(
    level_fn: LevelFunction,
    eps: float | Sequence[float],
    *,
    M: int = 4,
    N0: int = 1000,
    Lmin: int = 2,
    Lmax: int = 10,
    alpha: float | None = None,
    beta: float | None = None,
    gamma: float | None = None,
    theta: float = 0.5,
    batch: int | None = None,
    max_iterations: int = 200,
    max_cost: float | None = None,
    warn: bool = True,
) -> MLMCResult:
    """Giles' adaptive multilevel Monte Carlo for a batch (see the module docstring).

    ``eps``: target RMS error, a scalar or one per batch entry (then the
    batch size is its length, else ``batch``, default 1). ``alpha``, ``beta``,
    ``gamma``: fixed rates in h units, or None to fit them. ``theta``: the
    share of eps^2 given to the squared bias (variance (1-theta) eps^2, bias
    sqrt(theta) eps). Entries whose samples turn non-finite get a NaN price
    and a reason; entries that reach Lmax with too large a bias estimate keep
    their estimate and are flagged in ``lmax_hit`` (with an
    :class:`MLMCWarning` when ``warn``).

    ``max_cost``: the work budget of one entry, in the level function's cost
    units (path steps for the pricer), or None for none. Before every draw
    the entry's cost so far plus that of the samples about to be drawn is
    compared with it (per-sample costs from ``level_fn.cost_per_sample(l)``
    when offered, else those measured, a new level's extrapolated with
    gamma); an entry that would exceed it draws nothing more and gets a NaN
    price and a reason. So no entry ever spends more than ``max_cost``, and
    since a level function's memory grows with the samples of one call, a
    hopeless entry (an eps its variance makes unreachable, which asks for
    10^12 samples or more) ends at once instead of running for hours or
    failing to allocate.
    """
    eps_arr = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    B = int(batch) if batch is not None else eps_arr.size
    if eps_arr.size not in (1, B):
        raise ValueError(f"eps has {eps_arr.size} values for a batch of {B}")
    eps_arr = np.broadcast_to(eps_arr, (B,)).copy()
    _check_args(eps_arr, M, N0, Lmin, Lmax, theta)
    alpha0, beta0, gamma0 = _rate("alpha", alpha), _rate("beta", beta), _rate("gamma", gamma)
    if max_cost is not None and not (float(max_cost) > 0):
        raise ValueError(f"max_cost must be positive (or None for no budget), got {max_cost!r}")
    per_sample = getattr(level_fn, "cost_per_sample", None)
    known_cost = (np.array([float(per_sample(l)) for l in range(Lmax + 1)])[None, :]
                  if max_cost is not None and callable(per_sample) else None)

    K = Lmax + 1
    lev = np.arange(K, dtype=np.float64)
    Nl = np.zeros((B, K), dtype=np.int64)
    sums = np.zeros((B, K, 6))
    costl = np.zeros((B, K))
    L = np.full(B, Lmin, dtype=np.int64)
    dN = np.zeros((B, K), dtype=np.int64)
    dN[:, : Lmin + 1] = N0
    a = np.full(B, alpha0 if alpha0 is not None else 0.0)
    b_ = np.full(B, beta0 if beta0 is not None else 0.0)
    g = np.full(B, gamma0 if gamma0 is not None else 0.0)
    failed = np.zeros(B, dtype=bool)
    reason = np.full(B, "", dtype=object)
    lmax_hit = np.zeros(B, dtype=bool)
    bias = np.full(B, np.nan)
    sqrt_theta = math.sqrt(theta)
    logM = math.log(M)
    ml = Vl = Cl = None
    iterations = 0

    while (dN > 0).any():
        iterations += 1
        if iterations > max_iterations:
            stuck = (dN > 0).any(axis=1)
            reason[stuck & ~failed] = f"no convergence after {max_iterations} iterations"
            failed |= stuck
            break
        if max_cost is not None:
            est = known_cost if known_cost is not None else Cl  # Cl: None before the first draw
            if est is not None:
                with np.errstate(invalid="ignore", over="ignore"):
                    need = costl.sum(axis=1) + np.where(dN > 0, dN * est, 0.0).sum(axis=1)
                over = ~(need <= max_cost) & (dN > 0).any(axis=1) & ~failed
                if over.any():
                    reason[over] = (f"over the work budget: this eps needs samples costing more than max_cost = "
                                    f"{float(max_cost):.3g} (raise max_cost or eps)")
                    failed |= over
                    dN[over] = 0
        for l in range(K):
            cnt = dN[:, l]
            take = cnt > 0
            if not take.any():
                continue
            s, c = level_fn(l, np.ascontiguousarray(cnt))
            s = np.asarray(s, dtype=np.float64).reshape(B, 6)
            c = np.asarray(c, dtype=np.float64).reshape(B)
            Nl[take, l] += cnt[take]
            sums[take, l] += s[take]
            costl[take, l] += c[take]
        bad = ~np.isfinite(sums[:, :, :2]).all(axis=(1, 2)) & ~failed
        for i in np.flatnonzero(bad):
            lvl = int(np.flatnonzero(~np.isfinite(sums[i, :, :2]).all(axis=1))[0])
            reason[i] = f"non-finite samples on level {lvl}"
        failed |= bad

        active = lev[None, :] <= L[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            n = np.where(Nl > 0, Nl, 1)
            mean = sums[:, :, 0] / n
            ml = np.abs(mean)
            Vl = np.maximum(0.0, sums[:, :, 1] / n - mean * mean)
            Cl = costl / n
        ml_raw, Vl_raw = ml.copy(), Vl.copy()
        # Giles' safeguards against near-zero estimates from few samples
        for l in range(2, K):
            on = l <= L
            ml[on, l] = np.maximum(ml[on, l], 0.5 * ml[on, l - 1] / M ** a[on])
            Vl[on, l] = np.maximum(Vl[on, l], 0.5 * Vl[on, l - 1] / M ** b_[on])
        fit_mask = active & (lev[None, :] >= 1)
        with np.errstate(divide="ignore"):
            if alpha0 is None:
                a = np.fmax(0.5, -_masked_slope(np.log(ml) / logM, fit_mask, lev))
            if beta0 is None:
                b_ = np.fmax(0.5, -_masked_slope(np.log(Vl) / logM, fit_mask, lev))
            if gamma0 is None:
                g = np.fmax(0.5, _masked_slope(np.log(Cl) / logM, fit_mask, lev))

        Ns = _optimal_N(Vl, Cl, active, eps_arr, theta)
        dN = np.where(active, np.maximum(0, Ns - Nl), 0)
        dN[failed] = 0

        # (almost) converged entries: estimate the remaining bias, add a level if needed
        settled = ~((dN > 0.01 * Nl) & active).any(axis=1) & ~failed
        for i in np.flatnonzero(settled):
            Li = int(L[i])
            ks = np.arange(min(3, Li))  # levels Li, Li-1, Li-2 but never 0 (module docstring, step 4)
            rem = float(np.max(ml[i, Li - ks] / M ** (ks * a[i])) / (M ** a[i] - 1.0))
            bias[i] = rem
            if rem <= sqrt_theta * eps_arr[i]:
                lmax_hit[i] = False
                continue
            if Li == Lmax:
                lmax_hit[i] = True
                continue
            Li += 1
            L[i] = Li
            Vl[i, Li] = Vl[i, Li - 1] / M ** b_[i]
            Cl[i, Li] = Cl[i, Li - 1] * M ** g[i]
            act = lev <= Li
            ns = _optimal_N(Vl[i : i + 1], Cl[i : i + 1], act[None, :], eps_arr[i : i + 1], theta)[0]
            dN[i] = np.where(act, np.maximum(0, ns - Nl[i]), 0)
            dN[i, Li] = max(N0, ns[Li])

    active = lev[None, :] <= L[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        n = np.where(Nl > 0, Nl, 1)
        mean = np.where(active, sums[:, :, 0] / n, np.nan)
        var = np.where(active, np.maximum(0.0, sums[:, :, 1] / n - mean * mean), np.nan)
        price = np.where(active, mean, 0.0).sum(axis=1)
        stderr = np.sqrt(np.where(active, var / n, 0.0).sum(axis=1))
        Cl_out = np.where(active, costl / n, np.nan)
    price[failed] = np.nan
    stderr[failed] = np.nan
    if warn and lmax_hit.any():
        warnings.warn(
            f"MLMC: {int(lmax_hit.sum())} of {B} estimates reached Lmax = {Lmax} with the bias estimate still "
            f"above eps/sqrt(2) (max {np.nanmax(bias[lmax_hit]):.3g}); raise Lmax or eps", MLMCWarning,
            stacklevel=2)
    if warn and failed.any():
        warnings.warn(f"MLMC: {int(failed.sum())} of {B} estimates failed: {reason[failed][0]}", MLMCWarning,
                      stacklevel=2)
    return MLMCResult(
        price=price, stderr=stderr, L=L, Nl=np.where(active, Nl, 0), Cl=Cl_out, Vl=var, ml=mean,
        cost=np.where(active, costl, 0.0).sum(axis=1), bias=bias, alpha=a, beta=b_, gamma=g,
        lmax_hit=lmax_hit, reason=reason, iterations=iterations, eps=eps_arr,
    )


# --------------------------------------------------------------------------- mlmc_test


@dataclass
class MLMCTestResult:
    """What :func:`mlmc_test` measured; :mod:`._mlmc_test` presents it (``render``,
    ``report_text``, ``write_report``)."""

    settings: dict[str, Any]
    convergence: pd.DataFrame  # one row per level
    rates: dict[str, float]
    complexity: pd.DataFrame  # one row per eps
    cost_slopes: dict[str, float]
    mse_split: pd.DataFrame  # one row per level 0..L-1: plain MC's MSE = variance / N + bias^2
    warnings: list[str]
    timings: dict[str, float]
    mc_optimal: dict[str, Any] = field(default_factory=dict)  # the weak-error model behind "MC cost (optimal h)"
    mse_split_info: dict[str, Any] = field(default_factory=dict)  # how the MSE split's exact bias was measured


def _kurtosis(s1, s2, s3, s4):
    """Giles' kurtosis from the normalised power sums (NaN for zero variance)."""
    var = s2 - s1 * s1
    if not var > 0:
        return math.nan
    return (s4 - 4.0 * s3 * s1 + 6.0 * s2 * s1 * s1 - 3.0 * s1 ** 4) / (var * var)


def _convergence(level_fn, M, N, L, on_stage):
    import pandas as pd

    rows = []
    for l in range(L + 1):
        t0 = time.perf_counter()
        sums, cost = level_fn(l, np.array([N], dtype=np.int64))
        dt = time.perf_counter() - t0
        s = np.asarray(sums, dtype=np.float64).reshape(-1, 6)[0] / N
        c = float(np.asarray(cost, dtype=np.float64).reshape(-1)[0]) / N
        rows.append({
            "l": l, "h": float(M) ** -l, "mean_dP": s[0], "mean_P": s[4],
            "var_dP": max(s[1] - s[0] ** 2, 0.0), "var_P": max(s[5] - s[4] ** 2, 1e-10),
            "kurtosis": _kurtosis(s[0], s[1], s[2], s[3]), "cost": c, "time_s": dt,
        })
        if on_stage:
            on_stage(f"convergence test: level {l} done ({dt:.2f} s)")
    frame = pd.DataFrame(rows)
    check = [0.0]
    for l in range(1, L + 1):
        a, b, c = frame.mean_P[l - 1], frame.mean_P[l], frame.mean_dP[l]
        denom = 3.0 * (math.sqrt(frame.var_dP[l]) + math.sqrt(frame.var_P[l - 1]) + math.sqrt(frame.var_P[l]))
        check.append(abs(a - b + c) / (denom / math.sqrt(N)) if denom > 0 else 0.0)
    frame["check"] = check
    with np.errstate(divide="ignore"):
        frame["logM_abs_mean_dP"] = np.log(np.abs(frame.mean_dP)) / math.log(M)
        frame["logM_var_dP"] = np.log(frame.var_dP) / math.log(M)
        frame["log2_abs_mean_dP"] = np.log2(np.abs(frame.mean_dP))
        frame["log2_var_dP"] = np.log2(frame.var_dP)
    return frame


def _exact_coupling(level_fn, L: int, N: int, on_stage) -> pd.DataFrame | None:
    """The same-path coupling with the exact solution on levels 0..L-1 (None if the level function has none):
    N paths each, mean and variance of D = P_l - P_exact and of P_exact."""
    import pandas as pd

    fn = getattr(level_fn, "exact_coupling", None)
    if not callable(fn):
        return None
    rows = []
    for l in range(L):
        t0 = time.perf_counter()
        sums, cost = fn(l, np.array([N], dtype=np.int64))
        s = np.asarray(sums, dtype=np.float64).reshape(-1, 4)[0] / N
        rows.append({"l": l, "mean_D": s[0], "var_D": max(s[1] - s[0] ** 2, 0.0), "mean_Pex": s[2],
                     "var_Pex": max(s[3] - s[2] ** 2, 0.0),
                     "cost": float(np.asarray(cost, dtype=np.float64).reshape(-1)[0]) / N})
        if on_stage:
            on_stage(f"exact-solution coupling: level {l} done ({time.perf_counter() - t0:.2f} s)")
    return pd.DataFrame(rows)


BIAS_SAME_PATH = "same-path exact solution: E[P_h - P_exact] with the same Brownian path"
BIAS_INDEPENDENT = "E[P_h] - exact value from independent samples (no exact path solution for this model)"


def _mse_split(conv: pd.DataFrame, M: int, N: int, paths: int, order: float, exact: float | None,
               coupling: pd.DataFrame | None = None, coupling_paths: int | None = None
               ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The MSE split of plain MC with ``paths`` paths on each level's grid (Spence, Brolly and Xue,
    "Efficient Approximation of Pricing Functions", section 2.2).

    MSE(h) = V[P_h] / paths + bias(h)^2, two ways:

    - estimated: the bias from h against h/M as M^p / (M^p - 1) |E P_h - E P_{h/M}|
      (p the weak order, 1 for Euler and Milstein) with E P_{h/M} - E P_h =
      E[Y_{l+1}] taken from the coupled corrections of the convergence test;
    - exact: with a ``coupling`` (the model has an exact path solution), the
      bias is E[D], D = P_h - P_exact on the same Brownian path, with standard
      error sqrt(V[D] / coupling_paths): precise, since V[D] is the strong
      error, not V[P_h].
      Without one but with ``exact``, the bias is E[P_h] - exact from the
      convergence test's N independent samples, standard error sqrt(V[P_h] / N)
      (about 0.1 for the GBM call with N = 20000: it swamps the bias beyond
      the coarsest levels).

    Returns the table (one row per level 0..L-1) and a dict: the method used,
    and, with a coupling, the weak order fitted to the exact biases on levels
    >= 1 that exceed 3 standard errors (and per level the ratio
    bias(M h) / bias(h), M^alpha in the asymptotic regime, where both biases
    exceed 3 se, and bias_est / |bias|).
    """
    import pandas as pd

    rows = []
    factor = M ** order / (M ** order - 1.0)
    have_exact = coupling is not None or exact is not None
    for l in range(len(conv) - 1):
        var = float(conv.var_P[l])
        est = factor * abs(float(conv.mean_dP[l + 1]))
        row = {"l": l, "h": float(M) ** -l, "mean_P": float(conv.mean_P[l]), "var_P": var,
               "var_over_paths": var / paths, "bias_est": est, "mse_est": var / paths + est * est}
        if coupling is not None:
            measured = float(coupling.mean_D[l])
            row.update({"bias_exact": measured,
                        "bias_exact_stderr": math.sqrt(float(coupling.var_D[l]) / coupling_paths),
                        "var_D": float(coupling.var_D[l])})
        elif exact is not None:
            measured = float(conv.mean_P[l]) - exact
            row.update({"bias_exact": measured, "bias_exact_stderr": math.sqrt(var / N)})
        if have_exact:
            row["mse_exact"] = var / paths + measured * measured
        rows.append(row)
    frame = pd.DataFrame(rows)
    info: dict[str, Any] = {"bias_exact": (BIAS_SAME_PATH if coupling is not None else
                                           BIAS_INDEPENDENT if exact is not None else None),
                            "weak_order_est": order, "paths": paths,
                            "exact_paths": coupling_paths if coupling is not None else N}
    if not len(frame):
        return frame, info
    frame["rmse_est"] = np.sqrt(frame.mse_est)
    if have_exact:
        frame["rmse_exact"] = np.sqrt(frame.mse_exact)
    if coupling is not None:  # precise enough for ratios and a fitted order (independent samples are not)
        b = frame.bias_exact.to_numpy()
        sig = np.abs(b) > 3.0 * frame.bias_exact_stderr.to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            # ratios of biases lost in noise are noise: only where both exceed 3 se
            ratio = np.concatenate([[math.nan], b[:-1] / b[1:]])
            frame["bias_ratio"] = np.where(np.concatenate([[False], sig[:-1] & sig[1:]]), ratio, math.nan)
            frame["bias_est_over_exact"] = frame.bias_est / np.abs(frame.bias_exact)
        info["significant_levels"] = [int(l) for l in frame.l[sig]]
        # fitted over levels >= 1, like the rates (level 0, one step, is usually far from asymptotic)
        use = sig & (frame.l.to_numpy() >= 1)
        slope, _ = fit_rate(b[use], M, frame.l.to_numpy()[use]) if use.sum() >= 2 else (math.nan, math.nan)
        info["alpha_exact"] = -slope
        info["alpha_exact_levels"] = [int(l) for l in frame.l[use]]
    return frame, info


def _weak_error_model(conv: pd.DataFrame, M: int, N: int, alpha: float | None, gamma: float | None,
                      rates: Mapping[str, float], fine_cost) -> dict[str, Any]:
    """The model behind "MC cost (optimal h)": |E[P_h] - P| ~ c h^alpha, C(n) = C_0 n^gamma.

    alpha: the one given, else the fitted rate; c from the level corrections,
    |E Y_l| = c h_l^alpha (M^alpha - 1), least squares in log over levels
    l >= 1 with the slope fixed at alpha, using the levels whose mean is
    resolved (|mean Y_l| > 2 sqrt(V[Y_l] / N); all levels >= 1 if none is):
    a correction lost in noise says nothing about c. h is in units of T
    (h_l = M^-l). C_0: ``fine_cost(0)`` if offered, else the level-0 cost;
    gamma: the one given, else the fitted rate. V[P]: the variance of P on the
    finest level of the convergence test.
    """
    a = alpha if alpha is not None else float(rates["alpha"])
    g = gamma if gamma is not None else float(rates["gamma"])
    C0 = float(fine_cost(0)) if fine_cost is not None else float(conv.cost[0])
    out: dict[str, Any] = {"alpha": a, "alpha_source": "given" if alpha is not None else "fitted",
                           "gamma": g, "gamma_source": "given" if gamma is not None else "fitted",
                           "C0": C0, "var_P": float(conv.var_P.iloc[-1]), "c": math.nan, "c_levels": []}
    if not (math.isfinite(a) and a > 0 and math.isfinite(g)):
        return out
    lv = conv.l.to_numpy()[1:]
    m = np.abs(conv.mean_dP.to_numpy()[1:])
    se = np.sqrt(conv.var_dP.to_numpy()[1:] / N)
    ok = np.isfinite(m) & (m > 0)
    resolved = ok & (m > 2.0 * se)
    use = resolved if resolved.any() else ok
    if not use.any():
        return out
    logc = np.log(m[use]) + a * lv[use] * math.log(M) - math.log(M ** a - 1.0)
    out["c"] = float(np.exp(np.mean(logc)))
    out["c_levels"] = [int(l) for l in lv[use]]
    out["c_resolved"] = bool(resolved.any())
    return out


def _mc_optimal(model: Mapping[str, Any], eps: float, theta: float) -> tuple[int, float, float]:
    """(n, h, cost) of plain MC at the optimal step: c h*^alpha = sqrt(theta) eps,
    n = ceil(1 / h*) steps (any integer; h in units of T), cost V[P] C_0 n^gamma / ((1 - theta) eps^2)."""
    a, c = model["alpha"], model["c"]
    if not (math.isfinite(c) and c > 0 and math.isfinite(a) and a > 0):
        return 0, math.nan, math.nan
    h_star = (math.sqrt(theta) * eps / c) ** (1.0 / a)
    n = max(1, math.ceil(1.0 / h_star - 1e-9))
    cost = model["var_P"] * model["C0"] * n ** model["gamma"] / ((1.0 - theta) * eps * eps)
    return n, h_star, cost


def mlmc_test(
    level_fn: LevelFunction,
    M: int,
    N: int,
    L: int,
    N0: int,
    eps_list: Sequence[float],
    Lmin: int = 2,
    Lmax: int = 10,
    *,
    exact: float | None = None,
    repeats: int = 1,
    theta: float = 0.5,
    alpha: float | None = None,
    beta: float | None = None,
    gamma: float | None = None,
    mse_paths: int = 100_000,
    exact_paths: int | None = None,
    weak_order: float = 1.0,
    refit: bool = False,
    meta: Mapping[str, Any] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> MLMCTestResult:
    """Giles' ``mlmc_test``: convergence tests, rates, complexity tests; plus the MSE split of plain MC.

    1. Convergence: ``N`` samples on each level 0..L: mean and variance of
       Y_l and P_l, kurtosis of Y_l, cost per sample and the consistency
       check |E P_{l-1} - E P_l + E Y_l| / (3 (sqrt V[Y_l] + sqrt V[P_{l-1}] + sqrt V[P_l]) / sqrt N)
       (above 1 means the telescoping identity looks broken); alpha, beta,
       gamma fitted over levels 1..L (h units and per level in log2).
    2. Complexity: for each eps, ``repeats`` independent MLMC runs (one batch
       of replicas; rates fixed to those fitted in step 1, as Giles does,
       unless given, or fitted by each run itself with ``refit``): estimate,
       MLMC cost sum N_l C_l, the plain MC cost for the same eps,
       V[P_L] C_L^MC / ((1 - theta) eps^2) on the finest level L used
       (V[P_L] from the convergence test, its last level if L is beyond it;
       C_L^MC = ``level_fn.fine_cost(L)`` when offered, else C_L as in Giles'
       code, which also counts the coarse path), the saving, N_l; RMS error
       over the runs when ``exact`` is given. Besides this "MC cost (level L)"
       (Giles' convention; its slope against eps is jumpy, since L moves in
       whole levels), "MC cost (optimal h)": plain MC with the continuous
       optimal number of steps n = ceil(T / h*), c h*^alpha = sqrt(theta) eps,
       from the weak-error model |E[P_h] - P| ~ c h^alpha fitted to the level
       corrections (see :func:`_weak_error_model`), cost V[P] C_0 n^gamma /
       ((1 - theta) eps^2) (theory: slope -2 - gamma/alpha). The slopes of
       log cost against log eps for MLMC and both plain-MC costs.
    3. The MSE split (Spence, Brolly and Xue, section 2.2): per level, plain MC's MSE with ``mse_paths``
       paths split into variance and squared bias, the bias estimated from h
       against h/M with weak order ``weak_order``, beside the exact bias: from
       ``level_fn.exact_coupling`` when offered (D = P_h - P_exact on the same
       Brownian path, ``exact_paths`` paths per level, default 10 N: its
       standard error shrinks like sqrt(h), the bias like h^alpha), else
       E[P_h] - ``exact`` from the N independent samples (see :func:`_mse_split`).

    ``alpha``, ``beta``, ``gamma``: fixed rates (h units) for the complexity
    runs and the optimal-h model; None: fitted by the convergence test.
    """
    import pandas as pd

    if not (isinstance(N, (int, np.integer)) and N >= 2):
        raise ValueError(f"N must be an integer >= 2, got {N!r}")
    if not (isinstance(L, (int, np.integer)) and L >= 2):
        raise ValueError(f"L must be an integer >= 2 (rates are fitted over levels 1..L), got {L!r}")
    if not (isinstance(repeats, (int, np.integer)) and repeats >= 1):
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    if exact_paths is None:
        exact_paths = 10 * N
    if not (isinstance(exact_paths, (int, np.integer)) and exact_paths >= 2):
        raise ValueError(f"exact_paths must be an integer >= 2, got {exact_paths!r}")
    eps_list = [float(e) for e in eps_list]
    if not eps_list:
        raise ValueError("eps_list is empty")
    _check_args(np.asarray(eps_list), M, N0, Lmin, Lmax, theta)
    timings: dict[str, float] = {}
    notes: list[str] = []

    t0 = time.perf_counter()
    conv = _convergence(level_fn, M, N, L, on_stage)
    timings["convergence_s"] = time.perf_counter() - t0
    alpha, beta, gamma = _rate("alpha", alpha), _rate("beta", beta), _rate("gamma", gamma)
    lv = conv.l.to_numpy()[1:]
    sa, _ = fit_rate(conv.mean_dP.to_numpy()[1:], M, lv)
    sb, _ = fit_rate(conv.var_dP.to_numpy()[1:], M, lv)
    sg, _ = fit_rate(conv.cost.to_numpy()[1:], M, lv)
    log2M = math.log2(M)
    rates = {"alpha": -sa, "beta": -sb, "gamma": sg,
             "alpha_log2": -sa * log2M, "beta_log2": -sb * log2M, "gamma_log2": sg * log2M}
    if conv['kurtosis'].iloc[-1] > 100.0:
        notes.append(f"kurtosis on the finest level is {conv['kurtosis'].iloc[-1]:.1f} (> 100): the corrections "
                     "are dominated by a few rare paths and their variance estimates are unreliable")
    if conv['check'].max() > 1.0:
        notes.append(f"consistency check reaches {conv['check'].max():.2f} (> 1): E[Pf - Pc] = E[Pf] - E[Pc] "
                     "looks violated; re-run with a larger N to be sure")

    def fixed(given, name):
        if given is not None or refit or not math.isfinite(rates[name]):
            return given
        return max(rates[name], 0.5)

    use_a, use_b, use_g = fixed(alpha, "alpha"), fixed(beta, "beta"), fixed(gamma, "gamma")
    fine_cost = getattr(level_fn, "fine_cost", None)
    weak = _weak_error_model(conv, M, N, alpha, gamma, rates, fine_cost)
    if not math.isfinite(weak["c"]):
        notes.append("no weak-error constant c could be fitted (all level means zero?): no MC cost (optimal h)")
    elif not weak.get("c_resolved", False):
        notes.append("no level correction is resolved (|mean| > 2 se) in the convergence test: c of the optimal-h "
                     "MC cost is fitted to noise; raise N")
    rows = []
    t1 = time.perf_counter()
    for e in eps_list:
        te = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MLMCWarning)
            res = mlmc(level_fn, e, M=M, N0=N0, Lmin=Lmin, Lmax=Lmax, alpha=use_a, beta=use_b, gamma=use_g,
                       theta=theta, batch=repeats)
        for w in caught:
            notes.append(f"eps = {e:g}: {w.message}")
        dt = time.perf_counter() - te
        Lf = int(res.L.max())
        var_L = float(conv.var_P[min(Lf, L)])
        C_level = float(np.nanmean(res.Cl[:, Lf]))
        C_mc = float(fine_cost(Lf)) if fine_cost is not None else C_level
        mc_cost = var_L * C_mc / ((1.0 - theta) * e * e)
        mc_cost_giles = var_L * C_level / ((1.0 - theta) * e * e)
        mlmc_cost = float(np.mean(res.cost))
        n_opt, h_opt, mc_opt = _mc_optimal(weak, e, theta)
        row = {"eps": e, "value": float(np.mean(res.price)), "stderr": float(np.mean(res.stderr)), "L": Lf,
               "mlmc_cost": mlmc_cost, "mc_cost": mc_cost, "savings": mc_cost / mlmc_cost,
               "savings_giles": mc_cost_giles / mlmc_cost, "n_opt": n_opt, "h_opt": h_opt,
               "mc_cost_opt": mc_opt, "savings_opt": mc_opt / mlmc_cost, "runs": repeats,
               "lmax_hit": int(res.lmax_hit.sum()), "time_s": dt}
        if exact is not None:
            err = res.price - exact
            row["rms_error"] = float(np.sqrt(np.mean(err * err)))
            row["max_abs_error"] = float(np.max(np.abs(err)))
            row["rms_over_eps"] = row["rms_error"] / e
        for l in range(Lmax + 1):
            row[f"N_{l}"] = int(round(float(np.mean(res.Nl[:, l])))) if l <= Lf else 0
        rows.append(row)
        if on_stage:
            on_stage(f"complexity test: eps = {e:g} done ({dt:.2f} s, L = {Lf})")
    timings["complexity_s"] = time.perf_counter() - t1
    comp = pd.DataFrame(rows)
    keep = [c for c in comp.columns if not c.startswith("N_") or comp[c].any()]
    comp = comp[keep]
    slopes = {"mlmc": math.nan, "mc": math.nan, "mc_opt": math.nan}
    if len(comp) >= 2:
        le = np.log(comp.eps.to_numpy())
        for key, col in (("mlmc", "mlmc_cost"), ("mc", "mc_cost"), ("mc_opt", "mc_cost_opt")):
            y = np.log(comp[col].to_numpy(dtype=np.float64))
            if np.isfinite(y).all():
                slopes[key] = float(np.polyfit(le, y, 1)[0])
    # theory (Giles 2008, theorem 1): MLMC eps^-2 for beta > gamma, eps^-2 (log eps)^2 for beta = gamma,
    # eps^(-2 - (gamma - beta)/alpha) below; plain MC at the optimal h eps^(-2 - gamma/alpha)
    ta = weak["alpha"]
    tb = beta if beta is not None else rates["beta"]
    tg = weak["gamma"]
    with np.errstate(invalid="ignore", divide="ignore"):
        slopes["mlmc_theory"] = float(-2.0 - max(0.0, tg - tb) / ta) if ta > 0 else math.nan
        slopes["mc_opt_theory"] = float(-2.0 - tg / ta) if ta > 0 else math.nan

    t2 = time.perf_counter()
    coupling = _exact_coupling(level_fn, L, exact_paths, on_stage)
    split, split_info = _mse_split(conv, M, N, mse_paths, weak_order, exact, coupling, exact_paths)
    if coupling is not None:
        timings["mse_split_s"] = time.perf_counter() - t2
        if exact is not None and len(coupling):
            # the exact solution's payoff must average to the exact value: a check of the coupling
            z = np.abs(coupling.mean_Pex - exact) / np.sqrt(coupling.var_Pex / exact_paths)
            if (z > 4.5).any():
                notes.append(f"MSE split: the exact-solution payoff's mean is {z.max():.1f} standard errors from the "
                             f"exact value {exact:.6g}: the coupling or the exact value looks wrong")
            split_info["exact_payoff_max_z"] = float(z.max())
    settings = {"M": M, "N": N, "L": L, "N0": N0, "eps": eps_list, "Lmin": Lmin, "Lmax": Lmax, "theta": theta,
                "repeats": repeats, "exact": exact, "mse_paths": mse_paths,
                "exact_paths": exact_paths if coupling is not None else None, "weak_order": weak_order,
                "alpha": alpha, "beta": beta, "gamma": gamma,
                "alpha_used": use_a, "beta_used": use_b, "gamma_used": use_g, "refit": refit,
                "mc_cost": "fine path only" if fine_cost is not None else "C_L of the level (Giles)",
                "exact_bias_method": split_info["bias_exact"]}
    settings.update(dict(meta or {}))
    timings["total_s"] = time.perf_counter() - t0
    return MLMCTestResult(settings, conv, rates, comp, slopes, split, notes, timings, weak, split_info)
