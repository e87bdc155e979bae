"""The Python API: price, implied volatility and method listing in one call each.

These functions run a method exactly as the runner does (construct with
settings, untimed ``prepare``, then the timed call), without the timing.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from bench import arrays
from bench.methods import IVResult, PriceResult
from bench.plugins import get_registry

IV_MODEL = "black_scholes"


def split_kwargs(cls: type, model_params: Mapping[str, Any], kwargs: Mapping[str, Any], what: str):
    """Separate model parameters from method settings; unknown names raise ValueError."""
    params, settings = {}, {}
    for key, value in kwargs.items():
        if key in model_params:
            params[key] = value
        elif key in cls.settings:
            settings[key] = value
        else:
            raise ValueError(
                f"{key!r} is neither a parameter of {what} ({', '.join(model_params)}) nor a setting of "
                f"{cls.kind} {cls.name!r} ({', '.join(cls.settings) or 'no settings'})"
            )
    return params, settings


def _learned(kind: str, method: Any):
    """``method`` if it names a method; else a fitted approximator wrapped as the ``learned`` method of ``kind``."""
    if isinstance(method, str):
        return None
    from bench.approximators import LearnedFunction

    if not isinstance(method, LearnedFunction):
        raise TypeError(f"method must be a registered name or a fitted approximator (bench.load_approximator), "
                        f"got {type(method).__name__}")
    return get_registry().get(kind, "learned").from_function(method)


def price(method: Any, /, *, model: str, product: str, device: str = "cpu", **kwargs: Any) -> np.ndarray:
    """Prices from pricer ``method``; parameters broadcast like NumPy arrays.

    ``method`` is a pricer's name, or a fitted approximator
    (:func:`bench.load_approximator`) that learned prices of ``model`` and
    ``product``. Keyword arguments are the model's parameters (``S, K, T, r,
    q, sigma`` for Black-Scholes) and the method's settings.
    """
    registry = get_registry()
    learned = _learned("pricer", method)
    if learned is not None:
        mdl = registry.model(model)
        mdl.check_product(product)
        params = mdl.validate(kwargs)
        shape = np.shape(params[next(iter(params))])
        out = learned.price(learned.prepare(mdl, product, params, device))
        return arrays.to_numpy(out.price).reshape(shape)
    cls = registry.get("pricer", method)
    mdl = registry.model(model)
    mdl.check_product(product)
    raw, settings = split_kwargs(cls, mdl.params, kwargs, f"model {model!r}")
    params = mdl.validate(raw)
    if not cls.can_price(model, product):
        raise ValueError(f"pricer {method!r} does not price {product!r} under {model!r}")
    pricer = cls(**settings)
    shape = np.shape(params[next(iter(params))])
    inputs = pricer.prepare(mdl, product, params, device)
    out = pricer.price(inputs)
    if isinstance(out, PriceResult):
        out = out.price
    return arrays.to_numpy(out).reshape(shape)


def iv_inputs(price, S, K, T, r, q, kind) -> dict[str, np.ndarray]:
    """Validated, broadcast root-finder inputs; ``kind`` is "call"/"put" or an array of them."""
    mdl = get_registry().model(IV_MODEL)
    params = mdl.validate({"S": S, "K": K, "T": T, "r": r, "q": q, "sigma": 0.0})
    kind_arr = np.asarray(kind)
    bad = ~np.isin(kind_arr, ("call", "put"))
    if np.any(bad):
        raise ValueError(f"kind must be 'call' or 'put', got {np.ravel(kind_arr[bad] if kind_arr.ndim else kind_arr)[0]!r}")
    try:
        price_arr = np.asarray(price, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"parameter 'price' must be numeric, got {price!r}") from None
    try:
        shape = np.broadcast_shapes(price_arr.shape, kind_arr.shape, params["S"].shape)
    except ValueError:
        raise ValueError(f"shapes do not broadcast: price{price_arr.shape}, kind{kind_arr.shape}, "
                         f"S/K/T/r/q{params['S'].shape}") from None
    out = {k: np.broadcast_to(params[k], shape) for k in ("S", "K", "T", "r", "q")}
    out["price"] = np.broadcast_to(price_arr, shape)
    out["is_call"] = np.broadcast_to(kind_arr == "call", shape)
    return out


def implied_vol(
    method: Any,
    /,
    *,
    price: Any,
    S: Any,
    K: Any,
    T: Any,
    r: Any,
    q: Any = 0.0,
    kind: Any = "call",
    device: str = "cpu",
    **settings: Any,
) -> IVResult:
    """Black-Scholes implied volatility by root finder ``method`` (a name, or a fitted IV approximator).

    Returns an :class:`~bench.methods.IVResult` with ``.sigma`` (NaN where
    not found), ``.converged``, ``.iterations`` and ``.reasons``.
    """
    inputs = iv_inputs(price, S, K, T, r, q, kind)
    shape = inputs["S"].shape
    finder = _learned("root_finder", method)
    if finder is None:
        finder = get_registry().get("root_finder", method)(**settings)
    elif settings:
        raise ValueError(f"a fitted approximator takes no settings, got {', '.join(settings)}")
    flat = {k: np.ravel(v) for k, v in inputs.items()}
    res = finder.solve(finder.prepare(flat, device)).to_host()
    return IVResult(
        sigma=res.sigma.reshape(shape),
        converged=res.converged.reshape(shape),
        iterations=res.iterations.reshape(shape),
        status=res.status.reshape(shape),
    )


def setting_spec(spec: Any) -> dict[str, Any]:
    """A setting as plain data: default, type name, choices or range, description."""
    out: dict[str, Any] = {"default": spec.default, "type": getattr(spec.type, "__name__", str(spec.type)),
                           "description": spec.doc}
    if spec.choices is not None:
        out["choices"] = list(spec.choices)
    if spec.min is not None:
        out["min"] = spec.min
    if spec.max is not None:
        out["max"] = spec.max
    return out


def methods(kind: str | None = None) -> list[dict[str, Any]]:
    """Registered methods (pricers, root finders, approximators) as dicts, optionally of one kind."""
    registry = get_registry()
    method_kinds = ("pricer", "root_finder", "approximator")
    if kind is not None and kind not in method_kinds:
        raise ValueError(f"unknown method kind {kind!r}; use pricer, root_finder or approximator")
    kinds = method_kinds if kind is None else (kind,)
    rows = []
    for k in kinds:
        for name in registry.names(k):
            entry = registry.entry(k, name)
            cls = entry.cls
            rows.append(
                {
                    "name": name,
                    "kind": k,
                    "version": cls.version,
                    "plugin": entry.plugin,
                    "devices": list(cls.devices),
                    "supports": {m: list(p) for m, p in getattr(cls, "supports", {}).items()},
                    "settings": {s: spec.default for s, spec in cls.settings.items()},
                    "setting_specs": {s: setting_spec(spec) for s, spec in cls.settings.items()},
                    "description": cls.description,
                }
            )
    return rows
