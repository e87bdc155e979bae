"""Numba level estimators for multilevel Monte Carlo (the ``mlmc`` pricer).

One call of :func:`level_sums` computes, for every entry of a batch that asks
for samples on level ``l``, the sums over its N samples of

    Y = P_f - P_c,  Y^2,  Y^3,  Y^4,  P_f,  P_f^2

where P_f is the payoff of a path with M^l steps of h_l = T / M^l and P_c
the payoff of the coarse path with M^(l-1) steps of M h_l driven by the same
Brownian motion (each coarse increment is the sum of the M fine increments
inside it). On level 0 there is only the fine path, one step, and P_c = 0.

Schemes (all payoffs discounted; ``sign`` = +1 call, -1 put):

- ``black_scholes``: on S. Euler  S <- S (1 + (r-q) h + sigma dW);
  Milstein  S <- S (1 + (r-q) h + sigma dW + sigma^2 (dW^2 - h) / 2).
- ``heston``: full-truncation Euler (Lord, Koekkoek & van Dijk 2010) on
  x = ln S, with v+ = max(v, 0):
  x <- x + (r - q - v+/2) h + sqrt(v+) dW1,  v <- v + kappa (theta - v+) h + xi sqrt(v+) dW2,
  dW2 = rho dW1 + sqrt(1 - rho^2) dZ (two normals per fine step; the coarse
  path sums both increments).
- ``cev``: Euler on S, S <- S + (r-q) S h + sigma S^beta dW, absorbed at 0
  (a path that reaches S <= 0 stays at 0, as in the model).
- ``sinh_lv``: Euler on S, S <- S + r S h + sqrt(2 r S^2 + lam^2) dW (no boundary).
- ``black_karasinski``: Euler on x = ln r,
  x <- x + alpha (ln mu(t + h) - x) h + sigma dW with mu(t) = mu + mu_sin sin t
  taken at the step's end (so ln mu(0) = -inf, when mu = 0, is never needed),
  int_0^T r dt by the trapezoid rule on the path's own grid, payoff
  exp(-int r dt) (the zero-coupon bond).

The one-step updates and the payoff are those of the ``mc`` kernels (:mod:`._sde`, inlined):
the fine path feeds them standard normals, the coarse path the summed Brownian increments.
CEV takes S^beta exactly for beta = 0, 1/2, 1 (1, sqrt(S), S), exp(beta ln S) otherwise.

The exact coupling of the MSE split (``black_scholes`` only, the model with an exact
path solution): :func:`exact_sums` returns on level l the sums of
D = P_h - P_exact, D^2, P_exact and P_exact^2, where P_h is the scheme's path
with M^l steps (the same update as the level estimator's fine path) and
P_exact the payoff of S_T = S0 exp((r - q - sigma^2/2) T + sigma W_T) with W_T
the sum of the same increments; E[D] is the scheme's bias E[P_h] - P with the
small variance V[D] (the strong error), not V[P_h].

Random numbers (reproducible whatever the thread count): the samples of one
batch entry on one level are cut into blocks of :data:`BLOCK`; block j of a
call draws from ``_rng.stream(seed, key * 64 + l, block0 + j)``, where ``key``
identifies the batch entry (its option or replica index) and ``block0`` is
the number of blocks that entry already used on that level (the caller keeps
that count, so samples added in a later iteration of the adaptive algorithm
never repeat earlier draws). Threads take whole blocks (``prange``); each
block writes its partial sums to its own row and the rows are added in a
fixed order afterwards, so the sums are bit-identical with any number of
threads.

Memory: a call runs its blocks in passes of at most :data:`CHUNK` blocks, each
pass's partial sums added to the totals in block order before the next, so a
call's scratch arrays stay under 4 MiB however many samples it is asked for
(the sums are the same as in one pass: the same additions in the same order).
What bounds the *work* of a call is the caller's business (the pricer's
``max_cost`` budget).

The per-model block functions take only scalars and the random state (a
4-tuple of uint64 in registers) in their hot loops; the state never lives in
an array.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from pricebench_plugins.pricers import _jitcache, _rng, _sde

BLOCK = 512  # samples per random stream; fixed: changing it changes every result
MAX_LEVEL = 63  # streams are keyed by key * 64 + level
CHUNK = 1 << 16  # blocks per pass of a call: bounds its scratch memory (64 bytes a block), not its work
_BK_GRID_MAX = 1 << 23  # values (64 MiB) of the per-call ln mu(t) table of black_karasinski

MODELS = ("black_scholes", "heston", "cev", "sinh_lv", "black_karasinski")
EXACT_MODELS = ("black_scholes",)  # models with an exact path solution (:func:`exact_sums`)
EXACT_STREAM = 1 << 62  # option-index offset of the exact coupling's streams (level keys stay below)
SCHEMES = ("euler", "milstein")
# parameter columns of the (rows, k) parameter array, per model
COLUMNS = {
    "black_scholes": ("S", "K", "T", "r", "q", "sigma"),
    "heston": ("S", "K", "T", "r", "q", "v0", "kappa", "theta", "xi", "rho"),
    "cev": ("S", "K", "T", "r", "q", "sigma", "beta"),
    "sinh_lv": ("S", "K", "T", "r", "lam"),
    "black_karasinski": ("r0", "alpha", "sigma", "mu", "mu_sin", "T"),
}

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


@numba.njit(cache=True, nogil=True, inline="always")
def _add(pf, pc, s1, s2, s3, s4, s5, s6):
    """Add one sample (Y = pf - pc) to the level sums."""
    y = pf - pc
    y2 = y * y
    return s1 + y, s2 + y2, s3 + y2 * y, s4 + y2 * y2, s5 + pf, s6 + pf * pf


@_jit
def _bs_block(st, n, l, M, milstein, sign, S0, K, T, r, q, sigma):
    nc = M ** (l - 1) if l > 0 else 1
    mf = M if l > 0 else 1
    hf = T / (nc * mf)
    hc = hf * mf
    sqh = math.sqrt(hf)
    mu = r - q
    f0, f1, f2 = _sde.gbm_coeffs(mu, sigma, hf, sqh, hf, milstein)  # fine: standard normals
    k0, k1, k2 = _sde.gbm_coeffs(mu, sigma, hc, 1.0, 1.0, milstein)  # coarse: Brownian increments
    disc = math.exp(-r * T)
    s1 = s2 = s3 = s4 = s5 = s6 = 0.0
    for _ in range(n):
        Sf = S0
        Sc = S0
        for _c in range(nc):
            dwc = 0.0
            for _m in range(mf):
                st, z = _rng.normal(st)
                dwc += sqh * z
                Sf = _sde.gbm_step(Sf, z, f0, f1, f2)
            Sc = _sde.gbm_step(Sc, dwc, k0, k1, k2)
        pf = disc * _sde.payoff(sign, Sf, K)
        pc = disc * _sde.payoff(sign, Sc, K) if l > 0 else 0.0
        s1, s2, s3, s4, s5, s6 = _add(pf, pc, s1, s2, s3, s4, s5, s6)
    return st, s1, s2, s3, s4, s5, s6


@_jit
def _heston_block(st, n, l, M, sign, S0, K, T, r, q, v0, kappa, theta, xi, rho):
    nc = M ** (l - 1) if l > 0 else 1
    mf = M if l > 0 else 1
    hf = T / (nc * mf)
    hc = hf * mf
    sqh = math.sqrt(hf)
    mu = r - q
    rho_c = math.sqrt(max(1.0 - rho * rho, 0.0))
    mhf = mu * hf
    mhc = mu * hc
    khf = kappa * hf
    khc = kappa * hc
    disc = math.exp(-r * T)
    x0 = math.log(S0)
    s1 = s2 = s3 = s4 = s5 = s6 = 0.0
    for _ in range(n):
        xf = x0
        vf = v0
        xc = x0
        vc = v0
        for _c in range(nc):
            dw1c = 0.0
            dw2c = 0.0
            for _m in range(mf):
                st, z1 = _rng.normal(st)
                st, z2 = _rng.normal(st)
                zv = rho * z1 + rho_c * z2
                dw1c += sqh * z1
                dw2c += sqh * zv
                vf, xf = _sde.heston_euler_step(vf, xf, z1, zv, hf, sqh, mhf, khf, theta, xi)
            vc, xc = _sde.heston_euler_step(vc, xc, dw1c, dw2c, hc, 1.0, mhc, khc, theta, xi)
        pf = disc * _sde.payoff(sign, math.exp(xf), K)
        pc = disc * _sde.payoff(sign, math.exp(xc), K) if l > 0 else 0.0
        s1, s2, s3, s4, s5, s6 = _add(pf, pc, s1, s2, s3, s4, s5, s6)
    return st, s1, s2, s3, s4, s5, s6


@_jit
def _cev_block(st, n, l, M, sign, S0, K, T, r, q, sigma, beta):
    nc = M ** (l - 1) if l > 0 else 1
    mf = M if l > 0 else 1
    hf = T / (nc * mf)
    hc = hf * mf
    sqh = math.sqrt(hf)
    mu = r - q
    af = 1.0 + mu * hf
    ac = 1.0 + mu * hc
    cf = sigma * sqh
    bk = _sde.cev_kind(beta)
    disc = math.exp(-r * T)
    s1 = s2 = s3 = s4 = s5 = s6 = 0.0
    for _ in range(n):
        Sf = S0
        Sc = S0
        for _c in range(nc):
            dwc = 0.0
            for _m in range(mf):
                st, z = _rng.normal(st)
                dwc += sqh * z
                Sf = _sde.cev_step(Sf, z, af, cf, beta, bk)  # absorbed at 0
            Sc = _sde.cev_step(Sc, dwc, ac, sigma, beta, bk)
        pf = disc * _sde.payoff(sign, Sf, K)
        pc = disc * _sde.payoff(sign, Sc, K) if l > 0 else 0.0
        s1, s2, s3, s4, s5, s6 = _add(pf, pc, s1, s2, s3, s4, s5, s6)
    return st, s1, s2, s3, s4, s5, s6


@_jit
def _sinh_block(st, n, l, M, sign, S0, K, T, r, lam):
    nc = M ** (l - 1) if l > 0 else 1
    mf = M if l > 0 else 1
    hf = T / (nc * mf)
    hc = hf * mf
    sqh = math.sqrt(hf)
    lam2 = lam * lam
    two_r = 2.0 * r
    af = 1.0 + r * hf
    ac = 1.0 + r * hc
    disc = math.exp(-r * T)
    s1 = s2 = s3 = s4 = s5 = s6 = 0.0
    for _ in range(n):
        Sf = S0
        Sc = S0
        for _c in range(nc):
            dwc = 0.0
            for _m in range(mf):
                st, z = _rng.normal(st)
                dwc += sqh * z
                Sf = _sde.sinh_euler_step(Sf, z, af, two_r, lam2, sqh)
            Sc = _sde.sinh_euler_step(Sc, dwc, ac, two_r, lam2, 1.0)
        pf = disc * _sde.payoff(sign, Sf, K)
        pc = disc * _sde.payoff(sign, Sc, K) if l > 0 else 0.0
        s1, s2, s3, s4, s5, s6 = _add(pf, pc, s1, s2, s3, s4, s5, s6)
    return st, s1, s2, s3, s4, s5, s6


@_jit
def _bk_block(st, n, l, M, r0, alpha, sigma, T, lnmu):
    """``lnmu[k]`` = ln mu(t_{k+1}) at the fine grid's step ends (:func:`_bk_log_level`)."""
    nc = M ** (l - 1) if l > 0 else 1
    mf = M if l > 0 else 1
    hf = T / (nc * mf)
    hc = hf * mf
    sqh = math.sqrt(hf)
    x0 = math.log(r0)
    ah = alpha * hf
    ahc = alpha * hc
    sdf = sigma * sqh
    hhf = 0.5 * hf
    hhc = 0.5 * hc
    s1 = s2 = s3 = s4 = s5 = s6 = 0.0
    for _ in range(n):
        xf = x0
        rf = r0
        intf = 0.0
        xc = x0
        rc = r0
        intc = 0.0
        k = 0
        for _c in range(nc):
            dwc = 0.0
            for _m in range(mf):
                st, z = _rng.normal(st)
                dwc += sqh * z
                xf = _sde.bk_euler_step(xf, z, ah, lnmu[k], sdf)
                rf, intf = _sde.trapezoid(intf, hhf, rf, xf)
                k += 1
            xc = _sde.bk_euler_step(xc, dwc, ahc, lnmu[k - 1], sigma)
            rc, intc = _sde.trapezoid(intc, hhc, rc, xc)
        pf = math.exp(-intf)
        pc = math.exp(-intc) if l > 0 else 0.0
        s1, s2, s3, s4, s5, s6 = _add(pf, pc, s1, s2, s3, s4, s5, s6)
    return st, s1, s2, s3, s4, s5, s6


@_jit
def _bk_log_level(mu, amp, T, nf, out):
    """``out[k]`` = ln mu(t_{k+1}), t_k = k T / nf: the reversion level at the fine grid's step ends
    (numba's copy of :func:`pricebench_plugins.models.black_karasinski._log_level`)."""
    hf = T / nf
    for k in range(nf):
        out[k] = math.log(mu + amp * math.sin((k + 1) * hf))


@numba.njit(cache=True, nogil=True)
def _n_items(N):
    """The work items of a call: one per block of N[b] samples, over every entry b."""
    total = 0
    for b in range(N.shape[0]):
        total += (N[b] + BLOCK - 1) // BLOCK if N[b] > 0 else 0
    return total


@numba.njit(cache=True, nogil=True)
def _partition(N, b, j, entry, local, n):
    """The next n work items (entry, block of that entry) in order from item (b, j) on, into
    entry[:n], local[:n]; returns the item after them."""
    w = 0
    while w < n:
        if N[b] <= 0 or j >= (N[b] + BLOCK - 1) // BLOCK:
            b += 1
            j = 0
            continue
        entry[w] = b
        local[w] = j
        w += 1
        j += 1
    return b, j


@numba.njit(cache=True, nogil=True)
def _accumulate(part, entry, n, out):
    """out[b, k] += part[w, k] for the items w < n of a pass, in item order (thread-count free)."""
    width = part.shape[1]
    for w in range(n):
        b = entry[w]
        for k in range(width):
            out[b, k] += part[w, k]


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def level_sums(model, scheme, sign, l, M, P, rows, keys, N, block0, seed, out):
    """Sums over ``N[b]`` samples of level ``l`` for every batch entry b (``out[b, :6]``).

    model: index into :data:`MODELS`; scheme: index into :data:`SCHEMES`;
    sign: +1 call, -1 put; P: (rows, k) float64 parameters (columns
    :data:`COLUMNS`); rows[b]: the parameter row of entry b; keys[b]: its
    stream key; block0[b]: blocks it already used on this level. Entries with
    N[b] = 0 get zeros.
    """
    B = N.shape[0]
    milstein = scheme == 1
    # black_karasinski: ln mu(t) on the fine grid, once per parameter row in use (not per block) while
    # the table stays under _BK_GRID_MAX values; beyond that, per block as before (same values)
    nf = M ** l
    nrows = P.shape[0]
    need = np.zeros(nrows, np.bool_)
    bk_table = model == 4 and nrows * nf <= _BK_GRID_MAX
    if bk_table:
        for b in range(B):
            if N[b] > 0:
                need[rows[b]] = True
    grid = np.empty((nrows if bk_table else 0, nf))
    for ir in numba.prange(grid.shape[0]):  # not inside the if: there this prange gave wrong tables
        if need[ir]:
            _bk_log_level(P[ir, 3], P[ir, 4], P[ir, 5], nf, grid[ir])
    out[:, :] = 0.0
    total = _n_items(N)
    size = min(total, CHUNK)
    entry = np.empty(size, np.int64)
    local = np.empty(size, np.int64)
    part = np.empty((size, 6))
    b = 0
    j = 0
    done = 0
    while done < total:
        n = min(size, total - done)
        b, j = _partition(N, b, j, entry, local, n)
        _level_pass(model, milstein, bk_table, sign, l, M, nf, P, rows, keys, N, block0, seed, grid, entry,
                    local, n, part)
        _accumulate(part, entry, n, out)  # fixed order: the same sums whichever thread ran which block
        done += n
    return out


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _level_pass(model, milstein, bk_table, sign, l, M, nf, P, rows, keys, N, block0, seed, grid, entry, local,
                count, part):
    """One pass of :func:`level_sums`: the partial sums of work items 0..count-1 into ``part``."""
    for w in numba.prange(count):
        b = entry[w]
        j = local[w]
        n = min(BLOCK, N[b] - j * BLOCK)
        st = _rng.stream(seed, keys[b] * 64 + l, block0[b] + j)
        i = rows[b]
        if model == 0:
            res = _bs_block(st, n, l, M, milstein, sign, P[i, 0], P[i, 1], P[i, 2], P[i, 3], P[i, 4], P[i, 5])
        elif model == 1:
            res = _heston_block(st, n, l, M, sign, P[i, 0], P[i, 1], P[i, 2], P[i, 3], P[i, 4], P[i, 5],
                                P[i, 6], P[i, 7], P[i, 8], P[i, 9])
        elif model == 2:
            res = _cev_block(st, n, l, M, sign, P[i, 0], P[i, 1], P[i, 2], P[i, 3], P[i, 4], P[i, 5], P[i, 6])
        elif model == 3:
            res = _sinh_block(st, n, l, M, sign, P[i, 0], P[i, 1], P[i, 2], P[i, 3], P[i, 4])
        elif bk_table:
            res = _bk_block(st, n, l, M, P[i, 0], P[i, 1], P[i, 2], P[i, 5], grid[i])
        else:
            lnmu = np.empty(nf)
            _bk_log_level(P[i, 3], P[i, 4], P[i, 5], nf, lnmu)
            res = _bk_block(st, n, l, M, P[i, 0], P[i, 1], P[i, 2], P[i, 5], lnmu)
        part[w, 0] = res[1]
        part[w, 1] = res[2]
        part[w, 2] = res[3]
        part[w, 3] = res[4]
        part[w, 4] = res[5]
        part[w, 5] = res[6]


@_jit
def _bs_exact_block(st, n, l, M, milstein, sign, S0, K, T, r, q, sigma):
    """Sums of D = P_h - P_exact, D^2, P_exact, P_exact^2 over n paths: P_h from the
    scheme's path with M^l steps (exactly the fine path of :func:`_bs_block`), P_exact
    from S_T = S0 exp((r - q - sigma^2/2) T + sigma W_T) with the same W_T."""
    nf = M ** l
    hf = T / nf
    sqh = math.sqrt(hf)
    mu = r - q
    drift = (mu - 0.5 * sigma * sigma) * T
    f0, f1, f2 = _sde.gbm_coeffs(mu, sigma, hf, sqh, hf, milstein)
    disc = math.exp(-r * T)
    s1 = s2 = s3 = s4 = 0.0
    for _ in range(n):
        S = S0
        w = 0.0
        for _k in range(nf):
            st, z = _rng.normal(st)
            w += sqh * z
            S = _sde.gbm_step(S, z, f0, f1, f2)
        ph = disc * _sde.payoff(sign, S, K)
        pe = disc * _sde.payoff(sign, S0 * math.exp(drift + sigma * w), K)
        d = ph - pe
        s1 += d
        s2 += d * d
        s3 += pe
        s4 += pe * pe
    return st, s1, s2, s3, s4


@numba.njit(cache=True, nogil=True, error_model="numpy")
def exact_sums(scheme, sign, l, M, P, rows, keys, N, block0, seed, out):
    """The MSE split's same-path coupling for ``black_scholes`` (the model with an exact
    path solution): per batch entry b, sums over ``N[b]`` paths of D = P_h - P_exact,
    D^2, P_exact, P_exact^2 (``out[b, :4]``), P_h on the grid of level ``l``.

    E[D] = E[P_h] - P is the scheme's bias, estimated with the small variance of D
    (the strong error) instead of V[P_h]. Streams are those of :func:`level_sums`
    with the option index offset by :data:`EXACT_STREAM` (independent draws); same
    blocks, fixed-order reduction, so bit-identical whatever the thread count.
    """
    out[:, :] = 0.0
    total = _n_items(N)
    size = min(total, CHUNK)
    entry = np.empty(size, np.int64)
    local = np.empty(size, np.int64)
    part = np.empty((size, 4))
    b = 0
    j = 0
    done = 0
    while done < total:
        n = min(size, total - done)
        b, j = _partition(N, b, j, entry, local, n)
        _exact_pass(scheme == 1, sign, l, M, P, rows, keys, N, block0, seed, entry, local, n, part)
        _accumulate(part, entry, n, out)
        done += n
    return out


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _exact_pass(milstein, sign, l, M, P, rows, keys, N, block0, seed, entry, local, count, part):
    """One pass of :func:`exact_sums`: the partial sums of work items 0..count-1 into ``part``."""
    for w in numba.prange(count):
        b = entry[w]
        j = local[w]
        n = min(BLOCK, N[b] - j * BLOCK)
        st = _rng.stream(seed, EXACT_STREAM + keys[b] * 64 + l, block0[b] + j)
        i = rows[b]
        res = _bs_exact_block(st, n, l, M, milstein, sign, P[i, 0], P[i, 1], P[i, 2], P[i, 3], P[i, 4], P[i, 5])
        part[w, 0] = res[1]
        part[w, 1] = res[2]
        part[w, 2] = res[3]
        part[w, 3] = res[4]


def blocks_used(N):
    """Blocks (streams) that N samples take: what the caller adds to ``block0`` after a call."""
    N = np.asarray(N, dtype=np.int64)
    return (N + BLOCK - 1) // BLOCK


def warm_up():
    """Compile :func:`level_sums` (and its block functions) on the types the pricer passes."""
    one = np.zeros(1, np.int64)
    level_sums(0, 0, 1.0, 1, 2, np.ones((1, 6)), one, one, np.array([2], np.int64), one, np.uint64(0),
               np.empty((1, 6)))


def warm_up_exact():
    """Compile :func:`exact_sums` (only ``mlmc-test`` needs it)."""
    one = np.zeros(1, np.int64)
    exact_sums(0, 1.0, 1, 2, np.ones((1, 6)), one, one, np.array([2], np.int64), one, np.uint64(0),
               np.empty((1, 4)))


# numba checks only this file's time stamp: drop cached kernels when _rng or _sde (inlined here) changed
_jitcache.refresh(globals(), ["_rng.py", "_sde.py"])
