"""The Heston (1993) stochastic-volatility model.

    dS = (r - q) S dt + sqrt(v) S dW1,   dv = kappa (theta - v) dt + xi sqrt(v) dW2,   dW1 dW2 = rho dt

Parameters: S, K, T, r, q as everywhere, v0 (initial variance), kappa (mean
reversion speed), theta (long-run variance), xi (volatility of variance,
"vol of vol") and rho (correlation). The Feller condition 2 kappa theta >=
xi^2 is not required (the published test cases violate it).

Characteristic function
-----------------------
phi(u) = E[exp(i u X)], X = ln(S_T / S_0) including the (r - q) T drift, in
the form of Albrecher, Mayer, Schoutens and Tistaert (2007), "The little
Heston trap" (the one in Lord & Kahl 2010 and Fang & Oosterlee 2008):

    beta = kappa - i rho xi u,   m = u^2 + i u,   d = sqrt(beta^2 + xi^2 m)   (Re d >= 0)
    g = (beta - d) / (beta + d)
    ln phi = i u (r - q) T + kappa theta / xi^2 [(beta - d) T - 2 ln((1 - g e^{-dT}) / (1 - g))]
             + v0 (beta - d) / xi^2 (1 - e^{-dT}) / (1 - g e^{-dT})

with the principal square root and logarithm: in this form the logarithm
never crosses its branch cut for real u, whatever T (the original Heston
form jumps branches at long maturities and high vol of vol, e.g. the Lewis
set with xi = 1 and the Fang-Oosterlee case at T = 10).

Two implementations of the same formula:

- real u (what Fourier pricers use): real arithmetic on the real and
  imaginary parts, with the cancellation-free rewrites
  (beta - d) / xi^2 = -m / (beta + d), 1 - e^{-dT} through expm1 and a
  half-angle sine, and ln((1 - g e)/(1 - g)) = log1p(g (1 - e) / (1 - g)).
  It stays accurate as xi -> 0 (the Black-Scholes limit) and is several
  times faster than complex NumPy (whose complex log alone costs ~170 ns per
  point); sin, cos and atan2 of NumPy arrays go through torch's vectorised
  CPU kernels, like :func:`bench.arrays.erfc`. :func:`log_cf_parts` returns
  (Re, Im) of ln phi; :meth:`Heston.log_cf_parts` exposes it to pricers.
- complex u (for example phi(-i) = exp((r - q) T)): the formula as written,
  on complex arrays.

Both accept NumPy arrays or torch tensors (any device); parameters broadcast
against u. The Lewis integrand needs phi at u - i/2; :func:`log_psi_parts`
takes beta and m directly, and there m = u^2 + 1/4 is real, so the fast
real-arithmetic path serves it too.

Cumulants
---------
Of X = ln(S_T/S_0), for the truncation range of the COS method. With
E = exp(-kappa T):

- c1 = (r - q) T + (1 - E)(theta - v0) / (2 kappa) - theta T / 2 (exact);
- c2: Fang & Oosterlee (2008), Table 11 (exact), with a misprint corrected (see below);
- c4: exact, from the cumulant generating function K(s) = s (r - q) T + A(s, T) + v0 B(s, T),
  whose Riccati equation B' = (s^2 - s)/2 + (rho xi s - kappa) B + xi^2 B^2 / 2, A' = kappa theta B
  was expanded in powers of s (b1..b4 solve linear ODEs in closed form) with sympy;
  c4 = 24 [s^4] K(s). The closed form below is that output (common subexpressions
  eliminated); the tests check c1, c2 and c4 against numerical derivatives of
  ln phi.

The closed forms carry powers of 1/kappa that cancel as kappa T -> 0; below
kappa T = 0.1 the cumulants come from their Taylor series in kappa (six
terms). Checked against exact rational evaluation near the switch: c2 to
2e-10 relative, c4 to 5e-9 on the series side and up to 3e-7 on the closed
side when xi / kappa is large (xi = 0.8, kappa = 0.01, T = 10); c4 only sets
the COS truncation range.
"""

from __future__ import annotations

import math

import numpy as np

from bench import arrays, hookimpl
from bench.methods import Model, OPTION_PARAMS, Param

__version__ = "1"

PARAM_NAMES = ("T", "r", "q", "v0", "kappa", "theta", "xi", "rho")
SERIES_BELOW = 0.1  # kappa T below which the cumulants use their Taylor series in kappa
SCALAR_BELOW = 8  # cumulants of at most this many NumPy points are computed in Python floats


# --------------------------------------------------------------------------- array helpers


def _torch():
    import torch

    return torch


def _via_torch(name, *xs):
    """torch.<name> on float64 NumPy arrays, zero-copy: torch's SIMD kernels for
    sin, cos and atan2 are 3-10x faster than NumPy's on this project's CPUs."""
    torch = _torch()
    ts = []
    for x in xs:
        x = np.ascontiguousarray(x, dtype=np.float64)
        if not x.flags.writeable:
            x = x.copy()
        ts.append(torch.from_numpy(x))
    if len(ts) > 1:
        ts = torch.broadcast_tensors(*ts)
    return getattr(torch, name)(*ts).numpy()


class _Ops:
    """The few elementwise functions the real-arithmetic path needs, for one array library."""

    def __init__(self, like):
        self.torch = arrays.is_torch(like)
        self.xp = _torch() if self.torch else np

    def sin(self, x):
        return self.xp.sin(x) if self.torch else _via_torch("sin", x)

    def cos(self, x):
        return self.xp.cos(x) if self.torch else _via_torch("cos", x)

    def atan2(self, y, x):
        return self.xp.atan2(y, x) if self.torch else _via_torch("atan2", y, x)


def _is_complex(u) -> bool:
    if arrays.is_torch(u):
        return bool(u.is_complex())
    return np.iscomplexobj(u)


def _as_array(u, like):
    """u as an array of like's library (torch tensors stay on their device)."""
    if arrays.is_torch(u) or arrays.is_torch(like):
        torch = _torch()
        if arrays.is_torch(u):
            return u
        device = like.device if arrays.is_torch(like) else "cpu"
        return torch.as_tensor(np.asarray(u), device=device)
    return np.asarray(u)


# --------------------------------------------------------------------------- characteristic function


def log_psi_parts(beta_re, beta_im, m_re, m_im, T, v0, kappa, theta, xi):
    """(Re, Im) of ln psi, the driftless Heston log-characteristic function,
    given beta = kappa - i rho xi z and m = z^2 + i z for the (possibly
    complex) argument z: real arithmetic throughout.

    Requires Re(beta^2 + xi^2 m) > 0, which holds for real z (it is then
    kappa^2 + xi^2 (1 - rho^2) z^2) and for z = u - i/2 (the Lewis
    integrand), so the principal square root has a positive real part.
    """
    ops = _Ops(beta_im)
    xp = ops.xp
    xi2 = xi * xi
    # d^2 = beta^2 + xi^2 m; principal root d = dr + i di with dr > 0
    d2r = beta_re * beta_re - beta_im * beta_im + xi2 * m_re
    d2i = (2.0 * beta_re) * beta_im + xi2 * m_im
    dr = xp.sqrt(0.5 * (xp.sqrt(d2r * d2r + d2i * d2i) + d2r))
    di = 0.5 * d2i / dr
    # 1 / (beta + d), beta + d = pr + i pi with pr > 0
    pr = beta_re + dr
    pi = beta_im + di
    pp = pr * pr + pi * pi
    ipr = pr / pp
    ipi = -pi / pp
    # Q = (beta - d) / xi^2 = -m / (beta + d): no cancellation, finite as xi -> 0
    qr = m_im * ipi - m_re * ipr
    qi = -(m_re * ipi + m_im * ipr)
    # g = (beta - d) / (beta + d) = xi^2 Q / (beta + d)
    gr = xi2 * (qr * ipr - qi * ipi)
    gi = xi2 * (qr * ipi + qi * ipr)
    # om = 1 - e^{-dT} = -expm1(-dr T) + 2 E s^2 + 2 i E s c, E = e^{-dr T}, s, c = sin, cos(di T / 2)
    half = (0.5 * T) * di
    s = ops.sin(half)
    c = ops.cos(half)
    ndt = -T * dr
    es2 = 2.0 * xp.exp(ndt) * s
    omr = es2 * s - xp.expm1(ndt)
    omi = es2 * c
    # with b = 1 - g and h = g om: 1 - g e = b + h, w = g (1 - e) / (1 - g) = h / b
    br = 1.0 - gr
    hr = gr * omr - gi * omi
    hi = gr * omi + gi * omr
    bb = br * br + gi * gi
    wr = (hr * br - hi * gi) / bb
    wi = (hi * br + hr * gi) / bb
    # D = Q (1 - e) / (1 - g e)
    ar = br + hr
    ai = hi - gi
    nr = qr * omr - qi * omi
    ni = qr * omi + qi * omr
    aa = ar * ar + ai * ai
    big_dr = (nr * ar + ni * ai) / aa
    big_di = (ni * ar - nr * ai) / aa
    # ln((1 - g e) / (1 - g)) = log1p(w)
    lr = 0.5 * xp.log1p(wr * (2.0 + wr) + wi * wi)
    li = ops.atan2(wi, 1.0 + wr)
    kt = kappa * theta
    c2 = -2.0 * kt / xi2
    re = (kt * T) * qr + c2 * lr + v0 * big_dr
    im = (kt * T) * qi + c2 * li + v0 * big_di
    return re, im


def log_cf_parts(u, T, r, q, v0, kappa, theta, xi, rho):
    """(Re, Im) of ln phi(u) for real u (NumPy or torch), by real arithmetic."""
    re, im = log_psi_parts(kappa, -rho * xi * u, u * u, u, T, v0, kappa, theta, xi)
    return re, im + (r - q) * T * u


def log_cf_complex(u, T, r, q, v0, kappa, theta, xi, rho):
    """ln phi(u) for complex u: the little-Heston-trap formula on complex arrays."""
    xp = _torch() if arrays.is_torch(u) else np
    iu = 1j * u
    beta = kappa - rho * xi * iu
    m = u * u + iu
    d = xp.sqrt(beta * beta + xi * xi * m)
    p = beta + d
    Q = -m / p  # (beta - d) / xi^2
    g = xi * xi * Q / p
    e = xp.exp(-d * T)
    log_ratio = xp.log((1.0 - g * e) / (1.0 - g))
    return iu * (r - q) * T + kappa * theta * (Q * T - 2.0 * log_ratio / (xi * xi)) + v0 * Q * (1.0 - e) / (1.0 - g * e)


def _complex(re, im):
    if arrays.is_torch(re):
        return _torch().complex(re, im)
    out = np.empty(np.broadcast_shapes(np.shape(re), np.shape(im)), dtype=np.complex128)
    out.real = re
    out.imag = im
    return out


def characteristic_function(u, T, r, q, v0, kappa, theta, xi, rho):
    """phi(u) = E[exp(i u ln(S_T/S_0))]; u real or complex, NumPy or torch."""
    u = _as_array(u, T)
    if _is_complex(u):
        xp = _torch() if arrays.is_torch(u) else np
        return xp.exp(log_cf_complex(u, T, r, q, v0, kappa, theta, xi, rho))
    re, im = log_cf_parts(u, T, r, q, v0, kappa, theta, xi, rho)
    ops = _Ops(re)
    mag = ops.xp.exp(re)
    return _complex(mag * ops.cos(im), mag * ops.sin(im))


# --------------------------------------------------------------------------- cumulants


def _c4_closed(T, v0, kappa, theta, rho, y, E):
    """c4 for kappa T not small; y = xi / kappa, E = exp(-kappa T). Generated by sympy (see module doc)."""
    x0 = y**2
    x1 = rho**2
    x2 = 4*x1
    x3 = x2 + 1
    x4 = T*theta
    x5 = 1/kappa
    x6 = theta*x5
    x7 = 3*x5
    x8 = x3*x7
    x9 = rho*x4
    x10 = 2*x1
    x11 = 128*x10 + 384
    x12 = rho*x6
    x13 = v0*x5
    x14 = 96*x3
    x15 = 32*x6
    x16 = 160*rho
    x17 = 6*x1
    x18 = T*kappa
    x19 = x1*x18
    x20 = x10 + 1
    x21 = x19 + 6
    x22 = 3*x1
    x23 = x10*x18 + 3
    x24 = 12*x1
    x25 = 8*x1 + x23
    x26 = 2*T
    x27 = kappa*x26
    x28 = 5*x5
    x29 = 8*y
    x30 = 4*v0
    x31 = E*x0
    x32 = rho*theta
    x33 = 3*T
    x34 = rho*v0
    x35 = 10*x1
    x36 = 8*x4
    x37 = x26*(x27 + 5)
    return x0*((1/64)*E*(3*E*(-64*x13 + x15 + x31*(-48*x13 - x29*(4*x12 + x26*x32 - 2*x34*(x28 + x33) - y*(-v0*(x33 + 2*x5) + x4 + x6)) + x31*x5*(theta - x30) + 16*x6) - 4*y*(64*x12 - 32*x34*(x26 + x7) + 32*x9 - y*(-8*v0*(x26*(x17 + x23) + x8) + x25*x36 + 8*x6*(x35 + 3) + y*(8*rho*v0*(x28 + x37) - rho*x36*(x27 + 7) - 48*x12 + y*(theta*x37 - x30*(T*(x27 + 3) + x5) + 7*x6))))) - 384*v0*(T*(x19 + x20) + x10*x5) + x29*(16*rho*v0*(T*(x17 + x18*(x21 + x22) + 12) + x17*x5) - 384*x12*(x1 + 1) - 16*x9*(18*x1 + x18*(x17 + x21) + 24) + y*(-6*v0*(x26*(x18*x25 + x24 + 3) - x7) + 12*x4*(40*x1 + x18*(14*x1 + x23) + 9) + 30*x6*(16*x1 + 3) + y*(6*rho*v0*(T*(x27*(x18 + 4) + 7) - x28) - 180*x12 - 6*x9*(x27*(x18 + 7) + 35) + y*(v0*(-T*(x27*(x18 + 3) + 3) + 6*x5) + x4*(x27*(x18 + 6) + 27) + 21*x6)))) + 384*x4*(x19 + x3) + 384*x6*(x17 + 1)) + v0*x8 + 3*x3*x4 - 3/2*x6*(24*x1 + 5) - 3/64*y*(rho*x11*x13 + x11*x9 - 256*x12*(x2 + 5) - y*(x13*x14 + x14*x4 - x15*(50*x1 + 11) - y*(-704*x12 + x13*x16 + x16*x4 - y*(20*x13 + 20*x4 - 93*x6)))))  # noqa: E501


def _c4_series(T, v0, kappa, theta, rho, z):
    """c4 as a six-term Taylor series in kappa; z = xi T. Generated by sympy (see module doc)."""
    x1 = rho**2
    x10 = 2*x1
    x18 = T*kappa
    x20 = x10 + 1
    x22 = 3*x1
    x24 = 12*x1
    x32 = rho*theta
    x34 = rho*v0
    x35 = 10*x1
    x38 = rho*(x1 + 4)
    x39 = x22 + 2
    x40 = x10 + 11
    x41 = 26*x1 + 17
    x42 = x24 + 11
    x43 = 5*x1
    x44 = x43 + 39
    x45 = 19*x1 + 15
    x46 = x35 + 13
    x47 = x43 + 57
    x48 = 25*x1 + 24
    x49 = x35 + 19
    x50 = 7*x1
    x51 = x50 + 120
    x52 = 1235*x1 + 1452
    return (1/159667200)*T*z**2*(95040*v0*(3360*x1 - z*(840*x38 - z*(924*x1 - 17*z*(14*rho - z) + 504)) + 1680) + x18*(39916800*theta*x20 - 79833600*v0*x39 + x18*(-15966720*theta*x39 + 7983360*v0*x42 + x18*(1330560*theta*x42 - 2661120*v0*x46 + x18*(-380160*theta*x46 + 570240*v0*x49 + x18*(71280*theta*x49 - 142560*v0*(x50 + 20) + z*(-26400*x32*x51 + 10560*x34*(28*x1 + 741) + z*(792*theta*x52 - 792*v0*(3514*x1 + 5097) + z*(-611640*x32 + 2454912*x34 + z*(83021*theta - 434372*v0))))) + 12*z*(15840*x32*x47 - 19800*x34*x51 + z*(-10560*theta*x48 + 660*v0*x52 - z*(-127776*x32 + 560670*x34 + z*(14384*theta - 83021*v0))))) + 1056*z*(-720*x32*x44 + 1440*x34*x47 + z*(405*theta*x45 - 1080*v0*x48 + 2*z*(-1440*x32 + 7260*x34 + z*(134*theta - 899*v0))))) + 10560*z*(504*x32*x40 - 504*x34*x44 + z*(-54*theta*x41 + 324*v0*x45 - z*(-405*x32 + 2592*x34 + z*(31*theta - 268*v0))))) + 11880*z*(-1344*theta*x38 + 2688*x34*x40 + z*(112*theta*(11*x1 + 6) - 336*v0*x41 + z*(-272*x32 + 2880*x34 + z*(17*theta - 248*v0))))))  # noqa: E501


# c2 = sum_m (kappa T)^m T [A_m v0 + B_m theta] / den_m, coefficients of
# (1, xi T rho, (xi T)^2) in A_m, B_m; from the same expansion
_C2_SERIES = (
    # (den, v0: (1, z rho, z^2), theta: (1, z rho, z^2))
    (12, (12, -6, 1), (0, 0, 0)),
    (48, (-24, 16, -4), (24, -8, 1)),
    (240, (40, -30, 11), (-40, 20, -4)),
    (1440, (-60, 48, -26), (60, -36, 11)),
    (10080, (84, -70, 57), (-84, 56, -26)),
    (80640, (-112, 96, -120), (112, -80, 57)),
)


def cumulants(T, r, q, v0, kappa, theta, xi, rho):
    """(c1, c2, c4) of ln(S_T/S_0); arrays of the parameters' library.

    A few points (at most SCALAR_BELOW) are evaluated one by one in Python
    floats: some 150 array operations on one-element arrays cost ~0.5 ms
    (NumPy) or ~1.5 ms (torch), floats ~20 us.
    """
    args = (T, r, q, v0, kappa, theta, xi, rho)
    tensors = [a for a in args if arrays.is_torch(a)]
    if tensors:
        torch = _torch()
        ts = torch.broadcast_tensors(*(torch.as_tensor(a, dtype=torch.float64, device=tensors[0].device)
                                       for a in args))
        if ts[0].numel() <= SCALAR_BELOW:  # one transfer instead of ~150 tiny kernels
            host = torch.stack([t.reshape(-1) for t in ts]).cpu().numpy()
            out = cumulants(*host)
            return tuple(torch.as_tensor(c, device=ts[0].device).reshape(ts[0].shape) for c in out)
        return _cumulants(*ts)
    args = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in args))
    if args[0].size <= SCALAR_BELOW:
        rows = [_cumulants_scalar(*map(float, vals)) for vals in zip(*(a.ravel() for a in args))]
        return tuple(np.array([row[i] for row in rows]).reshape(args[0].shape) for i in range(3))
    with np.errstate(all="ignore"):  # both branches are evaluated; one of them may overflow
        return _cumulants(*args)


def _c1(T, r, q, v0, theta, kappa, one_minus_E):
    return (r - q) * T + one_minus_E * (theta - v0) / (2.0 * kappa) - 0.5 * theta * T


def _c2_closed(T, v0, kappa, theta, xi, rho, E, one_minus_E):
    # Fang & Oosterlee (2008), Table 11, with their (lambda, u_bar, u0, eta) = (kappa, theta, v0, xi),
    # corrected: the table's (and most codes') "theta (6 E - 7)" must read "theta (4 E - 5)"; with it
    # c2 matches the derivative of ln phi, and for rho = 0, v0 = theta it equals
    # E[int v] + Var(int v) / 4 computed from the CIR covariance
    return (
        xi * T * kappa * E * (v0 - theta) * (8 * kappa * rho - 4 * xi)
        + kappa * rho * xi * one_minus_E * (16 * theta - 8 * v0)
        + 2 * theta * kappa * T * (-4 * kappa * rho * xi + xi * xi + 4 * kappa * kappa)
        + xi * xi * ((theta - 2 * v0) * E * E + theta * (4 * E - 5) + 2 * v0)
        + 8 * kappa * kappa * (v0 - theta) * one_minus_E
    ) / (8 * kappa**3)


def _c2_series(T, v0, kappa, theta, xi, rho):
    kT = kappa * T
    zr = xi * T * rho
    z2 = (xi * T) ** 2
    total = 0.0
    power = 1.0
    for den, a, b in _C2_SERIES:
        term = v0 * (a[0] + a[1] * zr + a[2] * z2) + theta * (b[0] + b[1] * zr + b[2] * z2)
        total = total + power * term / den
        power = power * kT
    return T * total


def _cumulants_scalar(T, r, q, v0, kappa, theta, xi, rho):
    kT = kappa * T
    one_minus_E = -math.expm1(-kT)
    c1 = _c1(T, r, q, v0, theta, kappa, one_minus_E)
    if kT < SERIES_BELOW:
        return c1, _c2_series(T, v0, kappa, theta, xi, rho), _c4_series(T, v0, kappa, theta, rho, xi * T)
    E = math.exp(-kT)
    return (c1, _c2_closed(T, v0, kappa, theta, xi, rho, E, one_minus_E),
            _c4_closed(T, v0, kappa, theta, rho, xi / kappa, E))


def _cumulants(T, r, q, v0, kappa, theta, xi, rho):
    xp = _torch() if any(arrays.is_torch(a) for a in (T, r, q, v0, kappa, theta, xi, rho)) else np
    kT = kappa * T
    one_minus_E = -xp.expm1(-kT)
    c1 = _c1(T, r, q, v0, theta, kappa, one_minus_E)
    small = kT < SERIES_BELOW
    # the closed forms at a harmless kappa where the series is used
    safe_k = xp.where(small, 1.0 + 0.0 * kT, kappa + 0.0 * kT)
    safe_E = xp.exp(-safe_k * T)
    c2 = xp.where(small, _c2_series(T, v0, kappa, theta, xi, rho),
                  _c2_closed(T, v0, safe_k, theta, xi, rho, safe_E, -xp.expm1(-safe_k * T)))
    c4 = xp.where(small, _c4_series(T, v0, kappa, theta, rho, xi * T),
                  _c4_closed(T, v0, safe_k, theta, rho, xi / safe_k, safe_E))
    return c1, c2, c4


# --------------------------------------------------------------------------- the model


class Heston(Model):
    name = "heston"
    version = "1"
    homogeneous = True  # V(a S, a K) = a V(S, K)
    description = "Heston stochastic volatility: CIR variance v with vol of vol xi, correlation rho"
    params = {
        **OPTION_PARAMS,
        "v0": Param("initial variance", lower=0.0, lower_open=True),
        "kappa": Param("mean-reversion speed of the variance", lower=0.0, lower_open=True),
        "theta": Param("long-run variance", lower=0.0, lower_open=True),
        "xi": Param("volatility of the variance (vol of vol)", lower=0.0, lower_open=True),
        "rho": Param("correlation of the spot and variance shocks", lower=-1.0, upper=1.0,
                     lower_open=True, upper_open=True),
    }
    products = ("european_call", "european_put")

    @staticmethod
    def _args(params):
        return [params[k] for k in PARAM_NAMES]

    def characteristic_function(self, u, params):
        return characteristic_function(u, *self._args(params))

    def log_cf_parts(self, u, params):
        """(Re, Im) of ln phi(u) for real u: lets Fourier pricers skip complex arithmetic."""
        return log_cf_parts(u, *self._args(params))

    def cumulants(self, params):
        return cumulants(*self._args(params))


@hookimpl
def register_models(register):
    register(Heston)
