"""Conformance kit: run the method contracts of :mod:`bench.methods` as checks.

The idea of scikit-learn's ``check_estimator`` and ``parametrize_with_checks``:
a plugin author runs the same checks on a method class that every built-in
passes, in their own tests::

    from bench.testing import check_approximator, check_pricer, parametrize_with_checks

    check_pricer(MyPricer, settings={"nodes": 32})     # every check; AssertionError on failure
    check_approximator(MyNet, settings={"epochs": 20})

    @parametrize_with_checks([MyPricer, MyRootFinder, MyNet])
    def test_conformance(method, check):               # one pytest item per (class, check)
        check(method)

Each check is a function ``check_xxx(cls, **options)`` that raises
``AssertionError`` whose message starts with the check's name and the
method (``check_picklable failed for pricer 'mc': ...``). The checks of
pricers and root finders (``PRICER_CHECKS``, ``ROOT_FINDER_CHECKS``):

- ``check_settings_validated_in_init``: a bad value of each setting (wrong
  type, outside ``min``/``max``, not one of ``choices``, NaN) and an unknown
  setting name make ``__init__`` raise ``ValueError`` (``SettingError``)
  naming the setting; defaults and the given settings are accepted.
- ``check_init_stores_settings``: ``__init__`` does no heavy work (fast, no
  large arrays, no attribute but the settings and private ones), and
  ``get_params`` round-trips through the constructor.
- ``check_cross_settings_in_init``: settings that ``__init__`` (and, for a
  pricer, ``check_task``) accepted do not raise at run time: the given
  settings and each entry of ``settings_grid`` run on a small valid batch of
  every (model, product) the method supports. ``check_task`` may refuse
  settings a model cannot use, but settings it refuses for every (model,
  product) are a combination ``__init__`` should have refused.
- ``check_picklable``: the class, a constructed instance and a prepared one
  survive plain ``pickle``, and give the same result after the round trip
  (so a cell can run on a worker process).
- ``check_inputs_not_mutated``: read-only parameter arrays are accepted, and
  writable ones, as well as the inputs ``prepare`` returned, are unchanged
  after ``prepare`` and ``price``/``solve``.
- ``check_output_shape``: ``price`` returns an array or ``PriceResult``
  (``stderr``, ``reason`` included) of exactly the batch's shape (1-D and
  2-D batches); ``solve`` an ``IVResult`` whose fields have the
  batch's shape.
- ``check_empty_batch``: a batch of 0 options gives an empty result, no
  exception.
- ``check_nan_not_exception``: a batch mixing ordinary points with extreme
  ones (admissible by the model: T = 1e-6 or 30, volatilities at their bounds
  or large, far in and out of the money) does not raise; what comes back is
  finite or NaN (never inf), a ``PriceResult.reason`` is given for each NaN
  and only for them; an ``IVResult`` is consistent (converged exactly where
  the status says so, NaN exactly where not converged) and well-posed
  near-the-money options converge.
- ``check_no_arbitrage_bounds``: prices returned are within the no-arbitrage
  bounds of their product (European and American calls and puts, bonds);
  a root finder given prices outside the bounds returns NaN, converged False
  and a non-converged status, and every sigma it marks converged reprices
  the given price.
- ``check_reproducible``: a method with a ``seed`` setting gives identical
  output for the same seed and different output for another; every method
  gives identical output from two instances and from two ``price``/``solve``
  calls on the same prepared inputs (the runner repeats them to time).

Approximators (``APPROXIMATOR_CHECKS``, :func:`check_approximator`) run on the
kit's data set ``smooth_2d``: f(x) = sin(x0) + 0.5 x1**2 of 2-D inputs drawn
uniformly from a fixed seed, 400 training, 100 validation and 200 test
points, inputs and targets standardised with the training set's statistics
(as :mod:`bench.features` does), with exact derivative labels ``dydX``. A
run is ``fit`` (training and validation set; ``dydX`` when
``wants_derivatives()``) then ``prepare`` and ``predict`` on test rows. An
instance gets ``seed=12345`` when the class has a ``seed`` setting whose
default is None and ``settings`` give none (the runner always passes one).
Their checks:

- ``check_settings_validated_in_init``, ``check_init_stores_settings``: as
  above (fitted state is set by ``fit``, with a trailing underscore).
- ``check_cross_settings_in_init``: the given settings and each entry of
  ``settings_grid`` that ``__init__`` accepts fit, prepare and predict
  without raising.
- ``check_fits_smooth_function``: ``fit`` returns ``self`` and sets
  ``fit_info_``, a dict of plain numbers and strings (str keys); the
  predictions on the 200 test points are finite and their RMSE is below
  ``fit_tol`` times the standard deviation of the test targets.
- ``check_output_shape``: ``predict`` returns an array or tensor of shape
  (n,) and a float dtype, for n rows and for 1 row (never (n, 1) or 0-d).
- ``check_empty_batch``: ``predict`` on 0 rows (shape (0, d)) returns shape
  (0,), no exception.
- ``check_inputs_not_mutated``: read-only training, validation and test
  arrays are accepted; writable ones are unchanged by ``fit``, ``prepare``
  and ``predict``, and ``predict`` leaves what ``prepare`` returned unchanged.
- ``check_picklable``: the class, an unfitted instance (which then fits and
  predicts the same) and a fitted, prepared one pickle, and the latter
  predicts the same after the round trip; ``to_cpu()`` returns ``self`` and
  the instance then predicts the same on the CPU, before and after a pickle
  round trip (what :func:`bench.save_approximator` stores). Exact on the CPU;
  to 1e-4 relative when ``device`` is not the CPU.
- ``check_reproducible``: on the CPU, two instances with the same settings
  (the same ``seed`` where the class has one) fit to identical predictions,
  and two ``predict`` calls on the same prepared input give identical output.
  Another seed need not change anything (a seed may only matter for some
  settings).
- ``check_bad_training_input``: ``fit`` with a NaN in ``X``, a NaN in ``y``,
  ``X`` and ``y`` of different lengths, or a 1-D ``X`` raises ``ValueError``:
  not another exception, and not silent success.
- ``check_predict_std``: where ``has_std`` is true (the instance's attribute
  after ``fit``, else the class's), ``predict_std`` on the prepared rows
  returns an array of shape (n,) of finite, non-negative values.
- ``check_differential``: a class with ``uses_derivatives = False`` never
  ``wants_derivatives()``; for a class that uses them, an instance with
  ``settings`` and ``differential_settings`` that wants derivatives raises
  ``ValueError`` from ``fit`` without ``dydX`` or with ``dydX`` of the wrong
  shape, and fits with the correct ``dydX`` to finite predictions of shape
  (n,). ``differential_settings`` that give an instance not wanting
  derivatives fail the check.

Options (keywords of every check and of ``check_pricer`` /
``check_root_finder`` / ``check_approximator``):

- ``settings``: settings every instance gets (cheap ones for slow methods:
  few paths, small grids, few epochs); the defaults fill the rest;
- ``settings_grid``: more setting combinations, each overlaid on
  ``settings``, for ``check_cross_settings_in_init``;
- ``models``, ``products``: limit the (model, product) pairs of a pricer
  (default: every pair of ``cls.supports`` whose model is registered);
- ``batches``: ``{model: {param: value}}``, one ordinary parameter set
  (scalars) per model, replacing the kit's; the kit varies the strike and
  maturity around it. Needed only for a model whose parameters the kit
  cannot guess from their defaults and bounds;
- ``extremes``: ``{model: [{param: value}, ...]}``, extreme points added to
  the kit's own (each overrides the ordinary set);
- ``n``: points (approximators: test rows) per ordinary batch (default 8);
  ``device`` (default ``"cpu"``); ``registry`` (default
  :func:`bench.plugins.get_registry`);
- ``bound_tol``: tolerance of the bounds, relative to S + K (default 1e-5),
  plus 6 standard errors where the pricer gives them;
- ``init_seconds``: the most one ``__init__`` may take (default 0.5 s);
- ``fit_tol``: an approximator's largest test RMSE on ``smooth_2d``,
  relative to the targets' standard deviation (default 0.05);
- ``differential_settings``: settings overlaid on ``settings`` that make an
  approximator with ``uses_derivatives`` train on ``dydX``
  (``check_differential``).

Adding a kind: write a driver like :class:`_ApproximatorDriver` (its cases,
batches, run and output fields), register it in ``_DRIVERS``, and list the
checks that apply in a list registered in ``CHECKS``; the generic checks
take any driver.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pickle
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from scipy.special import ndtr

from bench import arrays
from bench.methods import (Approximator, IVResult, IVStatus, Method, Pricer, PriceResult, RootFinder, SettingError,
                           Unsupported)

__all__ = [
    "APPROXIMATOR_CHECKS",
    "PRICER_CHECKS",
    "ROOT_FINDER_CHECKS",
    "check_approximator",
    "check_pricer",
    "check_root_finder",
    "check_method",
    "checks_for",
    "iter_checks",
    "parametrize_with_checks",
]

# --------------------------------------------------------------------------- batches

# One ordinary parameter set per built-in model; batches vary K and T around it.
ORDINARY: dict[str, dict[str, float]] = {
    "black_scholes": dict(S=100.0, r=0.03, q=0.01, sigma=0.25),
    "heston": dict(S=100.0, r=0.03, q=0.0, v0=0.04, kappa=1.5, theta=0.05, xi=0.5, rho=-0.7),
    "merton": dict(S=100.0, r=0.03, q=0.0, sigma=0.2, lam=0.5, mu_j=-0.1, sigma_j=0.15),
    "kou": dict(S=100.0, r=0.03, q=0.0, sigma=0.2, lam=1.0, p=0.4, eta1=10.0, eta2=5.0),
    "cev": dict(S=100.0, r=0.03, q=0.0, sigma=2.5, beta=0.5),
    "sinh_lv": dict(S=100.0, r=0.05, q=0.0, lam=10.0),
    "black_karasinski": dict(r0=0.05, alpha=0.5, sigma=0.3, mu=0.05, mu_sin=0.0),
}
# Extreme values the parameter bounds do not give (their upper sides are mostly open), and
# combinations fuzzing the conformance kit found COS returning garbage at (a Heston put of 415 below its
# intrinsic value 713; Kou calls of -1500 with jumps of mean size 1/eta2 = 83 log units).
EXTREMES: dict[str, list[dict[str, float]]] = {
    "black_scholes": [{"sigma": 5.0}, {"sigma": 1e-4}, {"r": -0.05}, {"q": 0.3}],
    "heston": [{"v0": 1.0}, {"xi": 5.0}, {"kappa": 50.0}, {"theta": 1.0}, {"rho": -0.99}, {"rho": 0.99},
               {"xi": 20.0, "kappa": 0.1, "theta": 0.1, "v0": 4.0, "T": 30.0, "K": 2000.0}],
    "merton": [{"sigma": 3.0}, {"lam": 20.0}, {"sigma_j": 1.0}, {"mu_j": 0.5}],
    "kou": [{"sigma": 3.0}, {"lam": 20.0}, {"eta1": 1.5}, {"eta2": 0.5},
            {"eta2": 0.012, "sigma": 0.05, "K": 10000.0}],
    "cev": [{"sigma": 50.0}, {"beta": 0.0, "sigma": 30.0}, {"beta": 1.0, "sigma": 0.2}],
    "sinh_lv": [{"lam": 200.0}, {"r": 0.5}],
    "black_karasinski": [{"sigma": 3.0}, {"alpha": 20.0}, {"r0": 1.0}, {"T": 30.0}],
}
# Used for a parameter of a plugin model without a default, where admissible.
_USUAL = {"S": 100.0, "K": 100.0, "T": 1.0, "r": 0.03, "q": 0.0, "sigma": 0.2}
_MONEYNESS = (0.9, 1.0, 1.1, 0.8, 1.2, 0.95, 1.05, 1.3)  # K / S of an ordinary batch
_MATURITIES = (1.0, 0.5, 2.0, 0.25, 1.5, 0.75, 1.0, 0.5)
_NUDGE = 1e-6  # how far inside an open bound an extreme point lies (relative)
# Models whose spot can turn negative (sinh_lv has normal volatility lam at S = 0): the upper
# bounds C <= S e^{-qT}, P <= K e^{-rT} assume S_T >= 0, so only the lower bounds apply.
SIGNED_SPOT = {"sinh_lv"}


# --------------------------------------------------------------------------- options


@dataclass
class Options:
    """What the caller tunes; see the module docstring."""

    settings: dict[str, Any] = field(default_factory=dict)
    settings_grid: tuple[dict[str, Any], ...] = ()
    models: tuple[str, ...] | None = None
    products: tuple[str, ...] | None = None
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    extremes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    n: int = 8
    device: str = "cpu"
    registry: Any = None
    bound_tol: float = 1e-5
    init_seconds: float = 0.5
    fit_tol: float = 0.05
    differential_settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(cls, **options: Any) -> "Options":
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown option {unknown[0]!r} (options: {', '.join(cls.__dataclass_fields__)})")
        opts = cls(**options)
        opts.settings = dict(opts.settings or {})
        opts.settings_grid = tuple(dict(g) for g in (opts.settings_grid or ()))
        opts.models = None if opts.models is None else tuple(opts.models)
        opts.products = None if opts.products is None else tuple(opts.products)
        opts.batches = dict(opts.batches or {})
        opts.extremes = dict(opts.extremes or {})
        opts.differential_settings = dict(opts.differential_settings or {})
        if opts.n < 2:
            raise ValueError("option 'n' must be at least 2")
        if not opts.fit_tol > 0:
            raise ValueError("option 'fit_tol' must be positive")
        return opts


# --------------------------------------------------------------------------- drivers


class _Skip(Exception):
    """The method cannot run this case as configured (Unsupported, or check_task refused)."""


@dataclass(frozen=True)
class Case:
    """One thing a method runs on: a (model, product) pair of a pricer."""

    model: str
    product: str

    def __str__(self) -> str:
        return f"{self.model}/{self.product}"


def _readonly(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in params.items():
        a = np.array(v)
        a.setflags(write=False)
        out[k] = a
    return out


def _host(x: Any) -> np.ndarray | None:
    return None if x is None else arrays.to_numpy(x)


class _Driver:
    """How the generic checks run one kind of method: cases, batches, calls, outputs."""

    kind = "method"
    call_name = "call"
    setup_name = "prepare"  # the untimed steps before the call, in messages
    inputs_name = "parameter arrays"  # what the caller passes, in messages
    prepared_name = "a prepared instance"
    seed_must_matter = True  # check_reproducible: another seed must change some output

    def __init__(self, cls: type, opts: Options):
        self.cls, self.opts = cls, opts
        self.label = f"{getattr(cls, 'kind', 'method').replace('_', ' ')} {getattr(cls, 'name', '') or cls.__name__!r}"

    # what every driver provides
    def cases(self) -> list[Any]:
        """What the method runs on (a pricer: its (model, product) pairs)."""
        raise NotImplementedError

    def batch(self, case: Any, which: str = "ordinary", shape: tuple[int, ...] | None = None) -> dict:
        """Inputs of ``shape``: ``which`` is "ordinary", "extreme" (ordinary points first) or "empty"."""
        raise NotImplementedError

    def prepare(self, method: Method, case: Any, params: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def call(self, method: Method, inputs: Any) -> Any:
        """The timed call (price, solve, predict)."""
        raise NotImplementedError

    def fields(self, out: Any) -> dict[str, np.ndarray]:
        """The output's arrays by name, on the host, for comparisons."""
        raise NotImplementedError

    def shape_problems(self, out: Any, shape: tuple[int, ...]) -> list[str]:
        raise NotImplementedError

    def output_problems(self, case: Any, batch: dict, out: dict[str, np.ndarray]) -> list[str]:
        """What is wrong with the output of an extreme batch (inf, inconsistent flags)."""
        raise NotImplementedError

    def bound_problems(self, case: Any, batch: dict, out: dict[str, np.ndarray]) -> list[str]:
        """Values outside what no-arbitrage allows, or flags that claim what is not so."""
        raise NotImplementedError

    def check_task(self, method: Method, case: Any) -> None:
        """Raise _Skip when the method refuses the case before running."""

    def shapes(self) -> list[tuple[int, ...]]:
        """The batch shapes ``check_output_shape`` runs."""
        return [(self.opts.n,)]

    def fit(self, method: Method, case: Any, params: Mapping[str, Any], what: str) -> None:
        """Untimed work before ``prepare`` (an approximator's training); nothing for most kinds."""

    def run_again(self, method: Method, case: Any, params: Mapping[str, Any], what: str) -> tuple[Any, Any]:
        """Another batch for ``method``, which ``run`` already ran: a fresh run where ``prepare`` is
        cheap; an approximator keeps its fit and only prepares and predicts."""
        return self.run(self.make(), case, params, what)

    def round_trips(self, case: Any, method: Method, params: Mapping[str, Any], want: dict[str, np.ndarray]) -> None:
        """More round trips ``check_picklable`` asks of a prepared ``method`` whose output was ``want``."""

    def on_cpu(self) -> "_Driver":
        """This driver, or one on the CPU, for ``check_reproducible``."""
        return self

    # shared
    def make(self, **overrides: Any) -> Method:
        return self.cls(**{**self.opts.settings, **overrides})

    def run(self, method: Method, case: Any, params: Mapping[str, Any], what: str) -> tuple[Any, Any]:
        """[fit +] prepare + the timed call; exceptions (but Unsupported) become AssertionError naming the step."""
        self.check_task(method, case)
        self.fit(method, case, params, what)
        return self.prepare_and_call(method, case, params, what)

    def prepare_and_call(self, method: Method, case: Any, params: Mapping[str, Any], what: str) -> tuple[Any, Any]:
        try:
            inputs = self.prepare(method, case, params)
        except Unsupported as exc:
            raise _Skip(str(exc)) from None
        except Exception as exc:
            raise AssertionError(f"{case}: prepare raised {type(exc).__name__}: {exc} ({what})") from exc
        try:
            out = self.call(method, inputs)
        except Exception as exc:
            raise AssertionError(f"{case}: {self.call_name} raised {type(exc).__name__}: {exc} ({what})") from exc
        return inputs, out

    def for_each_case(self, body: Callable[[Any, Method], None]) -> None:
        """``body(case, fresh instance)`` for each case the method runs; cases it refuses
        (``check_task``) or cannot run (``Unsupported``) are skipped, but one must run."""
        ran, skipped = 0, []
        for case in self.cases():
            method = self.make()
            try:
                self.check_task(method, case)
                body(case, method)
            except _Skip as exc:
                skipped.append(f"{case}: {exc}")
                continue
            ran += 1
        assert ran, (f"no case could run with settings {self.opts.settings!r}: "
                     + "; ".join(skipped or ["no cases"]))


class _PricerDriver(_Driver):
    kind = "pricer"
    call_name = "price"

    def __init__(self, cls: type, opts: Options):
        super().__init__(cls, opts)
        from bench.plugins import get_registry

        self.registry = opts.registry if opts.registry is not None else get_registry()
        self.models: dict[str, Any] = {}
        for name in getattr(cls, "supports", {}):
            if opts.models is not None and name not in opts.models:
                continue
            try:
                self.models[name] = self.registry.model(name)
            except (KeyError, ValueError):  # not registered in this session: nothing to check it on
                continue
        self._cases = [
            Case(m, p)
            for m, mdl in self.models.items()
            for p in cls.supports[m]
            if (opts.products is None or p in opts.products) and p in mdl.products
        ]
        self._points: dict[tuple[str, str], list[dict[str, float]]] = {}

    def cases(self) -> list[Case]:
        assert self._cases, (f"no (model, product) to check: supports {dict(getattr(self.cls, 'supports', {}))}, "
                             f"registered models {sorted(self.models)}, models={self.opts.models}, "
                             f"products={self.opts.products}")
        return self._cases

    def shapes(self) -> list[tuple[int, ...]]:
        # bench.price passes any shape (0-d too, but Pricer.prepare makes that 1-d)
        return [(self.opts.n,), (2, self.opts.n // 2)]

    def check_task(self, method: Method, case: Case) -> None:
        try:
            method.check_task(case.model, case.product)
        except ValueError as exc:  # the documented way to refuse a task before anything runs
            raise _Skip(f"check_task: {exc}") from None

    # ------------------------------------------------------------------ batches
    def base_point(self, model: str) -> dict[str, float]:
        mdl = self.models[model]
        if model in self.opts.batches:
            point = {k: float(np.ravel(v)[0]) if np.ndim(v) else float(v) for k, v in self.opts.batches[model].items()}
        elif model in ORDINARY:
            point = dict(ORDINARY[model])
        else:
            point = {}
        for key, spec in mdl.params.items():
            if key in point:
                continue
            if spec.default is not None:
                point[key] = float(spec.default)
            elif key in _USUAL and spec.admits(np.float64(_USUAL[key])):
                point[key] = _USUAL[key]
            elif math.isfinite(spec.lower) and math.isfinite(spec.upper):
                point[key] = 0.5 * (spec.lower + spec.upper)
            elif math.isfinite(spec.lower):
                point[key] = spec.lower + 1.0
            elif math.isfinite(spec.upper):
                point[key] = spec.upper - 1.0
            else:
                point[key] = 0.5
        point.pop("K", None), point.pop("T", None)  # the batch varies them
        return point

    def points(self, model: str, which: str) -> list[dict[str, float]]:
        """Validated parameter points of the ordinary or the extreme batch of ``model``."""
        key = (model, which)
        if key in self._points:
            return self._points[key]
        mdl = self.models[model]
        base = self.base_point(model)
        S = base.get("S", 100.0)
        with_kt = [dict(base, **({"K": m * S} if "K" in mdl.params else {}), T=t)
                   for m, t in zip(_MONEYNESS, _MATURITIES)]
        with_kt = [{k: v for k, v in p.items() if k in mdl.params} for p in with_kt]
        ordinary = [p for p in with_kt if self._valid(mdl, p)]
        assert ordinary, (f"the kit found no valid ordinary parameter set for model {model!r}; "
                          f"pass batches={{{model!r}: {{...}}}}")
        if which == "ordinary":
            pts = ordinary
        else:
            first = ordinary[0]
            over: list[dict[str, float]] = []
            if "K" in mdl.params:
                over += [{"T": 1e-6}, {"T": 1e-6, "K": 0.5 * S}, {"T": 30.0}, {"K": 0.01 * S}, {"K": 100.0 * S},
                         {"K": 0.01 * S, "T": 30.0}]
            else:
                over += [{"T": 1e-6}, {"T": 30.0}]
            for name, spec in mdl.params.items():  # each parameter at (just inside) its bounds
                for bound, is_open, sign in ((spec.lower, spec.lower_open, 1.0), (spec.upper, spec.upper_open, -1.0)):
                    if math.isfinite(bound):
                        over.append({name: bound + sign * _NUDGE * max(1.0, abs(bound)) if is_open else bound})
            over += EXTREMES.get(model, []) + list(self.opts.extremes.get(model, []))
            extreme = [dict(first, **o) for o in over]
            pts = ordinary[:4] + [p for p in extreme if self._valid(mdl, p)]
        self._points[key] = pts
        return pts

    @staticmethod
    def _valid(mdl, point) -> bool:
        try:
            mdl.validate(point)
        except ValueError:
            return False
        return True

    def batch(self, case: Case, which: str = "ordinary", shape: tuple[int, ...] | None = None) -> dict:
        """Validated parameters (read-only arrays, as the runner passes them) of ``shape``."""
        mdl = self.models[case.model]
        if which == "empty":
            pts, shape = self.points(case.model, "ordinary")[:1], (0,)
        else:
            pts = self.points(case.model, which)
        if which == "ordinary":
            pts = [pts[i % len(pts)] for i in range(self.opts.n)]
        if shape is None:
            shape = (len(pts),)
        size = math.prod(shape)
        rows = [pts[i % len(pts)] for i in range(size)]
        raw = {k: np.array([p[k] for p in rows], dtype=np.float64).reshape(shape) for k in pts[0]}
        return mdl.validate(raw)

    # ------------------------------------------------------------------ calls
    def prepare(self, method, case, params):
        return method.prepare(self.models[case.model], case.product, params, self.opts.device)

    def call(self, method, inputs):
        return method.price(inputs)

    def fields(self, out):
        if isinstance(out, PriceResult):
            res = {"price": _host(out.price)}
            if out.stderr is not None:
                res["stderr"] = _host(out.stderr)
            if out.reason is not None:
                res["reason"] = np.asarray(out.reason, dtype=object)
            return res
        return {"price": _host(out)}

    def shape_problems(self, out, shape):
        problems = []
        if isinstance(out, PriceResult):
            parts = {"PriceResult.price": out.price, "PriceResult.stderr": out.stderr,
                     "PriceResult.reason": out.reason}
        else:
            parts = {"price": out}
        for label, value in parts.items():
            if value is None:
                continue
            if not (isinstance(value, np.ndarray) or arrays.is_torch(value)):
                problems.append(f"{label} is a {type(value).__name__}, not an array")
                continue
            got = tuple(value.shape)
            if got != tuple(shape):
                problems.append(f"{label} has shape {got}, the batch {tuple(shape)}")
            elif label != "PriceResult.reason" and not np.issubdtype(_host(value).dtype, np.floating):
                problems.append(f"{label} has dtype {_host(value).dtype}, not a float")
        return problems

    def output_problems(self, case, batch, out):
        price = np.asarray(out["price"], dtype=np.float64)
        problems = []
        inf = np.isinf(price)
        if inf.any():
            problems.append(f"price is infinite at {_points(batch, inf)} (return NaN for a point it cannot price)")
        se = out.get("stderr")
        if se is not None:
            se = np.asarray(se, dtype=np.float64)
            bad = np.isinf(se) | (se < 0)
            if bad.any():
                problems.append(f"stderr is infinite or negative at {_points(batch, bad)}")
            lone = np.isfinite(price) & np.isnan(se)
            if lone.any():
                problems.append(f"a finite price has a NaN stderr at {_points(batch, lone)}")
        reason = out.get("reason")
        if reason is not None and reason.shape == price.shape:
            given = np.vectorize(lambda x: bool(x), otypes=[bool])(reason) if reason.size else np.zeros(0, bool)
            missing = np.isnan(price) & ~given
            if missing.any():
                problems.append(f"NaN price without a reason at {_points(batch, missing)}")
            stray = ~np.isnan(price) & given
            if stray.any():
                problems.append(f"a reason {reason[stray].ravel()[0]!r} for a price that is not NaN at "
                                f"{_points(batch, stray)}")
        return problems

    def bound_problems(self, case, batch, out):
        price = np.asarray(out["price"], dtype=np.float64)
        lower, upper, scale = bounds(case.product, batch, self.models[case.model])
        if lower is None:
            return []
        tol = self.opts.bound_tol * scale
        if "stderr" in out:
            tol = tol + 6.0 * np.nan_to_num(np.asarray(out["stderr"], dtype=np.float64), nan=0.0)
        problems = []
        for side, bad in (("below the lower", price < lower - tol), ("above the upper", price > upper + tol)):
            if np.any(bad):
                i = np.flatnonzero(np.ravel(bad))[0]
                problems.append(
                    f"price {float(np.ravel(price)[i])!r} {side} no-arbitrage bound "
                    f"[{np.ravel(lower)[i]:.6g}, {np.ravel(upper)[i]:.6g}] at {_point(batch, i)} "
                    f"({int(np.sum(bad))} such points; return NaN with a reason where it cannot price)")
        return problems


def bounds(product: str, params: Mapping[str, np.ndarray], model: Any = None):
    """(lower, upper, scale) no-arbitrage bounds of a product's price; (None, None, None) if unknown."""
    if product == "zero_coupon_bond":
        # a positive payoff; below 1 where the model's rates cannot be negative
        spec = getattr(model, "params", {}).get("r0")
        shape = np.shape(next(iter(params.values())))
        upper = 1.0 if spec is not None and spec.lower >= 0.0 else np.inf
        return np.zeros(shape), np.full(shape, upper), np.ones(shape)
    if not {"S", "K", "T"} <= set(params):
        return None, None, None
    S, K, T = (np.asarray(params[k], dtype=np.float64) for k in ("S", "K", "T"))
    r = np.asarray(params.get("r", 0.0), dtype=np.float64)
    q = np.asarray(params.get("q", 0.0), dtype=np.float64)
    with np.errstate(all="ignore"):
        DS, DK = S * np.exp(-q * T), K * np.exp(-r * T)
    if product == "european_call":
        lower, upper = np.maximum(DS - DK, 0.0), DS
    elif product == "european_put":
        lower, upper = np.maximum(DK - DS, 0.0), DK
    elif product == "american_call":
        lower, upper = np.maximum(np.maximum(S - K, DS - DK), 0.0), S
    elif product == "american_put":
        lower, upper = np.maximum(np.maximum(K - S, DK - DS), 0.0), K
    else:
        return None, None, None
    if getattr(model, "name", None) in SIGNED_SPOT:
        upper = np.full(np.shape(upper), np.inf)
    return lower, upper, S + K


def bs_price(S, K, T, r, q, sigma, is_call) -> np.ndarray:
    """Black-Scholes price with dividend yield (NumPy), for building and repricing root-finder batches."""
    S, K, T, r, q, sigma = (np.asarray(a, dtype=np.float64) for a in (S, K, T, r, q, sigma))
    with np.errstate(all="ignore"):
        D, F = np.exp(-r * T), S * np.exp((r - q) * T)
        v = sigma * np.sqrt(T)
        d1 = np.log(F / K) / v + 0.5 * v
        d2 = d1 - v
        call = D * (F * ndtr(d1) - K * ndtr(d2))
        put = D * (K * ndtr(-d2) - F * ndtr(-d1))
    return np.where(is_call, call, put)


class _RootFinderDriver(_Driver):
    kind = "root_finder"
    call_name = "solve"
    KEYS = ("price", "S", "K", "T", "r", "q", "is_call")

    def cases(self) -> list[str]:
        return ["implied_vol"]

    # (K, T, sigma, is_call) with S = 100, r = 0.03, q = 0.01: near-the-money options every
    # root finder should solve, then admissible extremes, priced from the sigma given
    ORDINARY_OPTIONS = ((90.0, 1.0, 0.2, True), (100.0, 0.5, 0.3, False), (110.0, 2.0, 0.25, True),
                        (95.0, 1.0, 0.4, False), (105.0, 1.0, 0.35, True), (95.0, 1.0, 0.22, False),
                        (105.0, 1.0, 0.3, True), (100.0, 1.0, 0.28, False))
    EXTREME_OPTIONS = ((100.0, 1e-6, 0.2, True), (50.0, 1e-6, 0.2, False), (100.0, 30.0, 0.3, True),
                       (1.0, 1.0, 0.2, True), (300.0, 0.1, 0.2, True), (100.0, 1.0, 4.0, False),
                       (100.0, 1.0, 0.005, True), (10000.0, 1.0, 0.5, False))
    S, R, Q = 100.0, 0.03, 0.01

    def _rows(self, which: str) -> tuple[list[tuple], np.ndarray]:
        """Rows (price, S, K, T, r, q, is_call) and a mask of those outside the no-arbitrage bounds."""
        S, r, q = self.S, self.R, self.Q
        options = self.ORDINARY_OPTIONS if which != "extreme" else self.ORDINARY_OPTIONS[:4] + self.EXTREME_OPTIONS
        rows = [(float(bs_price(S, K, T, r, q, sigma, call)), S, K, T, r, q, call) for K, T, sigma, call in options]
        if which != "extreme":
            return rows, np.zeros(len(rows), bool)
        # outside the bounds (T = 1): below the intrinsic value, at or above the upper bound, negative, NaN, inf
        DS, DK = S * math.exp(-q), 100.0 * math.exp(-r)
        outside = [(-1.0, 100.0, True), (0.5 * (DS - 0.8 * DK), 80.0, True), (DS, 100.0, True),
                   (1.5 * DS, 100.0, True), (0.5 * (1.2 * DK - DS), 120.0, False), (DK + 1.0, 100.0, False),
                   (math.nan, 100.0, True), (math.inf, 100.0, False), (0.0, 100.0, False)]
        rows += [(price, S, K, 1.0, r, q, call) for price, K, call in outside]
        return rows, np.arange(len(rows)) >= len(options)

    def batch(self, case, which="ordinary", shape=None):
        """Read-only 1-D arrays (``shape`` is ignored: root finders take flat batches)."""
        rows = [] if which == "empty" else self._rows(which)[0]
        if which == "ordinary":
            rows = [rows[i % len(rows)] for i in range(self.opts.n)]
        return _readonly({key: np.array([row[j] for row in rows], dtype=bool if key == "is_call" else np.float64)
                          for j, key in enumerate(self.KEYS)})

    def prepare(self, method, case, params):
        return method.prepare(dict(params), self.opts.device)

    def call(self, method, inputs):
        return method.solve(inputs)

    def fields(self, out):
        if not isinstance(out, IVResult):
            return {"sigma": _host(out)}
        return {k: _host(getattr(out, k)) for k in ("sigma", "converged", "iterations", "status")}

    def shape_problems(self, out, shape):
        if not isinstance(out, IVResult):
            return [f"solve returned {type(out).__name__}, not an IVResult"]
        problems = []
        for name in ("sigma", "converged", "iterations", "status"):
            value = getattr(out, name)
            if not (isinstance(value, np.ndarray) or arrays.is_torch(value)):
                problems.append(f"IVResult.{name} is a {type(value).__name__}, not an array")
            elif tuple(value.shape) != tuple(shape):
                problems.append(f"IVResult.{name} has shape {tuple(value.shape)}, the batch {tuple(shape)}")
        return problems

    def output_problems(self, case, batch, out):
        problems = self.shape_problems_fields(out, np.shape(batch["price"]))
        if problems:
            return problems
        sigma = out["sigma"].astype(np.float64)
        conv = out["converged"].astype(bool)
        status = out["status"].astype(np.int64)
        codes = {int(s) for s in IVStatus}
        if not set(np.unique(status).tolist()) <= codes:
            problems.append(f"status codes {sorted(set(np.unique(status).tolist()) - codes)} are not IVStatus values")
        if np.any(conv != (status == IVStatus.CONVERGED)):
            problems.append(f"converged disagrees with status at {_points(batch, conv != (status == 0))}")
        bad = conv & ~(np.isfinite(sigma) & (sigma > 0))
        if bad.any():
            problems.append(f"converged with sigma {float(sigma[bad][0])!r} (not finite and positive) at "
                            f"{_points(batch, bad)}")
        lying = ~conv & ~np.isnan(sigma)
        if lying.any():
            problems.append(f"not converged but sigma = {float(sigma[lying][0])!r} instead of NaN at "
                            f"{_points(batch, lying)}")
        if np.any(np.asarray(out["iterations"]) < 0):
            problems.append("negative iteration counts")
        stuck = np.zeros(sigma.size, bool)
        stuck[:4] = ~conv[:4]  # the kit's batches start with well-posed near-the-money options
        if stuck.any():
            problems.append(f"a well-posed near-the-money option did not converge: {_points(batch, stuck)}")
        return problems

    @staticmethod
    def shape_problems_fields(out, shape):
        if set(out) != {"sigma", "converged", "iterations", "status"}:
            return ["solve did not return an IVResult"]
        return [f"IVResult.{k} has shape {v.shape}, the batch {shape}" for k, v in out.items() if v.shape != shape]

    def bound_problems(self, case, batch, out):
        problems = self.shape_problems_fields(out, np.shape(batch["price"]))
        if problems:
            return problems
        sigma, conv = out["sigma"].astype(np.float64), out["converged"].astype(bool)
        status = out["status"].astype(np.int64)
        rows, outside = self._rows("extreme")
        if len(rows) != sigma.size:  # not the kit's extreme batch: nothing is known to lie outside
            outside = np.zeros(sigma.size, bool)
        wrong = outside & (conv | ~np.isnan(sigma) | (status == IVStatus.CONVERGED))
        if wrong.any():
            i = np.flatnonzero(wrong)[0]
            problems.append(f"a price outside the no-arbitrage bounds gave sigma {float(sigma[i])!r}, converged "
                            f"{bool(conv[i])}, status {int(status[i])} at {_point(batch, i)} (want NaN, False and a "
                            f"non-converged status)")
        ok = conv & ~outside
        if ok.any():
            b = {k: np.asarray(v)[ok] for k, v in batch.items()}
            back = bs_price(b["S"], b["K"], b["T"], b["r"], b["q"], sigma[ok], b["is_call"])
            tol = 1e-6 * b["price"] + 1e-9 * (b["S"] + b["K"])
            off = ~(np.abs(back - b["price"]) <= tol)
            if off.any():
                i = np.flatnonzero(ok)[np.flatnonzero(off)[0]]
                problems.append(f"converged sigma {float(sigma[i])!r} reprices to {float(back[off][0])!r}, "
                                f"not the given price, at {_point(batch, i)}")
        return problems


# --------------------------------------------------------------------------- approximators

SMOOTH_SEED = 20261204  # the kit's data set: one fixed sample, the same for every approximator
SMOOTH_ROWS = {"X": 400, "X_val": 100, "X_test": 200}
SMOOTH_2D = "smooth_2d"  # its name, the approximators' one case
_AUTO = object()


def smooth_function(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """f(x) = sin(x0) + 0.5 x1**2 of rows ``x`` (n, 2), and its gradient (n, 2)."""
    value = np.sin(x[:, 0]) + 0.5 * x[:, 1] ** 2
    return value, np.stack([np.cos(x[:, 0]), x[:, 1]], axis=1)


@functools.lru_cache(maxsize=1)
def smooth_data() -> dict[str, np.ndarray]:
    """The kit's ``smooth_2d`` data set (read-only arrays): ``X``, ``y``, ``dydX`` (400 rows),
    ``X_val``, ``y_val`` (100) and ``X_test``, ``y_test`` (200).

    Inputs are uniform on [-sqrt 3, sqrt 3]^2; inputs and targets are standardised with the
    training set's statistics, as :mod:`bench.features` does, and ``dydX`` is the exact
    derivative of the standardised target with respect to the standardised inputs.
    """
    rng = np.random.default_rng(SMOOTH_SEED)
    half = math.sqrt(3.0)
    raw = {key: rng.uniform(-half, half, size=(rows, 2)) for key, rows in SMOOTH_ROWS.items()}
    mx, sx = raw["X"].mean(axis=0), raw["X"].std(axis=0)
    f_train, _ = smooth_function(raw["X"])
    my, sy = f_train.mean(), f_train.std()
    data: dict[str, np.ndarray] = {}
    for key, x in raw.items():
        value, grad = smooth_function(x)
        data[key] = np.ascontiguousarray((x - mx) / sx)
        data["y" + key[1:]] = (value - my) / sy
        if key == "X":
            data["dydX"] = np.ascontiguousarray(grad * sx / sy)
    for array in data.values():
        array.setflags(write=False)
    return data


def _what(obj: Any) -> str:
    return f"a {type(obj).__name__}" if obj is not None else "None"


def _array_problems(value: Any, shape: tuple[int, ...], label: str) -> list[str]:
    """An array or tensor of exactly ``shape`` and a float dtype, else what is wrong."""
    if not (isinstance(value, np.ndarray) or arrays.is_torch(value)):
        return [f"{label} returned {_what(value)}, not an array"]
    got = tuple(value.shape)
    if got != tuple(shape):
        return [f"{label} returned shape {got} for {shape[0]} rows, not {tuple(shape)}"]
    dtype = _host(value).dtype
    if not np.issubdtype(dtype, np.floating):
        return [f"{label} returned dtype {dtype}, not a float"]
    return []


class _ApproximatorDriver(_Driver):
    """One case, ``smooth_2d``; a run fits on its training set and predicts on test rows."""

    kind = "approximator"
    call_name = "predict"
    setup_name = "fit or prepare"
    inputs_name = "training and test arrays"
    prepared_name = "a fitted, prepared instance"
    seed_must_matter = False
    TRAINING = ("X", "y", "X_val", "y_val", "dydX")
    SEEDS = (12345, 0, 1)  # the first the seed setting admits pins an unseeded instance

    def cases(self) -> list[str]:
        return [SMOOTH_2D]

    def settings_for(self, **overrides: Any) -> dict[str, Any]:
        """The options' settings with ``overrides``, and a seed where the default is None."""
        settings = {**self.opts.settings, **overrides}
        spec = self.cls.settings.get("seed")
        if spec is not None and spec.default is None and "seed" not in settings:
            for seed in self.SEEDS:
                try:
                    spec.check("seed", seed)
                except ValueError:
                    continue
                settings["seed"] = seed
                break
        return settings

    def make(self, **overrides: Any) -> Method:
        return self.cls(**self.settings_for(**overrides))

    def shapes(self) -> list[tuple[int, ...]]:
        return [(self.opts.n,), (1,)]

    def batch(self, case, which="ordinary", shape=None):
        """Writable copies of the training set, with ``X_test`` of ``opts.n`` rows (``which`` "test":
        all 200; "empty": none; ``shape``: its size)."""
        data = smooth_data()
        if which == "empty":
            rows = 0
        elif shape is not None:
            rows = math.prod(shape)
        elif which == "test":
            rows = len(data["X_test"])
        else:
            rows = self.opts.n
        test = data["X_test"][np.arange(rows) % len(data["X_test"])]
        return {**{key: np.array(data[key]) for key in self.TRAINING}, "X_test": test}

    def fit_call(self, method: Method, params: Mapping[str, Any], dydX: Any = _AUTO) -> Any:
        """``method.fit`` on the training set of ``params``; ``dydX`` theirs where it wants derivatives."""
        if dydX is _AUTO:
            dydX = params["dydX"] if method.wants_derivatives() else None
        return method.fit(params["X"], params["y"], X_val=params["X_val"], y_val=params["y_val"], dydX=dydX,
                          device=self.opts.device)

    def fit(self, method, case, params, what):
        try:
            fitted = self.fit_call(method, params)
        except Unsupported as exc:
            raise _Skip(str(exc)) from None
        except Exception as exc:
            raise AssertionError(f"{case}: fit raised {type(exc).__name__}: {exc} ({what})") from exc
        assert fitted is method, f"{case}: fit returned {_what(fitted)}, not self ({what})"

    def run_again(self, method, case, params, what):
        return self.prepare_and_call(method, case, params, what)

    def prepare(self, method, case, params):
        return method.prepare(params["X_test"], self.opts.device)

    def call(self, method, inputs):
        return method.predict(inputs)

    def fields(self, out):
        return {"prediction": _host(out)}

    def shape_problems(self, out, shape):
        return _array_problems(out, shape, "predict")

    def output_problems(self, case, batch, out):
        return []

    def bound_problems(self, case, batch, out):
        return []

    def predict_on_cpu(self, method: Method, X: np.ndarray, what: str) -> np.ndarray:
        try:
            return _host(method.predict(method.prepare(X, "cpu")))
        except Exception as exc:
            raise AssertionError(f"prepare and predict on the CPU raised {type(exc).__name__}: {exc} ({what})") from exc

    def round_trips(self, case, method, params, want):
        try:
            back = method.to_cpu()
        except Exception as exc:
            raise AssertionError(f"{case}: to_cpu() raised {type(exc).__name__}: {exc}") from exc
        assert back is method, f"{case}: to_cpu() returned {_what(back)}, not self"
        X = params["X_test"]
        moved = self.predict_on_cpu(method, X, "after to_cpu()")
        expect = np.asarray(want["prediction"])
        if self.opts.device == "cpu":
            same = _equal(moved, expect)
        else:  # another device computes in another order (and often in float32)
            same = moved.shape == expect.shape and bool(np.allclose(moved, expect, rtol=1e-4, atol=1e-6))
        assert same, f"{case}: after to_cpu() the instance predicts differently on the CPU"
        try:
            clone = pickle.loads(pickle.dumps(method))
        except Exception as exc:
            raise AssertionError(f"{case}: a fitted instance does not pickle after to_cpu(): "
                                 f"{type(exc).__name__}: {exc}") from exc
        again = self.predict_on_cpu(clone, X, "unpickled after to_cpu()")
        assert _equal(again, moved), (f"{case}: a fitted instance pickled after to_cpu() (as save_approximator "
                                      "stores it) predicts differently after the round trip")

    def on_cpu(self):
        if self.opts.device == "cpu" or not self.cls.supports_device("cpu"):
            return self
        return type(self)(self.cls, dataclasses.replace(self.opts, device="cpu"))


_DRIVERS: dict[str, type[_Driver]] = {"pricer": _PricerDriver, "root_finder": _RootFinderDriver,
                                      "approximator": _ApproximatorDriver}


def _driver(cls: type, opts: Options) -> _Driver:
    for base, driver in ((Pricer, _PricerDriver), (RootFinder, _RootFinderDriver),
                         (Approximator, _ApproximatorDriver)):
        if isinstance(cls, type) and issubclass(cls, base):
            return driver(cls, opts)
    kind = getattr(cls, "kind", None)
    if kind in _DRIVERS:
        return _DRIVERS[kind](cls, opts)
    raise TypeError(f"bench.testing checks pricers, root finders and approximators; got {cls!r}")


def _point(batch: Mapping[str, Any], i: int) -> str:
    vals = {k: np.ravel(np.asarray(v))[i] for k, v in batch.items()}
    return "{" + ", ".join(f"{k}={bool(v)}" if isinstance(v, np.bool_) else f"{k}={float(v):.6g}"
                           for k, v in vals.items()) + "}"


def _points(batch: Mapping[str, Any], mask: np.ndarray) -> str:
    idx = np.flatnonzero(np.ravel(mask))
    more = f" and {idx.size - 1} more" if idx.size > 1 else ""
    return _point(batch, int(idx[0])) + more


def _snapshot(obj: Any, depth: int = 0, path: str = "") -> dict[str, np.ndarray]:
    """Copies of every NumPy array / torch tensor inside ``obj`` (dicts, lists, tuples), by path."""
    found: dict[str, np.ndarray] = {}
    if isinstance(obj, np.ndarray) or arrays.is_torch(obj):
        found[path or "the array"] = np.array(arrays.to_numpy(obj), copy=True)
    elif depth < 4 and isinstance(obj, Mapping):
        for k, v in obj.items():
            found.update(_snapshot(v, depth + 1, f"{path}[{k!r}]"))
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for k, v in enumerate(obj):
            found.update(_snapshot(v, depth + 1, f"{path}[{k}]"))
    return found


def _changed(before: dict[str, np.ndarray], obj: Any) -> list[str]:
    """Paths whose array changed (in place or replaced) since ``before`` was taken of ``obj``."""
    after = _snapshot(obj)
    return [p for p, a in before.items() if p not in after or not _equal(after[p], a)] + \
        [p for p in after if p not in before]


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == object:
        return a.tolist() == b.tolist()
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def _same_output(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> list[str]:
    if set(a) != set(b):
        return [f"fields {sorted(a)} vs {sorted(b)}"]
    return [k for k in a if not _equal(np.asarray(a[k]), np.asarray(b[k]))]


# --------------------------------------------------------------------------- the checks


def _check(fn: Callable[[_Driver], None]) -> Callable[..., None]:
    """A check: ``check(cls, **options)``; failures are AssertionErrors naming the check and the method."""

    @functools.wraps(fn)
    def check(cls: type, **options: Any) -> None:
        opts = Options.make(**options)
        driver = _driver(cls, opts)
        try:
            fn(driver)
        except AssertionError as exc:
            raise AssertionError(f"{fn.__name__} failed for {driver.label}: {exc}") from exc.__cause__
        except Exception as exc:
            raise AssertionError(f"{fn.__name__} failed for {driver.label}: {type(exc).__name__}: {exc}") from exc

    return check


def _bad_values(spec) -> list[tuple[str, Any]]:
    """(what, value) pairs that ``spec`` must reject."""
    out: list[tuple[str, Any]] = []
    kind = spec.type
    if kind is int:
        out += [("a string", "1"), ("a float", 1.5)]
    elif kind is float:
        out += [("a string", "1.0"), ("NaN", math.nan)]
    elif kind is bool:
        out += [("a string", "true"), ("an integer", 1)]
    elif kind is str:
        out += [("an integer", 1)]
    elif kind in (list, tuple):
        out += [("an integer", 1)]
    step = 1 if kind is int else None
    if spec.min is not None and math.isfinite(spec.min) and kind in (int, float):
        out.append((f"below min {spec.min!r}", spec.min - (step or max(1.0, abs(spec.min)))))
    if spec.max is not None and math.isfinite(spec.max) and kind in (int, float):
        out.append((f"above max {spec.max!r}", spec.max + (step or max(1.0, abs(spec.max)))))
    if spec.choices is not None:
        if kind is str:
            out.append(("not one of the choices", "__not_a_choice__"))
        elif kind in (int, float) and all(isinstance(c, (int, float)) for c in spec.choices):
            out.append(("not one of the choices", kind(max(spec.choices) + 1)))
    return out


@_check
def check_settings_validated_in_init(d: _Driver) -> None:
    """A bad value of each setting makes ``__init__`` raise ValueError naming the setting."""
    cls = d.cls
    for label, kwargs in (("the defaults", {}), ("the given settings", d.opts.settings)):
        try:
            cls(**kwargs)
        except Exception as exc:
            raise AssertionError(f"__init__ rejects {label} {kwargs!r}: {type(exc).__name__}: {exc}") from exc
    problems = []
    cases = [(name, what, value) for name, spec in cls.settings.items() for what, value in _bad_values(spec)]
    cases.append(("__no_such_setting__", "an unknown name", 1))
    for name, what, value in cases:
        kwargs = {**d.opts.settings, name: value}
        try:
            cls(**kwargs)
        except ValueError as exc:
            if name not in str(exc):
                problems.append(f"{name}={value!r} ({what}): the ValueError does not name the setting: {exc}")
            elif isinstance(exc, SettingError) and exc.setting != name:
                problems.append(f"{name}={value!r} ({what}): SettingError.setting is {exc.setting!r}")
        except Exception as exc:
            problems.append(f"{name}={value!r} ({what}) raised {type(exc).__name__}, not ValueError: {exc}")
        else:
            problems.append(f"{name}={value!r} ({what}) is accepted by __init__")
    assert not problems, "; ".join(problems)


@_check
def check_init_stores_settings(d: _Driver) -> None:
    """``__init__`` only stores settings (fast, no large state) and ``get_params`` round-trips."""
    cls = d.cls
    slowest = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        method = d.make()
        slowest = max(slowest, time.perf_counter() - t0)
        if slowest > d.opts.init_seconds:
            break
    assert slowest <= d.opts.init_seconds, (
        f"__init__ took {slowest:.3g} s (> {d.opts.init_seconds} s): heavy work belongs in {d.setup_name}")
    extra = sorted(k for k in vars(method) if k not in cls.settings and not k.startswith("_"))
    assert not extra, (f"__init__ sets attributes {extra} besides the settings: state belongs in {d.setup_name} "
                       "(a trailing underscore, set there)")
    big = sorted(k for k, v in vars(method).items() if getattr(v, "nbytes", 0) > 1 << 20)
    assert not big, f"__init__ stores large arrays {big}: heavy work belongs in {d.setup_name}"
    params = method.get_params()
    assert isinstance(params, dict) and set(params) == set(cls.settings), (
        f"get_params() returns {sorted(params) if isinstance(params, dict) else type(params).__name__}, "
        f"the settings are {sorted(cls.settings)}")
    for key, value in d.opts.settings.items():
        want = cls.settings[key].check(key, value)
        assert params[key] == want, f"get_params()[{key!r}] is {params[key]!r}, given {value!r}"
    again = cls(**params).get_params()
    assert again == params, f"cls(**get_params()) has get_params() {again!r}, not {params!r}"


@_check
def check_cross_settings_in_init(d: _Driver) -> None:
    """Settings ``__init__`` accepted do not raise at run time (combinations are checked in ``__init__``).

    A pricer's ``check_task`` may refuse settings a task's model cannot use; settings it refuses
    for every (model, product) the pricer supports are a combination ``__init__`` should refuse.
    """
    grid = [{}] + list(d.opts.settings_grid)
    for k, extra in enumerate(grid):
        settings = {**d.opts.settings, **extra}
        try:
            method = d.cls(**settings)
        except ValueError:
            assert k, f"__init__ rejects the given settings {settings!r}"
            continue  # rejected up front: what the check wants
        tasks = [(m, p) for m, products in getattr(d.cls, "supports", {}).items() for p in products]
        refusals = []
        for model, product in tasks:
            try:
                method.check_task(model, product)
            except ValueError as exc:
                refusals.append(str(exc))
        assert not tasks or len(refusals) < len(tasks), (
            f"settings {settings!r} pass __init__ but check_task refuses them for every (model, product) "
            f"({refusals[0]}): check combinations of settings in __init__")
        ran = 0
        for case in d.cases():
            method = d.cls(**settings)
            try:
                d.run(method, case, d.batch(case), f"settings {settings!r}, accepted by __init__")
            except _Skip:
                continue
            except AssertionError as exc:
                cause = exc.__cause__
                hint = " (check combinations of settings in __init__)" if isinstance(cause, ValueError) else ""
                raise AssertionError(f"{exc}{hint}") from cause
            ran += 1
        assert ran or k, f"no case ran with the given settings {settings!r} (all Unsupported or refused)"


@_check
def check_picklable(d: _Driver) -> None:
    """The class and its instances pickle; a prepared instance gives the same output after a round trip
    (an approximator: also after ``to_cpu()``, alone and with a pickle round trip)."""
    cls = d.cls
    try:
        back = pickle.loads(pickle.dumps(cls))
    except Exception as exc:
        raise AssertionError(f"the class does not pickle: {type(exc).__name__}: {exc}") from exc
    assert back is cls, "the class unpickles as another object (define it at module level)"
    method = d.make()
    try:
        clone = pickle.loads(pickle.dumps(method))
    except Exception as exc:
        raise AssertionError(f"a constructed instance does not pickle: {type(exc).__name__}: {exc}") from exc
    assert type(clone) is cls and clone.get_params() == method.get_params(), (
        f"the unpickled instance has settings {clone.get_params()!r}, not {method.get_params()!r}")

    def body(case, method):
        params = d.batch(case)
        clone = pickle.loads(pickle.dumps(method))
        inputs, out = d.run(method, case, params, "ordinary batch")
        want = d.fields(out)
        _, out2 = d.run(clone, case, params, "ordinary batch, unpickled instance")
        diff = _same_output(want, d.fields(out2))
        assert not diff, f"{case}: an unpickled copy of the instance gives different {diff}"
        try:
            method2, inputs2 = pickle.loads(pickle.dumps((method, inputs)))
        except Exception as exc:
            raise AssertionError(f"{case}: {d.prepared_name} (or its inputs) does not pickle: "
                                 f"{type(exc).__name__}: {exc}") from exc
        try:
            out3 = d.call(method2, inputs2)
        except Exception as exc:
            raise AssertionError(f"{case}: {d.prepared_name}, unpickled, raised {type(exc).__name__}: {exc}") from exc
        diff = _same_output(want, d.fields(out3))
        assert not diff, f"{case}: {d.prepared_name} gives different {diff} after a pickle round trip"
        d.round_trips(case, method, params, want)

    d.for_each_case(body)


@_check
def check_inputs_not_mutated(d: _Driver) -> None:
    """Read-only input arrays work; writable ones and prepared inputs are left unchanged."""

    def body(case, method):
        readonly = _readonly(d.batch(case))
        d.run(method, case, readonly, f"read-only {d.inputs_name}")
        writable = {k: np.array(v) for k, v in readonly.items()}
        before = _snapshot(writable)
        method = d.make()
        inputs, _ = d.run(method, case, writable, f"writable {d.inputs_name}")
        changed = _changed(before, writable)
        assert not changed, f"{case}: {d.setup_name} or {d.call_name} wrote into the {d.inputs_name} {changed}"
        held = _snapshot(inputs)
        d.call(method, inputs)
        changed = _changed(held, inputs)
        assert not changed, (f"{case}: {d.call_name} wrote into the inputs prepare returned {changed} "
                             "(the runner calls it repeatedly on the same inputs)")

    d.for_each_case(body)


@_check
def check_output_shape(d: _Driver) -> None:
    """The output has exactly the batch's shape."""

    def body(case, method):
        for k, shape in enumerate(d.shapes()):
            params = d.batch(case, shape=shape)
            what = f"a batch of shape {shape}"
            _, out = d.run(method, case, params, what) if k == 0 else d.run_again(method, case, params, what)
            problems = d.shape_problems(out, shape)
            assert not problems, f"{case}: " + "; ".join(problems)

    d.for_each_case(body)


@_check
def check_empty_batch(d: _Driver) -> None:
    """A batch of 0 options gives an empty result of shape (0,), no exception."""

    def body(case, method):
        _, out = d.run(method, case, d.batch(case, "empty"), "an empty batch")
        problems = d.shape_problems(out, (0,))
        assert not problems, f"{case}, empty batch: " + "; ".join(problems)

    d.for_each_case(body)


@_check
def check_nan_not_exception(d: _Driver) -> None:
    """Extreme (admissible) points give NaN or a finite value, never an exception or inf."""

    def body(case, method):
        params = d.batch(case, "extreme")
        _, out = d.run(method, case, params, "ordinary and extreme points: return NaN where a point cannot be "
                                             "computed, never raise")
        problems = d.shape_problems(out, np.shape(next(iter(params.values()))))
        problems = problems or d.output_problems(case, params, d.fields(out))
        assert not problems, f"{case}: " + "; ".join(problems)

    d.for_each_case(body)


@_check
def check_no_arbitrage_bounds(d: _Driver) -> None:
    """Returned values respect the no-arbitrage bounds (pricers) or flag prices outside them (root finders)."""

    def body(case, method):
        params = d.batch(case, "extreme")
        _, out = d.run(method, case, params, "ordinary and extreme points")
        problems = d.shape_problems(out, np.shape(next(iter(params.values()))))
        problems = problems or d.bound_problems(case, params, d.fields(out))
        assert not problems, f"{case}: " + "; ".join(problems)

    d.for_each_case(body)


@_check
def check_reproducible(d: _Driver) -> None:
    """Same seed, same result; another seed, another result (not asked of approximators); deterministic
    otherwise. Approximators run on the CPU."""
    d = d.on_cpu()
    seeded = "seed" in d.cls.settings
    seeds = {"seed": 12345} if seeded else {}
    differs = []

    def body(case, _):
        params = d.batch(case)
        method = d.make(**seeds)
        inputs, out = d.run(method, case, params, "ordinary batch")
        first = d.fields(out)
        try:
            again = d.fields(d.call(method, inputs))
        except Exception as exc:
            raise AssertionError(f"{case}: a second {d.call_name} on the same inputs raised "
                                 f"{type(exc).__name__}: {exc}") from exc
        diff = _same_output(first, again)
        assert not diff, f"{case}: a second {d.call_name} call on the same inputs gives different {diff}"
        _, out2 = d.run(d.make(**seeds), case, params, "ordinary batch, second instance")
        diff = _same_output(first, d.fields(out2))
        what = "the same seed" if seeded else "the same settings (a random method needs a seed setting)"
        assert not diff, f"{case}: two instances with {what} give different {diff}"
        if seeded and d.seed_must_matter:
            _, out3 = d.run(d.make(seed=54321), case, params, "ordinary batch, another seed")
            differs.append(bool(_same_output(first, d.fields(out3))))

    d.for_each_case(body)
    assert not (seeded and d.seed_must_matter) or any(differs), (
        "another seed gives identical output on every case (is the seed used?)")


# --------------------------------------------------------------------------- approximators' own checks


def _approximators_only(d: _Driver) -> _ApproximatorDriver:
    if not isinstance(d, _ApproximatorDriver):
        raise AssertionError(f"the check applies to approximators, not to a {d.kind.replace('_', ' ')}")
    return d


_PLAIN = (bool, int, float, str, type(None))


@_check
def check_fits_smooth_function(d: _Driver) -> None:
    """Fits ``smooth_2d`` to an RMSE below ``fit_tol`` of the targets' std; ``fit_info_`` is plain."""
    d = _approximators_only(d)
    case, method = SMOOTH_2D, d.make()
    params = d.batch(case, "test")
    _, out = d.run(method, case, params, "the kit's smooth function")
    info = getattr(method, "fit_info_", None)
    assert isinstance(info, dict), f"fit set fit_info_ to {_what(info)}, not a dict (of numbers and strings)"
    odd = {k: v for k, v in info.items() if not isinstance(k, str) or not isinstance(v, _PLAIN)}
    assert not odd, f"fit_info_ holds {odd!r}: its keys must be strings and its values plain numbers or strings"
    n = len(params["X_test"])
    problems = d.shape_problems(out, (n,))
    assert not problems, f"{case}: " + "; ".join(problems)
    pred = d.fields(out)["prediction"].astype(np.float64)
    y = smooth_data()["y_test"]
    bad = ~np.isfinite(pred)
    assert not bad.any(), (f"{case}: {int(bad.sum())} of {n} predictions are not finite "
                           f"(first {float(pred[bad][0])!r} at X = {params['X_test'][bad][0].tolist()})")
    rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
    scale = float(np.std(y))
    tol = d.opts.fit_tol * scale
    assert rmse < tol, (
        f"{case}: RMSE {rmse:.3g} on {n} test points of f(x) = sin(x0) + 0.5 x1**2 (standardised; "
        f"{SMOOTH_ROWS['X']} training points), not below fit_tol {d.opts.fit_tol:g} x the targets' standard "
        f"deviation {scale:.3g} = {tol:.3g}, with settings {d.settings_for()!r} (fit_info_ {info!r}); "
        "give settings that fit better, or a larger fit_tol")


@_check
def check_bad_training_input(d: _Driver) -> None:
    """``fit`` raises ValueError for NaN in X or y, X and y of different lengths, and a 1-D X."""
    d = _approximators_only(d)
    params = d.batch(SMOOTH_2D)
    X, y = params["X"], params["y"]
    x_nan, y_nan = X.copy(), y.copy()
    x_nan[7, 1] = np.nan
    y_nan[11] = np.nan
    bad = [("X with a NaN", x_nan, y), ("y with a NaN", X, y_nan), ("y one row shorter than X", X, y[:-1]),
           (f"a 1-D X of shape {X[:, 0].shape}", np.ascontiguousarray(X[:, 0]), y)]
    problems = []
    for what, Xb, yb in bad:
        method = d.make()
        try:
            d.fit_call(method, {**params, "X": Xb, "y": yb})
        except ValueError:
            continue
        except Exception as exc:
            problems.append(f"{what}: fit raised {type(exc).__name__}, not ValueError: {exc}")
        else:
            problems.append(f"{what}: fit accepted it (raise ValueError naming the argument)")
    assert not problems, "; ".join(problems)


@_check
def check_predict_std(d: _Driver) -> None:
    """Where ``has_std``, ``predict_std`` gives finite non-negative values of shape (n,)."""
    d = _approximators_only(d)
    case, method = SMOOTH_2D, d.make()
    inputs, _ = d.run(method, case, d.batch(case), "ordinary batch")
    if not getattr(method, "has_std", False):  # the instance's, set by fit, else the class's
        return
    try:
        std = method.predict_std(inputs)
    except Exception as exc:
        raise AssertionError(f"{case}: has_std is true but predict_std raised {type(exc).__name__}: {exc}") from exc
    problems = _array_problems(std, (d.opts.n,), "predict_std")
    assert not problems, f"{case}: " + "; ".join(problems)
    std = _host(std).astype(np.float64)
    bad = ~(np.isfinite(std) & (std >= 0))
    assert not bad.any(), (f"{case}: predict_std gave {float(std[bad][0])!r}: {int(bad.sum())} of {std.size} "
                           "values negative or not finite")


@_check
def check_differential(d: _Driver) -> None:
    """A configuration that wants derivatives refuses a missing or misshapen ``dydX`` and fits with it."""
    d = _approximators_only(d)
    extra = d.opts.differential_settings
    method = d.make(**extra)
    wants = bool(method.wants_derivatives())
    if not getattr(d.cls, "uses_derivatives", False):
        assert not wants, ("wants_derivatives() is true but the class says uses_derivatives = False "
                           "(the framework computes dydX only for classes that use them)")
        return
    if not wants:
        assert not extra, (f"differential_settings {extra!r} give an instance whose wants_derivatives() is false "
                           f"(settings {d.settings_for(**extra)!r})")
        return
    case, params = SMOOTH_2D, d.batch(SMOOTH_2D)
    n, dim = params["X"].shape
    problems = []
    for what, dydX in (("without dydX", None), (f"with dydX of shape {(n, dim + 1)}", np.zeros((n, dim + 1)))):
        method = d.make(**extra)
        try:
            d.fit_call(method, params, dydX=dydX)
        except ValueError:
            continue
        except Exception as exc:
            problems.append(f"fit {what} raised {type(exc).__name__}, not ValueError: {exc}")
        else:
            problems.append(f"fit {what} succeeded: a configuration that wants derivatives must raise ValueError "
                            "naming dydX")
    assert not problems, f"settings {d.settings_for(**extra)!r}: " + "; ".join(problems)
    method = d.make(**extra)
    _, out = d.run(method, case, params, f"differential training with settings {d.settings_for(**extra)!r}")
    problems = d.shape_problems(out, (d.opts.n,))
    assert not problems, f"{case}: " + "; ".join(problems)
    pred = d.fields(out)["prediction"].astype(np.float64)
    assert np.isfinite(pred).all(), f"{case}: differential training gives non-finite predictions {pred.tolist()}"


PRICER_CHECKS: list[Callable[..., None]] = [
    check_settings_validated_in_init,
    check_init_stores_settings,
    check_cross_settings_in_init,
    check_picklable,
    check_inputs_not_mutated,
    check_output_shape,
    check_empty_batch,
    check_nan_not_exception,
    check_no_arbitrage_bounds,
    check_reproducible,
]
ROOT_FINDER_CHECKS: list[Callable[..., None]] = list(PRICER_CHECKS)
APPROXIMATOR_CHECKS: list[Callable[..., None]] = [
    check_settings_validated_in_init,
    check_init_stores_settings,
    check_cross_settings_in_init,
    check_fits_smooth_function,
    check_output_shape,
    check_empty_batch,
    check_inputs_not_mutated,
    check_picklable,
    check_reproducible,
    check_bad_training_input,
    check_predict_std,
    check_differential,
]
CHECKS: dict[str, list[Callable[..., None]]] = {"pricer": PRICER_CHECKS, "root_finder": ROOT_FINDER_CHECKS,
                                                "approximator": APPROXIMATOR_CHECKS}


# --------------------------------------------------------------------------- entry points


def checks_for(cls: type) -> list[Callable[..., None]]:
    """The checks that apply to ``cls`` (by its kind)."""
    kind = getattr(cls, "kind", None)
    if kind not in CHECKS:
        raise TypeError(f"bench.testing has no checks for {cls!r} (kinds: {', '.join(CHECKS)})")
    return CHECKS[kind]


def _run_checks(cls: type, checks: Sequence[Callable[..., None]], options: dict[str, Any]) -> None:
    Options.make(**options)  # a misspelt option fails before any check runs
    failures = []
    for check in checks:
        try:
            check(cls, **options)
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        raise AssertionError(f"{len(failures)} of {len(checks)} checks failed:\n" + "\n".join(failures))


def check_pricer(cls: type, *, checks: Sequence[Callable[..., None]] | None = None, **options: Any) -> None:
    """Run every pricer check (or ``checks``) on ``cls``; one AssertionError lists the failures."""
    if not (isinstance(cls, type) and issubclass(cls, Pricer)):
        raise TypeError(f"check_pricer takes a Pricer subclass, got {cls!r}")
    _run_checks(cls, PRICER_CHECKS if checks is None else checks, options)


def check_root_finder(cls: type, *, checks: Sequence[Callable[..., None]] | None = None, **options: Any) -> None:
    """Run every root-finder check (or ``checks``) on ``cls``; one AssertionError lists the failures."""
    if not (isinstance(cls, type) and issubclass(cls, RootFinder)):
        raise TypeError(f"check_root_finder takes a RootFinder subclass, got {cls!r}")
    _run_checks(cls, ROOT_FINDER_CHECKS if checks is None else checks, options)


def check_approximator(cls: type, *, checks: Sequence[Callable[..., None]] | None = None, **options: Any) -> None:
    """Run every approximator check (or ``checks``) on ``cls``; one AssertionError lists the failures."""
    if not (isinstance(cls, type) and issubclass(cls, Approximator)):
        raise TypeError(f"check_approximator takes an Approximator subclass, got {cls!r}")
    _run_checks(cls, APPROXIMATOR_CHECKS if checks is None else checks, options)


def check_method(cls: type, **options: Any) -> None:
    """Run the checks of ``cls``'s kind."""
    _run_checks(cls, checks_for(cls), options)


def _options_for(cls: type, options: Mapping[Any, Mapping[str, Any]] | None) -> dict[str, Any]:
    if not options:
        return {}
    for key in (cls, getattr(cls, "name", None), cls.__name__):
        if key in options:
            return dict(options[key])
    return {}


def iter_checks(classes: Iterable[type], options: Mapping[Any, Mapping[str, Any]] | None = None
                ) -> Iterator[tuple[type, Callable[[type], None]]]:
    """(cls, check) pairs: ``check(cls)`` runs one check with the options of ``cls``.

    ``options`` maps a class, its registered name or its class name to the
    keywords of its checks (``settings``, ``settings_grid``, ``models``, ...).
    """
    for cls in classes:
        opts = _options_for(cls, options)
        Options.make(**opts)
        for check in checks_for(cls):
            bound = functools.update_wrapper(functools.partial(check, **opts), check)
            yield cls, bound


def _check_id(cls: type, check: Callable[..., None]) -> str:
    return f"{getattr(cls, 'name', '') or cls.__name__}-{check.__name__}"


def parametrize_with_checks(classes: Iterable[type], options: Mapping[Any, Mapping[str, Any]] | None = None):
    """A ``pytest.mark.parametrize`` over (method, check) pairs, ids ``<name>-<check>``, of pricers,
    root finders and approximators (each gets the checks of its kind)::

        @parametrize_with_checks([MyPricer], options={MyPricer: {"settings": {"nodes": 16}}})
        def test_conformance(method, check):
            check(method)
    """
    import pytest  # only the test suite needs it

    pairs = list(iter_checks(classes, options))
    return pytest.mark.parametrize("method, check", pairs, ids=[_check_id(c, k) for c, k in pairs])
