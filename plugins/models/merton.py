"""Merton (1976) jump diffusion: Black-Scholes plus compound-Poisson log-normal jumps.

    dS/S- = (r - q - lam kbar) dt + sigma dW + (exp(Y) - 1) dN,
    N Poisson with intensity lam, Y ~ N(mu_j, sigma_j^2), kbar = E[exp(Y)] - 1
          = exp(mu_j + sigma_j^2/2) - 1,

so that S exp(-(r-q)t) is a martingale. X = ln(S_T/S_0) has

    phi(u) = exp(T [i u (r - q - sigma^2/2 - lam kbar) - sigma^2 u^2/2
                    + lam (exp(i u mu_j - sigma_j^2 u^2/2) - 1)])

and cumulants (Fang & Oosterlee 2008, Table 11)

    c1 = T (r - q - sigma^2/2 - lam kbar + lam mu_j),
    c2 = T (sigma^2 + lam (mu_j^2 + sigma_j^2)),
    c4 = T lam (mu_j^4 + 6 mu_j^2 sigma_j^2 + 3 sigma_j^4)

(a compound-Poisson cumulant of order n is lam T E[Y^n]).

European prices (:func:`price`, used by the ``closed_form`` pricer) are
Merton's Poisson series of Black-Scholes prices: given n jumps, ln S_T is
normal with variance v_n = sigma^2 T + n sigma_j^2 and forward
F_n = S exp((r - q - lam kbar) T + n (mu_j + sigma_j^2/2)), so

    price = sum_n e^{-lam T} (lam T)^n / n! * Black(F_n, K, v_n, D = e^{-rT}).

The series is summed adaptively per option until a rigorous bound on the
remainder is below 1e-14 of the partial sum: a call term is at most D F_n,
and sum_{n>N} Poisson(n; lam T) F_n = F P(Poisson(lam T (1+kbar)) > N), with
F = S e^{(r-q)T}; a put term is at most D K, and the put remainder at most
D K P(Poisson(lam T) > N). For large lam T the sum starts 12 standard
deviations below the Poisson mode (the skipped terms weigh less than 1e-31
of D F, resp. D K).
The Poisson weights use Loader's (2000) saddle-point form (no cancellation
for large lam T).
"""

from __future__ import annotations

import numpy as np
from scipy import special

from bench import arrays, hookimpl
from bench.methods import Model, OPTION_PARAMS, Param

__version__ = "1"

RTOL = 1e-14  # remainder bound relative to the partial sum
MAX_TERMS = 100_000  # never reached in practice: the sum runs from about rate - 12 sqrt(rate) to
# rate + O(sqrt(rate)) with rate = lam T (1 + kbar) or lam T


class Merton(Model):
    name = "merton"
    version = "1"
    homogeneous = True  # V(a S, a K) = a V(S, K)
    description = "Merton jump diffusion: GBM plus Poisson jumps with normally distributed log sizes"
    params = {
        **OPTION_PARAMS,
        "sigma": Param("diffusion volatility", lower=0.0),
        "lam": Param("jump intensity (jumps per year)", lower=0.0),
        "mu_j": Param("mean of the log jump size"),
        "sigma_j": Param("standard deviation of the log jump size", lower=0.0),
    }
    products = ("european_call", "european_put", "american_put", "american_call")

    def characteristic_function(self, u, params):
        """E[exp(i u X)], X = ln(S_T/S_0); ``u`` real or complex, NumPy or torch."""
        xp = arrays.namespace(params["T"]).lib
        T, r, q, sigma = params["T"], params["r"], params["q"], params["sigma"]
        lam, mu_j, sigma_j = params["lam"], params["mu_j"], params["sigma_j"]
        var, var_j = sigma * sigma, sigma_j * sigma_j
        kbar = jump_compensator(mu_j, sigma_j)
        iu = 1j * u
        jumps = lam * (xp.exp(iu * mu_j + 0.5 * var_j * iu * iu) - 1.0)
        return xp.exp(T * (iu * (r - q - 0.5 * var - lam * kbar) + 0.5 * var * iu * iu + jumps))

    def cumulants(self, params):
        T, r, q, sigma = params["T"], params["r"], params["q"], params["sigma"]
        lam, mu_j, sigma_j = params["lam"], params["mu_j"], params["sigma_j"]
        var, var_j = sigma * sigma, sigma_j * sigma_j
        kbar = jump_compensator(mu_j, sigma_j)
        c1 = T * (r - q - 0.5 * var - lam * kbar + lam * mu_j)
        c2 = T * (var + lam * (mu_j * mu_j + var_j))
        c4 = T * lam * (mu_j**4 + 6.0 * mu_j * mu_j * var_j + 3.0 * var_j * var_j)
        return c1, c2, c4


def jump_compensator(mu_j, sigma_j):
    """kbar = E[exp(Y)] - 1 = exp(mu_j + sigma_j^2/2) - 1 for Y ~ N(mu_j, sigma_j^2), elementwise
    (NumPy arrays or scalars, or torch tensors); the drift of ln S carries -lam kbar."""
    x = mu_j + 0.5 * (sigma_j * sigma_j)
    return arrays.namespace(x).lib.expm1(x)


def price(S, K, T, r, q, sigma, lam, mu_j, sigma_j, theta):
    """European price of a batch (NumPy); theta = +1 for calls, -1 for puts.

    Arrays broadcast; the result has the broadcast shape. Every term of the
    series is non-negative, so no cancellation; NaN only for non-finite input.
    """
    args = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (S, K, T, r, q, sigma, lam, mu_j,
                                                                           sigma_j)))
    shape = args[0].shape
    S, K, T, r, q, sigma, lam, mu_j, sigma_j = (a.ravel() for a in args)
    out = np.full(S.shape, np.nan)
    with np.errstate(all="ignore"):
        var_j = sigma_j * sigma_j
        log1k = mu_j + 0.5 * var_j  # ln(1 + kbar)
        kbar = jump_compensator(mu_j, sigma_j)
        lam_t = lam * T
        D = np.exp(-r * T)
        # ln F_0 - ln K, then + n log1k per jump
        log_f0k = np.log(S / K) + (r - q - lam * kbar) * T
        var0 = sigma * sigma * T
        # remainder bound: call terms <= D F_n, put terms <= D K (see module docstring)
        if theta > 0:
            bound_scale = D * S * np.exp((r - q) * T)
            tail_rate = lam_t * np.exp(log1k)
        else:
            bound_scale = D * K
            tail_rate = lam_t
        ok = np.isfinite(log_f0k) & np.isfinite(var0) & np.isfinite(lam_t) & np.isfinite(log1k) \
            & np.isfinite(bound_scale) & np.isfinite(tail_rate)
        active = np.flatnonzero(ok)
        # start far below the Poisson mode when lam T is large: the skipped terms weigh at most
        # D F P(Poisson(lam T (1+kbar)) < start) (calls) or D K P(Poisson(lam T) < start) (puts),
        # and P(Poisson(mu) <= mu - t) <= exp(-t^2 / (2 mu)) < 1e-31 here
        rate_lo = np.minimum(lam_t, tail_rate)[active]
        n = np.maximum(np.floor(rate_lo - 12.0 * np.sqrt(rate_lo) - 20.0), 0.0)
        total = np.zeros(active.size)
        for j in range(MAX_TERMS):
            if not active.size:
                break
            log_w = log_poisson_pmf(n, lam_t[active])
            m = log_f0k[active] + n * log1k[active]  # ln(F_n/K)
            v = var0[active] + n * var_j[active]
            total += _black_weighted(m, v, K[active], D[active], log_w, theta)
            n = n + 1.0
            if j % 4 and j > 1:  # the bound (an incomplete gamma function) costs as much as a term:
                continue  # check it after 1, 2, 5, 9, 13, ... terms (a few extra terms are harmless)
            # P(Poisson(rate) > n - 1) bounds the weight of the terms not yet added
            rest = bound_scale[active] * special.pdtrc(n - 1.0, tail_rate[active])
            done = ~(rest > RTOL * total)
            if done.any():
                out[active[done]] = total[done]
                keep = ~done
                active, total, n = active[keep], total[keep], n[keep]
    return out.reshape(shape)


_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)


def log_poisson_pmf(n, mu):
    """ln P(Poisson(mu) = n), accurate to a few ulps of the result for any n and mu (Loader 2000):
    -stirlerr(n) - bd0(n, mu) - ln(2 pi n)/2, instead of n ln mu - mu - ln n!, which loses
    about ln(mu) + log10(mu) digits to cancellation when mu is large."""
    n = np.asarray(n, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    with np.errstate(all="ignore"):
        nn = np.maximum(n, 1.0)
        # stirlerr(n) = ln n! - (n + 1/2) ln n + n - ln(2 pi)/2
        small = special.gammaln(nn + 1.0) - (nn + 0.5) * np.log(nn) + nn - _HALF_LOG_2PI
        inv, inv2 = 1.0 / nn, 1.0 / (nn * nn)
        series = inv * (1 / 12 - inv2 * (1 / 360 - inv2 * (1 / 1260 - inv2 * (1 / 1680 - inv2 / 1188))))
        stirlerr = np.where(nn > 15.0, series, small)
        # bd0(n, mu) = n ln(n/mu) + mu - n, by its series where n is close to mu
        diff = n - mu
        v = diff / (n + mu)
        v2 = v * v
        term = 2.0 * n * v
        close = diff * v
        for j in range(1, 12):  # |v| < 0.1: twelve terms reach 1e-24 relative
            term = term * v2
            close = close + term / (2 * j + 1)
        far = n * np.log(n / mu) + mu - n
        bd0 = np.where(np.abs(diff) < 0.1 * (n + mu), close, far)
        out = -stirlerr - bd0 - 0.5 * np.log(2.0 * np.pi * nn)
        return np.where(n == 0, -mu, out)


def _black_weighted(m, v, K, D, log_w, theta):
    """w * Black price with ln(F/K) = m, total variance v, weight w = exp(log_w),
    the weight folded into the exponentials so that huge F_n times tiny w
    cannot overflow."""
    sd = np.sqrt(v)
    pos = sd > 0
    safe = np.where(pos, sd, 1.0)
    d1 = m / safe + 0.5 * safe
    d2 = d1 - safe
    wF = K * np.exp(log_w + m)  # w F_n
    wK = K * np.exp(log_w)
    value = theta * D * (wF * special.ndtr(theta * d1) - wK * special.ndtr(theta * d2))
    intrinsic = D * np.maximum(theta * (wF - wK), 0.0)
    return np.where(pos, np.maximum(value, 0.0), intrinsic)


@hookimpl
def register_models(register):
    register(Merton)
