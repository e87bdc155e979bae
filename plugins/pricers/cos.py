"""The COS method (Fang & Oosterlee 2008): European options from a model's
characteristic function by a Fourier-cosine expansion of the density.

One implementation for every model with a characteristic function
(:meth:`bench.methods.Model.characteristic_function`) and cumulants
(:meth:`bench.methods.Model.cumulants`). With y = ln(S_T / K) = x + X,
x = ln(S / K), the density of y is expanded on [a, b],

    a = x + c1 - L sqrt(c2 + sqrt(c4)),   b = x + c1 + L sqrt(c2 + sqrt(c4))

(c_n the cumulants of X = ln(S_T / S_0); ``use_c4 = False`` drops the
sqrt(c4) term), the truncation range of the paper's x = ln(S_0/K)
convention shifted by x, so that it is centred on each option's own
log-moneyness. Then, with u_k = k pi / (b - a),

    put = exp(-rT) K (2 / (b - a)) sum'_{k<N} Re[phi(u_k) exp(i u_k (x - a))] (psi_k(a, c) - chi_k(a, c)),

c = min(max(0, a), b) (the put payoff K (1 - e^y) lives on [a, c]; the exact
chi, psi coefficients of the paper, eq. 22-23), sum' halving the k = 0 term.
Calls come from put-call parity, call = put + S e^{-qT} - K e^{-rT}: the
put payoff is bounded by K, so the truncation error of the density
expansion stays of order K times the neglected mass, whereas the call
payoff grows like e^y and amplifies it (the paper's section 5.5 and Fang &
Oosterlee's recommendation). Parity is then exact to rounding.

Vectorisation. b - a and x - a = L sqrt(...) - c1 depend on the parameter
set only, not on the strike, so the N values Re[phi(u_k) e^{i u_k (x-a)}]
are computed once per parameter set (an (n_sets, N) evaluation); the
coefficients psi_k - chi_k depend on the option through a and c only via
sin(k theta), cos(k theta), theta = pi (c - a) / (b - a), an (n, N)
evaluation. A batch whose non-strike parameters (all but S and K) are equal
is priced from one characteristic-function row (1,000 strikes of one smile:
256 characteristic-function values); otherwise each option is its own
parameter set. Both are chunked so that at most ``chunk`` (option, term)
pairs are held at once. Only k = 0..N-1 (independent of the inputs) is
built in ``prepare``.

A model that defines ``log_cf_parts(u, params)`` (Re and Im of ln phi for
real u: Heston does) is used through it, which saves complex arithmetic;
otherwise ``characteristic_function``. sin, cos on NumPy arrays go through
torch's SIMD kernels (as :func:`bench.arrays.erfc` does for erfc): about 10x
NumPy's own on this project's CPUs.

Defaults: N = 256, L = 10, use_c4 = True. Measured on Heston: the
Fang-Oosterlee case (T = 1) is off by 7.1e-3, 1.3e-5, 1.3e-5, 6.1e-8 at
N = 64, 128, 160, 256 (L = 12: 6.2e-3, 4.1e-4, 7.5e-6, 6.1e-8; without c4
the range is too narrow and the error stalls at 3e-4 for L = 10); the Lewis
set to 4e-14. Against heston_integration on 2,000 random points of kappa
[0.5, 3], theta, v0 [0.02, 0.3], xi [0.1, 0.8], rho [-0.9, 0.3], T [0.1, 2],
K/S [0.7, 1.3]: largest error 5e-4, 99th percentile 2.2e-7 with L = 10
(2.4e-3 and 2.1e-6 with L = 12). Every error above 1e-6 (0.55% of the
points) has 2 kappa theta / xi^2 < 1: far from the Feller condition the
density of ln S_T has a near-singular peak that 256 cosines do not resolve;
where the condition holds the largest error is 2e-9, and N = 512 brings
every point below 8e-7. Jump models with heavy tails (Merton with -0.9 log
jumps, Kou with jump rates near 3) lose 1e-9 to 5e-6 to truncation at
L = 10; L = 16-20 with N = 1024-2048 reaches 1e-10.

Points with NaN parameters, or where the characteristic function or the
cumulants are not finite, or a degenerate distribution (c2 = 0, e.g.
Black-Scholes with sigma = 0), give NaN.

No-arbitrage check. Where the density is far from what N cosines on the
cumulant range can resolve, the expansion returns garbage rather than a
slightly wrong price: Heston with xi = 20, kappa = theta = 0.1, T = 30,
v0 = 4 gives a put of 1220.6 at K = 2000 (S = 100, r = q = 0), below its
intrinsic value 1900, even with N = 4096 (a wider range makes it worse:
the peak of the density is too narrow, not the range too short); Kou with
heavy down jumps (eta2 = 0.012, 1/eta2 = 84 in log units) and a narrow
diffusion gives calls of -264 at N = 256. After the price is computed, every
point outside the European bounds

    call in [max(S e^{-qT} - K e^{-rT}, 0), S e^{-qT}],   put in [max(K e^{-rT} - S e^{-qT}, 0), K e^{-rT}]

by more than ``BOUND_TOL`` (S e^{-qT} + K e^{-rT}) is NaN, with a reason
(:class:`~bench.methods.PriceResult`: one string per option, "" where
priced; NaN points of the paragraph above get a reason too; the bounds and
the check are :mod:`._bounds`', shared with mc and fd). The
tolerance is 1e-2: the shipped suites' own under-resolved cells leave the
bounds by up to 3.9e-3 of that scale anywhere in their domains (Heston on
the Liu et al. domain at N = 64, its worst corner kappa = 0.5,
theta = v0 = 0.02, xi = 0.8, rho = -0.9, T = 2, K = 130; Merton at N = 64:
1.8e-3), and their results must stay as they were; the garbage above is
off by 0.1-0.3 of it. The check only replaces values; the prices
themselves are computed exactly as before. An empty batch gives an empty
result.

Which models: ``supports`` lists the ones with a characteristic function at
the time of writing; :meth:`Cos.can_price` also accepts any model of the
process-wide registry (:func:`bench.plugins.get_registry`) whose class has
a characteristic function and cumulants and defines the product, so a new
model plugin gets COS without editing this file. A registry built
separately (``bench.plugins.load`` in a test) is not consulted: models
outside ``supports`` then need the process-wide registry to know them.
"""

from __future__ import annotations

import math

import numpy as np

from bench import arrays, hookimpl
from bench.methods import Model, PriceResult, Pricer, Setting, Unsupported
from pricebench_plugins.pricers import _bounds

__version__ = "1"

PRODUCTS = ("european_call", "european_put")
BOUND_TOL = _bounds.BOUND_TOL  # NaN beyond the no-arbitrage bounds by more than this times S e^{-qT} + K e^{-rT}
OUT_OF_BOUNDS = ("price outside the no-arbitrage bounds: the cosine expansion does not resolve this density "
                 "(raise N, or the parameters are too extreme for COS)")
NOT_FINITE = "characteristic function or cumulants not finite, or a degenerate distribution"


def _torch():
    import torch

    return torch


def _sin_cos(x):
    """(sin x, cos x); NumPy arrays through torch's vectorised CPU kernels."""
    if arrays.is_torch(x):
        return _torch().sin(x), _torch().cos(x)
    torch = _torch()
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    return torch.sin(t).numpy(), torch.cos(t).numpy()


def _cos(x):
    if arrays.is_torch(x):
        return _torch().cos(x)
    return _torch().cos(_torch().from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()


def _has_cumulants(model_cls) -> bool:
    return model_cls.cumulants is not Model.cumulants


def _registry_model(name: str):
    """The model class called ``name`` in the process-wide registry, or None."""
    try:
        from bench.plugins import get_registry

        return get_registry().get("model", name)
    except Exception:  # noqa: BLE001 - unknown name or no registry: not ours to price
        return None


class Cos(Pricer):
    name = "cos"
    version = "1"
    description = "Fourier-cosine expansion (Fang & Oosterlee 2008) over any model's characteristic function"
    devices = ("cpu", "cuda")
    supports = {m: PRODUCTS for m in ("black_scholes", "heston", "merton", "kou")}
    settings = {
        "N": Setting(256, int, "number of cosine terms", min=2, max=1 << 20),
        "L": Setting(10.0, float, "truncation width in standard deviations: [a, b] = c1 +- L sqrt(c2 + sqrt(c4))",
                     min=0.5, max=1000.0),
        "use_c4": Setting(True, bool, "include the fourth cumulant in the truncation range"),
        "chunk": Setting(1 << 15, int, "largest number of (option, term) pairs evaluated at once", min=1),
        "backend": Setting("auto", str, "numpy or torch; auto = numpy on the CPU, torch on CUDA",
                           choices=("auto", "numpy", "torch")),
    }

    @classmethod
    def can_price(cls, model: str, product: str) -> bool:
        if product not in PRODUCTS:
            return False
        model_cls = _registry_model(model)
        if model_cls is None:
            return product in cls.supports.get(model, ())
        return (model_cls.has_characteristic_function() and _has_cumulants(model_cls)
                and product in model_cls.products)

    def prepare(self, model, product, params, device="cpu"):
        self.backend_ = self.pick_backend(device, cpu_default="numpy")
        model_cls = type(model)
        if not (model_cls.has_characteristic_function() and _has_cumulants(model_cls)):
            raise Unsupported(f"model {model.name!r} has no characteristic function and cumulants")
        self.shape_ = np.shape(params["S"])
        self.is_call_ = product == "european_call"
        names = list(model.params)
        flat = {k: np.ravel(np.broadcast_to(params[k], self.shape_)) for k in names}
        inputs = super().prepare(model, product, flat, device, array_backend=self.backend_)
        self.set_names_ = [k for k in names if k not in ("S", "K")]
        self.log_parts_ = getattr(model, "log_cf_parts", None)
        k = np.arange(self.N, dtype=np.float64)
        self.k_ = _torch().as_tensor(k, device=device) if self.backend_ == "torch" else k
        return inputs

    # ------------------------------------------------------------------ timed
    def price(self, inputs):
        S, K = inputs["S"], inputs["K"]
        ns = arrays.namespace(S)
        xp = ns.lib
        n = S.shape[0]
        if n == 0:
            return PriceResult(price=(S * 0.0).reshape(self.shape_))
        sets = {k: inputs[k] for k in self.set_names_}
        with np.errstate(all="ignore"):
            single = n > 1 and all(bool((v == v[0]).all()) for v in sets.values())
            if single:
                terms = self._set_terms({k: v[:1] for k, v in sets.items()})
            rows = max(1, self.chunk // self.N)
            parts = []
            for lo in range(0, n, rows):
                sl = slice(lo, min(n, lo + rows))
                if not single:
                    terms = self._set_terms({k: v[sl] for k, v in sets.items()})
                parts.append(self._sum(terms, S[sl], K[sl]))
            total = xp.concatenate(parts) if xp is np else xp.cat(parts)
            T, r, q = inputs["T"], inputs["r"], inputs["q"]
            put = xp.exp(-r * T) * K * total
            value = put + S * xp.exp(-q * T) - K * xp.exp(-r * T) if self.is_call_ else put
            value = xp.where(xp.isfinite(value), value, math.nan)
            limits = _bounds.no_arbitrage_bounds(self.model_.name, self.product_,
                                                 {"S": S, "K": K, "T": T, "r": r, "q": q})
            value, _, reason = _bounds.check_bounds(value, limits, BOUND_TOL, out_of_bounds=OUT_OF_BOUNDS,
                                                    not_finite=NOT_FINITE)
        return PriceResult(price=value.reshape(self.shape_),
                           reason=None if reason is None else reason.reshape(self.shape_))

    def _set_terms(self, p):
        """Per parameter set (g of them): c1, the half width, and the weight vectors (g, N)."""
        xp = arrays.namespace(p["T"]).lib
        zero = 0.0 * p["T"]  # a model may return plain floats (c4 = 0): make arrays of the batch's shape
        c1, c2, c4 = (c + zero for c in self.model_.cumulants(p))
        var = xp.abs(c2)
        if self.use_c4:
            var = var + xp.sqrt(xp.abs(c4))
        half = self.L * xp.sqrt(var)  # (b - a) / 2
        du = math.pi / (2.0 * half)
        u = du[:, None] * self.k_  # (g, N)
        shift = (half - c1)[:, None]  # x - a
        col = {k: v[:, None] for k, v in p.items()}
        if self.log_parts_ is not None:
            re, im = self.log_parts_(u, col)
            F = xp.exp(re) * _cos(im + u * shift)
        else:
            phi = self.model_.characteristic_function(u, col)
            s, c = _sin_cos(u * shift)
            F = phi.real * c - phi.imag * s
        F[:, 0] *= 0.5  # the primed sum
        one_u2 = 1.0 + u * u
        R = F / one_u2
        safe_u = xp.where(u > 0, u, 1.0)
        P = xp.where(u > 0, F / safe_u, 0.0)
        uR = u * R
        return c1, half, P, uR, R, F[:, 0]

    def _sum(self, terms, S, K):
        """(2 / (b - a)) sum'_k F_k (psi_k - chi_k) for a chunk of options."""
        c1, half, P, uR, R, F0 = terms
        ns = arrays.namespace(S)
        xp = ns.lib
        a = xp.log(S / K) + c1 - half
        b = a + 2.0 * half
        c = xp.minimum(ns.positive_part(a), b)
        theta = (math.pi / (2.0 * half)) * (c - a)
        s, co = _sin_cos(theta[:, None] * self.k_)
        ec, ea = xp.exp(c), xp.exp(a)
        if P.shape[0] == 1:  # one parameter set: matrix-vector products
            total = s @ P[0] - ec * (s @ uR[0]) - ec * (co @ R[0]) + ea * R[0].sum() + F0 * (c - a)
        else:
            total = ((s * (P - ec[:, None] * uR)).sum(-1) - ec * (co * R).sum(-1) + ea * R.sum(-1)
                     + F0 * (c - a))
        return total / half


@hookimpl
def register_pricers(register):
    register(Cos)
