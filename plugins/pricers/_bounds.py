"""No-arbitrage bounds of the options and bonds the built-in pricers price, and the check
that turns a value outside them into NaN with a reason (``cos``, ``mc``, ``fd``).

With DS = S e^{-qT} and DK = K e^{-rT}:

- European call in [(DS - DK)+, DS], put in [(DK - DS)+, DK];
- American call in [max(S - K, DS - DK, 0), S], American put in [max(K - S, DK - DS, 0), K]
  (exercise at once is always possible; the holder never gets more than the asset, resp. the
  strike); tolerance scale DS + DK;
- ``sinh_lv``: no upper bound (its spot can turn negative, so neither S_T nor K - S_T is
  bounded); the lower bounds hold for any spot (S_T is a martingale after discounting);
- zero-coupon bonds in [0, 1] under models whose short rate is positive (Black-Karasinski's is
  lognormal, so the discount factor exp(-int r dt) lies in (0, 1] on every path), [0, inf)
  otherwise; tolerance scale 1 (the face value).

Both functions work on NumPy arrays and on torch tensors (``cos`` checks on the pricing
device); the reasons are always a NumPy object array.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from bench import arrays

BOUND_TOL = 1e-2  # default tolerance, relative to the scale (S e^{-qT} + K e^{-rT} for options)
SIGNED_SPOT = frozenset({"sinh_lv"})  # models whose spot can turn negative: no upper bound on options
POSITIVE_RATES = frozenset({"black_karasinski"})  # short rate > 0: bonds at most 1
OPTIONS = ("european_call", "european_put", "american_call", "american_put")


def no_arbitrage_bounds(model: str, product: str, p: Mapping[str, Any]) -> tuple[Any, Any, Any] | None:
    """(lower, upper, scale) of each point's price, in the library of ``p``'s arrays (upper may be
    inf); None for a product without known bounds. ``p``: the parameters (S, K, T, optional r, q
    for options; T for bonds), flat arrays of one shape."""
    T = p["T"]
    ns = arrays.namespace(T)
    xp = ns.lib
    if product == "zero_coupon_bond":
        zero = T * 0.0
        return zero, zero + (1.0 if model in POSITIVE_RATES else math.inf), zero + 1.0
    if product not in OPTIONS:
        return None
    S, K = p["S"], p["K"]
    r = p["r"] if "r" in p else T * 0.0
    q = p["q"] if "q" in p else T * 0.0
    with np.errstate(all="ignore"):
        DS, DK = S * xp.exp(-q * T), K * xp.exp(-r * T)
        if product == "european_call":
            lower, upper = ns.positive_part(DS - DK), DS
        elif product == "european_put":
            lower, upper = ns.positive_part(DK - DS), DK
        elif product == "american_call":
            lower, upper = ns.positive_part(xp.maximum(S - K, DS - DK)), S
        else:
            lower, upper = ns.positive_part(xp.maximum(K - S, DK - DS)), K
        if model in SIGNED_SPOT:
            upper = upper * 0.0 + math.inf
        return lower, upper, DS + DK


def check_bounds(value, bounds, rel_tol: float = BOUND_TOL, stderr=None, *, out_of_bounds: str,
                 not_finite: str):
    """(value, stderr, reason): NaN (in both) where ``value`` (or ``stderr``) is not finite, or where
    ``value`` leaves [lower, upper] of ``bounds`` by more than ``rel_tol`` scale (plus 6 ``stderr``);
    ``reason`` is an object array of the flat shape, ``out_of_bounds`` / ``not_finite`` / "" per
    point, or None when every point is priced (value and stderr are then returned as given).
    ``bounds`` None: only the finiteness check."""
    ns = arrays.namespace(value)
    xp = ns.lib
    with np.errstate(all="ignore"):
        bad = ~xp.isfinite(value)
        if stderr is not None:
            bad = bad | ~xp.isfinite(stderr)
        if bounds is None:
            outside = xp.zeros_like(bad)
        else:
            lower, upper, scale = bounds
            slack = rel_tol * scale
            if stderr is not None:
                slack = slack + 6.0 * stderr
            outside = ~bad & ((value < lower - slack) | (value > upper + slack))
        unpriced = bad | outside
        if not bool(unpriced.any()):
            return value, stderr, None
        value = xp.where(unpriced, math.nan, value)
        if stderr is not None:
            stderr = xp.where(unpriced, math.nan, stderr)
    outside, bad = arrays.to_numpy(outside), arrays.to_numpy(bad)
    reason = np.where(outside, out_of_bounds, np.where(bad, not_finite, "")).astype(object)
    return value, stderr, reason
