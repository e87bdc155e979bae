"""Closed-form (exact) prices of European calls and puts, one method for every
model that has one.

Each model's formula lives in its model module, next to the model it prices
(as ``black_scholes.price``, with the derivation and accuracy in that
module's docstring); this module holds the dispatch table :data:`FORMULAS`
and the Black-Scholes back ends:

- ``black_scholes``: Black-Scholes-Merton (back ends numpy, numba, torch);
- ``merton``: Poisson series of Black-Scholes prices, summed adaptively to a
  rigorous 1e-14 relative remainder bound (numpy);
- ``kou``: exact Fourier integral by adaptive Gauss-Kronrod quadrature,
  about 1e-13 relative (numba: a compiled kernel, compiled in ``prepare``);
- ``cev``: Schroder's noncentral chi-square formula, 0 <= beta < 1, and
  Black-Scholes at beta = 1 (numpy);
- ``sinh_lv``: the exact hyperbolic-sine local-volatility formula (numpy).

Black-Scholes has three interchangeable back ends, chosen by the
``backend`` setting:

- ``numpy``: vectorised ufuncs (the default on the CPU);
- ``numba``: one compiled loop, no temporaries; compiled in ``prepare``;
- ``torch``: the same formula as ``numpy`` on torch tensors, on the CPU or
  on CUDA (the default there).

The other models run on the CPU with the one back end listed above
(``auto`` picks it); any other back end, and any device but the CPU, raises
:class:`~bench.methods.Unsupported` in ``prepare`` (the runner records the
cell as skipped). Points a formula cannot evaluate come back as NaN.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from bench import arrays, hookimpl
from bench.methods import Pricer, Setting, Unsupported
from pricebench_plugins.models import black_scholes as bs
from pricebench_plugins.models import cev, kou, merton, sinh_lv

__version__ = "1"

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


@functools.lru_cache(maxsize=1)
def _numba_kernel():
    import numba

    @numba.njit(cache=False, fastmath=False, nogil=True)
    def kernel(S, K, T, r, q, sigma, theta, out):
        for i in range(S.shape[0]):
            D = math.exp(-r[i] * T[i])
            F = S[i] * math.exp((r[i] - q[i]) * T[i])
            vol = sigma[i] * math.sqrt(T[i])
            th = theta
            if vol > 0.0:
                d1 = (math.log(S[i] / K[i]) + (r[i] - q[i]) * T[i]) / vol + 0.5 * vol
                d2 = d1 - vol
                # N(x) = erfc(-x / sqrt 2) / 2 keeps full relative accuracy in the tails
                n1 = 0.5 * math.erfc(-th * d1 * _INV_SQRT2)
                n2 = 0.5 * math.erfc(-th * d2 * _INV_SQRT2)
                out[i] = th * D * (F * n1 - K[i] * n2)
            else:
                out[i] = D * max(th * (F - K[i]), 0.0)

    return kernel


@dataclass(frozen=True)
class Formula:
    """A model's closed form: ``function(*params[names], theta)`` with theta = +1
    (call) or -1 (put), and the back ends it runs on (the first is the CPU default)."""

    names: tuple[str, ...]
    function: Callable
    backends: tuple[str, ...]


FORMULAS = {
    "black_scholes": Formula(("S", "K", "T", "r", "q", "sigma"), bs.price, ("numpy", "numba", "torch")),
    "merton": Formula(("S", "K", "T", "r", "q", "sigma", "lam", "mu_j", "sigma_j"), merton.price, ("numpy",)),
    "kou": Formula(("S", "K", "T", "r", "q", "sigma", "lam", "p", "eta1", "eta2"), kou.price, ("numba",)),
    "cev": Formula(("S", "K", "T", "r", "q", "sigma", "beta"), cev.price, ("numpy",)),
    "sinh_lv": Formula(("S", "K", "T", "r", "lam"), sinh_lv.price, ("numpy",)),
}


class ClosedForm(Pricer):
    name = "closed_form"
    version = "1"  # Black-Scholes results are unchanged; the other models are new cells
    description = ("Exact European call and put prices: Black-Scholes, Merton, Kou, CEV and the "
                   "hyperbolic-sine local-volatility model")
    devices = ("cpu", "cuda")
    supports = {model: ("european_call", "european_put") for model in FORMULAS}
    NAMES = FORMULAS["black_scholes"].names
    settings = {
        "backend": Setting(
            "auto",
            str,
            "numpy, numba or torch; auto = numpy on the CPU, torch on CUDA for Black-Scholes, the "
            "model's one back end for the others (see the module docstring)",
            choices=("auto", "numpy", "numba", "torch"),
        ),
    }

    def prepare(self, model, product, params, device="cpu"):
        formula = FORMULAS.get(model.name)
        if formula is None:  # Pricer.prepare words the error
            return super().prepare(model, product, params, device)
        self.formula_ = formula
        self.backend_ = self.pick_backend(device, cpu_default=formula.backends[0])
        if self.backend_ not in formula.backends:
            raise Unsupported(f"pricer {self.name!r} prices {model.name!r} with backend "
                              f"{' or '.join(map(repr, formula.backends))} on the CPU only; "
                              f"got backend {self.backend_!r} on {device!r}")
        self.shape_ = np.shape(params["S"])
        self.theta_ = 1.0 if product == "european_call" else -1.0
        # torch tensors stay tensors (np.ravel would detach them: autograd through the torch back end)
        flat = {k: params[k].reshape(-1) if arrays.is_torch(params[k]) else np.ravel(params[k])
                for k in formula.names}
        inputs = super().prepare(model, product, flat, device,
                                 array_backend="torch" if self.backend_ == "torch" else "numpy")
        if model.name != "black_scholes":
            if self.backend_ == "numba":
                # JIT compile (untimed): the model's kernel copies its inputs, so one warm-up call fits all
                formula.function(*(inputs[k][:1] for k in formula.names), self.theta_)
            return inputs
        if self.backend_ == "numba":
            self.kernel_ = _numba_kernel()
            # JIT compile (untimed) for exactly the array types price() passes, read-only flags included
            self.kernel_(*(inputs[k][:1] for k in self.NAMES), self.theta_, np.empty(1))
        return inputs

    def price(self, inputs):
        formula = self.formula_
        if formula is not FORMULAS["black_scholes"]:
            return formula.function(*(inputs[k] for k in formula.names), self.theta_).reshape(self.shape_)
        if self.backend_ == "numba":
            out = np.empty(inputs["S"].shape)
            self.kernel_(*(inputs[k] for k in self.NAMES), self.theta_, out)
            return out.reshape(self.shape_)
        value = bs.price(inputs["S"], inputs["K"], inputs["T"], inputs["r"], inputs["q"], inputs["sigma"],
                         self.theta_)
        return value.reshape(self.shape_)


@hookimpl
def register_pricers(register):
    register(ClosedForm)
