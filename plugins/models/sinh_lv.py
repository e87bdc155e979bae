"""The hyperbolic-sine local-volatility model (Shorokhov, "On deep learning for option pricing in local
volatility models", GRID'2021).

    dS = r S dt + sqrt(2 r S^2 + lam^2) dW,   r > 0, lam > 0, no dividend yield.

With c = sqrt(2r), S = (lam/c) sinh(Y) turns it into dY = c dW (Ito: the
drift of Y vanishes exactly), so with a = asinh(c S/lam), b = sqrt(2 r T) and
Z standard normal

    S_T = (lam/c) sinh(a + b Z)

(S_T can be negative: the model has no boundary at 0). With
z* = (asinh(c K/lam) - a)/b the call is (REFERENCES.md)

    C = e^{-rT} [ (lam/c)/2 (e^{a + b^2/2} N(b - z*) - e^{-a + b^2/2} N(-b - z*)) - K N(-z*) ]

and the put P = e^{-rT} [ K N(z*) - (lam/c)/2 (e^{a + b^2/2} N(z* - b) - e^{-a + b^2/2} N(z* + b)) ].
Since b^2/2 = rT, e^{-rT} (lam/c) e^{+-a + b^2/2}/2 = A+- with
A+ = (S + R)/2, A- = (lam/c)^2 / (2 (S + R)), R = sqrt(S^2 + (lam/c)^2): the
form :func:`price` evaluates (no overflow for tiny lam).

r must be positive (c = sqrt(2r) divides); q is fixed at 0: the parameter
exists so that code passing q = 0 works, and any other value is rejected.
There is no closed-form characteristic function.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from bench import hookimpl
from bench.methods import Model, Param

__version__ = "1"


class SinhLV(Model):
    name = "sinh_lv"
    version = "1"
    description = "Hyperbolic-sine local volatility dS = r S dt + sqrt(2 r S^2 + lam^2) dW (exact prices)"
    params = {
        "S": Param("spot price", lower=0.0, lower_open=True),
        "K": Param("strike", lower=0.0, lower_open=True),
        "T": Param("time to maturity in years", lower=0.0, lower_open=True),
        "r": Param("continuously compounded risk-free rate; must be > 0 (the model's volatility is "
                   "sqrt(2 r S^2 + lam^2))", lower=0.0, lower_open=True),
        "q": Param("dividend yield: fixed at 0 in this model", default=0.0, lower=0.0, upper=0.0),
        "lam": Param("volatility floor lam (normal volatility at S = 0)", lower=0.0, lower_open=True),
    }
    products = ("european_call", "european_put", "american_put", "american_call")


def price(S, K, T, r, lam, theta):
    """European price of a batch (NumPy); theta = +1 for calls, -1 for puts."""
    with np.errstate(all="ignore"):
        S, K, T, r, lam = (np.asarray(a, dtype=np.float64) for a in (S, K, T, r, lam))
        c = np.sqrt(2.0 * r)
        scale = lam / c
        a = np.arcsinh(S / scale)
        b = np.sqrt(2.0 * r * T)
        z = (np.arcsinh(K / scale) - a) / b
        root = np.hypot(S, scale)
        a_plus = 0.5 * (S + root)
        a_minus = 0.5 * scale * scale / (S + root)
        D = np.exp(-r * T)
        if theta > 0:
            value = a_plus * special.ndtr(b - z) - a_minus * special.ndtr(-b - z) - K * D * special.ndtr(-z)
        else:
            value = K * D * special.ndtr(z) - a_plus * special.ndtr(z - b) + a_minus * special.ndtr(z + b)
        return np.where(np.isfinite(value), value, np.nan)


@hookimpl
def register_models(register):
    register(SinhLV)
