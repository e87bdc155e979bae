"""Finite-difference (PDE / PIDE) pricer: European and American options under
Black-Scholes, CEV, the hyperbolic-sine local-volatility model, Merton and
Kou jump diffusions, and Black-Karasinski zero-coupon bonds.

Every option is its own 1-D problem on its own grid (all grids of a call
have ``nx`` nodes). The options of a call march together through compiled
(numba) kernels: Thomas / Brennan-Schwartz sweeps per option, the whole time
loop inside one kernel where there is no FFT (everything but Merton).

Equation, in time to maturity tau and a space coordinate z::

    V_tau = a(z) V_zz + b(z) V_z - c V  [+ lam (int V(x+y) f(y) dy - V)]

Space coordinate and grid per model (``x_width`` standard deviations of
the coordinate at maturity beyond spot, strike and the drifted spot; the
strike is a node; sinh-stretched towards it with length sd / ``stretch``,
i.e. z = zK + d sinh(u) with u uniform on each side of zK):

- ``black_scholes``, ``merton``, ``kou``: z = x = ln S (sd including the
  jumps). Kou grids also reach where lam T P(jump beyond the edge) = 1e-6:
  the exponential jump tails are fat, and with +-6 sd only, the far-field
  values that jumps land on cost ~5e-5 on Toivanen's puts.
- ``cev``: z = S from S = 0 (a node: the absorbing state, where the PDE is
  V_tau = -rV, i.e. exactly the absorbed value) to S_max. Only beta <= 1
  (NaN otherwise: for beta > 1 the discounted price is a strict local
  martingale and the far-field condition used here is wrong; the registered
  ``cev`` model only admits beta in [0, 1]).
- ``sinh_lv`` (dS = rS dt + sqrt(2rS^2 + lam^2) dW, S may be negative):
  z = asinh(cS/lam)/c with c = sqrt(2r) (z = S/lam when r = 0). By Ito dz =
  dW exactly, so the PDE is V_tau = V_zz / 2 - rV with constant
  coefficients, sd = sqrt(T); S = lam sinh(cz)/c.
- Far-field (Dirichlet) values: the asymptotic forward value (call: S e^{-q
  tau} - K e^{-r tau} at the top, 0 at the bottom; put mirrored), for
  American options the larger of that and the intrinsic value. The jump
  integral uses the same linear-in-S values beyond the grid, integrated in
  closed form against the jump density.

Central differences (non-uniform formulas), switched to one-sided upwind
differences at a node where convection dominates strongly (cell Peclet number
|b| h / 2a > 10, e.g. sigma = 0 with jumps; between 1 and 10 the matrix is
not an M-matrix, but the central scheme stays stable and second order, while
first-order upwinding there costs up to 1e-2 on a Merton call with small
sigma; BENCHOP's sigma = 0.01 needs neither, its grid scales with sigma).

Time stepping: levels tau_k = T (k/nt)^``t_grading`` (default 2: fine steps
near expiry, where the payoff kink and the early-exercise boundary's sqrt(tau)
behaviour are), Crank-Nicolson (``scheme="cn"``) after ``rannacher`` fully
implicit half steps (Rannacher start-up), or variable-step BDF2
(``scheme="bdf2"``). The price at S is cubic Lagrange interpolation on the grid.

American options: the discrete linear complementarity problem of each step
is solved exactly by the Brennan-Schwartz algorithm (one Thomas sweep,
elimination towards the exercise side, then projection max(V, payoff) during
the substitution from the exercise side). It is exact for an M-matrix (cell
Peclet numbers <= 1, the usual case here; between 1 and 10 it was observed
to stay accurate) with a single exercise region adjacent to one boundary
(put: low S, call: high S).

Jumps: the integral term is implicit, by fixed-point iteration per time step
(d'Halluin, Forsyth & Vetzal 2005): the local part and -lam V sit in the
tridiagonal matrix, the integral is iterated on the right side to
``jump_tol`` (first guess extrapolated in time; contraction factor about
lam dt / 2, 2-3 iterations). Both integrate the piecewise-linear interpolant
of V exactly against the density, plus the far field in closed form, so the
jump range is never truncated:

- Kou: Toivanen's (2008) two O(n) recursions for the double-exponential
  kernel, valid on the non-uniform grid, inside the compiled time loop;
- Merton: FFT correlation with hat-function weights from the Gaussian's cell
  moments on an auxiliary uniform grid of 2 nx nodes, linear interpolation
  between the grids (as d'Halluin et al.); time loop in Python.

Black-Karasinski: y = ln r - m(t), with m(t) = E[ln r(t)] the deterministic
mean (:func:`pricebench_plugins.models.black_karasinski.log_rate_mean`),
follows dy = -alpha y dt + sigma dW; the bond PDE is V_tau = sigma^2/2 V_yy
- alpha y V_y - exp(y + m(T - tau)) V with V(tau=0) = 1 on a uniform grid of
+-``x_width`` standard deviations of y(T) around y = 0 (a node), uniform time
steps. The time-dependent level (mu_sin > 0, as Spence, Brolly and Xue use) only changes m(t), so
it costs nothing extra, and the ln mu(0) = -inf of mu(t) = sin t is
integrated accurately into m. At the two ends the diffusion is dropped and
the (inward) drift is upwinded: no boundary condition is needed. sigma = 0
is priced by the same scheme (then a deterministic ODE).

No-arbitrage check (:mod:`._bounds`, shared with cos and mc). Where the grid cannot
resolve a point, the scheme returns garbage rather than a slightly wrong price: under
Kou with heavy down jumps (eta2 = 0.012) a European call at K = 100 S comes out at -14.9
and an American call at K = 10000 at -2e33. A price outside the product's bounds
(European call in [(S e^{-qT} - K e^{-rT})+, S e^{-qT}], put in [(K e^{-rT} - S e^{-qT})+,
K e^{-rT}], American call in [max(S - K, S e^{-qT} - K e^{-rT}, 0), S], American put in
[max(K - S, K e^{-rT} - S e^{-qT}, 0), K]; no upper bound for sinh_lv; Black-Karasinski
bonds in [0, 1]) by more than ``BOUND_TOL`` = 1e-2 (S e^{-qT} + K e^{-rT}) (bonds: 1e-2) is
NaN, with a reason (``PriceResult.reason``; NaN points of unsupported parameters get one
too). Ordinary discretisation error is far smaller (an American call at K = 1, S = 100,
nx = 200 lands 1.4e-3 below its intrinsic value: 1.4e-5 of the scale); the shipped suites'
cells stay within the bounds to a small fraction of the tolerance.

Observed convergence (tests/test_fd.py; nx and nt doubled together):
European payoffs second order (error ratios 3.9-4.0 on the BS call; also
CEV, sinh_lv, Merton, Kou, BK bonds); American puts under Black-Scholes with
the default grading and stretching also second order (ratios 3.9-4.1 at S =
100, 110; Richardson limit 6.090370 at S = K = 100).
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np

from bench import hookimpl
from bench.methods import Pricer, PriceResult, Setting, SettingError
from pricebench_plugins.pricers import _bounds as no_arbitrage  # (fd's own _bounds: grid ends)
from pricebench_plugins.models.black_karasinski import log_rate_mean

__version__ = "1"

OPTIONS = ("european_call", "european_put", "american_put", "american_call")
# central differences up to this cell Peclet number |b| h / (2a), one-sided upwind beyond: upwinding
# at Peclet 1 (the M-matrix bound) adds enough numerical diffusion to cost 1e-2 on Merton calls with
# sigma = 0.06 and large jumps at nx = 800; central differences there are second order and stable
PECLET_MAX = 10.0
CHUNK = 256  # options marched together (bounds the (chunk, nx) work arrays)
# NaN beyond the no-arbitrage bounds by more than this times S e^{-qT} + K e^{-rT} (bonds: times 1); the
# shipped suites' cells stay within a small fraction of it, garbage (Kou calls at K = 100 S) is far beyond
BOUND_TOL = no_arbitrage.BOUND_TOL
OUT_OF_BOUNDS = ("price outside the no-arbitrage bounds: the grid does not resolve this point (raise nx, or "
                 "x_width for a larger S_max; the parameters may be too extreme for the grid)")
NOT_PRICED = ("not priced: outside what the grid solves (Kou eta1 <= 1, CEV beta > 1, sinh_lv r < 0) or a "
              "non-finite value")

# Brennan-Schwartz / Thomas modes
PLAIN, EXERCISE_LOW, EXERCISE_HIGH = 0, 1, 2


# --------------------------------------------------------------------------- compiled kernels


@functools.lru_cache(maxsize=1)
def _kernels() -> SimpleNamespace:
    import numba

    njit = numba.njit(nogil=True, error_model="numpy", cache=False)

    @njit
    def solve_system(sub, dia, sup, rhs, g, mode, u, cw, dw):
        """Solve the tridiagonal system sub[i] u[i-1] + dia[i] u[i] + sup[i] u[i+1] = rhs[i];
        mode EXERCISE_LOW / EXERCISE_HIGH: the LCP u >= g by Brennan-Schwartz."""
        n = dia.shape[0]
        if mode == EXERCISE_LOW:
            # eliminate the super-diagonal from the top, substitute upwards from the low end
            cw[n - 1] = sub[n - 1] / dia[n - 1]
            dw[n - 1] = rhs[n - 1] / dia[n - 1]
            for i in range(n - 2, -1, -1):
                m = dia[i] - sup[i] * cw[i + 1]
                cw[i] = sub[i] / m
                dw[i] = (rhs[i] - sup[i] * dw[i + 1]) / m
            u[0] = max(dw[0], g[0])
            for i in range(1, n):
                u[i] = max(dw[i] - cw[i] * u[i - 1], g[i])
        else:
            cw[0] = sup[0] / dia[0]
            dw[0] = rhs[0] / dia[0]
            for i in range(1, n):
                m = dia[i] - sub[i] * cw[i - 1]
                cw[i] = sup[i] / m
                dw[i] = (rhs[i] - sub[i] * dw[i - 1]) / m
            if mode == EXERCISE_HIGH:
                u[n - 1] = max(dw[n - 1], g[n - 1])
                for i in range(n - 2, -1, -1):
                    u[i] = max(dw[i] - cw[i] * u[i + 1], g[i])
            else:
                u[n - 1] = dw[n - 1]
                for i in range(n - 2, -1, -1):
                    u[i] = dw[i] - cw[i] * u[i + 1]

    @njit
    def far_linear(cp, am, r, q, K, tau, S, lower):
        """Far-field value at a boundary node S as A S + B: the asymptotic forward value on
        the in-the-money side (the intrinsic value instead where that is larger, for
        American options), 0 on the other side. Same as ``_far_field_linear``."""
        if cp > 0:
            if lower:
                return 0.0, 0.0
            A = math.exp(-q * tau)
            Bc = -K * math.exp(-r * tau)
            if am and S - K > A * S + Bc:
                return 1.0, -K
            return A, Bc
        if not lower:
            return 0.0, 0.0
        A = -math.exp(-q * tau)
        Bc = K * math.exp(-r * tau)
        if am and K - S > A * S + Bc:
            return -1.0, K
        return A, Bc

    @njit
    def far_field(cp, am, r, q, K, tau, S, lower):
        A, Bc = far_linear(cp, am, r, q, K, tau, S, lower)
        return max(A * S + Bc, 0.0)

    @njit
    def kou_integral(v, S, lam, wu0, wu1, eu, wd0, wd1, ed, tl_f, tl_e, tu_f, tu_e, Alo, Blo, Ahi, Bhi, Iu, out):
        """out = lam * int V(x_i + y) f(y) dy for the Kou density by Toivanen's two O(n)
        recursions (exact for V piecewise linear on the grid, A S + B beyond it)."""
        n = v.shape[0]
        Iu[n - 1] = 0.0
        for i in range(n - 2, -1, -1):
            Iu[i] = wu0[i] * v[i] + wu1[i] * v[i + 1] + eu[i] * Iu[i + 1]
        down = 0.0
        for i in range(n):
            if i > 0:
                down = wd1[i - 1] * v[i] + wd0[i - 1] * v[i - 1] + ed[i - 1] * down
            out[i] = lam * (Iu[i] + down + Blo * tl_f[i] + Alo * S[i] * tl_e[i]
                            + Bhi * tu_f[i] + Ahi * S[i] * tu_e[i])

    @njit
    def march_kou(lo, di, up, Z, Sg, V, g, mode, steps, T, r, q, K, cp, am, lam, p, e1, e2, tol, maxit):
        """All time steps with the Kou jump integral implicit (fixed-point iteration per step);
        grids may be non-uniform. Returns the largest iteration count of a step."""
        B, n = V.shape
        sub = np.empty(n)
        dia = np.empty(n)
        sup = np.empty(n)
        base = np.empty(n)
        rhs = np.empty(n)
        u = np.empty(n)
        w = np.empty(n)
        old = np.empty(n)
        cw = np.empty(n)
        dw = np.empty(n)
        Iu = np.empty(n)
        jv = np.empty(n)
        wu0 = np.zeros(n)
        wu1 = np.zeros(n)
        eu = np.zeros(n)
        wd0 = np.zeros(n)
        wd1 = np.zeros(n)
        ed = np.zeros(n)
        tl_f = np.empty(n)
        tl_e = np.empty(n)
        tu_f = np.empty(n)
        tu_e = np.empty(n)
        worst = 0
        for b in range(B):
            pb, a1, a2 = p[b], e1[b], e2[b]
            for i in range(n - 1):  # cell [x_i, x_i+1]: up-jumps from x_i, down-jumps from x_i+1
                h = Z[b, i + 1] - Z[b, i]
                E1 = math.exp(-a1 * h)
                E2 = math.exp(-a2 * h)
                m0 = pb * -math.expm1(-a1 * h)
                m1 = pb * (-math.expm1(-a1 * h) - a1 * h * E1) / a1
                wu0[i] = m0 - m1 / h
                wu1[i] = m1 / h
                eu[i] = E1
                m0 = (1.0 - pb) * -math.expm1(-a2 * h)
                m1 = (1.0 - pb) * (h + math.expm1(-a2 * h) / a2)
                wd1[i] = m1 / h
                wd0[i] = m0 - m1 / h
                ed[i] = E2
            for i in range(n):
                dl = Z[b, i] - Z[b, 0]
                dh = Z[b, n - 1] - Z[b, i]
                tl_f[i] = (1.0 - pb) * math.exp(-a2 * dl)
                tl_e[i] = (1.0 - pb) * a2 / (a2 + 1.0) * math.exp(-(a2 + 1.0) * dl)
                tu_f[i] = pb * math.exp(-a1 * dh)
                tu_e[i] = pb * a1 / (a1 - 1.0) * math.exp(-(a1 - 1.0) * dh)
            v = V[b]
            S = Sg[b]
            Slo = S[0]
            Shi = S[n - 1]
            old[:] = v
            tau = 0.0
            for k in range(steps.shape[0]):
                im = steps[k, 1] * T[b]
                ex = steps[k, 2] * T[b]
                c0 = steps[k, 3]
                c1 = steps[k, 4]
                for i in range(1, n - 1):
                    base[i] = c0 * v[i] + c1 * old[i]
                if ex != 0.0:
                    Alo, Blo = far_linear(cp, am, r[b], q[b], K[b], tau, Slo, True)
                    Ahi, Bhi = far_linear(cp, am, r[b], q[b], K[b], tau, Shi, False)
                    kou_integral(v, S, lam[b], wu0, wu1, eu, wd0, wd1, ed, tl_f, tl_e, tu_f, tu_e,
                                 Alo, Blo, Ahi, Bhi, Iu, jv)
                    for i in range(1, n - 1):
                        base[i] += ex * (lo[b, i] * v[i - 1] + di[b, i] * v[i] + up[b, i] * v[i + 1] + jv[i])
                tau += steps[k, 0] * T[b]
                Alo, Blo = far_linear(cp, am, r[b], q[b], K[b], tau, Slo, True)
                Ahi, Bhi = far_linear(cp, am, r[b], q[b], K[b], tau, Shi, False)
                for i in range(1, n - 1):
                    sub[i] = -im * lo[b, i]
                    dia[i] = 1.0 - im * di[b, i]
                    sup[i] = -im * up[b, i]
                sub[0] = 0.0
                dia[0] = 1.0
                sup[0] = 0.0
                sub[n - 1] = 0.0
                dia[n - 1] = 1.0
                sup[n - 1] = 0.0
                rhs[0] = max(Alo * Slo + Blo, 0.0)
                rhs[n - 1] = max(Ahi * Shi + Bhi, 0.0)
                u[:] = v
                for it in range(maxit):
                    kou_integral(u, S, lam[b], wu0, wu1, eu, wd0, wd1, ed, tl_f, tl_e, tu_f, tu_e,
                                 Alo, Blo, Ahi, Bhi, Iu, jv)
                    for i in range(1, n - 1):
                        rhs[i] = base[i] + im * jv[i]
                    solve_system(sub, dia, sup, rhs, g[b], mode, w, cw, dw)
                    change = 0.0
                    for i in range(n):
                        change = max(change, abs(w[i] - u[i]))
                        u[i] = w[i]
                    if change <= tol * K[b]:
                        break
                worst = max(worst, it + 1)
                for i in range(n):
                    old[i] = v[i]
                    v[i] = u[i]
        return worst

    @njit
    def march(lo, di, up, V, g, mode, steps, T, r, q, K, cp, am):
        """All time steps of the options of a batch without jumps (Dirichlet ends).

        lo, di, up (B, n): the operator L (rows 0 and n-1 unused); V (B, n): payoff,
        overwritten by the solution at tau = T; g: obstacle, with S at the two end nodes
        in two extra columns; steps: the schedule (see ``_schedule``); the rest per option.
        Step k solves (I - im L) V_new = c0 V + c1 V_old + ex L V.
        """
        B, n = V.shape
        sub = np.empty(n)
        dia = np.empty(n)
        sup = np.empty(n)
        rhs = np.empty(n)
        u = np.empty(n)
        old = np.empty(n)
        cw = np.empty(n)
        dw = np.empty(n)
        for b in range(B):
            v = V[b]
            Slo = g[b, n]  # S at the end nodes
            Shi = g[b, n + 1]
            tau = 0.0
            old[:] = v
            for k in range(steps.shape[0]):
                tau += steps[k, 0] * T[b]
                im = steps[k, 1] * T[b]
                ex = steps[k, 2] * T[b]
                c0 = steps[k, 3]
                c1 = steps[k, 4]
                for i in range(1, n - 1):
                    rhs[i] = c0 * v[i] + c1 * old[i] + ex * (lo[b, i] * v[i - 1] + di[b, i] * v[i]
                                                             + up[b, i] * v[i + 1])
                    sub[i] = -im * lo[b, i]
                    dia[i] = 1.0 - im * di[b, i]
                    sup[i] = -im * up[b, i]
                sub[0] = 0.0
                dia[0] = 1.0
                sup[0] = 0.0
                rhs[0] = far_field(cp, am, r[b], q[b], K[b], tau, Slo, True)
                sub[n - 1] = 0.0
                dia[n - 1] = 1.0
                sup[n - 1] = 0.0
                rhs[n - 1] = far_field(cp, am, r[b], q[b], K[b], tau, Shi, False)
                solve_system(sub, dia, sup, rhs, g[b, :n], mode, u, cw, dw)
                for i in range(n):
                    old[i] = v[i]
                    v[i] = u[i]

    @njit
    def implicit_solve(lo, di, up, im, rhs, g, mode, out):
        """One implicit solve per option: (I - im L) out = rhs on the interior,
        rhs[:, 0] and rhs[:, n-1] the Dirichlet values (jump path)."""
        B, n = rhs.shape
        sub = np.empty(n)
        dia = np.empty(n)
        sup = np.empty(n)
        cw = np.empty(n)
        dw = np.empty(n)
        for b in range(B):
            for i in range(1, n - 1):
                sub[i] = -im[b] * lo[b, i]
                dia[i] = 1.0 - im[b] * di[b, i]
                sup[i] = -im[b] * up[b, i]
            sub[0] = 0.0
            dia[0] = 1.0
            sup[0] = 0.0
            sub[n - 1] = 0.0
            dia[n - 1] = 1.0
            sup[n - 1] = 0.0
            solve_system(sub, dia, sup, rhs[b], g[b], mode, out[b], cw, dw)

    @njit
    def jump_to_aux(V, idx, w, buf):
        """buf[b, :m] = V[b] interpolated linearly at the auxiliary nodes (rest of buf stays 0)."""
        B, m = idx.shape
        for b in range(B):
            for j in range(m):
                k = idx[b, j]
                buf[b, j] = V[b, k] + w[b, j] * (V[b, k + 1] - V[b, k])

    @njit
    def jump_from_aux(conv, buf, back_idx, back_w, w_first, w_last, S, F_lo, G_lo, F_hi, G_hi,
                      A_lo, B_lo, A_hi, B_hi, lam, out):
        """out = lam * (the correlation at the grid nodes, interpolated back from the auxiliary
        grid, with the half hats at its two ends corrected, plus the far-field tails)."""
        B, n = out.shape
        m = w_first.shape[1]
        for b in range(B):
            v0 = buf[b, 0]
            v1 = buf[b, m - 1]
            for i in range(n):
                j = back_idx[b, i]
                ja = conv[b, m - 1 + j] - w_first[b, j] * v0 - w_last[b, j] * v1
                jb = conv[b, m + j] - w_first[b, j + 1] * v0 - w_last[b, j + 1] * v1
                out[b, i] = lam[b] * (ja + back_w[b, i] * (jb - ja)
                                      + A_lo[b] * S[b, i] * G_lo[b, i] + B_lo[b] * F_lo[b, i]
                                      + A_hi[b] * S[b, i] * G_hi[b, i] + B_hi[b] * F_hi[b, i])

    @njit
    def march_bond(lo, di, up, y, mt, steps, T, V):
        """Black-Karasinski bond: L = lo/di/up (all rows, boundary rows one-sided) minus
        exp(y + m) on the diagonal, m = mt[b, k] at time level k (tau_k increasing)."""
        B, n = V.shape
        sub = np.empty(n)
        dia = np.empty(n)
        sup = np.empty(n)
        rhs = np.empty(n)
        cw = np.empty(n)
        dw = np.empty(n)
        u = np.empty(n)
        old = np.empty(n)
        g = np.empty(n)
        ey = np.empty(n)
        for b in range(B):
            v = V[b]
            old[:] = v
            for i in range(n):
                ey[i] = math.exp(y[b, i])
            for k in range(steps.shape[0]):
                im = steps[k, 1] * T[b]
                ex = steps[k, 2] * T[b]
                c0 = steps[k, 3]
                c1 = steps[k, 4]
                e0 = math.exp(mt[b, k])
                e1 = math.exp(mt[b, k + 1])
                for i in range(n):
                    acc = (di[b, i] - ey[i] * e0) * v[i]
                    if i > 0:
                        acc += lo[b, i] * v[i - 1]
                    if i < n - 1:
                        acc += up[b, i] * v[i + 1]
                    rhs[i] = c0 * v[i] + c1 * old[i] + ex * acc
                    sub[i] = -im * lo[b, i]
                    dia[i] = 1.0 - im * (di[b, i] - ey[i] * e1)
                    sup[i] = -im * up[b, i]
                solve_system(sub, dia, sup, rhs, g, PLAIN, u, cw, dw)
                for i in range(n):
                    old[i] = v[i]
                    v[i] = u[i]

    @njit
    def interp_cubic(Z, V, z, out):
        """Cubic Lagrange interpolation of each row (Z increasing) at z[b]."""
        B, n = V.shape
        for b in range(B):
            lo_ = 0
            hi_ = n - 1
            while hi_ - lo_ > 1:  # bisection: Z[lo_] <= z < Z[hi_]
                mid = (lo_ + hi_) // 2
                if Z[b, mid] <= z[b]:
                    lo_ = mid
                else:
                    hi_ = mid
            j = min(max(lo_ - 1, 0), n - 4)
            acc = 0.0
            for p in range(4):
                w = 1.0
                for s in range(4):
                    if s != p:
                        w *= (z[b] - Z[b, j + s]) / (Z[b, j + p] - Z[b, j + s])
                acc += w * V[b, j + p]
            out[b] = acc

    return SimpleNamespace(solve_system=solve_system, march=march, march_kou=march_kou,
                           jump_to_aux=jump_to_aux, jump_from_aux=jump_from_aux, implicit_solve=implicit_solve,
                           march_bond=march_bond, interp_cubic=interp_cubic)


def _warm_up(k: SimpleNamespace) -> None:
    """Compile every kernel for the argument types price() passes (untimed)."""
    n, B = 6, 1
    z = np.tile(np.linspace(0.0, 1.0, n), (B, 1))
    one = np.ones(B)
    V = np.zeros((B, n))
    g = np.zeros((B, n + 2))
    steps = _schedule(2, 1, 1.0, "cn")
    for mode in (PLAIN, EXERCISE_LOW, EXERCISE_HIGH):
        k.march(z, -2 * z, z, V.copy(), g, mode, steps, one, one, one, one, 1.0, False)
        k.implicit_solve(z, -2 * z, z, one, V.copy(), g[:, :n].copy(), mode, V.copy())
        k.march_kou(z, -2 * z, z, z, z + 1, V.copy(), g[:, :n].copy(), mode, steps, one, one, one, one, 1.0,
                    False, one, 0.5 * one, 3 * one, 3 * one, 1e-10, 5)
    k.march_bond(z, -2 * z, z, z, np.zeros((B, 4)), steps, one, V.copy())
    k.interp_cubic(z, V, 0.5 * one, np.empty(B))
    J = _JumpIntegral(_Gaussian(-0.1 * one[:, None], 0.1 * one[:, None]), z, 8)
    J(V, z + 1, one, one, one, one, one, V.copy())


# --------------------------------------------------------------------------- grids and operators


def _operator(Z, a, b, c):
    """Sub/main/super-diagonal of L = a d2/dz2 + b d/dz - c on the grid rows Z (B, n):
    central non-uniform differences, upwinded where the cell Peclet number exceeds
    ``PECLET_MAX``. Rows 0 and n-1 are left to the caller."""
    hm = np.empty_like(Z)
    hp = np.empty_like(Z)
    hm[:, 1:] = np.diff(Z, axis=1)
    hp[:, :-1] = hm[:, 1:]
    hm[:, 0] = hm[:, 1]
    hp[:, -1] = hp[:, -2]
    a = np.broadcast_to(a, Z.shape)
    b = np.broadcast_to(b, Z.shape)
    s = hm + hp
    dlo = 2.0 * a / (hm * s)
    dup = 2.0 * a / (hp * s)
    lo = dlo - b * hp / (hm * s)
    up = dup + b * hm / (hp * s)
    fwd = (lo < 0.0) & (b * hp > PECLET_MAX * 2.0 * a)  # b > 0 dominates: forward difference
    bwd = (up < 0.0) & (-b * hm > PECLET_MAX * 2.0 * a)  # b < 0 dominates: backward difference
    lo = np.where(fwd, dlo, np.where(bwd, dlo - b / hm, lo))
    up = np.where(fwd, dup + b / hp, np.where(bwd, dup, up))
    di = -(lo + up) - c
    return lo, di, up


def _bounds(x0, xK, drift, margin_lo, margin_hi=None):
    """Grid ends covering x0, xK and x0 + drift with the given margins."""
    lo = np.minimum(np.minimum(x0, xK), x0 + drift) - margin_lo
    hi = np.maximum(np.maximum(x0, xK), x0 + drift) + (margin_lo if margin_hi is None else margin_hi)
    return lo, hi


def _stretched_grid(lo, hi, zK, d, n):
    """Grid rows (B, n) from lo to hi with zK a node, z = zK + d sinh(u) on a piecewise
    uniform u grid (one step size each side of zK, matched as closely as the node count
    allows): spacing about d du near zK, growing exponentially away from it. d = inf
    gives a uniform grid (zK still a node)."""
    d = np.broadcast_to(np.asarray(d, dtype=np.float64), zK.shape)
    uniform = ~np.isfinite(d)
    dd = np.where(uniform, 1.0, d)
    ul = np.where(uniform, zK - lo, np.arcsinh((zK - lo) / dd))
    uh = np.where(uniform, hi - zK, np.arcsinh((hi - zK) / dd))
    nl = np.clip(np.rint((n - 1) * ul / (ul + uh)), 2, n - 3)
    nr = (n - 1) - nl
    j = np.arange(n)[None, :] - nl[:, None]
    u = np.where(j <= 0, j * (ul / nl)[:, None], j * (uh / nr)[:, None])
    z = np.where(uniform[:, None], zK[:, None] + u, zK[:, None] + dd[:, None] * np.sinh(u))
    z[:, 0], z[:, -1] = lo, hi
    return z


def _schedule(nt: int, rannacher: int, grading: float, scheme: str) -> np.ndarray:
    """The time steps, one row each: (dt, im, ex, c0, c1), dt/im/ex as fractions of T.

    A step solves (I - im L) V_new = c0 V + c1 V_old + ex L V. Levels tau_k / T =
    (k / nt)^grading; the first ceil(rannacher / 2) steps are split in halves, of which
    the first ``rannacher`` are implicit Euler (im = dt). The others are Crank-Nicolson
    (im = ex = dt / 2) or, for ``scheme = "bdf2"``, variable-step BDF2 with w = dt / dt_old:
    im = dt (1 + w) / (1 + 2w), c0 = (1 + w)^2 / (1 + 2w), c1 = -w^2 / (1 + 2w).
    """
    levels = (np.arange(nt + 1) / nt) ** grading
    dts = np.diff(levels)
    split = (rannacher + 1) // 2
    dts = np.concatenate([np.repeat(dts[:split] / 2, 2), dts[split:]])
    rows = np.zeros((dts.size, 5))
    rows[:, 0] = dts
    rows[:, 3] = 1.0
    for k, dt in enumerate(dts):
        if k < rannacher:
            rows[k, 1] = dt
        elif scheme == "bdf2" and k > 0:
            w = dt / dts[k - 1]
            rows[k, 1] = dt * (1 + w) / (1 + 2 * w)
            rows[k, 3] = (1 + w) ** 2 / (1 + 2 * w)
            rows[k, 4] = -w * w / (1 + 2 * w)
        else:
            rows[k, 1] = rows[k, 2] = dt / 2
    return rows


# --------------------------------------------------------------------------- jump densities


class _Gaussian:
    """Merton: log-jump N(mu_j, s^2). Cell moments and tail integrals, (B, 1) parameters."""

    def __init__(self, mu, s):
        self.mu = mu
        self.s = np.maximum(s, 1e-300)

    def cells(self, a, h):
        """m0 = int_a^{a+h} f, m1 = int_a^{a+h} (y - a) f."""
        from scipy.special import ndtr

        za = (a - self.mu) / self.s
        zb = (a + h - self.mu) / self.s
        m0 = ndtr(zb) - ndtr(za)
        dphi = (np.exp(-0.5 * zb * zb) - np.exp(-0.5 * za * za)) / math.sqrt(2.0 * math.pi)
        return m0, (self.mu - a) * m0 - self.s * dphi

    def tails(self, low, up):
        """int_{-inf}^{low} f, int_{-inf}^{low} e^y f, int_{up}^{inf} f, int_{up}^{inf} e^y f."""
        from scipy.special import ndtr

        mu, s = self.mu, self.s
        e = np.exp(mu + 0.5 * s * s)
        return (ndtr((low - mu) / s), e * ndtr((low - mu - s * s) / s),
                ndtr((mu - up) / s), e * ndtr((mu + s * s - up) / s))


class _JumpIntegral:
    """lam-free jump integral int V(x_i + y) f(y) dy at the nodes x_i of grids Z (B, n).

    Following d'Halluin, Forsyth & Vetzal (2005), V is interpolated linearly onto an
    auxiliary uniform grid of ``n_aux`` nodes spanning the same interval; there the
    integral of its piecewise-linear interpolant against the density is exact (hat
    weights from the density's cell moments), applied as a correlation by FFT, and
    interpolated linearly back to the nodes. Beyond the grid V = A S + B, integrated
    in closed form at the nodes themselves."""

    def __init__(self, density, Z, n_aux):
        from scipy import fft

        self.fft = fft
        B, n = Z.shape
        m = self.m = n_aux
        lo, hi = Z[:, 0], Z[:, -1]
        h = ((hi - lo) / (m - 1))[:, None]
        X = lo[:, None] + h * np.arange(m)[None, :]
        X[:, -1] = hi
        # grid -> auxiliary grid: row-wise linear interpolation as gather indices and weights
        idx = np.empty((B, m), dtype=np.intp)
        for b in range(B):
            idx[b] = np.clip(np.searchsorted(Z[b], X[b], side="right") - 1, 0, n - 2)
        z0 = np.take_along_axis(Z, idx, axis=1)
        z1 = np.take_along_axis(Z, idx + 1, axis=1)
        self.to_idx, self.to_w = idx, (X - z0) / (z1 - z0)
        # auxiliary grid -> grid
        back = np.clip(np.floor((Z - lo[:, None]) / h).astype(np.intp), 0, m - 2)
        self.back_idx = back
        self.back_w = (Z - np.take_along_axis(X, back, axis=1)) / h
        k = np.arange(-m, m)[None, :]  # cells [k h, (k+1) h]
        m0, m1 = density.cells(k * h, h)
        left = m1 / h  # left half-hat of node k+1 over cell k
        right = m0 - left  # right half-hat of node k over cell k
        w = left[:, :-1] + right[:, 1:]  # full hats at offsets -(m-1)..(m-1)
        self.N = fft.next_fast_len(2 * m - 1, real=True)
        u = np.zeros((B, self.N))
        u[:, : 2 * m - 1] = w[:, ::-1]
        self.W = fft.rfft(u, axis=1)
        i = np.arange(m)
        self.w_first = left[:, m - 1 - i]  # left half of node 0's hat, seen from aux node i
        self.w_last = right[:, 2 * m - 1 - i]  # right half of node m-1's hat
        self.tails = tuple(np.ascontiguousarray(np.broadcast_to(t, Z.shape))
                           for t in density.tails(lo[:, None] - Z, hi[:, None] - Z))
        self.w_first = np.ascontiguousarray(self.w_first)
        self.w_last = np.ascontiguousarray(self.w_last)
        self.buf = None

    def __call__(self, V, S, A_lo, B_lo, A_hi, B_hi, lam, out):
        """out = lam * integral, at all nodes."""
        f = self.fft
        k = _kernels()
        if self.buf is None:
            self.buf = np.zeros((V.shape[0], self.N))
        k.jump_to_aux(V, self.to_idx, self.to_w, self.buf)
        conv = f.irfft(f.rfft(self.buf, axis=1) * self.W, n=self.N, axis=1)
        k.jump_from_aux(conv, self.buf, self.back_idx, self.back_w, self.w_first, self.w_last, S,
                        *self.tails, A_lo, B_lo, A_hi, B_hi, lam, out)
        return out


def _far_field_linear(cp, am, r, q, K, tau, S_lo, S_hi):
    """Far-field values as A S + B at both ends, per option: (A_lo, B_lo, A_hi, B_hi);
    the NumPy twin of the kernels' ``far_linear``."""
    dq, dr = np.exp(-q * tau), np.exp(-r * tau)
    zero = np.zeros_like(K)
    if cp > 0:
        A, Bc = dq, -K * dr
        if am:
            use = (S_hi - K) > (A * S_hi + Bc)
            A, Bc = np.where(use, 1.0, A), np.where(use, -K, Bc)
        return zero, zero, A, Bc
    A, Bc = -dq, K * dr
    if am:
        use = (K - S_lo) > (A * S_lo + Bc)
        A, Bc = np.where(use, -1.0, A), np.where(use, K, Bc)
    return A, Bc, zero, zero


# --------------------------------------------------------------------------- the pricer


class FiniteDifference(Pricer):
    name = "fd"
    version = "1"
    description = ("Finite differences: Crank-Nicolson with Rannacher start-up, Brennan-Schwartz for "
                   "American exercise, implicit jump integrals by fixed-point iteration (FFT for Merton, "
                   "Toivanen recursions for Kou)")
    devices = ("cpu",)
    supports = {
        "black_scholes": OPTIONS,
        "cev": OPTIONS,
        "sinh_lv": OPTIONS,
        "merton": OPTIONS,
        "kou": OPTIONS,
        "black_karasinski": ("zero_coupon_bond",),
    }
    settings = {
        "nx": Setting(800, int, "space grid nodes per option", min=16, max=100_000),
        "nt": Setting(200, int, "time steps (the first ceil(rannacher/2) each split into two implicit "
                                    "halves)", min=4, max=100_000),
        "x_width": Setting(6.0, float, "grid half-width beyond spot/strike in standard deviations of the "
                                       "state at maturity", min=3.0, max=30.0),
        "stretch": Setting(2.0, float, "node concentration at the strike: sinh stretching length sd/stretch "
                                       "(2: spacing there ~4x finer than uniform); 0 = uniform; options only", min=0.0,
                           max=20.0),
        "t_grading": Setting(2.0, float, "time levels tau_k = T (k/nt)^t_grading: > 1 refines near expiry; "
                                               "options only (bonds: uniform)",
                             min=1.0, max=4.0),
        "scheme": Setting("cn", str, "time stepping after the implicit start-up: cn (Crank-Nicolson) or "
                                     "bdf2 (variable-step BDF2)", choices=("cn", "bdf2")),
        "rannacher": Setting(4, int, "fully implicit half steps before Crank-Nicolson (0 = pure CN)",
                             min=0, max=16),
        "jump_tol": Setting(1e-11, float, "fixed-point tolerance of the implicit jump integral, "
                                          "relative to the strike", min=1e-15, max=1e-3),
        "max_jump_iter": Setting(50, int, "fixed-point iterations per time step at most", min=1, max=1000),
    }

    def __init__(self, **settings):
        super().__init__(**settings)
        # the first ceil(rannacher / 2) time steps are split into implicit halves: there must be as many
        if (self.rannacher + 1) // 2 > self.nt:
            raise SettingError(f"pricer 'fd': setting 'rannacher' ({self.rannacher}) needs nt >= "
                               f"{(self.rannacher + 1) // 2} ({self.nt} given)", "rannacher")

    def prepare(self, model, product, params, device="cpu", array_backend=None):
        self.shape_ = np.shape(params[next(iter(params))])
        flat = {k: np.ravel(v) for k, v in params.items()}
        inputs = super().prepare(model, product, flat, device, array_backend="numpy")
        self.kernels_ = _kernels()
        _warm_up(self.kernels_)
        # the time levels depend on the settings only
        self.steps_ = _schedule(self.nt, self.rannacher, self.t_grading, self.scheme)
        return inputs

    # ------------------------------------------------------------------ dispatch
    def price(self, inputs):
        p = {k: np.array(v, dtype=np.float64).ravel() for k, v in inputs.items()}  # writable copies
        size = p[next(iter(p))].shape[0]
        out = np.full(size, np.nan)
        model = self.model_.name
        solver = self._bond if model == "black_karasinski" else self._option
        for start in range(0, size, CHUNK):
            sl = slice(start, start + CHUNK)
            chunk = {k: np.ascontiguousarray(v[sl]) for k, v in p.items()}
            with np.errstate(all="ignore"):
                out[sl] = solver(model, chunk)
        limits = no_arbitrage.no_arbitrage_bounds(model, self.product_, p) if size else None
        out, _, reason = no_arbitrage.check_bounds(out, limits, BOUND_TOL, out_of_bounds=OUT_OF_BOUNDS,
                                                   not_finite=NOT_PRICED)
        return PriceResult(price=out.reshape(self.shape_),
                           reason=None if reason is None else reason.reshape(self.shape_))

    # ------------------------------------------------------------------ options
    def _option(self, model, p):
        n = self.nx
        B = p["S"].shape[0]
        S, K, T = p["S"], p["K"], p["T"]
        r = p.get("r", np.zeros(B))
        q = p.get("q", np.zeros(B))
        r = np.broadcast_to(r, (B,)).astype(np.float64)
        q = np.broadcast_to(q, (B,)).astype(np.float64)
        product = self.product_
        cp = 1.0 if product.endswith("call") else -1.0
        am = product.startswith("american")
        # A European call is the put plus S e^{-qT} - K e^{-rT}: on the log grid the call's
        # payoff grows like e^x towards the top, and its discretisation error there leaks back
        # to the spot at high variance (sigma^2 T of order 1: 14x worse on Merton calls), while
        # the put's payoff is bounded by K.
        parity = cp > 0 and not am
        if parity:
            cp = -1.0
        ok = np.ones(B, dtype=bool)
        jump = None
        sqT = np.sqrt(T)
        w = self.x_width
        if model in ("black_scholes", "merton", "kou"):
            sigma = p["sigma"]
            lam = p.get("lam", np.zeros(B))
            if model == "merton":
                mj, sj = p["mu_j"], p["sigma_j"]
                zeta = np.expm1(mj + 0.5 * sj * sj)
                m2 = mj * mj + sj * sj
                density = _Gaussian(mj[:, None], sj[:, None])
            elif model == "kou":
                pu, e1, e2 = p["p"], p["eta1"], p["eta2"]
                zeta = pu * e1 / (e1 - 1) + (1 - pu) * e2 / (e2 + 1) - 1
                m2 = 2 * pu / e1 ** 2 + 2 * (1 - pu) / e2 ** 2
                ok &= e1 > 1.0
            else:
                zeta = m2 = np.zeros(B)
            drift = r - q - 0.5 * sigma ** 2 - lam * zeta
            sd = np.maximum(np.sqrt(sigma ** 2 + lam * m2) * sqT, 1e-3)
            z0, zK = np.log(S), np.log(K)
            m_lo = m_hi = w * sd
            if model == "kou":
                # exponential jump tails reach far: margins where lam T P(jump beyond) = 1e-6
                lt = lam * T
                m_hi = np.maximum(m_hi, np.log(np.maximum(lt * pu * 1e6, 1.0)) / e1)
                m_lo = np.maximum(m_lo, np.log(np.maximum(lt * (1 - pu) * 1e6, 1.0)) / e2)
            lo, hi = _bounds(z0, zK, drift * T, m_lo, m_hi)
            Z = _stretched_grid(lo, hi, zK, sd / self.stretch if self.stretch > 0 else np.inf, n)
            Sg = np.exp(Z)
            lo, di, up = _operator(Z, (0.5 * sigma ** 2)[:, None], drift[:, None], (r + lam)[:, None])
            if model == "merton":
                jump = (_JumpIntegral(density, Z, 2 * n), lam)
        elif model == "sinh_lv":
            lam = p["lam"]
            c = np.sqrt(2.0 * np.maximum(r, 0.0))
            ok &= r >= 0.0

            def to_z(x):
                return np.where(c > 0, np.arcsinh(c * x / lam) / np.where(c > 0, c, 1.0), x / lam)

            z0, zK = to_z(S), to_z(K)
            lo, hi = _bounds(z0, zK, np.zeros(B), w * sqT)
            Z = _stretched_grid(lo, hi, zK, sqT / self.stretch if self.stretch > 0 else np.inf, n)
            cc = c[:, None]
            Sg = np.where(cc > 0, lam[:, None] * np.sinh(cc * Z) / np.where(cc > 0, cc, 1.0), lam[:, None] * Z)
            lo, di, up = _operator(Z, 0.5, 0.0, r[:, None])
        elif model == "cev":
            sigma, beta = p["sigma"], p["beta"]
            ok &= beta <= 1.0
            vol = sigma * np.minimum(S, K) ** (beta - 1.0)  # the larger local log-vol of the two
            sd = np.maximum(vol * sqT, 1e-3)
            Smax = np.maximum(S, K) * np.exp(np.minimum(w * sd + np.maximum((r - q) * T, 0.0), 12.0))
            # S grid from 0 (absorbing) to Smax, sinh-stretched around K at the log-scale sd
            d = K * np.minimum(sd, 1.0) / max(self.stretch, 0.25)
            Z = _stretched_grid(np.zeros(B), Smax, K, d, n)
            Sg = Z
            z0 = S
            lo, di, up = _operator(Z, 0.5 * sigma[:, None] ** 2 * Z ** (2 * beta[:, None]), ((r - q)[:, None] * Z),
                                   r[:, None])
        else:  # pragma: no cover - guarded by supports
            return np.full(B, np.nan)

        payoff = np.maximum(cp * (Sg - K[:, None]), 0.0)
        mode = (EXERCISE_HIGH if cp > 0 else EXERCISE_LOW) if am else PLAIN
        steps = self.steps_
        V = payoff.copy()
        kern = self.kernels_
        if model == "kou":
            kern.march_kou(lo, di, up, Z, Sg, V, payoff, mode, steps, T, r, q, K, cp, am, lam, pu, e1, e2,
                           self.jump_tol, self.max_jump_iter)
        elif jump is None:
            g = np.concatenate([payoff, Sg[:, :1], Sg[:, -1:]], axis=1)
            kern.march(lo, di, up, V, g, mode, steps, T, r, q, K, cp, am)
        else:
            V = self._march_jumps(lo, di, up, V, payoff, mode, steps, T, r, q, K, cp, am, Sg, *jump)
        out = np.empty(B)
        kern.interp_cubic(Z, V, z0, out)
        if parity:
            out += S * np.exp(-q * T) - K * np.exp(-r * T)
        out[~ok] = np.nan
        return out

    def _march_jumps(self, lo, di, up, V, g, mode, steps, T, r, q, K, cp, am, Sg, J, lam):
        """Time loop with the jump integral implicit, by fixed-point iteration per step:
        (I - im L) V_new = c0 V + c1 V_old + ex (L V + J V) + im J V_new, J iterated."""
        kern = self.kernels_
        S_lo, S_hi = Sg[:, 0], Sg[:, -1]
        tol = self.jump_tol * K[:, None]
        rhs = np.empty_like(V)
        jv = np.empty_like(V)
        u = np.empty_like(V)
        new = np.empty_like(V)
        tau = np.zeros_like(T)
        far = _far_field_linear(cp, am, r, q, K, tau, S_lo, S_hi)
        old = V
        prev_fr = None
        for fr, im_f, ex_f, c0, c1 in steps:
            tau_next = tau + fr * T
            im_flat = im_f * T
            im = im_flat[:, None]
            base = c0 * V
            if c1 != 0.0:
                base += c1 * old
            if ex_f != 0.0:
                LV = di * V
                LV[:, 1:-1] += lo[:, 1:-1] * V[:, :-2] + up[:, 1:-1] * V[:, 2:]
                base += (ex_f * T)[:, None] * (LV + J(V, Sg, *far, lam, jv))
            far = _far_field_linear(cp, am, r, q, K, tau_next, S_lo, S_hi)
            bc_lo = np.maximum(far[0] * S_lo + far[1], 0.0)
            bc_hi = np.maximum(far[2] * S_hi + far[3], 0.0)
            # first guess: linear extrapolation in time
            u[:] = V if prev_fr is None else V + (fr / prev_fr) * (V - old)
            for _ in range(self.max_jump_iter):
                np.multiply(im, J(u, Sg, *far, lam, jv), out=rhs)
                rhs += base
                rhs[:, 0] = bc_lo
                rhs[:, -1] = bc_hi
                kern.implicit_solve(lo, di, up, im_flat, rhs, g, mode, new)
                change = np.max(np.abs(new - u) - tol)
                u, new = new, u
                if change <= 0.0:
                    break
            old, V = V, u.copy()
            tau, prev_fr = tau_next, fr
        return V

    # ------------------------------------------------------------------ bonds
    def _bond(self, model, p):
        n = self.nx | 1  # odd: y = 0 is the middle node
        r0, alpha, sigma, T = p["r0"], p["alpha"], p["sigma"], p["T"]
        mu, amp = p["mu"], p.get("mu_sin", np.zeros_like(r0))
        B = r0.shape[0]
        sd = sigma * np.sqrt(-np.expm1(-2.0 * alpha * T) / (2.0 * alpha))
        half = np.maximum(self.x_width * sd, 1e-8)
        j0 = (n - 1) // 2
        h = half / j0
        y = (np.arange(n)[None, :] - j0) * h[:, None]
        lo, di, up = _operator(y, (0.5 * sigma ** 2)[:, None], -alpha[:, None] * y, 0.0)
        # boundary rows: no diffusion, inward drift upwinded (no boundary condition needed)
        b0 = -alpha * y[:, 0]
        lo[:, 0], di[:, 0], up[:, 0] = 0.0, -b0 / h, b0 / h
        b1 = -alpha * y[:, -1]
        lo[:, -1], di[:, -1], up[:, -1] = -b1 / h, b1 / h, 0.0
        # uniform steps: the payoff is smooth; the level's ln sin t singularity sits at tau = T
        steps = _schedule(self.nt, self.rannacher, 1.0, self.scheme)
        tau = np.concatenate([[0.0], np.cumsum(steps[:, 0])])
        tau[-1] = 1.0
        t = T[:, None] * (1.0 - tau[None, ::-1])  # increasing calendar times T - tau (reversed)
        m = log_rate_mean(t, r0, alpha, mu, amp)[:, ::-1]  # m at tau_0 = 0, tau_1, ...
        V = np.ones((B, n))
        self.kernels_.march_bond(lo, di, up, y, np.ascontiguousarray(m), steps, T, V)
        return V[:, j0]


@hookimpl
def register_pricers(register):
    register(FiniteDifference)
