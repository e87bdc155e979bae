"""Random streams for the Monte Carlo kernels (numba), one per block of paths.

Reproducibility whatever the thread count comes from giving every *block of
paths* its own stream, keyed by ``(seed, option, block)``; threads (``prange``)
take whole blocks, so which thread runs a block never changes its numbers.
An option's estimate depends only on the seed, its index in the batch and
the number of paths, never on the number of threads or on how the batch is
chunked.

- Generator: xoshiro256++ (Blackman & Vigna 2019; period 2^256 - 1), the
  family NumPy and Julia use. Its 256-bit state is filled from the key by
  SplitMix64, as its authors recommend; distinct keys give distinct states,
  and with a period of 2^256 overlapping streams are not a practical concern.
- Uniforms: the top 53 bits, shifted to the open interval (0, 1).
- Normals: the ziggurat of Marsaglia & Tsang (2000) with 256 layers on 52-bit
  mantissas, the construction NumPy's ``Generator.standard_normal`` uses
  (tables built here by their recurrence). 99.3% of draws cost one 64-bit
  word, a table look-up, a multiply and a compare; the rest take the wedge or
  tail rejection step. Exact up to floating point (no approximation of the
  density), about 4x faster than an inverse-CDF draw.
- ``ndtri``: Wichura's AS241 inverse normal CDF (relative accuracy ~1e-16),
  for draws that must be monotone in their uniform (stratification, QMC).

The state is a value, a 4-tuple of uint64 that stays in registers:
``st = stream(seed, option, block)``, then ``st, z = normal(st)``,
``st, u = uniform(st)``, ``st, bits = next_u64(st)``. (An array state passed
into a function that is not inlined costs two atomic reference-count updates
per draw: four times slower.) Everything is ``@njit(cache=True)``: compiled once and
cached on disk next to this file (or in ``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, inline="always")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO53_INV = 1.0 / 9007199254740992.0


def _ziggurat_tables(layers=256, r=3.6541528853610087963519472518, v=4.92867323399e-3, bits=52):
    """Marsaglia-Tsang ziggurat tables (ki, wi, fi) for the normal density on ``bits``-bit integers."""
    m = float(2 ** bits)
    ki = np.zeros(layers, dtype=np.uint64)
    wi = np.zeros(layers)
    fi = np.zeros(layers)
    dn = tn = r
    q = v / math.exp(-0.5 * dn * dn)
    ki[0] = np.uint64((dn / q) * m)
    ki[1] = 0
    wi[0] = q / m
    wi[layers - 1] = dn / m
    fi[0] = 1.0
    fi[layers - 1] = math.exp(-0.5 * dn * dn)
    for i in range(layers - 2, 0, -1):
        dn = math.sqrt(-2.0 * math.log(v / dn + math.exp(-0.5 * dn * dn)))
        ki[i + 1] = np.uint64((dn / tn) * m)
        tn = dn
        fi[i] = math.exp(-0.5 * dn * dn)
        wi[i] = dn / m
    return ki, wi, fi


_ZIG_R = 3.6541528853610087963519472518
_ZIG_KI, _ZIG_WI, _ZIG_FI = _ziggurat_tables()
_ZIG_KI = _ZIG_KI.astype(np.int64)  # all < 2^52: signed compares and conversions are cheaper
_MASK52 = np.uint64(0x000FFFFFFFFFFFFF)


@_jit
def _mix(z):
    """SplitMix64's output function (a bijection of uint64)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@_jit
def _rotl(x, k):
    return (x << np.uint64(k)) | (x >> np.uint64(64 - k))


@_jit
def stream(seed, option, block):
    """A fresh xoshiro256++ state for stream ``(seed, option, block)``: a 4-tuple of uint64."""
    key = _mix(np.uint64(seed) + _GOLDEN)
    key = _mix(key ^ (np.uint64(option) * _M1 + _GOLDEN))
    key = _mix(key ^ (np.uint64(block) * _M2 + _GOLDEN))
    x0 = key + _GOLDEN
    x1 = x0 + _GOLDEN
    x2 = x1 + _GOLDEN
    x3 = x2 + _GOLDEN
    return (_mix(x0), _mix(x1), _mix(x2), _mix(x3))


@_jit
def next_u64(st):
    """(new state, 64 random bits)."""
    s0, s1, s2, s3 = st
    result = _rotl(s0 + s3, 23) + s0
    t = s1 << np.uint64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, 45)
    return (s0, s1, s2, s3), result


@_jit
def uniform(st):
    """(new state, u) with u uniform on the open interval (0, 1): (k + 1/2) / 2^53, k the top 53 bits."""
    st, r = next_u64(st)
    return st, ((r >> np.uint64(11)) + 0.5) * _TWO53_INV


@_jit
def ndtri(p):
    """Inverse standard normal CDF, Wichura (1988) AS241 PPND16, for 0 < p < 1."""
    q = p - 0.5
    if abs(q) <= 0.425:
        r = 0.180625 - q * q
        num = (((((((2509.0809287301226727 * r + 33430.575583588128105) * r + 67265.770927008700853) * r
                    + 45921.953931549871457) * r + 13731.693765509461125) * r + 1971.5909503065514427) * r
                 + 133.14166789178437745) * r + 3.387132872796366608)
        den = (((((((5226.495278852545925 * r + 28729.085735721942674) * r + 39307.89580009271061) * r
                    + 21213.794301586595867) * r + 5394.1960214247511077) * r + 687.1870074920579083) * r
                 + 42.313330701600911252) * r + 1.0)
        return q * num / den
    r = p if q < 0.0 else 1.0 - p
    r = math.sqrt(-math.log(r))
    if r <= 5.0:
        r -= 1.6
        num = (((((((7.7454501427834140764e-4 * r + 0.0227238449892691845833) * r + 0.24178072517745061177) * r
                    + 1.27045825245236838258) * r + 3.64784832476320460504) * r + 5.7694972214606914055) * r
                 + 4.6303378461565452959) * r + 1.42343711074968357734)
        den = (((((((1.05075007164441684324e-9 * r + 5.475938084995344946e-4) * r + 0.0151986665636164571966) * r
                    + 0.14810397642748007459) * r + 0.68976733498510000455) * r + 1.6763848301838038494) * r
                 + 2.05319162663775882187) * r + 1.0)
    else:
        r -= 5.0
        num = (((((((2.01033439929228813265e-7 * r + 2.71155556874348757815e-5) * r + 0.0012426609473880784386) * r
                    + 0.026532189526576123093) * r + 0.29656057182850489123) * r + 1.7848265399172913358) * r
                 + 5.4637849111641143699) * r + 6.6579046435011037772)
        den = (((((((2.04426310338993978564e-15 * r + 1.4215117583164458887e-7) * r + 1.8463183175100546818e-5) * r
                    + 7.868691311456132591e-4) * r + 0.0148753612908506148525) * r + 0.13692988092273580531) * r
                 + 0.59983220655588793769) * r + 1.0)
    x = num / den
    return -x if q < 0.0 else x


@_jit
def _layer(st):
    """One ziggurat proposal: (state, layer index, 52-bit magnitude, signed x)."""
    st, r = next_u64(st)
    idx = np.intp(r & np.uint64(0xFF))
    r >>= np.uint64(8)
    rabs = np.int64((r >> np.uint64(1)) & _MASK52)
    x = rabs * _ZIG_WI[idx]
    if r & np.uint64(1):
        x = -x
    return st, idx, rabs, x


@numba.njit(cache=True, nogil=True)
def _normal_rare(st, idx, rabs, x):
    """The ziggurat's rare branch (0.7% of draws): tail or wedge tests, redrawing until accepted."""
    while True:
        if idx == 0:
            while True:  # Marsaglia's tail method beyond r
                st, u1 = uniform(st)
                st, u2 = uniform(st)
                xx = -math.log1p(-u1) / _ZIG_R
                yy = -math.log1p(-u2)
                if yy + yy > xx * xx:
                    return st, (-(_ZIG_R + xx) if (rabs >> 8) & 1 else _ZIG_R + xx)
        st, u = uniform(st)
        if (_ZIG_FI[idx - 1] - _ZIG_FI[idx]) * u + _ZIG_FI[idx] < math.exp(-0.5 * x * x):
            return st, x
        st, idx, rabs, x = _layer(st)
        if rabs < _ZIG_KI[idx]:
            return st, x


@_jit
def normal(st):
    """(new state, z) with z a standard normal draw (ziggurat)."""
    st, idx, rabs, x = _layer(st)
    if rabs < _ZIG_KI[idx]:
        return st, x
    return _normal_rare(st, idx, rabs, x)


@numba.njit(cache=True, nogil=True)
def fill_normal(seed, option, block, out):
    """Fill ``out`` from stream ``(seed, option, block)`` (tests and benchmarks)."""
    st = stream(seed, option, block)
    for i in range(out.size):
        st, z = normal(st)
        out[i] = z
    return out


@numba.njit(cache=True, nogil=True)
def fill_uniform(seed, option, block, out):
    st = stream(seed, option, block)
    for i in range(out.size):
        st, u = uniform(st)
        out[i] = u
    return out
