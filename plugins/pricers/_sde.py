"""One-step SDE updates and the vanilla payoff shared by the ``mc`` (:mod:`._mc_paths`) and
``mlmc`` (:mod:`._mlmc_kernels`) kernels.

Every function takes and returns scalars (no arrays, no random state: the caller draws the
numbers) and is compiled with ``inline="always"``: numba inlines its IR into the calling
kernel, so it costs no call and is compiled under the CALLER's flags (``error_model``,
``fastmath``; ``_mc_paths`` allows FMA contraction, ``_mlmc_kernels`` does not).

Noise convention: a step takes a noise value ``z`` and a scale folded into its coefficients,
so the same function serves a standard normal (``mc`` and the fine ``mlmc`` path: the
coefficient carries sqrt(dt)) and a Brownian increment (the coarse ``mlmc`` path, the sum of
the fine increments: scale 1). The operation order is that of the ``mc`` kernels, whose
results are kept bit-identical.
"""

from __future__ import annotations

import math

import numba

_ijit = numba.njit(cache=True, nogil=True, inline="always")


@_ijit
def payoff(cp, s, K):
    """Vanilla payoff max(cp (s - K), 0): cp = +1 call, -1 put."""
    return max(cp * (s - K), 0.0)


# --------------------------------------------------------------------------- Black-Scholes


@_ijit
def gbm_coeffs(mu, sig, dt, sz, nv, milstein):
    """Coefficients (c0, c1, c2) of :func:`gbm_step` for a step of length dt with drift mu = r - q.

    The noise x passed to the step has dW = sz x and variance nv (a standard normal:
    sz = sqrt(dt), nv = dt; a Brownian increment: sz = nv = 1).
    Euler: S *= 1 + mu dt + sigma dW; Milstein adds sigma^2 (dW^2 - dt) / 2."""
    if milstein:
        c0 = 1.0 + mu * dt - 0.5 * sig * sig * dt
        c1 = sig * sz
        c2 = 0.5 * sig * sig * nv
    else:
        c0 = 1.0 + mu * dt
        c1 = sig * sz
        c2 = 0.0
    return c0, c1, c2


@_ijit
def gbm_step(s, z, c0, c1, c2):
    """Euler / Milstein step of geometric Brownian motion on S (coefficients :func:`gbm_coeffs`)."""
    return s * (c0 + z * (c1 + c2 * z))


# --------------------------------------------------------------------------- Heston


@_ijit
def heston_euler_step(v, x, z1, z2, dt, sdt, c0, kdt, theta, xi):
    """Full-truncation Euler (Lord, Koekkoek & van Dijk 2010) on (v, x = ln S), v+ = max(v, 0):

    x += (r - q) dt - v+ dt / 2 + sqrt(v+) sdt z1,  v += kappa dt (theta - v+) + xi sqrt(v+) sdt z2,

    c0 = (r - q) dt, kdt = kappa dt; z2 = rho z1 + sqrt(1 - rho^2) z' is the variance's noise.
    Noise: standard normals with sdt = sqrt(dt), or Brownian increments with sdt = 1."""
    vp = max(v, 0.0)
    sv = math.sqrt(vp)
    x += c0 - 0.5 * vp * dt + sv * sdt * z1
    v += kdt * (theta - vp) + xi * sv * sdt * z2
    return v, x


# --------------------------------------------------------------------------- CEV


@_ijit
def cev_kind(beta):
    """Special case code of beta for :func:`cev_step`: 1 (beta = 1), 2 (1/2), 0 (0), 3 (other)."""
    if beta == 1.0:
        return 1
    if beta == 0.5:
        return 2
    if beta == 0.0:
        return 0
    return 3


@_ijit
def cev_step(s, z, a0, c1, beta, bk):
    """Euler step of dS = (r-q) S dt + sigma S^beta dW, absorbed at 0: S <- S a0 + c1 S^beta z
    (a0 = 1 + (r-q) dt, c1 = sigma times the noise scale), floored at 0; a path at 0 stays
    there (with beta = 0 the diffusion would not vanish at 0). S^beta is exact for the special
    betas of ``bk`` = :func:`cev_kind` (S, sqrt(S), 1), exp(beta ln S) otherwise."""
    if s > 0.0:
        if bk == 1:
            loc = s
        elif bk == 2:
            loc = math.sqrt(s)
        elif bk == 0:
            loc = 1.0
        else:
            loc = math.exp(beta * math.log(s))
        s = s * a0 + c1 * loc * z
        if s <= 0.0:
            s = 0.0
    return s


# --------------------------------------------------------------------------- sinh_lv


@_ijit
def sinh_euler_step(s, z, a0, two_r, lam2, sdt):
    """Euler step of dS = r S dt + sqrt(2 r S^2 + lam^2) dW (no boundary): a0 = 1 + r dt,
    sdt = sqrt(dt) for a standard normal z, 1 for a Brownian increment."""
    return s * a0 + math.sqrt(two_r * s * s + lam2) * sdt * z


# --------------------------------------------------------------------------- Black-Karasinski


@_ijit
def bk_euler_step(x, z, e, g, sd):
    """Euler step of x = ln r: x += alpha dt (ln mu - x) + sigma dW; e = alpha dt, g = ln mu at
    the step's END, sd = sigma times the noise scale."""
    return x + (e * (g - x) + sd * z)


@_ijit
def trapezoid(I, hdt, r, x):
    """Trapezoid rule for int r dt over one step ending at ln r = x: returns (r_end, I + hdt (r + r_end)),
    hdt = dt / 2."""
    rn = math.exp(x)
    return rn, I + hdt * (r + rn)
