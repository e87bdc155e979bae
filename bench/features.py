"""Features and targets of a learned pricing function, and their scaling.

An approximator learns ``y = f(X)`` on standardised arrays; this module is
the one place that maps model parameters to ``X`` and labels to ``y`` and
back, so every approximator sees the same inputs and a saved approximator
carries exactly the transform it was trained with.

Targets (``target``):

- ``price``: the option (or bond) price. With ``homogeneous = true`` (models
  whose prices are homogeneous of degree one in (S, K), ``Model.homogeneous``:
  Black-Scholes, Heston, Merton, Kou; not CEV or sinh_lv) the inputs
  use moneyness ``S/K`` in place of S and K and the target is ``V/K``
  (Liu, Oosterlee and Bohte 2019; the lecture notebook "Deep Learning for Option Pricing" fixes
  S0 = 1, which is the same thing). Without it, the varying parameters are
  the inputs and the price is the target.
- ``implied_vol``: the inverse map (IV-ANN): inputs ``S/K``, the varying
  market parameters and the price, target the Black-Scholes volatility. With
  ``squash = true`` (Liu, Oosterlee and Bohte's "gradient squash") the price enters as
  ``log(time value / K)``, time value = price - intrinsic value
  (``max(S e^{-qT} - K e^{-rT}, 0)`` for a call), which spreads the flat
  region of small time values; points whose time value is below
  ``min_time_value`` (times K) cannot be inverted stably and get NaN.

Standardisation uses the training set only (the lecture notebook fits a
second scaler on its test set; we never do): per column
``(x - mean) / std``, and the same for ``y``. The training set's bounding box
in feature space is kept: a point outside it is an extrapolation, and a
learned pricer returns NaN there with that reason.

Every transform works on NumPy arrays and on torch tensors (CPU or CUDA),
so the timed call of a learned pricer runs where its network does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from bench import arrays

TARGETS = ("price", "implied_vol")
IV_MODEL = "black_scholes"
IV_PRODUCTS = ("european_call", "european_put")
# how far outside the training box (relative to its width) a point still counts as inside
BOX_TOLERANCE = 1e-9


def _xp(x: Any):
    """numpy or torch, whichever ``x`` belongs to."""
    if arrays.is_torch(x):
        import torch

        return torch
    return np


def _stack(columns: list[Any]) -> Any:
    if not columns:
        raise ValueError("no input columns")
    if arrays.is_torch(columns[0]):
        import torch

        return torch.stack(columns, dim=1)
    return np.stack(columns, axis=1)


def _maximum(a: Any, b: float) -> Any:
    xp = _xp(a)
    return xp.clamp(a, min=b) if xp is not np else np.maximum(a, b)


def intrinsic(S, K, T, r, q, is_call: bool):
    """Discounted intrinsic value ``max(S e^{-qT} - K e^{-rT}, 0)`` (call) or its put twin: the lower bound."""
    xp = _xp(S)
    forward_gap = S * xp.exp(-q * T) - K * xp.exp(-r * T)
    return _maximum(forward_gap if is_call else -forward_gap, 0.0)


@dataclass
class FeatureMap:
    """Model parameters -> standardised features, labels -> standardised targets, and back.

    Built with :meth:`build` from the task's definition, then :meth:`fit` on
    the training set fixes the scaling. Plain data: it pickles and converts
    to JSON (``as_dict``) for the saved approximator's metadata.
    """

    model: str
    product: str
    target: str
    homogeneous: bool
    squash: bool
    min_time_value: float
    varying: list[str]  # the model parameters that vary in the training domain, in order
    fixed: dict[str, float]  # parameters held constant in training (a point must match them; not S, K if homogeneous)
    domain: dict[str, list[float]] = field(default_factory=dict)  # the training ranges of the varying ones
    names: list[str] = field(default_factory=list)  # feature names, in column order
    x_mean: list[float] = field(default_factory=list)
    x_std: list[float] = field(default_factory=list)
    y_mean: float = 0.0
    y_std: float = 1.0
    x_low: list[float] = field(default_factory=list)  # the training box in (unscaled) feature space
    x_high: list[float] = field(default_factory=list)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, model: Any, product: str, target: str, domain: Mapping[str, tuple[float, float]],
              fixed: Mapping[str, float], homogeneous: bool, squash: bool = False,
              min_time_value: float = 1e-7) -> "FeatureMap":
        """The map for a task's ``domain`` (ranges) and ``fixed`` values; ValueError naming what is inconsistent."""
        varying = list(domain)
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        if homogeneous and not getattr(model, "homogeneous", False):
            raise ValueError(f"homogeneous features (S/K, V/K) need prices homogeneous of degree one in S and K; "
                             f"{model.name!r}'s are not (a parameter is in price units, or there is no S and K)")
        if target == "implied_vol":
            if model.name != IV_MODEL or product not in IV_PRODUCTS:
                raise ValueError("an implied_vol target inverts Black-Scholes European prices: model "
                                 f"{IV_MODEL!r} and product european_call or european_put")
            if "sigma" not in varying:
                raise ValueError("an implied_vol target needs sigma in the domain (the volatilities to learn)")
            homogeneous = True  # the inverse map is learned on S/K and V/K
        elif squash:
            raise ValueError("squash (log of the time value) applies to the implied_vol target only")
        fmap = cls(model.name, product, target, homogeneous, squash, float(min_time_value), varying,
                   {k: float(v) for k, v in fixed.items()}, {k: [float(lo), float(hi)] for k, (lo, hi) in domain.items()})
        fmap.names = fmap._feature_names()
        if not fmap.names:
            raise ValueError("nothing varies in the domain: there is no input to learn from")
        return fmap

    def _feature_names(self) -> list[str]:
        names = []
        if self.homogeneous and ("S" in self.varying or "K" in self.varying):
            names.append("S/K")
        skip = {"S", "K"} if self.homogeneous else set()
        if self.target == "implied_vol":
            skip.add("sigma")
        names += [p for p in self.varying if p not in skip]
        if self.target == "implied_vol":
            names.append("log(time value/K)" if self.squash else "V/K")
        return names

    @property
    def dimension(self) -> int:
        return len(self.names)

    # ------------------------------------------------------------------ raw features and targets
    def raw_features(self, params: Mapping[str, Any], price: Any = None) -> tuple[Any, Any]:
        """Unscaled features (n, d) and a mask of the points that have them (False: NaN row).

        ``params``: model parameters (arrays or tensors of one length); for
        the implied_vol target, ``price`` is the option price to invert.
        """
        cols = []
        ok = None
        if self.homogeneous and ("S" in self.varying or "K" in self.varying):
            cols.append(params["S"] / params["K"])
        for name in self.names:
            if name in ("S/K", "log(time value/K)", "V/K"):
                continue
            cols.append(params[name] * 1.0)
        if self.target == "implied_vol":
            if price is None:
                raise ValueError("the implied_vol target needs the option prices")
            xp = _xp(price)
            K = params["K"]
            if self.squash:
                tv = (price - intrinsic(params["S"], K, params["T"], params["r"], params["q"],
                                        self.product == "european_call")) / K
                ok = tv >= self.min_time_value
                cols.append(xp.log(_maximum(tv, self.min_time_value)))
            else:
                cols.append(price / K)
        X = _stack(cols)
        if ok is None:
            ok = _xp(X).isfinite(X).all(1) if arrays.is_torch(X) else np.isfinite(X).all(axis=1)
        else:
            ok = ok & (_xp(X).isfinite(X).all(1) if arrays.is_torch(X) else np.isfinite(X).all(axis=1))
        return X, ok

    def raw_target(self, params: Mapping[str, np.ndarray], labels: np.ndarray) -> np.ndarray:
        """``y`` before scaling: V/K (homogeneous), V, or sigma (implied_vol; ``labels`` ignored)."""
        if self.target == "implied_vol":
            return np.asarray(params["sigma"], dtype=np.float64)
        if self.homogeneous:
            return labels / params["K"]
        return labels

    def output(self, y: Any, params: Mapping[str, Any]) -> Any:
        """Unscaled ``y`` -> what the approximator stands for: a price or a volatility."""
        if self.target == "price" and self.homogeneous:
            return y * params["K"]
        return y

    # ------------------------------------------------------------------ scaling
    def fit(self, X: np.ndarray, y: np.ndarray) -> "FeatureMap":
        """Fix the scaling from the TRAINING set only (never a validation or test set)."""
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        std = X.std(axis=0)
        self.x_mean = X.mean(axis=0).tolist()
        self.x_std = np.where(std > 0, std, 1.0).tolist()
        self.y_mean = float(y.mean())
        y_std = float(y.std())
        self.y_std = y_std if y_std > 0 else 1.0
        # the box a point must lie in: the declared training ranges where a feature has one (a sampler
        # never draws the very bound, yet the bound is inside the domain), else the training set's range
        low, high = X.min(axis=0), X.max(axis=0)
        for j, name in enumerate(self.names):
            declared = self.declared_range(name)
            if declared is not None:
                low[j], high[j] = declared
        self.x_low, self.x_high = low.tolist(), high.tolist()
        return self

    def declared_range(self, name: str) -> tuple[float, float] | None:
        """The range of feature ``name`` implied by the task's domain and fixed values, if it has one."""
        def span(p):
            if p in self.domain:
                return tuple(self.domain[p])
            if p in self.fixed:
                return (self.fixed[p], self.fixed[p])
            return None

        if name == "S/K":
            s, k = span("S"), span("K")
            if s is None or k is None:
                return None
            return (s[0] / k[1], s[1] / k[0])
        if name in self.domain:
            return tuple(self.domain[name])
        return None

    def _constants(self, like: Any) -> tuple[Any, Any]:
        mean, std = np.asarray(self.x_mean), np.asarray(self.x_std)
        if arrays.is_torch(like):
            import torch

            return (torch.as_tensor(mean, dtype=like.dtype, device=like.device),
                    torch.as_tensor(std, dtype=like.dtype, device=like.device))
        return mean, std

    def scale_x(self, X: Any) -> Any:
        mean, std = self._constants(X)
        return (X - mean) / std

    def scale_y(self, y: Any) -> Any:
        return (y - self.y_mean) / self.y_std

    def unscale_y(self, y: Any) -> Any:
        return y * self.y_std + self.y_mean

    def scale_gradient(self, dydx: np.ndarray) -> np.ndarray:
        """Derivatives of unscaled y by unscaled features -> of scaled y by scaled features."""
        return dydx * np.asarray(self.x_std)[None, :] / self.y_std

    def inside(self, X: Any) -> Any:
        """Rows of unscaled features inside the training box (with a hair of tolerance)."""
        low, high = np.asarray(self.x_low), np.asarray(self.x_high)
        pad = BOX_TOLERANCE * np.maximum(high - low, 1e-300)
        if arrays.is_torch(X):
            import torch

            lo = torch.as_tensor(low - pad, dtype=X.dtype, device=X.device)
            hi = torch.as_tensor(high + pad, dtype=X.dtype, device=X.device)
            return ((X >= lo) & (X <= hi)).all(1)
        return ((X >= low - pad) & (X <= high + pad)).all(axis=1)

    def fixed_ok(self, params: Mapping[str, Any], like: Any) -> Any:
        """Per point: every parameter held constant in training has that value here (a mask like ``like``'s rows).

        With homogeneous features S and K enter only as S/K (prices scale with them), so a value of S or K
        fixed in training does not restrict them: the training box of S/K does, or, where both were
        fixed, the one value of S/K.
        """
        if arrays.is_torch(like):
            import torch

            ok = torch.ones(like.shape[0], dtype=torch.bool, device=like.device)
        else:
            ok = np.ones(like.shape[0], dtype=bool)
        for name, value in self.fixed.items():
            if self.homogeneous and name in ("S", "K"):
                continue
            if name in params:
                ok = ok & (abs(params[name] - value) <= 1e-12 * max(1.0, abs(value)))
        if self.homogeneous and "S/K" not in self.names and "S" in params and "K" in params:
            # S and K both fixed in training: S/K is no feature, and its one value must hold
            moneyness = self.fixed["S"] / self.fixed["K"]
            ok = ok & (abs(params["S"] / params["K"] - moneyness) <= 1e-12 * max(1.0, moneyness))
        return ok

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureMap":
        return cls(**dict(data))
