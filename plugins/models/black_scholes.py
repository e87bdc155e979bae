"""The Black-Scholes(-Merton) model with a continuous dividend yield q.

The price and vega here are written once for NumPy and torch (see
:mod:`bench.arrays`): the closed-form pricer and every implied-volatility
root finder use them, on the CPU and on CUDA.

Formulas in forward form (Black 1976): F = S exp((r-q)T), D = exp(-rT),
d1,2 = (ln(F/K) +- sigma^2 T / 2) / (sigma sqrt T),
call = D (F N(d1) - K N(d2)), put = D (K N(-d2) - F N(-d1)).

Characteristic function of X = ln(S_T/S_0), drift included:
phi(u) = exp(i u (r - q - sigma^2/2) T - sigma^2 u^2 T / 2); cumulants
c1 = (r - q - sigma^2/2) T, c2 = sigma^2 T, c4 = 0.
"""

from __future__ import annotations


from bench import arrays, hookimpl
from bench.methods import Model, OPTION_PARAMS, Param

__version__ = "1"


class BlackScholes(Model):
    name = "black_scholes"
    version = "1"
    homogeneous = True  # V(a S, a K) = a V(S, K)
    description = "Geometric Brownian motion with constant rate r, dividend yield q and volatility sigma"
    params = {
        **OPTION_PARAMS,
        "sigma": Param("volatility", lower=0.0),
    }
    products = ("european_call", "european_put", "american_put", "american_call")

    def characteristic_function(self, u, params):
        """E[exp(i u X)], X = ln(S_T/S_0); ``u`` real or complex, NumPy or torch."""
        xp = arrays.namespace(params["T"]).lib
        T, r, q, sigma = params["T"], params["r"], params["q"], params["sigma"]
        iu = 1j * u
        var = sigma * sigma
        return xp.exp(T * (iu * (r - q - 0.5 * var) + 0.5 * var * iu * iu))

    def cumulants(self, params):
        T, r, q, sigma = params["T"], params["r"], params["q"], params["sigma"]
        var = sigma * sigma
        return (r - q - 0.5 * var) * T, var * T, 0.0 * T


def forward_terms(S, K, T, r, q):
    """Discount factor D, forward F, ln(F/K) and sqrt(T): the parts of the
    formula that do not depend on sigma (root finders compute them once)."""
    xp = arrays.namespace(S).lib
    D = xp.exp(-r * T)
    log_fk = xp.log(S / K) + (r - q) * T
    return D, S * xp.exp((r - q) * T), log_fk, xp.sqrt(T)


def price_from_terms(sigma, theta, D, F, K, log_fk, sqrt_t):
    """Black-Scholes price for theta = +1 (call) or -1 (put).

    sigma = 0 gives the discounted intrinsic value of the forward, the
    limit of the formula (d1 and d2 become +-inf).
    """
    ns = arrays.namespace(sigma)
    xp = ns.lib
    vol = sigma * sqrt_t
    safe = xp.where(vol > 0, vol, 1.0)
    d1 = log_fk / safe + 0.5 * safe
    d2 = d1 - safe
    value = theta * D * (F * ns.ndtr(theta * d1) - K * ns.ndtr(theta * d2))
    intrinsic = D * ns.positive_part(theta * (F - K))
    return xp.where(vol > 0, value, intrinsic)


def vega_from_terms(sigma, D, F, log_fk, sqrt_t):
    """dPrice/dsigma (the same for calls and puts)."""
    ns = arrays.namespace(sigma)
    vol = sigma * sqrt_t
    d1 = log_fk / vol + 0.5 * vol
    return D * F * ns.npdf(d1) * sqrt_t


def price(S, K, T, r, q, sigma, theta):
    """Black-Scholes price of a batch; theta = +1 for calls, -1 for puts."""
    D, F, log_fk, sqrt_t = forward_terms(S, K, T, r, q)
    return price_from_terms(sigma, theta, D, F, K, log_fk, sqrt_t)


def vega(S, K, T, r, q, sigma):
    D, F, log_fk, sqrt_t = forward_terms(S, K, T, r, q)
    return vega_from_terms(sigma, D, F, log_fk, sqrt_t)


@hookimpl
def register_models(register):
    register(BlackScholes)
