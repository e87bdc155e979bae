"""A fitted approximator as a method: the pricer ``learned`` and the root finder ``learned``.

They put a learned function beside the methods it stands in for, in the
same leaderboard: a Heston-ANN in a ``price`` task next to COS, an IV-ANN in
an ``implied_vol`` task next to Newton and Brent. Settings (exactly one):

- ``path``: a ``.pbapprox`` file (:func:`bench.load_approximator`);
- ``fitted``: ``"task/stem"`` (optionally ``"task/stem@cuda"``): the
  approximator that cell ``stem`` (the method's label, else its name) of the
  ``approximate`` task ``task`` fitted earlier in the same run. The runner
  finishes that task first and hands the fitted file to this cell.

Set-up (untimed): load the file, check it learned this model and product
(and a price for the pricer, a volatility for the root finder), move it to
the device. Timed: features, prediction, the inverse transform, and for the
root finder a check of every answer.

Where the function cannot answer it returns NaN with the reason: outside
the training domain (it does not extrapolate), a parameter held constant
in training with another value, a time value below what it can invert.

The root finder's ``converged`` means what it says for an iterative method:
the answer is within ``vol_tol`` of the implied volatility. An approximator
does not iterate, so each answer is checked by two Black-Scholes repricings:
the price must lie between BS(sigma - vol_tol) and BS(sigma + vol_tol)
(the intrinsic value where sigma - vol_tol <= 0), which, the price being
increasing in the volatility, puts the implied volatility within
``vol_tol`` of sigma. (A one-step Newton estimate |BS(sigma) - price| / vega
is not a bound where vega changes fast: it passed answers 0.0128 off with
``vol_tol`` = 0.01.) Answers that fail get NaN and status ``inaccurate``
(``iterations`` is 0 for every option: there are none).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bench import arrays, artifacts, hookimpl
from bench.approximators import LearnedFunction, from_bytes, load_approximator
from bench.cells import cell_stems
from bench.features import intrinsic
from bench.methods import IVResult, IVStatus, Pricer, RootFinder, Setting, SettingError

_PATH = Setting("", str, "a .pbapprox file saved by a run or by bench.save_approximator")
_FITTED = Setting("", str, "'task/stem' (or 'task/stem@cuda'): the approximator fitted by cell 'stem' of an "
                           "earlier approximate task of the same suite")


def _parse_fitted(value: str) -> tuple[str, str, str]:
    ref, _, device = value.partition("@")
    task, sep, stem = ref.partition("/")
    if not sep or not task or not stem or "/" in stem or device not in ("", "cpu", "cuda"):
        raise SettingError(f"setting 'fitted' must read 'task/stem' or 'task/stem@cuda', got {value!r}", "fitted")
    return task, stem, device or "cpu"


class _Learned:
    """What the pricer and the root finder share: settings, requirements, loading."""

    devices = ("cpu", "cuda")
    settings = {"path": _PATH, "fitted": _FITTED}
    _target = "price"

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        if bool(self.path) == bool(self.fitted):
            raise SettingError(f"{self.kind} 'learned' needs exactly one of 'path' and 'fitted'",
                               "path" if not self.path else "fitted")
        if self.fitted:
            _parse_fitted(self.fitted)

    @classmethod
    def requires(cls, settings):
        fitted = settings.get("fitted") or ""
        if not fitted:
            return ()
        task, stem, device = _parse_fitted(fitted)
        return (f"{task}/{stem}.{device}.pbapprox",)

    @classmethod
    def check_requirements(cls, settings, tasks, model=None, product=None):
        fitted = settings.get("fitted") or ""
        if not fitted:
            return
        name, stem, _ = _parse_fitted(fitted)
        task = tasks.get(name)
        if task is None:
            raise SettingError(f"no approximate task {name!r} before this one (tasks before it: "
                               f"{', '.join(tasks) or 'none'})", "fitted")
        if task.kind != "approximate":
            raise SettingError(f"task {name!r} is a {task.kind!r} task, not an approximate one", "fitted")
        stems = sorted(set(cell_stems(task).values()))
        if stem not in stems:
            raise SettingError(f"task {name!r} has no method {stem!r} (its methods: {', '.join(stems)})", "fitted")
        if task.options.get("target") != cls._target:
            raise SettingError(f"task {name!r} learns {task.options.get('target')!r}; the {cls.kind} 'learned' "
                               f"needs {cls._target!r}", "fitted")
        # a root finder inverts Black-Scholes whatever model made the prices: only the product must match
        if cls._target == "implied_vol":
            model = task.model
        if model is not None and (task.model, task.product) != (model, product):
            raise SettingError(f"task {name!r} learns {task.product} under {task.model}; this task prices "
                               f"{product} under {model}", "fitted")

    @classmethod
    def from_function(cls, learned: LearnedFunction):
        """An instance evaluating ``learned`` (a loaded or just-fitted function; what ``bench.price`` uses)."""
        method = cls(path=str(learned.meta.get("path", "<in memory>")))
        method._function = learned
        return method

    def _load(self, model: str, product: str) -> LearnedFunction:
        if getattr(self, "_function", None) is not None:
            learned = self._function
        elif self.path:
            learned = load_approximator(self.path)
        else:
            task, stem, device = _parse_fitted(self.fitted)
            data = artifacts.lookup(f"{task}/{stem}.{device}.pbapprox")
            if data is None:
                raise ValueError(f"the approximator {self.fitted!r} is not available: its cell did not finish "
                                 "with a fitted model (see its row)")
            learned = from_bytes(data, self.fitted)
        if learned.target != self._target:
            raise ValueError(f"{self.path or self.fitted} learned {learned.target!r}, not {self._target!r}")
        if (learned.model, learned.product) != (model, product):
            raise ValueError(f"{self.path or self.fitted} learned {learned.product} under {learned.model}, "
                             f"not {product} under {model}")
        return learned


def _reasons(codes: np.ndarray) -> np.ndarray:
    table = np.array([LearnedFunction.reason_text(c) for c in range(4)], dtype=object)
    return table[codes]


class LearnedPricer(_Learned, Pricer):
    name = "learned"
    version = "1"
    description = "a fitted approximator (a .pbapprox file, or one fitted earlier in the run) as a pricer"
    supports: dict = {}  # whatever the file learned: checked when it is loaded

    @classmethod
    def can_price(cls, model, product):
        return True

    def check_task(self, model, product):
        if self.path:
            try:
                self._load(model, product)
            except ValueError as exc:
                raise SettingError(str(exc), "path") from None

    def prepare(self, model, product, params, device="cpu", array_backend=None):
        self.check_device(device)
        self.learned_ = self._load(model.name, product).to(device)
        return arrays.to_device({k: np.ravel(v) for k, v in params.items()}, device, backend=array_backend)

    def price(self, inputs):
        from bench.methods import PriceResult

        values, codes, _ = self.learned_.evaluate(inputs, reasons=True)
        return PriceResult(values, reason=_reasons(codes))


class LearnedRootFinder(_Learned, RootFinder):
    name = "learned"
    version = "2"  # 2: converged is an exact bracket check, not a Newton estimate
    description = "a fitted IV-ANN (a .pbapprox file, or one fitted earlier in the run) as a root finder"
    settings = {**_Learned.settings,
                "vol_tol": Setting(1e-3, float, "converged: the price lies between BS(sigma - vol_tol) and "
                                               "BS(sigma + vol_tol), so the answer is within this of the implied "
                                               "volatility", min=1e-12)}
    _target = "implied_vol"

    def prepare(self, inputs, device="cpu", array_backend=None):
        self.check_device(device)
        calls = np.asarray(inputs["is_call"], dtype=bool)
        product = "european_call" if calls.all() or calls.size == 0 else "european_put"
        if calls.size and not (calls.all() or (~calls).all()):
            raise ValueError("a learned implied volatility inverts calls or puts, not a mix")
        self.learned_ = self._load("black_scholes", product).to(device)
        return arrays.to_device({k: np.ravel(v) for k, v in inputs.items()}, device, backend=array_backend)

    def solve(self, inputs):
        params = {k: inputs[k] for k in ("S", "K", "T", "r", "q")}
        price = inputs["price"]
        sigma, codes, _ = self.learned_.evaluate(params, price, reasons=True)
        within = _within_tol(sigma, price, params, self.learned_.product == "european_call", self.vol_tol)
        good = within.cpu().numpy() if arrays.is_torch(within) else within
        sigma_host = sigma
        codes = np.asarray(codes)
        status = np.where(codes == 0, np.where(good, IVStatus.CONVERGED, IVStatus.INACCURATE),
                          IVStatus.OUTSIDE_DOMAIN).astype(np.int8)
        unanswered = np.flatnonzero(codes != 0)
        if unanswered.size:  # why not (on the host, for these points only): bad input, at the bound, or outside
            status[unanswered] = _why_not(params, price, codes[unanswered], unanswered,
                                          self.learned_.product == "european_call")
        converged = status == IVStatus.CONVERGED
        if arrays.is_torch(sigma_host):
            import torch

            mask = torch.as_tensor(converged, device=sigma_host.device)
            sigma_host = torch.where(mask, sigma_host, torch.full_like(sigma_host, math.nan))
        else:
            sigma_host = np.where(converged, sigma_host, np.nan)
        return IVResult(sigma_host, converged, np.zeros(converged.size, dtype=np.int32), status)


def _why_not(params, price, codes, idx, is_call: bool) -> np.ndarray:
    """Statuses of points a learned inverse did not answer: bad input (as every root finder says it), a price
    at or below the intrinsic value, else outside the training domain (or a time value too small to invert)."""
    p = {k: arrays.to_numpy(v).reshape(-1)[idx] for k, v in params.items()}
    v = arrays.to_numpy(price).reshape(-1)[idx]
    with np.errstate(all="ignore"):
        finite = np.isfinite(v) & np.all([np.isfinite(x) for x in p.values()], axis=0)
        invalid = ~finite | (p["S"] <= 0) | (p["K"] <= 0) | (p["T"] <= 0)
        at_bound = (codes == 3) & (v <= intrinsic(p["S"], p["K"], p["T"], p["r"], p["q"], is_call))
    return np.where(invalid, IVStatus.INVALID_INPUT,
                    np.where(at_bound, IVStatus.BELOW_LOWER_BOUND, IVStatus.OUTSIDE_DOMAIN)).astype(np.int8)


def _bs_price(sigma, p, is_call: bool):
    """Black-Scholes prices at volatility ``sigma`` (> 0) on NumPy arrays or torch tensors."""
    if arrays.is_torch(sigma):
        import torch

        ndtr, xp = torch.special.ndtr, torch
    else:
        from scipy.special import ndtr

        xp = np
    S, K, T, r, q = p["S"], p["K"], p["T"], p["r"], p["q"]
    vol = sigma * xp.sqrt(T)
    d1 = (xp.log(S / K) + (r - q) * T) / vol + 0.5 * vol
    d2 = d1 - vol
    disc_s, disc_k = S * xp.exp(-q * T), K * xp.exp(-r * T)
    return disc_s * ndtr(d1) - disc_k * ndtr(d2) if is_call else disc_k * ndtr(-d2) - disc_s * ndtr(-d1)


def _within_tol(sigma, price, p, is_call: bool, tol: float):
    """Per answer: the implied volatility of ``price`` is within ``tol`` of ``sigma`` (False where unknown).

    The price increases with the volatility, so it is exactly when BS(sigma - tol) <= price <= BS(sigma + tol),
    BS at volatility <= 0 being the lower bound (the discounted intrinsic value).
    """
    xp = _torch() if arrays.is_torch(sigma) else np
    with np.errstate(all="ignore"):
        positive = sigma > 0  # False for NaN: no answer
        low_vol = sigma - tol
        safe = xp.where(positive, sigma, xp.ones_like(sigma))
        high = _bs_price(safe + tol, p, is_call)
        low = xp.where(low_vol > 0, _bs_price(xp.where(low_vol > 0, low_vol, safe), p, is_call),
                       intrinsic(p["S"], p["K"], p["T"], p["r"], p["q"], is_call))
        return positive & (low <= price) & (price <= high)


def _torch():
    import torch

    return torch


@hookimpl
def register_pricers(register):
    register(LearnedPricer)


@hookimpl
def register_root_finders(register):
    register(LearnedRootFinder)
