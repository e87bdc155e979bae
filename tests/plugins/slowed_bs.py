"""A test plugin for ``pricebench compare``: Black-Scholes calls that can be made slower on purpose.

``slowed_bs`` prices the batch by the closed form ``passes`` times (the last pass is the answer), and
``passes * (1 + slowdown)`` times when the environment variable ``SLOWED_BS_SLOWDOWN`` holds a
slow-down (``0.1`` = 10% more work). The slow-down is read from the environment, not a setting, on
purpose: a setting is part of the cell key, and the point is to slow a cell down while it stays the same
cell, as a regression in a method's code would. Used by tests/test_compare.py and by the README's
sensitivity measurement (``pricebench run ... --plugins-dir tests/plugins``).
"""

from __future__ import annotations

import os

import numpy as np
from scipy.special import ndtr

from bench import hookimpl
from bench.methods import Pricer, Setting

ENV = "SLOWED_BS_SLOWDOWN"


def _call(S, K, T, r, q, sigma):
    vol = sigma * np.sqrt(T)
    d1 = (np.log(S / K) + (r - q) * T) / vol + 0.5 * vol
    return S * np.exp(-q * T) * ndtr(d1) - K * np.exp(-r * T) * ndtr(d1 - vol)


class SlowedBS(Pricer):
    name = "slowed_bs"
    version = "1"
    description = f"Black-Scholes calls by the formula, computed passes x (1 + ${ENV}) times"
    devices = ("cpu",)
    supports = {"black_scholes": ("european_call",)}
    settings = {"passes": Setting(10, int, "how many times the batch is priced per call", min=1, max=1000)}

    def prepare(self, model, product, params, device="cpu"):
        inputs = super().prepare(model, product, params, device)
        slowdown = float(os.environ.get(ENV, "0") or 0)
        if not (0.0 <= slowdown <= 100.0):
            raise ValueError(f"{ENV}={slowdown!r}: expected a slow-down between 0 and 100")
        self._repeats = max(1, round(self.passes * (1.0 + slowdown)))
        return inputs

    def price(self, inputs):
        p = inputs
        for _ in range(self._repeats):
            out = _call(p["S"], p["K"], p["T"], p["r"], p["q"], p["sigma"])
        return out


@hookimpl
def register_pricers(register):
    register(SlowedBS)
