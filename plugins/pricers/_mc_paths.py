"""Compiled path kernels of the ``mc`` pricer (numba); see :mod:`.mc` for the methods.

Layout shared by every European kernel::

    kernel(P, nsteps, cp, seed, npaths, anti, cv, scheme, acc, i0, i1, X)

- ``P``: (options, columns) float64, one row per option (columns per model below);
- ``nsteps``: (options,) int64 time steps per option;
- ``cp``: +1.0 call, -1.0 put (unused for bonds);
- ``seed``: the run's seed; ``npaths``: paths per option (even with ``anti``);
- ``acc``: (options, blocks, NACC) float64 partial sums per block of BLOCK paths;
- the call runs work items ``i0 <= item < i1`` of the flattened (option, block) pairs,
  ``option = item // blocks``, in ``prange``; item (o, b) draws its numbers from
  ``_rng.stream(seed, o, b)`` and writes only ``acc[o, b]``, so the result does not
  depend on the thread count nor on how the items are cut into calls;
- ``X``: (steps, npaths) float64 to record the paths of ONE option (American options:
  ``X[k, p]`` = S at t_{k+1} of path p), or a (0, 0) array for no record.

Each parallel kernel is a thin ``prange`` loop over a ``_blk_*`` function that simulates
one block (numba's parfor array analysis fails on the generator's tuple state inside a
``prange`` body, numba 0.6x; the call also keeps each block's code free of parfor
rewriting). Those take arrays, but are called once per block, not per step.

Paths run in pairs ("lanes" A and B, paths 2j and 2j+1 of a block): with ``anti`` B is the
antithetic image of A (negated normals, 1 - u for the uniforms of Heston's exponential
branch), otherwise B draws its own numbers. Two independent dependency chains per loop
iteration let the CPU overlap them (Heston QE's chain of divisions and square roots).

Partial sums per block (slot of ``acc``): 0 samples n, 1 shift y0 (the block's first
sample), 2 sum(y - y0), 3 sum((y - y0)^2), 4 shift x0, 5 sum(x - x0), 6 sum((x - x0)^2),
7 sum((x - x0)(y - y0)); y the discounted payoff, x the control variate (0 when unused).
A sample is one path, or with ``anti`` the average of a pair. Shifting by the block's
first sample keeps the sums of squares free of cancellation when the variance is small
against the mean (bonds).

The one-step updates (GBM Euler/Milstein, Heston full-truncation Euler, CEV, sinh_lv and
Black-Karasinski Euler, the trapezoid integral) and the payoff live in :mod:`._sde`, shared with
the ``mlmc`` kernels and inlined here.

Compiled with ``error_model="numpy"`` (no division checks) and ``fastmath={"contract"}``
only: LLVM may fuse a * b + c into one FMA instruction (rounded once), nothing else, so
results stay deterministic on a given machine and thread count independent; they may differ
in the last bits between CPUs with and without FMA.

Measured on one core of the development VM (Xeon Sapphire Rapids, 2.3 GHz class, one
option, 200,000 paths x 100 steps, numba threads = 1), path-steps per second: Black-Scholes
Euler ~270-330M, exact ~300M (the normal generator's rate), Milstein ~270-340M; Heston QE
~52-62M (F-O parameters with many exponential-branch steps at the low end), Heston Euler
~110-120M; Merton and Kou ~190-220M; CEV ~160-190M at beta = 0.5 (a square root) and ~55M for
general beta (exp and log); sinh_lv Euler ~150-170M, exact ~330M; Black-Karasinski ~120-140M
(one exp per step). QE is bound by its chain of two square roots and a division per step
(two lanes overlap two chains; eight lanes gained 25% on mild parameters and nothing on the
F-O case, so the code keeps two).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from pricebench_plugins.pricers import _jitcache, _rng, _sde

BLOCK = 2048  # paths per random stream (even: antithetic pairs never straddle two blocks)
NACC = 8
PSI_C = 1.5  # Andersen's switching level of the QE scheme
_INV_SQRT2 = 1.0 / math.sqrt(2.0)

# scheme codes (mc.py maps names to these)
EXACT = 0
EULER = 1
MILSTEIN = 2
QE = 3

_ijit = numba.njit(cache=True, nogil=True, inline="always", error_model="numpy", fastmath={"contract"})
_jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
_pjit = numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")

normal = _rng.normal
uniform = _rng.uniform


@_ijit
def _acc(first, y, x, ys, xs, sy, syy, sx, sxx, sxy):
    """Add sample (y, x) to a block's shifted sums."""
    if first:
        ys = y
        xs = x
    dy = y - ys
    dx = x - xs
    return ys, xs, sy + dy, syy + dy * dy, sx + dx, sxx + dx * dx, sxy + dx * dy


@_ijit
def _acc_pair(anti, hasb, ns, ya, yb, xa, xb, ys, xs, sy, syy, sx, sxx, sxy):
    """Add the samples of one pair of lanes (ns so far): with ``anti`` their average, else A and
    (if the block has it) B. Returns ns and the sums updated."""
    if anti:
        ys, xs, sy, syy, sx, sxx, sxy = _acc(ns == 0, 0.5 * (ya + yb), 0.5 * (xa + xb), ys, xs, sy, syy,
                                             sx, sxx, sxy)
        ns += 1
    else:
        ys, xs, sy, syy, sx, sxx, sxy = _acc(ns == 0, ya, xa, ys, xs, sy, syy, sx, sxx, sxy)
        ns += 1
        if hasb:
            ys, xs, sy, syy, sx, sxx, sxy = _acc(False, yb, xb, ys, xs, sy, syy, sx, sxx, sxy)
            ns += 1
    return ns, ys, xs, sy, syy, sx, sxx, sxy


@_jit
def _store(acc, o, b, n, ys, sy, syy, xs, sx, sxx, sxy):
    acc[o, b, 0] = n
    acc[o, b, 1] = ys
    acc[o, b, 2] = sy
    acc[o, b, 3] = syy
    acc[o, b, 4] = xs
    acc[o, b, 5] = sx
    acc[o, b, 6] = sxx
    acc[o, b, 7] = sxy


_pay = _sde.payoff


# --------------------------------------------------------------------------- Black-Scholes
# P columns: S, K, T, r, q, sigma


@_jit
def _blk_gbm(P, nsteps, cp, seed, npaths, anti, cv, scheme, acc, X, o, b):
    """One block (paths b*BLOCK ... of option o): see the module docstring."""
    store = X.shape[0] > 0
    S0 = P[o, 0]
    K = P[o, 1]
    T = P[o, 2]
    r = P[o, 3]
    q = P[o, 4]
    sig = P[o, 5]
    n = nsteps[o]
    dt = T / n
    sq = math.sqrt(dt)
    disc = math.exp(-r * T)
    first = b * BLOCK
    cnt = min(BLOCK, npaths - first)
    st = _rng.stream(seed, o, b)
    exact = scheme == EXACT
    if exact:  # log step: ln S += (r - q - sigma^2/2) dt + sigma sqrt(dt) Z
        c0 = (r - q - 0.5 * sig * sig) * dt
        c1 = sig * sq
        c2 = 0.0
    elif scheme == MILSTEIN:  # S *= 1 + (r-q) dt + sigma sqrt(dt) Z + sigma^2 dt (Z^2 - 1)/2
        c0 = 1.0 + (r - q) * dt - 0.5 * sig * sig * dt
        c1 = sig * sq
        c2 = 0.5 * sig * sig * dt
    else:  # Euler: S *= 1 + (r-q) dt + sigma sqrt(dt) Z
        c0 = 1.0 + (r - q) * dt
        c1 = sig * sq
        c2 = 0.0
    ys = xs = sy = syy = sx = sxx = sxy = 0.0
    ns = 0
    for j in range((cnt + 1) // 2):
        pa = first + 2 * j
        hasb = 2 * j + 1 < cnt
        if exact:
            xa = 0.0
            xb = 0.0
            for k in range(n):
                st, za = normal(st)
                if anti:
                    zb = -za
                else:
                    st, zb = normal(st)
                xa += c0 + c1 * za
                xb += c0 + c1 * zb
                if store:
                    X[k, pa] = S0 * math.exp(xa)
                    if hasb:
                        X[k, pa + 1] = S0 * math.exp(xb)
            sa = S0 * math.exp(xa)
            sb = S0 * math.exp(xb)
        else:
            sa = S0
            sb = S0
            for k in range(n):
                st, za = normal(st)
                if anti:
                    zb = -za
                else:
                    st, zb = normal(st)
                sa = _sde.gbm_step(sa, za, c0, c1, c2)
                sb = _sde.gbm_step(sb, zb, c0, c1, c2)
                if store:
                    X[k, pa] = sa
                    if hasb:
                        X[k, pa + 1] = sb
        ya = disc * _pay(cp, sa, K)
        yb = disc * _pay(cp, sb, K)
        xa = disc * sa if cv else 0.0
        xb = disc * sb if cv else 0.0
        ns, ys, xs, sy, syy, sx, sxx, sxy = _acc_pair(anti, hasb, ns, ya, yb, xa, xb, ys, xs, sy, syy,
                                                     sx, sxx, sxy)
    _store(acc, o, b, ns, ys, sy, syy, xs, sx, sxx, sxy)


@_pjit
def euro_gbm(P, nsteps, cp, seed, npaths, anti, cv, scheme, acc, i0, i1, X):
    nblk = acc.shape[1]
    for it in prange(i1 - i0):
        item = i0 + it
        o = item // nblk
        _blk_gbm(P, nsteps, cp, seed, npaths, anti, cv, scheme, acc, X, o, item - o * nblk)


# --------------------------------------------------------------------------- Heston
# P columns: S, K, T, r, q, v0, kappa, theta, xi, rho, sbar (volatility of the control GBM)


@_ijit
def _qe_step(st, v, x, w, draw, zv, z, E, cm, c1, c2, k0, k1, k2, k3, k4, rho, rhob, cv):
    """One QE step of (v, x = ln S) (Andersen 2008); draw=False: use the given zv, z (antithetic).

    w accumulates the normal rho zv + sqrt(1 - rho^2) z of the control GBM."""
    m = cm + v * E
    s2 = v * c1 + c2
    m2 = m * m
    if s2 <= PSI_C * m2:  # psi = s2/m^2 <= psi_c: v' = a (b + Zv)^2
        if draw:
            st, zv = normal(st)
        t = 2.0 * m2 / s2  # 2/psi
        b2 = t - 1.0 + math.sqrt(t * (t - 1.0))
        a = m / (1.0 + b2)
        c = math.sqrt(b2) + zv
        vn = a * c * c
    else:  # psi > psi_c: v' = 0 with probability p, else exponential with rate beta
        if draw:
            st, u = uniform(st)
            omu = 1.0 - u
            if cv:
                zv = _rng.ndtri(u)
        else:
            omu = 0.5 * math.erfc(zv * _INV_SQRT2)  # 1 - Phi(zv): the antithetic image of -zv is exact
        tot = s2 + m2
        omp = 2.0 * m2 / tot  # 1 - p, p = (psi - 1)/(psi + 1)
        if omu >= omp:
            vn = 0.0
        else:
            vn = tot / (2.0 * m) * math.log(omp / omu)  # ln((1-p)/(1-u)) / beta, beta = (1-p)/m
    if draw:
        st, z = normal(st)
    x += k0 + k1 * v + k2 * vn + math.sqrt(k3 * v + k4 * vn) * z
    if cv:
        w += rho * zv + rhob * z
    return st, vn, x, w


@_ijit
def _heuler_step(st, v, x, w, draw, z1, z2, dt, sdt, c0, kdt, theta, xi, rho, rhob):
    """Full-truncation Euler on (v, ln S) (Lord, Koekkoek & van Dijk 2010)."""
    if draw:
        st, z1 = normal(st)
        st, z2 = normal(st)
    v, x = _sde.heston_euler_step(v, x, z1, rho * z1 + rhob * z2, dt, sdt, c0, kdt, theta, xi)
    w += z1
    return st, v, x, w


@_jit
def _blk_heston(P, nsteps, cp, seed, npaths, anti, cv, scheme, acc, X, o, b):
    """One block (paths b*BLOCK ... of option o): see the module docstring."""
    store = X.shape[0] > 0
    S0 = P[o, 0]
    K = P[o, 1]
    T = P[o, 2]
    r = P[o, 3]
    q = P[o, 4]
    v0 = P[o, 5]
    kappa = P[o, 6]
    theta = P[o, 7]
    xi = P[o, 8]
    rho = P[o, 9]
    sbar = P[o, 10]
    n = nsteps[o]
    dt = T / n
    sdt = math.sqrt(dt)
    rhob = math.sqrt(max(1.0 - rho * rho, 0.0))
    disc = math.exp(-r * T)
    lns0 = math.log(S0)
    mudt = (r - q) * dt
    # QE constants: m = theta + (v - theta) E, s^2 = v c1 + c2
    E = math.exp(-kappa * dt)
    omE = -math.expm1(-kappa * dt)
    cm = theta * omE
    c1 = xi * xi * E * omE / kappa
    c2 = theta * xi * xi * omE * omE / (2.0 * kappa)
    # Andersen's log-S step with gamma1 = gamma2 = 1/2
    k0 = mudt - rho * kappa * theta * dt / xi
    k1 = 0.5 * dt * (kappa * rho / xi - 0.5) - rho / xi
    k2 = 0.5 * dt * (kappa * rho / xi - 0.5) + rho / xi
    k3 = 0.5 * dt * (1.0 - rho * rho)
    k4 = k3
    kdt = kappa * dt
    # control: GBM with volatility sbar, ln G_T = ln S + (r - q - sbar^2/2) T + sbar sqrt(dt) sum w
    g0 = lns0 + (r - q - 0.5 * sbar * sbar) * T
    g1 = sbar * sdt
    qe = scheme == QE
    first = b * BLOCK
    cnt = min(BLOCK, npaths - first)
    st = _rng.stream(seed, o, b)
    ys = xs = sy = syy = sx = sxx = sxy = 0.0
    ns = 0
    for j in range((cnt + 1) // 2):
        pa = first + 2 * j
        hasb = 2 * j + 1 < cnt
        va = v0
        vb = v0
        xa = lns0
        xb = lns0
        wa = 0.0
        wb = 0.0
        for k in range(n):
            if qe:
                if anti:
                    st, zv = normal(st)
                    st, z = normal(st)
                    st, va, xa, wa = _qe_step(st, va, xa, wa, False, zv, z, E, cm, c1, c2, k0, k1, k2,
                                              k3, k4, rho, rhob, cv)
                    st, vb, xb, wb = _qe_step(st, vb, xb, wb, False, -zv, -z, E, cm, c1, c2, k0, k1, k2,
                                              k3, k4, rho, rhob, cv)
                else:
                    st, va, xa, wa = _qe_step(st, va, xa, wa, True, 0.0, 0.0, E, cm, c1, c2, k0, k1, k2,
                                              k3, k4, rho, rhob, cv)
                    st, vb, xb, wb = _qe_step(st, vb, xb, wb, True, 0.0, 0.0, E, cm, c1, c2, k0, k1, k2,
                                              k3, k4, rho, rhob, cv)
            else:
                if anti:
                    st, z1 = normal(st)
                    st, z2 = normal(st)
                    st, va, xa, wa = _heuler_step(st, va, xa, wa, False, z1, z2, dt, sdt, mudt, kdt, theta,
                                                  xi, rho, rhob)
                    st, vb, xb, wb = _heuler_step(st, vb, xb, wb, False, -z1, -z2, dt, sdt, mudt, kdt,
                                                  theta, xi, rho, rhob)
                else:
                    st, va, xa, wa = _heuler_step(st, va, xa, wa, True, 0.0, 0.0, dt, sdt, mudt, kdt, theta,
                                                  xi, rho, rhob)
                    st, vb, xb, wb = _heuler_step(st, vb, xb, wb, True, 0.0, 0.0, dt, sdt, mudt, kdt, theta,
                                                  xi, rho, rhob)
            if store:
                X[k, pa] = math.exp(xa)
                if hasb:
                    X[k, pa + 1] = math.exp(xb)
        ya = disc * _pay(cp, math.exp(xa), K)
        yb = disc * _pay(cp, math.exp(xb), K)
        if cv:
            ca = disc * _pay(cp, math.exp(g0 + g1 * wa), K)
            cb = disc * _pay(cp, math.exp(g0 + g1 * wb), K)
        else:
            ca = 0.0
            cb = 0.0
        ns, ys, xs, sy, syy, sx, sxx, sxy = _acc_pair(anti, hasb, ns, ya, yb, ca, cb, ys, xs, sy, syy,
                                                     sx, sxx, sxy)
    _store(acc, o, b, ns, ys, sy, syy, xs, sx, sxx, sxy)


@_pjit
def euro_heston(P, nsteps, cp, seed, npaths, anti, cv, scheme, acc, i0, i1, X):
    nblk = acc.shape[1]
    for it in prange(i1 - i0):
        item = i0 + it
        o = item // nblk
        _blk_heston(P, nsteps, cp, seed, npaths, anti, cv, scheme, acc, X, o, item - o * nblk)


# --------------------------------------------------------------------------- Merton and Kou
# P columns: S, K, T, r, q, sigma, lam, j1, j2, j3, drift, nsub
#   Merton (kind 0): j1 = mu_j, j2 = sigma_j; Kou (kind 1): j1 = p, j2 = eta1, j3 = eta2;
#   drift = r - q - sigma^2/2 - lam E[e^Y - 1] (the compensated log drift);
#   nsub = Poisson draws per step (lam dt / nsub <= 20 keeps exp(-mean) far from underflow)


@_jit
def _jumps(st, u, J, L, p0, kind, j1, j2, j3):
    """Given u > p0 = exp(-L): the Poisson count N >= 1 by inverse transform, then add the sum
    of N log jumps to J."""
    nj = 1
    pk = p0 * L
    F = p0 + pk
    cap = int(L + 20.0 * math.sqrt(L) + 50.0)
    while u > F and nj < cap:
        nj += 1
        pk *= L / nj
        F += pk
    if kind == 0:  # sum of N normals N(mu_j, sigma_j^2)
        st, zj = normal(st)
        J += nj * j1 + math.sqrt(nj) * j2 * zj
    else:  # double exponential: up with probability p, -ln(U)/eta1, else down -(-ln(U)/eta2)
        for _ in range(nj):
            st, u1 = uniform(st)
            st, u2 = uniform(st)
            if u1 < j1:
                J -= math.log(u2) / j2
            else:
                J += math.log(u2) / j3
    return st, J


@_jit
def _blk_jump(P, nsteps, cp, seed, npaths, anti, cv, kind, acc, X, o, b):
    """One block (paths b*BLOCK ... of option o): see the module docstring."""
    store = X.shape[0] > 0
    S0 = P[o, 0]
    K = P[o, 1]
    T = P[o, 2]
    r = P[o, 3]
    sig = P[o, 5]
    lam = P[o, 6]
    j1 = P[o, 7]
    j2 = P[o, 8]
    j3 = P[o, 9]
    drift = P[o, 10]
    nsub = int(P[o, 11])
    n = nsteps[o]
    dt = T / n
    c0 = drift * dt
    c1 = sig * math.sqrt(dt)
    L = lam * dt / nsub
    p0 = math.exp(-L)
    disc = math.exp(-r * T)
    lns0 = math.log(S0)
    first = b * BLOCK
    cnt = min(BLOCK, npaths - first)
    st = _rng.stream(seed, o, b)
    ys = xs = sy = syy = sx = sxx = sxy = 0.0
    ns = 0
    for j in range((cnt + 1) // 2):
        pa = first + 2 * j
        hasb = 2 * j + 1 < cnt
        xa = lns0
        xb = lns0
        for k in range(n):
            st, za = normal(st)
            if anti:
                zb = -za
            else:
                st, zb = normal(st)
            xa += c0 + c1 * za
            xb += c0 + c1 * zb
            # jumps: shared by the antithetic pair, drawn separately otherwise
            Ja = 0.0
            for _ in range(nsub):
                st, u = uniform(st)
                if u > p0:
                    st, Ja = _jumps(st, u, Ja, L, p0, kind, j1, j2, j3)
            if anti:
                Jb = Ja
            else:
                Jb = 0.0
                for _ in range(nsub):
                    st, u = uniform(st)
                    if u > p0:
                        st, Jb = _jumps(st, u, Jb, L, p0, kind, j1, j2, j3)
            xa += Ja
            xb += Jb
            if store:
                X[k, pa] = math.exp(xa)
                if hasb:
                    X[k, pa + 1] = math.exp(xb)
        sa = math.exp(xa)
        sb = math.exp(xb)
        ya = disc * _pay(cp, sa, K)
        yb = disc * _pay(cp, sb, K)
        xa = disc * sa if cv else 0.0
        xb = disc * sb if cv else 0.0
        ns, ys, xs, sy, syy, sx, sxx, sxy = _acc_pair(anti, hasb, ns, ya, yb, xa, xb, ys, xs, sy, syy,
                                                     sx, sxx, sxy)
    _store(acc, o, b, ns, ys, sy, syy, xs, sx, sxx, sxy)


@_pjit
def euro_jump(P, nsteps, cp, seed, npaths, anti, cv, kind, acc, i0, i1, X):
    nblk = acc.shape[1]
    for it in prange(i1 - i0):
        item = i0 + it
        o = item // nblk
        _blk_jump(P, nsteps, cp, seed, npaths, anti, cv, kind, acc, X, o, item - o * nblk)


# --------------------------------------------------------------------------- CEV and sinh_lv
# cev P columns: S, K, T, r, q, sigma, beta; sinh_lv P columns: S, K, T, r, q, lam


@_jit
def _blk_cev(P, nsteps, cp, seed, npaths, anti, cv, scheme, acc, X, o, b):
    """One block (paths b*BLOCK ... of option o): see the module docstring."""
    store = X.shape[0] > 0
    S0 = P[o, 0]
    K = P[o, 1]
    T = P[o, 2]
    r = P[o, 3]
    q = P[o, 4]
    sig = P[o, 5]
    beta = P[o, 6]
    bk = _sde.cev_kind(beta)
    n = nsteps[o]
    dt = T / n
    a0 = 1.0 + (r - q) * dt
    c1 = sig * math.sqrt(dt)
    disc = math.exp(-r * T)
    first = b * BLOCK
    cnt = min(BLOCK, npaths - first)
    st = _rng.stream(seed, o, b)
    ys = xs = sy = syy = sx = sxx = sxy = 0.0
    ns = 0
    for j in range((cnt + 1) // 2):
        pa = first + 2 * j
        hasb = 2 * j + 1 < cnt
        sa = S0
        sb = S0
        for k in range(n):
            st, za = normal(st)
            if anti:
                zb = -za
            else:
                st, zb = normal(st)
            sa = _sde.cev_step(sa, za, a0, c1, beta, bk)
            sb = _sde.cev_step(sb, zb, a0, c1, beta, bk)
            if store:
                X[k, pa] = sa
                if hasb:
                    X[k, pa + 1] = sb
        ya = disc * _pay(cp, sa, K)
        yb = disc * _pay(cp, sb, K)
        xa = disc * sa if cv else 0.0
        xb = disc * sb if cv else 0.0
        ns, ys, xs, sy, syy, sx, sxx, sxy = _acc_pair(anti, hasb, ns, ya, yb, xa, xb, ys, xs, sy, syy,
                                                     sx, sxx, sxy)
    _store(acc, o, b, ns, ys, sy, syy, xs, sx, sxx, sxy)


@_pjit
def euro_cev(P, nsteps, cp, seed, npaths, anti, cv, scheme, acc, i0, i1, X):
    nblk = acc.shape[1]
    for it in prange(i1 - i0):
        item = i0 + it
        o = item // nblk
        _blk_cev(P, nsteps, cp, seed, npaths, anti, cv, scheme, acc, X, o, item - o * nblk)


@_jit
def _blk_sinh(P, nsteps, cp, seed, npaths, anti, cv, scheme, acc, X, o, b):
    """One block (paths b*BLOCK ... of option o): see the module docstring."""
    store = X.shape[0] > 0
    S0 = P[o, 0]
    K = P[o, 1]
    T = P[o, 2]
    r = P[o, 3]
    lam = P[o, 5]
    n = nsteps[o]
    dt = T / n
    sdt = math.sqrt(dt)
    a0 = 1.0 + r * dt
    two_r = 2.0 * r
    lam2 = lam * lam
    c = math.sqrt(two_r)
    scale = lam / c
    y0 = math.asinh(S0 / scale)
    cy = c * sdt
    exact = scheme == EXACT
    disc = math.exp(-r * T)
    first = b * BLOCK
    cnt = min(BLOCK, npaths - first)
    st = _rng.stream(seed, o, b)
    ys = xs = sy = syy = sx = sxx = sxy = 0.0
    ns = 0
    for j in range((cnt + 1) // 2):
        pa = first + 2 * j
        hasb = 2 * j + 1 < cnt
        if exact:  # Y = asinh(c S / lam) has dY = c dW: S_T = (lam/c) sinh(Y_T)
            ya_ = y0
            yb_ = y0
            for k in range(n):
                st, za = normal(st)
                if anti:
                    zb = -za
                else:
                    st, zb = normal(st)
                ya_ += cy * za
                yb_ += cy * zb
                if store:
                    X[k, pa] = scale * math.sinh(ya_)
                    if hasb:
                        X[k, pa + 1] = scale * math.sinh(yb_)
            sa = scale * math.sinh(ya_)
            sb = scale * math.sinh(yb_)
        else:  # Euler on S
            sa = S0
            sb = S0
            for k in range(n):
                st, za = normal(st)
                if anti:
                    zb = -za
                else:
                    st, zb = normal(st)
                sa = _sde.sinh_euler_step(sa, za, a0, two_r, lam2, sdt)
                sb = _sde.sinh_euler_step(sb, zb, a0, two_r, lam2, sdt)
                if store:
                    X[k, pa] = sa
                    if hasb:
                        X[k, pa + 1] = sb
        ya = disc * _pay(cp, sa, K)
        yb = disc * _pay(cp, sb, K)
        xa = disc * sa if cv else 0.0
        xb = disc * sb if cv else 0.0
        ns, ys, xs, sy, syy, sx, sxx, sxy = _acc_pair(anti, hasb, ns, ya, yb, xa, xb, ys, xs, sy, syy,
                                                     sx, sxx, sxy)
    _store(acc, o, b, ns, ys, sy, syy, xs, sx, sxx, sxy)


@_pjit
def euro_sinh(P, nsteps, cp, seed, npaths, anti, cv, scheme, acc, i0, i1, X):
    nblk = acc.shape[1]
    for it in prange(i1 - i0):
        item = i0 + it
        o = item // nblk
        _blk_sinh(P, nsteps, cp, seed, npaths, anti, cv, scheme, acc, X, o, item - o * nblk)


# --------------------------------------------------------------------------- Black-Karasinski bond
# P columns: r0, alpha, sigma, T; G: (options, max steps + 1) per-option time-grid values:
#   Euler: G[o, k] = ln mu(t_k) (k >= 1; the level at the step's end);
#   exact: G[o, k] = m(t_k) = E[ln r(t_k)] (k >= 0).


@_jit
def _blk_bk(P, nsteps, G, seed, npaths, anti, scheme, acc, o, b):
    """One block (paths b*BLOCK ... of option o): see the module docstring."""
    r0 = P[o, 0]
    alpha = P[o, 1]
    sig = P[o, 2]
    T = P[o, 3]
    n = nsteps[o]
    dt = T / n
    hdt = 0.5 * dt
    exact = scheme == EXACT
    if exact:  # OU transition of ln r around its mean m(t)
        e = math.exp(-alpha * dt)
        sd = sig * math.sqrt(-math.expm1(-2.0 * alpha * dt) / (2.0 * alpha))
    else:
        e = alpha * dt
        sd = sig * math.sqrt(dt)
    x0 = math.log(r0)
    first = b * BLOCK
    cnt = min(BLOCK, npaths - first)
    st = _rng.stream(seed, o, b)
    ys = xs = sy = syy = sx = sxx = sxy = 0.0
    ns = 0
    for j in range((cnt + 1) // 2):
        hasb = 2 * j + 1 < cnt
        xa = x0
        xb = x0
        ra = r0
        rb = r0
        Ia = 0.0
        Ib = 0.0
        for k in range(n):
            st, za = normal(st)
            if anti:
                zb = -za
            else:
                st, zb = normal(st)
            g = G[o, k + 1]
            if exact:
                gk = G[o, k]
                xa = g + e * (xa - gk) + sd * za
                xb = g + e * (xb - gk) + sd * zb
            else:
                xa = _sde.bk_euler_step(xa, za, e, g, sd)
                xb = _sde.bk_euler_step(xb, zb, e, g, sd)
            ra, Ia = _sde.trapezoid(Ia, hdt, ra, xa)  # int r dt
            rb, Ib = _sde.trapezoid(Ib, hdt, rb, xb)
        ya = math.exp(-Ia)
        yb = math.exp(-Ib)
        ns, ys, xs, sy, syy, sx, sxx, sxy = _acc_pair(anti, hasb, ns, ya, yb, 0.0, 0.0, ys, xs, sy, syy,
                                                     sx, sxx, sxy)
    _store(acc, o, b, ns, ys, sy, syy, xs, sx, sxx, sxy)


@_pjit
def bond_bk(P, nsteps, G, seed, npaths, anti, scheme, acc, i0, i1):
    nblk = acc.shape[1]
    for it in prange(i1 - i0):
        item = i0 + it
        o = item // nblk
        _blk_bk(P, nsteps, G, seed, npaths, anti, scheme, acc, o, item - o * nblk)


# --------------------------------------------------------------------------- Longstaff-Schwartz


@_jit
def _solve_gram(mom, rhs, nb, coef):
    """Least squares coefficients from the moment (Hankel) normal equations
    G[i, j] = mom[i + j], G c = rhs: symmetric scaling to a unit diagonal, then Cholesky;
    a basis function whose pivot falls below 1e-12 (collinear with the others) is dropped
    (coefficient 0). ``coef`` is overwritten."""
    A = np.empty((nb, nb))
    d = np.empty(nb)
    y = np.empty(nb)
    keep = np.ones(nb, dtype=np.bool_)
    for i in range(nb):
        d[i] = math.sqrt(mom[2 * i]) if mom[2 * i] > 0.0 else 1.0
    for i in range(nb):
        for j in range(nb):
            A[i, j] = mom[i + j] / (d[i] * d[j])
        y[i] = rhs[i] / d[i]
    # Cholesky in place (lower triangle), dropping tiny pivots
    for j in range(nb):
        s = A[j, j]
        for k in range(j):
            if keep[k]:
                s -= A[j, k] * A[j, k]
        if not (s > 1e-12):
            keep[j] = False
            for i in range(j, nb):
                A[i, j] = 0.0
            continue
        s = math.sqrt(s)
        A[j, j] = s
        for i in range(j + 1, nb):
            t = A[i, j]
            for k in range(j):
                if keep[k]:
                    t -= A[i, k] * A[j, k]
            A[i, j] = t / s
    # forward then back substitution on the kept indices
    for i in range(nb):
        if not keep[i]:
            y[i] = 0.0
            continue
        t = y[i]
        for k in range(i):
            if keep[k]:
                t -= A[i, k] * y[k]
        y[i] = t / A[i, i]
    for i in range(nb - 1, -1, -1):
        if not keep[i]:
            coef[i] = 0.0
            continue
        t = y[i]
        for k in range(i + 1, nb):
            if keep[k]:
                t -= A[k, i] * coef[k]
        coef[i] = t / A[i, i]
    for i in range(nb):
        coef[i] /= d[i]


@_pjit
def lsm(X, n, npaths, K, r, dt, cp, deg, anti, acc, o):
    """Longstaff-Schwartz on the recorded paths ``X[k, p]`` (S at t_{k+1}) of option ``o``.

    Cash flows are kept discounted to 0 (D[p]); at each exercise date t_k, k = n-1..1, the
    D of the in-the-money paths is regressed on 1, y, ..., y^deg, y = S/K - 1 (the same
    polynomials as powers of S/K), and a path exercises where the discounted exercise
    value exceeds the fitted continuation. Per-block partial sums (moments) are reduced in
    block order, so the fit does not depend on the thread count. Writes the block sums of
    the discounted cash flows (pairs averaged with ``anti``) to ``acc[o]``."""
    nblk = acc.shape[1]
    nb = deg + 1
    nmom = 2 * deg + 1
    width = nmom + nb
    D = np.empty(npaths)
    part = np.zeros((nblk, width))
    coef = np.zeros(nb)
    discT = math.exp(-r * n * dt)
    for b in prange(nblk):
        for p in range(b * BLOCK, min(npaths, (b + 1) * BLOCK)):
            D[p] = discT * _pay(cp, X[n - 1, p], K)
    for k in range(n - 1, 0, -1):
        row = k - 1
        disc = math.exp(-r * k * dt)
        for b in prange(nblk):
            loc = np.zeros(width)
            for p in range(b * BLOCK, min(npaths, (b + 1) * BLOCK)):
                s = X[row, p]
                if cp * (s - K) > 0.0:
                    y = s / K - 1.0
                    dp = D[p]
                    pw = 1.0
                    for m in range(nmom):
                        loc[m] += pw
                        if m < nb:
                            loc[nmom + m] += pw * dp
                        pw *= y
            for m in range(width):
                part[b, m] = loc[m]
        tot = np.zeros(width)
        for b in range(nblk):  # fixed order
            for m in range(width):
                tot[m] += part[b, m]
        if tot[0] < 2 * nb:  # too few paths in the money to fit: no exercise at this date
            continue
        _solve_gram(tot[:nmom], tot[nmom:], nb, coef)
        for b in prange(nblk):
            for p in range(b * BLOCK, min(npaths, (b + 1) * BLOCK)):
                s = X[row, p]
                ex = cp * (s - K)
                if ex > 0.0:
                    y = s / K - 1.0
                    cont = coef[deg]
                    for m in range(deg - 1, -1, -1):
                        cont = cont * y + coef[m]
                    if disc * ex > cont:
                        D[p] = disc * ex
    for b in prange(nblk):
        first = b * BLOCK
        cnt = min(BLOCK, npaths - first)
        ys = xs = sy = syy = sx = sxx = sxy = 0.0
        ns = 0
        if anti:
            for j in range(cnt // 2):
                y = 0.5 * (D[first + 2 * j] + D[first + 2 * j + 1])
                ys, xs, sy, syy, sx, sxx, sxy = _acc(ns == 0, y, 0.0, ys, xs, sy, syy, sx, sxx, sxy)
                ns += 1
        else:
            for j in range(cnt):
                ys, xs, sy, syy, sx, sxx, sxy = _acc(ns == 0, D[first + j], 0.0, ys, xs, sy, syy, sx, sxx, sxy)
                ns += 1
        _store(acc, o, b, ns, ys, sy, syy, xs, sx, sxx, sxy)


# numba checks only this file's time stamp: drop cached kernels when _rng or _sde (inlined here) changed
_jitcache.refresh(globals(), ["_rng.py", "_sde.py"])
