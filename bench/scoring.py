"""Score a cell's stored outputs against the task's reference.

Accuracy is computed after timing, from the outputs of the last timed
call. A point counts as a failure when the method returned NaN/inf (or, for
root finders, did not converge) where the reference is finite; the
accuracy metrics are computed on the remaining points.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from bench.methods import Metric

# accuracy tiers for ranking: a cell's tier is the smallest bound >= its max abs error
TIERS = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 1e0)


def tier_of(max_abs_error: float) -> float:
    if not math.isfinite(max_abs_error):
        return math.inf
    for bound in TIERS:
        if max_abs_error <= bound:
            return bound
    return math.inf


def tier_label(tier: float) -> str:
    return "worse" if not math.isfinite(tier) else f"{tier:.0e}"


# the accuracy targets of the work-precision summary, absolute on prices scaled to S = 100
TARGETS = (1e-3, 1e-5, 1e-7)


def price_scale(params: Mapping[str, np.ndarray], size: int) -> np.ndarray:
    """Per-point factor that expresses a price error as if S were 100.

    Equity models: 100 / S, which is exact for the scale-invariant models
    (Black-Scholes, Heston, Merton, Kou: prices homogeneous of degree one in
    S and K) and a convention for the local-volatility ones. Models without a
    spot (bonds paying 1): 100, a face value of 100.
    """
    if "S" in params:
        return 100.0 / np.asarray(params["S"], dtype=np.float64).reshape(-1)
    return np.full(size, 100.0)


def score(
    estimate: np.ndarray,
    reference: np.ndarray,
    metrics: Mapping[str, Metric],
    floor: float,
    failed: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    stderr: np.ndarray | None = None,
) -> dict[str, float]:
    """Failures and every metric; ``failed`` marks points a method itself reports as failed.

    With ``scale`` (price tasks), ``max_err_s100`` is the largest error of
    prices scaled to S = 100 and decides the tier; otherwise the raw max error does.

    With ``stderr`` (a per-point standard error, Monte Carlo), also
    ``stderr_mean`` and ``stderr_max`` over the scored points, ``z_max``
    (the largest |estimate - reference| / stderr) and ``within_3se`` (the
    fraction of scored points whose reference lies within 3 standard errors;
    about 0.997 for an unbiased, normally distributed estimate, lower when
    discretisation bias or an underestimated error shows).
    """
    estimate = np.asarray(estimate, dtype=np.float64).ravel()
    reference = np.asarray(reference, dtype=np.float64).ravel()
    usable = np.isfinite(reference)
    bad = ~np.isfinite(estimate)
    if failed is not None:
        bad |= np.asarray(failed, dtype=bool).ravel()
    failures = int(np.count_nonzero(bad & usable))
    ok = usable & ~bad
    out: dict[str, float] = {"failures": failures, "failure_rate": failures / max(1, int(usable.sum()))}
    rel = ok & (np.abs(reference) > floor)
    for name, metric in metrics.items():
        mask = rel if metric.relative else ok
        out[name] = metric.compute(estimate[mask], reference[mask]) if mask.any() else math.nan
    if scale is not None:
        err = np.abs(estimate[ok] - reference[ok]) * np.asarray(scale, dtype=np.float64).ravel()[ok]
        out["max_err_s100"] = float(err.max()) if err.size else math.nan
        out["tier"] = tier_of(out["max_err_s100"])
    else:
        out["tier"] = tier_of(out.get("max_abs_error", math.nan))
    if stderr is not None:
        out.update(_stderr_scores(estimate, reference, np.asarray(stderr, dtype=np.float64).ravel(), ok))
    return out


def _stderr_scores(estimate, reference, stderr, ok) -> dict[str, float]:
    if stderr.size != estimate.size:
        raise ValueError(f"wrong output shape: stderr has {stderr.size} entries, expected {estimate.size}")
    mask = ok & np.isfinite(stderr) & (stderr >= 0.0)
    if not mask.any():
        return {"stderr_mean": math.nan, "stderr_max": math.nan, "z_max": math.nan, "within_3se": math.nan}
    diff = np.abs(estimate[mask] - reference[mask])
    se = stderr[mask]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(diff == 0.0, 0.0, diff / se)  # se = 0 with a nonzero error: z = inf
    return {
        "stderr_mean": float(se.mean()),
        "stderr_max": float(se.max()),
        "z_max": float(z.max()),
        "within_3se": float(np.mean(z <= 3.0)),
    }


def fastest_per_target(rows: list[dict], targets=TARGETS) -> list[dict]:
    """Per method and device, the fastest configuration whose error meets each target.

    The error is ``max_err_s100`` for price tasks and ``max_abs_error``
    otherwise; only cells with status ``ok`` and no failures qualify.
    """
    out = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"], r["device"]), []).append(r)
    for (task, method, device), group in groups.items():
        for target in targets:
            good = [r for r in group if r.get("status") == "ok" and not r.get("failures")
                    and _err(r) <= target and math.isfinite(r.get("latency_median_s", math.nan))]
            best = min(good, key=lambda r: r["latency_median_s"]) if good else None
            out.append({
                "task": task, "method": method, "device": device, "target": target,
                "settings": best["settings"] if best else None,
                "error": _err(best) if best else math.nan,
                "latency_median_s": best["latency_median_s"] if best else math.nan,
            })
    return out


def _err(row: dict) -> float:
    value = row.get("max_err_s100")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = row.get("max_abs_error", math.nan)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
