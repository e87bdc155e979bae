"""The Black-Karasinski short-rate model and its zero-coupon bond.

Dynamics (risk-neutral), with a reversion level mu(t) > 0::

    d ln r = alpha (ln mu(t) - ln r) dt + sigma dW,    r(0) = r0,
    mu(t)  = mu + mu_sin * sin(t)                       (t in years)

Product ``zero_coupon_bond``: P(0, T) = E[exp(-int_0^T r(t) dt)].

``mu_sin`` defaults to 0, which is the usual model with a constant level
``mu``. The time-dependent level of Spence, Brolly and Xue ("Efficient Approximation of
Pricing Functions", a project with Moody's) is ``mu = 0, mu_sin = 1, r0 = 1``: their Monte Carlo
code sets ``lnmu = log(sin(t))`` and starts from ``ln r = 0``, so there
mu(t) = sin t is the level itself (it is the logarithm ``ln mu(t)`` that
enters the drift; ``theta(t) = alpha ln sin t`` in the Hull-White-style
form d ln r = (theta(t) - alpha ln r) dt + sigma dW). That is defined only
while sin t > 0, i.e. for T < pi; they use T <= 1. At t = 0 the level
is 0 and ln mu(t) ~ ln t, an integrable singularity: the mean of ln r,
m(t) = e^{-alpha t} ln r0 + alpha int_0^t e^{-alpha (t-s)} ln mu(s) ds,
stays finite and continuous (see :func:`log_rate_mean`). Their own
numbers come from an Euler scheme with dt = 0.1 (mu taken at the step's
end, right-endpoint rule for the integral), so they carry an O(dt) bias
against this continuous model.

Parameter checks: r0 > 0, alpha > 0, sigma >= 0, T > 0, mu >= 0,
mu_sin >= 0, and jointly mu(t) > 0 on (0, T] (with mu = 0 this needs
mu_sin > 0 and T < pi; with mu > 0 it fails only once sin t < -mu/mu_sin,
i.e. for T > pi).
"""

from __future__ import annotations

import math

import numpy as np

from bench import hookimpl
from bench.methods import Model, Param

__version__ = "1"

# Gauss-Legendre rule on [0, 1] for the integral of ln mu(s)
_GL_X, _GL_W = np.polynomial.legendre.leggauss(12)
_GL_X = 0.5 * (_GL_X + 1.0)
_GL_W = 0.5 * _GL_W


class BlackKarasinski(Model):
    name = "black_karasinski"
    version = "1"
    description = ("Lognormal short rate d ln r = alpha (ln mu(t) - ln r) dt + sigma dW, "
                   "mu(t) = mu + mu_sin sin t; zero-coupon bond P(0,T)")
    params = {
        "r0": Param("initial short rate", lower=0.0, lower_open=True),
        "alpha": Param("mean-reversion speed of ln r", lower=0.0, lower_open=True),
        "sigma": Param("volatility of ln r", lower=0.0),
        "T": Param("bond maturity in years", lower=0.0, lower_open=True),
        "mu": Param("constant part of the reversion level mu(t) (0 allowed only with mu_sin > 0)",
                    lower=0.0),
        "mu_sin": Param("amplitude of the sin t part of the reversion level mu(t) = mu + mu_sin sin t",
                        default=0.0, lower=0.0),
    }
    products = ("zero_coupon_bond",)

    def check_joint(self, values):
        mu, amp, T = np.broadcast_arrays(values["mu"], values["mu_sin"], values["T"])
        # min of sin over [0, T]: 0 up to pi, sin T up to 3 pi / 2, then -1
        smin = np.where(T <= math.pi, 0.0, np.where(T <= 1.5 * math.pi, np.sin(T), -1.0))
        positive = mu + amp * smin > 0.0
        seed_like = (mu == 0.0) & (amp > 0.0) & (T < math.pi)
        bad = ~(positive | seed_like)
        if np.any(bad):
            i = np.flatnonzero(np.ravel(bad))[0]
            m, a, t = (float(np.ravel(v)[i]) for v in (mu, amp, T))
            if a == 0.0:
                raise ValueError(f"model {self.name!r}: parameter 'mu' must be > 0 when mu_sin = 0, got {m!r}")
            if m == 0.0:
                raise ValueError(
                    f"model {self.name!r}: parameter 'T' must be < pi when mu = 0 (the level mu_sin*sin t "
                    f"must stay positive on (0, T]), got {t!r}")
            raise ValueError(
                f"model {self.name!r}: parameters 'mu', 'mu_sin', 'T': the reversion level mu + mu_sin*sin t "
                f"must stay positive on (0, T]; mu={m!r}, mu_sin={a!r}, T={t!r}")


def _log_level(s, mu, amp):
    """ln mu(s) for s > 0 (mu, amp broadcast against s)."""
    return np.log(mu + amp * np.sin(s))


def log_rate_mean(t, r0, alpha, mu, mu_sin):
    """m(t) = E[ln r(t)] at times ``t`` (shape (B, L), increasing along axis 1, t[:, 0] >= 0).

    m solves m' = alpha (ln mu(t) - m), m(0) = ln r0. Constant level:
    closed form. Otherwise m is advanced level by level exactly,
    m(t_k) = e^{-alpha dt} m(t_{k-1}) + alpha int e^{-alpha (t_k - s)} ln mu(s) ds,
    the integral by 12-point Gauss-Legendre; the first interval starting at 0
    is split into 40 geometrically shrinking panels, which integrates the
    logarithmic singularity of ln mu(s) ~ ln s at s = 0 (mu = 0) to ~1e-12.
    The other parameters have shape (B,).
    """
    t = np.asarray(t, dtype=np.float64)
    r0, alpha, mu, amp = (np.asarray(v, dtype=np.float64)[:, None] for v in (r0, alpha, mu, mu_sin))
    lr0 = np.log(r0)
    out = np.empty(t.shape)
    const = (amp == 0.0)[:, 0]
    if np.any(const):
        lm = np.log(mu[const])
        out[const] = lm + (lr0[const] - lm) * np.exp(-alpha[const] * t[const])
    var = ~const
    if np.any(var):
        tv, a, m, s = t[var], alpha[var], mu[var], amp[var]
        # int over [t_{k-1}, t_k] of e^{-alpha (t_k - u)} ln mu(u) du, exact OU recursion between levels
        lo = np.concatenate([np.zeros((tv.shape[0], 1)), tv[:, :-1]], axis=1)
        width = tv - lo
        u = lo[..., None] + width[..., None] * _GL_X  # (B, L, 12)
        with np.errstate(divide="ignore", invalid="ignore"):  # ln mu(0) = -inf when mu = 0: replaced below
            integrand = np.exp(-a[..., None] * (tv[..., None] - u)) * _log_level(u, m[..., None], s[..., None])
            piece = width * (integrand @ _GL_W)
        piece[width == 0.0] = 0.0
        # the first interval of positive length, [0, t_c], with geometric panels: ln mu(s) ~ ln s
        # there when mu = 0 (harmless, and as accurate, otherwise)
        col = (tv[:, 0] == 0.0).astype(np.intp)
        rows = np.arange(tv.shape[0])
        t1 = tv[rows, col][:, None]  # (b, 1)
        edges = t1 * 0.5 ** np.arange(41)[None, :]  # t1, t1/2, ..., t1/2^40
        pl, pw = edges[:, 1:], edges[:, :-1] - edges[:, 1:]  # panel lower ends and widths
        uu = pl[..., None] + pw[..., None] * _GL_X
        f = np.exp(-a[..., None] * (t1[..., None] - uu)) * _log_level(uu, m[..., None], s[..., None])
        piece[rows, col] = np.sum(pw * (f @ _GL_W), axis=1)
        mv = np.empty(tv.shape)
        prev = lr0[var][:, 0]
        for k in range(tv.shape[1]):
            prev = np.exp(-a[:, 0] * width[:, k]) * prev + a[:, 0] * piece[:, k]
            mv[:, k] = prev
        out[var] = mv
    return out


def deterministic_bond(r0, alpha, T, mu, mu_sin=0.0, n=2000):
    """P(0,T) for sigma = 0: exp(-int_0^T exp(m(t)) dt), for checks.

    Composite Simpson (n even) in u with t = T u^2, which smooths the t ln t
    behaviour of m(t) at 0 when mu = 0."""
    r0, alpha, T, mu, mu_sin = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=np.float64))
                                                     for v in (r0, alpha, T, mu, mu_sin)))
    u = np.linspace(0.0, 1.0, n + 1)
    t = T[:, None] * u[None, :] ** 2
    integrand = np.exp(log_rate_mean(t, r0, alpha, mu, mu_sin)) * (2.0 * T[:, None] * u[None, :])
    w = np.ones(n + 1)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return np.exp(-(integrand @ w) / (3.0 * n))


@hookimpl
def register_models(register):
    register(BlackKarasinski)
