"""The conformance kit (bench.testing): every built-in method passes it, and each check
catches a method broken in the way it looks for.

Slow methods run with cheap settings (few paths, small grids, a loose MLMC target):
the kit checks contracts, not accuracy. ``settings_grid`` adds the combinations each
method's ``__init__`` must either reject or run: back ends, schemes, and the cross-setting
cases issue 8 found failing only at run time (``mlmc`` Lmax < Lmin or M**Lmax > 2**31,
``fd`` rannacher > 2 nt).
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from scipy.special import ndtr

from bench import testing
from bench.methods import IVResult, IVStatus, Pricer, PriceResult, RootFinder, Setting, SettingError
from bench.plugins import get_registry
from bench.testing import PRICER_CHECKS, ROOT_FINDER_CHECKS, check_pricer, check_root_finder, parametrize_with_checks

BUILTIN_PRICERS = ("binomial", "closed_form", "cos", "fd", "heston_integration", "mc", "mlmc")
BUILTIN_ROOT_FINDERS = ("bisection", "brent", "newton", "scipy_brentq", "secant")
BACKENDS = [{"backend": b} for b in ("numba", "numpy", "torch")]

# per method: cheap settings for slow methods, and the setting combinations to try
OPTIONS = {
    "closed_form": {"settings_grid": [{"backend": b} for b in ("numpy", "numba", "torch")]},
    "cos": {"settings_grid": [{"backend": "numpy"}, {"backend": "torch"}, {"use_c4": False, "N": 64}]},
    "heston_integration": {"settings_grid": [{"integration": "quad"}, {"backend": "torch"}]},
    # fd NaNs what its grid does not resolve (beyond 1e-2 (S e^{-qT} + K e^{-rT}) of the bounds); what remains at
    # nx = 200 is discretisation error: 1.4e-3 below intrinsic for an American call at K = 1, S = 100, and
    # 0.16-0.28 below the bounds for Merton and Kou European options at K = 100 S, at most 2.8e-5 of S + K
    "fd": {"settings": {"nx": 200, "nt": 50}, "bound_tol": 1e-4,
           "settings_grid": [{"scheme": "bdf2"}, {"rannacher": 0}, {"rannacher": 16, "nt": 4}]},
    "binomial": {"settings": {"steps": 64},
                 "settings_grid": [{"tree": "crr"}, {"richardson": True}, {"parallel": True}]},
    "mc": {"settings": {"paths": 500},
           "settings_grid": [{"scheme": s} for s in ("exact", "euler", "milstein", "qe")]
           + [{"antithetic": True, "control_variate": True}, {"dt": 0.25}]},
    # eps is an RMS error target: the kit's bounds allow for it (about 2 eps on S + K = 200)
    "mlmc": {"settings": {"eps": 0.25, "N0": 100, "Lmax": 6, "max_cost": 2e5}, "bound_tol": 2.5e-3,
             "settings_grid": [{"Lmin": 5, "Lmax": 3}, {"M": 16, "Lmax": 30}, {"scheme": "euler"},
                               {"scheme": "milstein"}]},
    "newton": {"settings_grid": BACKENDS},
    "secant": {"settings_grid": BACKENDS + [{"sigma0": 0.3, "sigma1": 0.3}]},
    "bisection": {"settings_grid": BACKENDS + [{"lower": 6.0, "upper": 5.0}]},
    "brent": {"settings_grid": BACKENDS + [{"lower": 6.0, "upper": 5.0}]},
    "scipy_brentq": {"settings_grid": [{"cdf": "erfc"}, {"cdf": "norm_cdf"}]},
}


def _builtins():
    """Every pricer and root finder the built-in plugins (this distribution's entry points) register."""
    registry = get_registry()
    ours = {p.name for p in registry.plugins if p.source == "entry point: pricebench"}
    return [registry.get(kind, name) for kind in ("pricer", "root_finder") for name in registry.names(kind)
            if registry.entry(kind, name).plugin in ours and name not in NEEDS_A_FITTED_FILE]


# ``learned`` prices with a fitted approximator file it is given; it has no defaults to check
# and prices only the model it was fitted on: tests/test_learned.py covers it
NEEDS_A_FITTED_FILE = ("learned",)


def test_every_builtin_is_checked():
    names = {cls.name for cls in _builtins()}
    assert names >= set(BUILTIN_PRICERS + BUILTIN_ROOT_FINDERS)
    assert set(OPTIONS) <= names


@pytest.mark.filterwarnings("ignore:MLMC")  # points over mlmc's work budget are NaN, with a warning
@parametrize_with_checks(_builtins(), options=OPTIONS)
def test_builtin_conforms(method, check):
    check(method)


# --------------------------------------------------------------------------- well-behaved methods


def _bs(S, K, T, r, q, sigma, theta):
    with np.errstate(all="ignore"):
        D, F, v = np.exp(-r * T), S * np.exp((r - q) * T), sigma * np.sqrt(T)
        vs = np.where(v > 0, v, 1.0)
        d1 = np.log(F / K) / vs + 0.5 * vs
        value = theta * D * (F * ndtr(theta * d1) - K * ndtr(theta * (d1 - vs)))
    return np.where(v > 0, value, D * np.maximum(theta * (F - K), 0.0))


class GoodPricer(Pricer):
    """Black-Scholes European options: a method that passes every check."""

    name = "good_pricer"
    supports = {"black_scholes": ("european_call", "european_put")}
    settings = {
        "nodes": Setting(16, int, "unused", min=2, max=64),
        "flavour": Setting("plain", str, "unused", choices=("plain", "fancy")),
        "scale": Setting(1.0, float, "unused", min=0.5),
        "fast": Setting(True, bool, "unused"),
    }

    def prepare(self, model, product, params, device="cpu"):
        inputs = super().prepare(model, product, params, device)
        self.theta_ = 1.0 if product == "european_call" else -1.0
        return inputs

    def price(self, inputs):
        return _bs(*(inputs[k] for k in ("S", "K", "T", "r", "q", "sigma")), self.theta_)


class GoodRandomPricer(GoodPricer):
    """A seeded Monte Carlo-like pricer (exact price plus seeded noise), with standard errors."""

    name = "good_random_pricer"
    settings = {"seed": Setting(None, int, "random seed (None = 0)", min=0)}

    def price(self, inputs):
        exact = super().price(inputs)
        noise = np.random.default_rng(self.seed or 0).normal(size=exact.shape)
        se = 1e-4 * (inputs["S"] + inputs["K"])
        price = np.where(exact > 0, exact + se * noise, exact)
        return PriceResult(price=price, stderr=np.where(exact > 0, se, 0.0), reason=np.full(exact.shape, "", object))


class GoodRootFinder(RootFinder):
    """Vectorised bisection for the Black-Scholes implied volatility: passes every check."""

    name = "good_root_finder"
    settings = {"upper": Setting(10.0, float, "bracket's upper end", min=1.0), "maxiter": Setting(80, int, "", min=1)}

    def solve(self, inputs):
        price, S, K, T, r, q = (np.asarray(inputs[k], dtype=np.float64) for k in ("price", "S", "K", "T", "r", "q"))
        theta = np.where(inputs["is_call"], 1.0, -1.0)
        n = price.shape[0]
        status = np.zeros(n, dtype=np.int8)
        with np.errstate(all="ignore"):
            D, F = np.exp(-r * T), S * np.exp((r - q) * T)
            low = ~(price > D * np.maximum(theta * (F - K), 0.0))
            high = price >= np.where(theta > 0, D * F, D * K)
        status[low] = IVStatus.BELOW_LOWER_BOUND
        status[high & ~low] = IVStatus.ABOVE_UPPER_BOUND
        status[~np.isfinite(price)] = IVStatus.INVALID_INPUT
        active = status == 0
        lo, hi = np.zeros(n), np.full(n, self.upper)
        for _ in range(self.maxiter):
            mid = 0.5 * (lo + hi)
            above = _bs(S, K, T, r, q, mid, theta) > price
            hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
        sigma = np.where(active, 0.5 * (lo + hi), np.nan)
        stuck = active & ~(np.abs(_bs(S, K, T, r, q, sigma, theta) - price) <= 1e-7 * price + 1e-10 * (S + K))
        status[stuck] = IVStatus.NO_BRACKET
        sigma[stuck] = np.nan
        converged = status == IVStatus.CONVERGED
        return IVResult(sigma=sigma, converged=converged, iterations=np.full(n, self.maxiter, np.int32), status=status)


@pytest.mark.parametrize("cls", [GoodPricer, GoodRandomPricer, GoodRootFinder])
def test_a_conforming_method_passes(cls):
    (check_root_finder if issubclass(cls, RootFinder) else check_pricer)(cls)


@parametrize_with_checks([GoodPricer, GoodRootFinder], options={GoodPricer: {"settings": {"nodes": 8}}})
def test_parametrize_with_checks(method, check):
    check(method)


def test_parametrize_ids_and_lists():
    mark = parametrize_with_checks([GoodPricer, GoodRootFinder])
    ids = mark.kwargs["ids"]
    assert ids[0] == "good_pricer-check_settings_validated_in_init"
    assert len(ids) == len(PRICER_CHECKS) + len(ROOT_FINDER_CHECKS) == len(set(ids))
    assert [c for _, c in testing.iter_checks([GoodPricer])][0].__name__ == PRICER_CHECKS[0].__name__


# --------------------------------------------------------------------------- broken methods, one per check


class LateValidation(GoodPricer):
    """Stores settings unchecked and validates them only when it runs."""

    def __init__(self, **settings):
        for key, spec in self.settings.items():
            setattr(self, key, settings.get(key, spec.default))

    def prepare(self, model, product, params, device="cpu"):
        self.resolve_settings(self.get_params())
        return super().prepare(model, product, params, device)


class VagueSettingError(GoodPricer):
    """Rejects bad settings, but with a message that names none."""

    def __init__(self, **settings):
        try:
            super().__init__(**settings)
        except ValueError:
            raise ValueError("invalid configuration") from None


class HeavyInit(GoodPricer):
    """Builds its tables in __init__."""

    def __init__(self, **settings):
        super().__init__(**settings)
        self.table = np.zeros(1 << 18)


class SlowInit(GoodPricer):
    def __init__(self, **settings):
        super().__init__(**settings)
        time.sleep(0.6)


class CrossCheckedLate(GoodPricer):
    """Checks a combination of two settings only at run time."""

    settings = {"lo": Setting(1, int, "", min=0), "hi": Setting(2, int, "", min=0)}

    def prepare(self, model, product, params, device="cpu"):
        if self.hi < self.lo:
            raise SettingError("pricer 'good_pricer': setting 'hi' must be >= 'lo'", "hi")
        return super().prepare(model, product, params, device)


class CrossCheckedInCheckTask(CrossCheckedLate):
    """Refuses a combination of settings in check_task, for every task: __init__ should."""

    def check_task(self, model, product):
        if self.hi < self.lo:
            raise SettingError("pricer 'good_pricer': setting 'hi' must be >= 'lo'", "hi")


class HoldsLock(GoodPricer):
    def __init__(self, **settings):
        super().__init__(**settings)
        self._lock = threading.Lock()


class PreparedGenerator(GoodPricer):
    """Keeps a generator from prepare: the prepared instance cannot go to a worker."""

    def prepare(self, model, product, params, device="cpu"):
        self.chunks_ = (i for i in range(3))
        return super().prepare(model, product, params, device)


class WritesInputs(GoodPricer):
    """Clamps maturities in place, in the caller's arrays when they are writable."""

    def prepare(self, model, product, params, device="cpu"):
        if params["T"].flags.writeable:
            np.maximum(params["T"], 0.75, out=params["T"])
        return super().prepare(model, product, params, device)


class ScratchInInputs(GoodPricer):
    """Uses the prepared inputs as scratch space in price."""

    def price(self, inputs):
        out = super().price(inputs)
        inputs["S"] = inputs["S"].copy()
        inputs["S"] *= 1.01
        return out


class FlatOutput(GoodPricer):
    def price(self, inputs):
        return np.ravel(super().price(inputs))


class ShortStderr(GoodPricer):
    def price(self, inputs):
        value = super().price(inputs)
        return PriceResult(price=value, stderr=np.zeros(np.size(value) + 1))


class EmptyFails(GoodPricer):
    def price(self, inputs):
        out = super().price(inputs)
        return out * (np.max(inputs["S"]) / np.max(inputs["S"]))


class RaisesOnExtreme(GoodPricer):
    def price(self, inputs):
        if np.any(inputs["T"] < 1e-3):
            raise ValueError("T too small")
        return super().price(inputs)


class InfOnExtreme(GoodPricer):
    def price(self, inputs):
        out = super().price(inputs)
        return np.where(inputs["sigma"] > 4.0, np.inf, out)


class NaNWithoutReason(GoodPricer):
    def price(self, inputs):
        out = np.where(inputs["T"] > 10.0, np.nan, super().price(inputs))
        return PriceResult(price=out, reason=np.full(out.shape, "", object))


class OutOfBounds(GoodPricer):
    """Scales deep in-the-money prices up: past S for a call, past K e^{-rT} for a put."""

    def price(self, inputs):
        out = super().price(inputs)
        deep = (inputs["K"] < 0.05 * inputs["S"]) | (inputs["K"] > 20 * inputs["S"])
        return np.where(deep, 1.5 * out, out)


class UnseededNoise(GoodPricer):
    def price(self, inputs):
        out = super().price(inputs)
        return out + 1e-9 * np.random.default_rng().random(np.shape(out))


class IgnoresSeed(GoodRandomPricer):
    def price(self, inputs):
        self.seed = 7
        return super().price(inputs)


class DriftsBetweenCalls(GoodRandomPricer):
    """Draws from one generator across calls: the second call differs from the first."""

    def prepare(self, model, product, params, device="cpu"):
        self.rng_ = np.random.default_rng(self.seed or 0)
        return super().prepare(model, product, params, device)

    def price(self, inputs):
        out = GoodPricer.price(self, inputs)
        return out + 1e-6 * self.rng_.random(np.shape(out))


# root finders


class RootFinderRaisesOnNaN(GoodRootFinder):
    def solve(self, inputs):
        if not np.all(np.isfinite(inputs["price"])):
            raise FloatingPointError("non-finite price")
        return super().solve(inputs)


class RootFinderClaimsConvergence(GoodRootFinder):
    """Reports every option outside the bounds as converged at sigma = 0.2."""

    def solve(self, inputs):
        res = super().solve(inputs)
        sigma = np.where(np.isnan(res.sigma), 0.2, res.sigma)
        return IVResult(sigma=sigma, converged=np.ones(sigma.shape, bool), iterations=res.iterations)


class RootFinderStatusDisagrees(GoodRootFinder):
    def solve(self, inputs):
        res = super().solve(inputs)
        return IVResult(sigma=res.sigma, converged=res.converged, iterations=res.iterations,
                        status=np.zeros(res.sigma.shape, np.int8))


class RootFinderWrongShape(GoodRootFinder):
    def solve(self, inputs):
        res = super().solve(inputs)
        return IVResult(sigma=res.sigma, converged=res.converged, iterations=res.iterations[:1], status=res.status)


class RootFinderEmptyFails(GoodRootFinder):
    def solve(self, inputs):
        if inputs["price"].size == 0:
            raise IndexError("empty")
        return super().solve(inputs)


class RootFinderWritesPrices(GoodRootFinder):
    def prepare(self, inputs, device="cpu"):
        if inputs["price"].flags.writeable:
            inputs["price"][:] = np.round(inputs["price"], 4)
        return super().prepare(inputs, device)


class RootFinderLateValidation(GoodRootFinder):
    def __init__(self, **settings):
        self.upper, self.maxiter = settings.get("upper", 10.0), settings.get("maxiter", 80)

    def prepare(self, inputs, device="cpu"):
        self.resolve_settings(self.get_params())
        return super().prepare(inputs, device)


def _local_class():
    class Local(GoodPricer):
        pass

    return Local


BROKEN = [
    (LateValidation, "check_settings_validated_in_init", {}),
    (VagueSettingError, "check_settings_validated_in_init", {}),
    (RootFinderLateValidation, "check_settings_validated_in_init", {}),
    (HeavyInit, "check_init_stores_settings", {}),
    (SlowInit, "check_init_stores_settings", {}),
    (CrossCheckedLate, "check_cross_settings_in_init", {"settings_grid": [{"lo": 3, "hi": 2}]}),
    (CrossCheckedInCheckTask, "check_cross_settings_in_init", {"settings_grid": [{"lo": 3, "hi": 2}]}),
    (HoldsLock, "check_picklable", {}),
    (PreparedGenerator, "check_picklable", {}),
    (_local_class(), "check_picklable", {}),
    (WritesInputs, "check_inputs_not_mutated", {}),
    (ScratchInInputs, "check_inputs_not_mutated", {}),
    (RootFinderWritesPrices, "check_inputs_not_mutated", {}),
    (FlatOutput, "check_output_shape", {}),
    (ShortStderr, "check_output_shape", {}),
    (RootFinderWrongShape, "check_output_shape", {}),
    (EmptyFails, "check_empty_batch", {}),
    (RootFinderEmptyFails, "check_empty_batch", {}),
    (RaisesOnExtreme, "check_nan_not_exception", {}),
    (InfOnExtreme, "check_nan_not_exception", {}),
    (NaNWithoutReason, "check_nan_not_exception", {}),
    (RootFinderRaisesOnNaN, "check_nan_not_exception", {}),
    (RootFinderStatusDisagrees, "check_nan_not_exception", {}),
    (OutOfBounds, "check_no_arbitrage_bounds", {}),
    (RootFinderClaimsConvergence, "check_no_arbitrage_bounds", {}),
    (UnseededNoise, "check_reproducible", {}),
    (IgnoresSeed, "check_reproducible", {}),
    (DriftsBetweenCalls, "check_reproducible", {}),
]


def test_every_check_has_a_broken_method():
    caught = {name for _, name, _ in BROKEN}
    assert caught == {c.__name__ for c in PRICER_CHECKS} | {c.__name__ for c in ROOT_FINDER_CHECKS}


@pytest.mark.parametrize("cls, name, options", BROKEN, ids=[f"{c.__name__}-{n}" for c, n, _ in BROKEN])
def test_check_catches_broken_method(cls, name, options):
    check = getattr(testing, name)
    with pytest.raises(AssertionError, match=f"^{name} failed for (pricer|root finder) 'good_") as info:
        check(cls, **options)
    print(info.value)  # the message a plugin author would read (pytest -s)


def test_check_pricer_lists_every_failure():
    with pytest.raises(AssertionError) as info:
        check_pricer(OutOfBounds, settings={"nodes": 8})
    message = str(info.value)
    assert message.startswith(f"1 of {len(PRICER_CHECKS)} checks failed:")
    assert "check_no_arbitrage_bounds failed for pricer 'good_pricer': black_scholes/european_" in message
    assert "above the upper no-arbitrage bound" in message


def test_options_are_checked():
    with pytest.raises(TypeError, match="unknown option 'setting'"):
        check_pricer(GoodPricer, setting={})
    with pytest.raises(TypeError, match="Pricer subclass"):
        check_pricer(GoodRootFinder)
    with pytest.raises(AssertionError, match="no \\(model, product\\) to check"):
        testing.check_output_shape(GoodPricer, models=["heston"])


def test_models_and_products_limit_the_cases():
    seen = []

    class Recording(GoodPricer):
        def prepare(self, model, product, params, device="cpu"):
            seen.append(product)
            return super().prepare(model, product, params, device)

    testing.check_empty_batch(Recording, products=["european_put"])
    assert seen == ["european_put"]


def test_extreme_batch_stays_admissible():
    """Every extreme point of the kit lies inside its model's parameter domain."""
    registry = get_registry()

    class Everything(Pricer):
        name = "everything"
        supports = {m: registry.model(m).products for m in registry.names("model")}

    driver = testing._PricerDriver(Everything, testing.Options.make())
    for model in driver.models:
        ordinary, extreme = driver.points(model, "ordinary"), driver.points(model, "extreme")
        assert len(ordinary) == 8 and len(extreme) > 8, model
        mdl = registry.model(model)
        for point in ordinary + extreme:
            mdl.validate(point)
        if "T" in mdl.params:
            assert {1e-6, 30.0} <= {p["T"] for p in extreme}, model


def test_bounds_of_each_product():
    p = {k: np.array([v]) for k, v in dict(S=100.0, K=90.0, T=1.0, r=0.05, q=0.0).items()}
    lower, upper, _ = testing.bounds("european_call", p)
    assert lower[0] == pytest.approx(100 - 90 * math.exp(-0.05)) and upper[0] == 100.0
    lower, upper, _ = testing.bounds("american_put", dict(p, K=np.array([120.0])))
    assert lower[0] == 20.0 and upper[0] == 120.0
    bk = get_registry().model("black_karasinski")
    lower, upper, _ = testing.bounds("zero_coupon_bond", {"T": np.array([1.0])}, bk)
    assert lower[0] == 0.0 and upper[0] == 1.0
