"""Kou (2002) double-exponential jump diffusion.

    dS/S- = (r - q - lam zeta) dt + sigma dW + (exp(Y) - 1) dN,

N Poisson with intensity lam and log jumps Y with density
p eta1 exp(-eta1 y) (y > 0) and (1 - p) eta2 exp(eta2 y) (y < 0); eta1 > 1 so
that E[exp(Y)] is finite, and zeta = E[exp(Y)] - 1
= p eta1/(eta1 - 1) + (1 - p) eta2/(eta2 + 1) - 1 (REFERENCES.md). The
risk-neutral drift of ln S is r - q - sigma^2/2 - lam zeta. X = ln(S_T/S_0)
has the cumulant exponent (E[exp(z X)] = exp(T kappa(z)), -eta2 < Re z < eta1)

    kappa(z) = z (r - q - sigma^2/2 - lam zeta) + sigma^2 z^2/2
               + lam (p eta1/(eta1 - z) + (1 - p) eta2/(eta2 + z) - 1),

phi(u) = exp(T kappa(i u)), and cumulants (lam T E[Y^n] for the jumps,
E[Y^n] = n! (p/eta1^n + (-1)^n (1 - p)/eta2^n))

    c1 = T (r - q - sigma^2/2 - lam zeta + lam (p/eta1 - (1 - p)/eta2)),
    c2 = T (sigma^2 + 2 lam (p/eta1^2 + (1 - p)/eta2^2)),
    c4 = 24 T lam (p/eta1^4 + (1 - p)/eta2^4).

sigma > 0 (Kou's assumption; the Fourier integral below needs the Gaussian
decay it gives).

European prices (:func:`price`, used by the ``closed_form`` pricer): an exact
Fourier integral evaluated to about 1e-13 relative accuracy, not Kou's
Hh-function series (whose exp((sigma eta)^2 T/2) factors overflow or cancel
for large eta). With k = ln(K/S), D = exp(-rT) and z = w + i u on a line
inside the strip of analyticity,

    price = S D / pi * int_0^inf Re[ exp(T kappa(z) - (z - 1) k) / (z (z - 1)) ] du

is the call for 1 < w < eta1 and the put for -eta2 < w < 0 (Carr & Madan
1999 with damping w - 1; Lord & Kahl 2007 for the choice of w). The
out-of-the-money option of each pair is integrated (no cancellation, so
small prices keep their relative accuracy) and the other follows by
put-call parity. Per option, w minimises the integrand's modulus at u = 0
(a convex function of w), the integral is truncated where the Gaussian
factor exp(-sigma^2 T u^2/2) falls below e^-45 (the modulus is bounded by
that factor times its value at u = 0), and [0, U] is integrated by a
globally adaptive 15-point Gauss-Kronrod rule (QUADPACK's QAG error
estimate) to max(1e-13 |I|, 1e-15 max(S, K)). A point whose integral does
not converge within 4000 subintervals gives NaN (seen only for absurd
parameters such as eta1 - 1 < 0.01 with a large lam, where E[exp(Y)] is in
the hundreds). The quadrature is a numba kernel, compiled on first use
(a few seconds). Cost: about 20 us per option for typical parameters;
it grows like 1/(sigma sqrt(T)) (the integration range) times
|ln(K/S) - drift T| (the oscillation), to a few ms for sigma sqrt(T) < 0.01.
"""

from __future__ import annotations

import functools
import cmath
import math

import numpy as np

from bench import arrays, hookimpl
from bench.methods import Model, OPTION_PARAMS, Param

__version__ = "1"

EPSREL = 1e-13
EPSABS = 1e-15  # in units of max(S, K)
LIMIT = 4000  # subintervals per option
GAUSS_CUTOFF = 45.0  # integrate while sigma^2 T u^2 / 2 < this
W_MAX = 1e4  # |damping| cap when no jump pole bounds the strip


class Kou(Model):
    name = "kou"
    version = "1"
    homogeneous = True  # V(a S, a K) = a V(S, K)
    description = "Kou double-exponential jump diffusion"
    params = {
        **OPTION_PARAMS,
        "sigma": Param("diffusion volatility", lower=0.0, lower_open=True),
        "lam": Param("jump intensity (jumps per year)", lower=0.0),
        "p": Param("probability that a jump is up", lower=0.0, upper=1.0),
        "eta1": Param("rate of the up-jump exponential; > 1 so that E[exp(Y)] is finite (mean up jump "
                      "1/eta1 < 1)", lower=1.0, lower_open=True),
        "eta2": Param("rate of the down-jump exponential (mean down jump 1/eta2)", lower=0.0, lower_open=True),
    }
    products = ("european_call", "european_put", "american_put", "american_call")

    def characteristic_function(self, u, params):
        """E[exp(i u X)], X = ln(S_T/S_0); ``u`` real or complex, NumPy or torch."""
        T, r, q, sigma = params["T"], params["r"], params["q"], params["sigma"]
        lam, p, eta1, eta2 = params["lam"], params["p"], params["eta1"], params["eta2"]
        xp = arrays.namespace(T).lib
        var = sigma * sigma
        zeta = jump_compensator(p, eta1, eta2)
        iu = 1j * u
        jumps = lam * (p * eta1 / (eta1 - iu) + (1.0 - p) * eta2 / (eta2 + iu) - 1.0)
        return xp.exp(T * (iu * (r - q - 0.5 * var - lam * zeta) + 0.5 * var * iu * iu + jumps))

    def cumulants(self, params):
        T, r, q, sigma = params["T"], params["r"], params["q"], params["sigma"]
        lam, p, eta1, eta2 = params["lam"], params["p"], params["eta1"], params["eta2"]
        var = sigma * sigma
        zeta = jump_compensator(p, eta1, eta2)
        c1 = T * (r - q - 0.5 * var - lam * zeta + lam * (p / eta1 - (1.0 - p) / eta2))
        c2 = T * (var + 2.0 * lam * (p / eta1**2 + (1.0 - p) / eta2**2))
        c4 = 24.0 * T * lam * (p / eta1**4 + (1.0 - p) / eta2**4)
        return c1, c2, c4


def jump_compensator(p, eta1, eta2):
    """zeta = E[exp(Y)] - 1 = p eta1/(eta1 - 1) + (1 - p) eta2/(eta2 + 1) - 1 for Kou's double-exponential
    log jump Y, elementwise (plain arithmetic: NumPy arrays or scalars, torch tensors, and inside numba
    kernels); the drift of ln S carries -lam zeta."""
    return p * eta1 / (eta1 - 1.0) + (1.0 - p) * eta2 / (eta2 + 1.0) - 1.0


def price(S, K, T, r, q, sigma, lam, p, eta1, eta2, theta):
    """European price of a batch (NumPy in, NumPy out); theta = +1 for calls, -1 for puts."""
    args = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (S, K, T, r, q, sigma, lam, p, eta1,
                                                                           eta2)))
    shape = args[0].shape
    flat = [np.array(a.ravel(), dtype=np.float64) for a in args]  # fresh writeable copies: one compiled type
    out = np.empty(flat[0].shape)
    kernel()(*flat, float(theta), out)
    return out.reshape(shape)


# --------------------------------------------------------------------------- the compiled quadrature

# QUADPACK qk15: Kronrod abscissae (descending, last = centre) and weights; 7-point Gauss weights
_XGK = np.array([0.991455371120812639206854697526329, 0.949107912342758524526189684047851,
                 0.864864423359769072789712788640926, 0.741531185599394439863864773280788,
                 0.586087235467691130294144845693013, 0.405845151377397166906606412076961,
                 0.207784955007898467600689403773245, 0.0])
_WGK = np.array([0.022935322010529224963732008058970, 0.063092092629978553290700663189204,
                 0.104790010322250183839876322541518, 0.140653259715525918745189590510238,
                 0.169004726639267902826583426598550, 0.190350578064785409913256402421014,
                 0.204432940075298892414161999234649, 0.209482141084727828012999174891714])
_WG = np.array([0.129484966168869693270611432679082, 0.279705391489276667901467771423780,
                0.381830050505118944950369775488975, 0.417959183673469387755102040816327])


@functools.lru_cache(maxsize=1)
def kernel():
    """The numba kernel ``kernel(S, K, T, r, q, sigma, lam, p, eta1, eta2, theta, out)`` (compiled once)."""
    import numba

    xgk, wgk, wg = _XGK, _WGK, _WG
    eps = np.finfo(np.float64).eps
    limit = LIMIT
    compensator = numba.njit(cache=False, nogil=True)(jump_compensator)

    @numba.njit(cache=False, nogil=True)
    def integrand(u, w, T, b, s2, lam, p, eta1, eta2, k):
        z = complex(w, u)
        kap = z * b + 0.5 * s2 * z * z + lam * (p * eta1 / (eta1 - z) + (1.0 - p) * eta2 / (eta2 + z) - 1.0)
        return (cmath.exp(T * kap - (z - 1.0) * k) / (z * (z - 1.0))).real

    @numba.njit(cache=False, nogil=True)
    def log_g0(w, T, b, s2, lam, p, eta1, eta2, k):
        """log of the integrand at u = 0 (real, positive there)."""
        kap = w * b + 0.5 * s2 * w * w + lam * (p * eta1 / (eta1 - w) + (1.0 - p) * eta2 / (eta2 + w) - 1.0)
        return T * kap - (w - 1.0) * k - math.log(abs(w * (w - 1.0)))

    @numba.njit(cache=False, nogil=True)
    def qk15(a, bb, w, T, b, s2, lam, p, eta1, eta2, k, out):
        centr = 0.5 * (a + bb)
        hl = 0.5 * (bb - a)
        fv1 = np.empty(7)
        fv2 = np.empty(7)
        fc = integrand(centr, w, T, b, s2, lam, p, eta1, eta2, k)
        resg = fc * wg[3]
        resk = fc * wgk[7]
        resabs = abs(resk)
        for j in range(3):
            jt = 2 * j + 1
            x = hl * xgk[jt]
            f1 = integrand(centr - x, w, T, b, s2, lam, p, eta1, eta2, k)
            f2 = integrand(centr + x, w, T, b, s2, lam, p, eta1, eta2, k)
            fv1[jt] = f1
            fv2[jt] = f2
            resg += wg[j] * (f1 + f2)
            resk += wgk[jt] * (f1 + f2)
            resabs += wgk[jt] * (abs(f1) + abs(f2))
        for j in range(4):
            jt = 2 * j
            x = hl * xgk[jt]
            f1 = integrand(centr - x, w, T, b, s2, lam, p, eta1, eta2, k)
            f2 = integrand(centr + x, w, T, b, s2, lam, p, eta1, eta2, k)
            fv1[jt] = f1
            fv2[jt] = f2
            resk += wgk[jt] * (f1 + f2)
            resabs += wgk[jt] * (abs(f1) + abs(f2))
        reskh = 0.5 * resk
        resasc = wgk[7] * abs(fc - reskh)
        for j in range(7):
            resasc += wgk[j] * (abs(fv1[j] - reskh) + abs(fv2[j] - reskh))
        result = resk * hl
        resabs *= abs(hl)
        resasc *= abs(hl)
        err = abs((resk - resg) * hl)
        if resasc != 0.0 and err != 0.0:
            err = resasc * min(1.0, (200.0 * err / resasc) ** 1.5)
        floor = 50.0 * eps * resabs
        out[0] = result
        out[1] = max(err, floor)
        out[2] = 1.0 if err > floor else 0.0  # can splitting still reduce the error?

    @numba.njit(cache=False, nogil=True)
    def kern(S, K, T, r, q, sigma, lam, p, eta1, eta2, theta, out):
        lo_a = np.empty(limit)
        hi_a = np.empty(limit)
        res_a = np.empty(limit)
        err_a = np.empty(limit)
        red_a = np.empty(limit)
        tmp = np.empty(3)
        for i in range(S.shape[0]):
            s_, k_, t_, r_, q_ = S[i], K[i], T[i], r[i], q[i]
            sg, lm, pp, e1, e2 = sigma[i], lam[i], p[i], eta1[i], eta2[i]
            if not (s_ > 0.0 and k_ > 0.0 and t_ > 0.0 and sg > 0.0 and lm >= 0.0 and 0.0 <= pp <= 1.0
                    and e1 > 1.0 and e2 > 0.0 and math.isfinite(s_ + k_ + t_ + r_ + q_ + sg + lm + e1 + e2)):
                out[i] = np.nan
                continue
            s2 = sg * sg
            zeta = compensator(pp, e1, e2)
            b = r_ - q_ - 0.5 * s2 - lm * zeta
            k = math.log(k_ / s_)
            disc = math.exp(-r_ * t_)
            # integrate the out-of-the-money side: the call when K > F, the put otherwise
            call_side = k > (r_ - q_) * t_
            if call_side:
                lo = 1.0
                hi = e1 if lm * pp > 0.0 else 1.0 + W_MAX
            else:
                lo = -e2 if lm * (1.0 - pp) > 0.0 else -W_MAX
                hi = 0.0
            # w minimising the (convex) log modulus at u = 0, by golden section, away from the poles
            margin = 1e-9 * (hi - lo)
            a_, b_ = lo + margin, hi - margin
            gr = 0.5 * (math.sqrt(5.0) - 1.0)
            c_ = b_ - gr * (b_ - a_)
            d_ = a_ + gr * (b_ - a_)
            fcv = log_g0(c_, t_, b, s2, lm, pp, e1, e2, k)
            fdv = log_g0(d_, t_, b, s2, lm, pp, e1, e2, k)
            for _ in range(80):
                if fcv < fdv:
                    b_, d_, fdv = d_, c_, fcv
                    c_ = b_ - gr * (b_ - a_)
                    fcv = log_g0(c_, t_, b, s2, lm, pp, e1, e2, k)
                else:
                    a_, c_, fcv = c_, d_, fdv
                    d_ = a_ + gr * (b_ - a_)
                    fdv = log_g0(d_, t_, b, s2, lm, pp, e1, e2, k)
            w = 0.5 * (a_ + b_)
            upper = math.sqrt(2.0 * GAUSS_CUTOFF / (s2 * t_))
            # start with about one subinterval per oscillation of the integrand
            freq = abs(t_ * b - k) + abs((2.0 * w - 1.0) / (w * (w - 1.0)))
            n = 1 + int(upper * freq / (2.0 * math.pi))
            n = min(max(n, 4), limit // 4)
            for j in range(n):
                lo_a[j] = upper * j / n
                hi_a[j] = upper * (j + 1) / n
                qk15(lo_a[j], hi_a[j], w, t_, b, s2, lm, pp, e1, e2, k, tmp)
                res_a[j] = tmp[0]
                err_a[j] = tmp[1]
                red_a[j] = tmp[2]
            epsabs = EPSABS * max(1.0, k_ / s_) * math.pi / disc
            total = 0.0
            error = 0.0
            while True:
                total = 0.0
                error = 0.0
                worst = -1
                worst_err = 0.0
                for j in range(n):
                    total += res_a[j]
                    error += err_a[j]
                    if red_a[j] > 0.0 and err_a[j] > worst_err:
                        worst_err = err_a[j]
                        worst = j
                if error <= max(epsabs, EPSREL * abs(total)) or worst < 0 or n >= limit:
                    break
                mid = 0.5 * (lo_a[worst] + hi_a[worst])
                lo_a[n] = mid
                hi_a[n] = hi_a[worst]
                hi_a[worst] = mid
                qk15(lo_a[worst], hi_a[worst], w, t_, b, s2, lm, pp, e1, e2, k, tmp)
                res_a[worst] = tmp[0]
                err_a[worst] = tmp[1]
                red_a[worst] = tmp[2]
                qk15(lo_a[n], hi_a[n], w, t_, b, s2, lm, pp, e1, e2, k, tmp)
                res_a[n] = tmp[0]
                err_a[n] = tmp[1]
                red_a[n] = tmp[2]
                n += 1
            if error > 1e-8 * abs(total) and error > 1e5 * epsabs or not math.isfinite(total):
                out[i] = np.nan
                continue
            otm = max(s_ * disc / math.pi * total, 0.0)
            parity = s_ * math.exp(-q_ * t_) - k_ * disc  # call - put
            if call_side:
                out[i] = otm if theta > 0 else otm - parity
            else:
                out[i] = otm if theta < 0 else otm + parity
        return out

    return kern


@hookimpl
def register_models(register):
    register(Kou)
