"""An empty batch gives an empty result, never an exception: every pricer but mlmc (its own tests), with
each back end and Monte Carlo scheme, and every root finder with each back end."""

from __future__ import annotations

import numpy as np
import pytest

import bench
from bench import arrays
from bench.methods import PriceResult
from bench.plugins import get_registry

torch = pytest.importorskip("torch")

# one admissible parameter set per model; S (r0 for bonds) is made empty
PARAMS = {
    "black_scholes": dict(S=100.0, K=100.0, T=1.0, r=0.05, q=0.0, sigma=0.2),
    "heston": dict(S=100.0, K=100.0, T=1.0, r=0.05, q=0.0, v0=0.04, kappa=1.5, theta=0.04, xi=0.5, rho=-0.7),
    "merton": dict(S=100.0, K=100.0, T=1.0, r=0.05, q=0.0, sigma=0.2, lam=0.5, mu_j=-0.1, sigma_j=0.2),
    "kou": dict(S=100.0, K=100.0, T=1.0, r=0.05, q=0.0, sigma=0.2, lam=1.0, p=0.4, eta1=10.0, eta2=5.0),
    "cev": dict(S=100.0, K=100.0, T=1.0, r=0.05, q=0.0, sigma=0.2, beta=0.5),
    "sinh_lv": dict(S=100.0, K=100.0, T=1.0, r=0.05, lam=20.0),
    "black_karasinski": dict(r0=0.05, T=1.0, alpha=0.5, sigma=0.2, mu=0.05, mu_sin=0.0),
}
PRODUCTS = ("european_call", "european_put", "american_put", "american_call", "zero_coupon_bond")


def _settings(name: str, model: str, product: str) -> list[dict]:
    """The configurations worth covering: each back end, each Monte Carlo scheme and flag."""
    if name == "closed_form":
        from pricebench_plugins.pricers.closed_form import FORMULAS

        return [{"backend": b} for b in FORMULAS[model].backends]
    if name == "heston_integration":
        return [{}, {"integration": "quad"}, {"backend": "torch"}]
    if name == "cos":
        return [{"backend": "numpy"}, {"backend": "torch"}]
    if name == "fd":
        return [dict(nx=32, nt=8)]
    if name == "binomial":
        return [dict(steps=21), dict(steps=20, tree="crr", richardson=True, parallel=True)]
    if name == "mc":
        from pricebench_plugins.pricers.mc import _TORCH_SCHEMES, SCHEMES

        out = []
        for scheme in SCHEMES[model]:
            out += [dict(scheme=scheme, paths=64), dict(scheme=scheme, paths=64, antithetic=True, dt=0.25)]
            if not product.startswith("american"):
                out.append(dict(scheme=scheme, paths=64, control_variate=True))
            if scheme in _TORCH_SCHEMES.get(model, ()) and product.startswith("european"):
                out.append(dict(scheme=scheme, paths=64, backend="torch"))
        return out
    raise AssertionError(f"no configurations for pricer {name!r}")


def _cases():
    registry = get_registry()
    for name in ("closed_form", "heston_integration", "cos", "fd", "binomial", "mc"):
        cls = registry.get("pricer", name)
        for model, params in PARAMS.items():
            products = registry.model(model).products
            for product in PRODUCTS:
                if product in products and cls.can_price(model, product):
                    for settings in _settings(name, model, product):
                        label = "-".join([name, model, product] + [f"{k}={v}" for k, v in settings.items()])
                        yield pytest.param(name, model, product, settings, id=label)


CASES = list(_cases())


def test_every_pricer_is_covered():
    """A new built-in pricer (mlmc and learned aside: their own tests) needs its configurations here."""
    covered = {c.values[0] for c in CASES}
    registry = get_registry()
    registered = {n for n in registry.names("pricer")
                  if registry.get("pricer", n).__module__.startswith("pricebench_plugins.")}
    assert registered - covered <= {"mlmc", "learned"}, registered - covered


@pytest.mark.parametrize("name, model, product, settings", CASES)
def test_empty_batch_prices_to_an_empty_result(name, model, product, settings):
    first = "r0" if model == "black_karasinski" else "S"
    for shape in ((0,), (0, 3)):
        params = dict(PARAMS[model], **{first: np.empty(shape)})
        # the API (prepare, then price)
        out = bench.price(name, model=model, product=product, **settings, **params)
        assert isinstance(out, np.ndarray) and out.shape == shape
        # and the pricer's own PriceResult, extras included
        registry = get_registry()
        mdl = registry.model(model)
        full = {k: np.broadcast_to(v, shape) for k, v in mdl.validate(params).items()}
        pricer = registry.get("pricer", name)(**settings)
        res = pricer.price(pricer.prepare(mdl, product, full))
        if isinstance(res, PriceResult):
            for extra in (res.stderr, res.reason):
                assert extra is None or np.size(extra) == 0
            res = res.price
        assert arrays.to_numpy(res).size == 0


FINDER_CASES = [("newton", b) for b in ("numba", "numpy", "torch")]
FINDER_CASES += [(m, b) for m in ("secant", "bisection", "brent") for b in ("numba", "numpy", "torch")]
FINDER_CASES += [("scipy_brentq", None)]


def test_every_root_finder_is_covered():
    registry = get_registry()
    registered = {n for n in registry.names("root_finder")
                  if registry.get("root_finder", n).__module__.startswith("pricebench_plugins.")}
    assert registered - {"learned"} <= {m for m, _ in FINDER_CASES}  # learned: tests/test_learned.py


@pytest.mark.parametrize("name, backend", FINDER_CASES)
@pytest.mark.parametrize("shape", [(0,), (0, 3)])
def test_empty_batch_solves_to_an_empty_result(name, backend, shape):
    settings = {} if backend is None else {"backend": backend}
    res = bench.implied_vol(name, price=np.empty(shape), S=100.0, K=100.0, T=1.0, r=0.05, **settings)
    for field in (res.sigma, res.converged, res.iterations, res.status, res.reasons):
        assert field.shape == shape
    assert res.summary() == {}
    # prepare + solve directly, on flat inputs, as the runner calls it
    finder = get_registry().get("root_finder", name)(**settings)
    inputs = {k: np.empty(0) for k in ("price", "S", "K", "T", "r", "q")}
    inputs["is_call"] = np.empty(0, dtype=bool)
    out = finder.solve(finder.prepare(inputs)).to_host()
    assert out.sigma.shape == (0,) and out.status.shape == (0,)


CUDA_CASES = [("closed_form", "black_scholes", {}), ("heston_integration", "heston", {})]
CUDA_CASES += [("cos", m, {}) for m in ("black_scholes", "heston", "merton", "kou")]
CUDA_CASES += [("mc", "black_scholes", {"paths": 64}), ("mc", "heston", {"paths": 64, "scheme": "euler"}),
               ("mc", "heston", {"paths": 64, "control_variate": True})]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.gpu
def test_empty_batch_on_cuda():
    for name, model, settings in CUDA_CASES:
        for product in ("european_call", "european_put"):
            out = bench.price(name, model=model, product=product, device="cuda", **settings,
                              **dict(PARAMS[model], S=np.empty(0)))
            assert out.shape == (0,), (name, model, settings)
    for name in ("newton", "secant", "bisection", "brent"):
        res = bench.implied_vol(name, price=np.empty((0, 3)), S=100.0, K=100.0, T=1.0, r=0.05, device="cuda")
        assert res.sigma.shape == (0, 3) and res.summary() == {}
