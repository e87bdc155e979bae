"""Black-Scholes European prices written out once for the tests: the independent reference."""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr


def bs(S, K, T, r, sigma, q=0.0, call=True):
    """Black-Scholes European call (or put) prices, broadcast like NumPy."""
    S, K, T, r, sigma, q = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (S, K, T, r, sigma, q)))
    vol = sigma * np.sqrt(T)
    d1 = (np.log(S / K) + (r - q) * T) / vol + 0.5 * vol
    d2 = d1 - vol
    fs, fk = S * np.exp(-q * T), K * np.exp(-r * T)
    return fs * ndtr(d1) - fk * ndtr(d2) if call else fk * ndtr(-d2) - fs * ndtr(-d1)
