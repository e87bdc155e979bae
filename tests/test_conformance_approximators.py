"""The conformance kit on approximators (bench.testing.check_approximator): the built-ins pass it,
a small ridge regression on monomials passes it, and each check catches an approximator broken
in the way it looks for.

The built-ins run with cheap settings (few epochs or iterations): the kit checks contracts and a
loose fit of a smooth 2-D function, not benchmark accuracy.
"""

from __future__ import annotations

import contextlib
import itertools
import threading

import numpy as np
import pytest

from bench import testing
from bench.methods import Approximator, Pricer, Setting, SettingError, check_training_arrays
from bench.plugins import get_registry
from bench.testing import APPROXIMATOR_CHECKS, check_approximator, parametrize_with_checks

# per built-in approximator: cheap settings, and the combinations __init__ must reject or run
OPTIONS = {
    # 60 epochs of 7 steps fit smooth_2d to an RMSE of 0.01-0.02 (30 epochs: 0.03-0.06, seed-dependent)
    "mlp": {"settings": {"epochs": 60, "width": 32, "batch_size": 64, "lr": 1e-2},
            "settings_grid": [{"depth": 1}, {"activation": "tanh"}, {"differential": 1.0}, {"schedule": "one_cycle"},
                              {"dtype": "float64"}],
            "differential_settings": {"differential": 1.0}},
    "gp": {"settings": {"iterations": 30},
           "settings_grid": [{"method": "variational", "inducing": 32, "epochs": 2}, {"kernel": "matern", "nu": 0.5},
                             {"dtype": "float32"}]},
    "least_squares": {"settings": {"degree": 4},
                      "settings_grid": [{"basis": "polynomial", "solver": "cholesky"}, {"degree": 0},
                                        {"degree": 12, "alpha": 1.0}]},
    # KRG's likelihood from one starting point: 0.3 s a fit, against 3 s from the default three
    "smt": {"settings": {"surrogate": "KRG", "n_start": 1},
            "settings_grid": [{"surrogate": "RBF"}, {"surrogate": "LS"}, {"surrogate": "QP"},
                              {"corr": "matern52", "poly": "linear"}]},
}


def _builtins():
    """Every approximator the built-in plugins (this distribution's entry points) register."""
    registry = get_registry()
    ours = {p.name for p in registry.plugins if p.source == "entry point: pricebench"}
    return [registry.get("approximator", name) for name in registry.names("approximator")
            if registry.entry("approximator", name).plugin in ours]


def test_every_builtin_has_cheap_options():
    """A built-in approximator without an OPTIONS entry would be checked with its default (costly) settings."""
    assert {cls.name for cls in _builtins()} <= set(OPTIONS)


@pytest.fixture
def one_thread():
    """Torch and BLAS on one thread: on a busy 2-core machine two threads thrash (an MLP fit took 25 s
    instead of 0.2 s, a KRG fit 22 s instead of 0.6 s); the kit checks contracts, not speed."""
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - comes with scikit-learn
            pass
        else:
            stack.enter_context(threadpool_limits(1))
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        else:
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(1)
        yield


@pytest.mark.usefixtures("one_thread")
@parametrize_with_checks(_builtins(), options=OPTIONS)
def test_builtin_conforms(method, check):
    check(method)


# --------------------------------------------------------------------------- a conforming approximator


def _powers(dim: int, degree: int) -> np.ndarray:
    """Exponents (K, dim) of every monomial of total degree <= degree."""
    return np.array([np.bincount(np.array(c, dtype=np.int64), minlength=dim) for k in range(degree + 1)
                     for c in itertools.combinations_with_replacement(range(dim), k)], dtype=np.int64)


def _features(X: np.ndarray, powers: np.ndarray) -> np.ndarray:
    return np.prod(X[:, None, :] ** powers[None], axis=2)


def _feature_grads(X: np.ndarray, powers: np.ndarray) -> np.ndarray:
    """d feature_k / d x_j, shape (n, dim, K)."""
    out = np.empty((X.shape[0], X.shape[1], powers.shape[0]))
    for j in range(X.shape[1]):
        lowered = powers.copy()
        lowered[:, j] = np.maximum(lowered[:, j] - 1, 0)
        out[:, j, :] = powers[:, j] * _features(X, lowered)
    return out


class RidgePoly(Approximator):
    """Ridge regression on the monomials of the inputs; optionally on derivative labels too."""

    name = "ridge_poly"
    uses_derivatives = True
    has_std = True
    settings = {
        "degree": Setting(4, int, "total degree of the monomials", min=1, max=8),
        "alpha": Setting(1e-8, float, "ridge penalty", min=0.0),
        "jitter": Setting(1e-9, float, "seeded noise added to the targets", min=0.0),
        "seed": Setting(None, int, "seed of the jitter", min=0),
        "use_dydX": Setting(False, bool, "fit the derivative labels too"),
    }

    def wants_derivatives(self):
        return self.use_dydX

    def noise(self, n):
        return self.jitter * np.random.default_rng(self.seed).standard_normal(n)

    def fit(self, X, y, *, X_val=None, y_val=None, dydX=None, device="cpu"):
        self.check_device(device)
        X, y = check_training_arrays(X, y, dydX)
        if self.use_dydX and dydX is None:
            raise ValueError("dydX is required: setting 'use_dydX' trains on derivatives")
        self.powers_ = _powers(X.shape[1], self.degree)
        A, b = _features(X, self.powers_), y + self.noise(len(y))
        if self.use_dydX:
            A = np.vstack([A, _feature_grads(X, self.powers_).reshape(-1, A.shape[1])])
            b = np.concatenate([b, np.asarray(dydX, dtype=np.float64).reshape(-1)])
        k = A.shape[1]
        A = np.vstack([A, np.sqrt(self.alpha) * np.eye(k)])
        b = np.concatenate([b, np.zeros(k)])
        self.coef_ = np.linalg.lstsq(A, b, rcond=None)[0]
        self.sigma_ = float(np.sqrt(np.mean((self.predict(X) - y) ** 2)))
        self.fit_info_ = {"features": int(k), "train_rmse": self.sigma_}
        if X_val is not None:
            self.fit_info_["val_rmse"] = float(np.sqrt(np.mean((self.predict(X_val) - y_val) ** 2)))
        return self

    def predict(self, X):
        return _features(X, self.powers_) @ self.coef_

    def predict_std(self, X):
        return np.full(X.shape[0], self.sigma_)


DIFFERENTIAL = {"differential_settings": {"use_dydX": True}}


def test_a_conforming_approximator_passes():
    check_approximator(RidgePoly, settings_grid=[{"degree": 2}, {"use_dydX": True}, {"alpha": 10.0}], **DIFFERENTIAL)


@parametrize_with_checks([RidgePoly], options={"ridge_poly": {"settings": {"degree": 5}, **DIFFERENTIAL}})
def test_parametrize_with_checks(method, check):
    check(method)


def test_parametrize_ids():
    ids = parametrize_with_checks([RidgePoly]).kwargs["ids"]
    assert ids == [f"ridge_poly-{c.__name__}" for c in APPROXIMATOR_CHECKS]
    assert testing.checks_for(RidgePoly) is APPROXIMATOR_CHECKS


def test_the_data_set():
    """Standardised with the training set's statistics; dydX is the derivative of the standardised target."""
    data = testing.smooth_data()
    assert {k: v.shape for k, v in data.items()} == {
        "X": (400, 2), "y": (400,), "dydX": (400, 2), "X_val": (100, 2), "y_val": (100,),
        "X_test": (200, 2), "y_test": (200,)}
    np.testing.assert_allclose(data["X"].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(data["X"].std(axis=0), 1.0)
    assert abs(data["y"].mean()) < 1e-12 and data["y"].std() == pytest.approx(1.0)
    fit = RidgePoly(degree=8, jitter=0.0).fit(data["X"], data["y"])
    h = 1e-6
    for j in range(2):  # a degree-8 fit's slope matches the labels
        step = np.zeros(2)
        step[j] = h
        slope = (fit.predict(data["X"][:20] + step) - fit.predict(data["X"][:20] - step)) / (2 * h)
        np.testing.assert_allclose(slope, data["dydX"][:20, j], atol=2e-3)
    assert not data["X"].flags.writeable


def test_fit_tol_and_kind_errors():
    with pytest.raises(AssertionError, match="^check_fits_smooth_function failed for approximator 'ridge_poly': "
                                             "smooth_2d: RMSE"):
        testing.check_fits_smooth_function(RidgePoly, settings={"degree": 1})
    testing.check_fits_smooth_function(RidgePoly, settings={"degree": 1}, fit_tol=0.9)
    with pytest.raises(TypeError, match="Approximator subclass"):
        check_approximator(int)
    with pytest.raises(ValueError, match="fit_tol"):
        check_approximator(RidgePoly, fit_tol=0.0)


# --------------------------------------------------------------------------- broken approximators, one per check


class NotValidated(RidgePoly):
    """Stores its settings unchecked."""

    def __init__(self, **settings):
        for key, spec in self.settings.items():
            setattr(self, key, settings.get(key, spec.default))


class FitsInInit(RidgePoly):
    """Builds its exponent table in __init__."""

    def __init__(self, **settings):
        super().__init__(**settings)
        self.powers = _powers(2, self.degree)


class CrossCheckedInFit(RidgePoly):
    """Caps the number of features only when it fits."""

    settings = {**RidgePoly.settings, "max_features": Setting(100, int, "most monomials", min=1)}

    def fit(self, X, y, **kwargs):
        if len(_powers(np.shape(X)[-1], self.degree)) > self.max_features:
            raise SettingError("setting 'max_features' is below the monomials of 'degree'", "max_features")
        return super().fit(X, y, **kwargs)


class Underfits(RidgePoly):
    """A plane, whatever the degree."""

    def fit(self, X, y, **kwargs):
        self.degree = 1
        return super().fit(X, y, **kwargs)


class FitReturnsNone(RidgePoly):
    def fit(self, X, y, **kwargs):
        super().fit(X, y, **kwargs)


class ArrayFitInfo(RidgePoly):
    def fit(self, X, y, **kwargs):
        super().fit(X, y, **kwargs)
        self.fit_info_["coef"] = self.coef_
        return self


class ColumnOutput(RidgePoly):
    def predict(self, X):
        return super().predict(X)[:, None]


class EmptyRaises(RidgePoly):
    def predict(self, X):
        if len(X) == 0:
            raise IndexError("no rows")
        return super().predict(X)


class MutatesX(RidgePoly):
    """Clips the caller's training inputs in place."""

    def fit(self, X, y, **kwargs):
        if X.flags.writeable:
            np.clip(X, -1.5, 1.5, out=X)
        return super().fit(X, y, **kwargs)


class ScalesPrepared(RidgePoly):
    """Uses the prepared input as scratch space in predict."""

    def predict(self, X):
        out = super().predict(X)
        X *= 1.0 + 1e-12
        return out


class UnpicklableAfterFit(RidgePoly):
    def fit(self, X, y, **kwargs):
        self.lock_ = threading.Lock()
        return super().fit(X, y, **kwargs)


class ToCpuRounds(RidgePoly):
    """to_cpu stores the coefficients in float32: the saved approximator predicts differently."""

    def to_cpu(self):
        self.coef_ = self.coef_.astype(np.float32).astype(np.float64)
        return self


class Unseeded(RidgePoly):
    """Draws its jitter from fresh entropy whatever the seed."""

    def noise(self, n):
        return self.jitter * np.random.default_rng().standard_normal(n)


class AcceptsNaN(RidgePoly):
    """Drops non-finite training rows silently."""

    def fit(self, X, y, **kwargs):
        X = np.asarray(X, dtype=np.float64)
        keep = np.isfinite(X).all(axis=1)
        return super().fit(np.ascontiguousarray(X[keep]), np.asarray(y)[keep], **kwargs)


class NoValidation(RidgePoly):
    """Never checks the shapes: a 1-D X raises IndexError."""

    def fit(self, X, y, *, X_val=None, y_val=None, dydX=None, device="cpu"):
        self.powers_ = _powers(X.shape[1], self.degree)
        self.coef_ = np.linalg.lstsq(_features(X, self.powers_), y, rcond=None)[0]
        self.sigma_ = 0.0
        self.fit_info_ = {}
        return self


class NegativeStd(RidgePoly):
    """Says it has a standard deviation only once fitted, and gives a negative one."""

    has_std = False

    def fit(self, X, y, **kwargs):
        super().fit(X, y, **kwargs)
        self.has_std = True
        return self

    def predict_std(self, X):
        return -super().predict_std(X)


class IgnoresMissingDydX(RidgePoly):
    """Wants derivatives, but fits the values alone when dydX is missing."""

    def fit(self, X, y, *, dydX=None, **kwargs):
        if dydX is None:
            self.use_dydX = False
        try:
            return super().fit(X, y, dydX=dydX, **kwargs)
        finally:
            self.use_dydX = True


class WantsButNotDifferential(RidgePoly):
    uses_derivatives = False


BROKEN = [
    (NotValidated, "check_settings_validated_in_init", {}),
    (FitsInInit, "check_init_stores_settings", {}),
    (CrossCheckedInFit, "check_cross_settings_in_init", {"settings_grid": [{"degree": 8, "max_features": 10}]}),
    (Underfits, "check_fits_smooth_function", {}),
    (FitReturnsNone, "check_fits_smooth_function", {}),
    (ArrayFitInfo, "check_fits_smooth_function", {}),
    (ColumnOutput, "check_output_shape", {}),
    (EmptyRaises, "check_empty_batch", {}),
    (MutatesX, "check_inputs_not_mutated", {}),
    (ScalesPrepared, "check_inputs_not_mutated", {}),
    (UnpicklableAfterFit, "check_picklable", {}),
    (ToCpuRounds, "check_picklable", {}),
    (Unseeded, "check_reproducible", {}),
    (AcceptsNaN, "check_bad_training_input", {}),
    (NoValidation, "check_bad_training_input", {}),
    (NegativeStd, "check_predict_std", {}),
    (IgnoresMissingDydX, "check_differential", DIFFERENTIAL),
    (WantsButNotDifferential, "check_differential", DIFFERENTIAL),
]


def test_every_check_has_a_broken_approximator():
    assert {name for _, name, _ in BROKEN} == {c.__name__ for c in APPROXIMATOR_CHECKS}


@pytest.mark.parametrize("cls, name, options", BROKEN, ids=[f"{c.__name__}-{n}" for c, n, _ in BROKEN])
def test_check_catches_broken_approximator(cls, name, options):
    check = getattr(testing, name)
    with pytest.raises(AssertionError, match=f"^{name} failed for approximator 'ridge_poly': ") as info:
        check(cls, **options)
    print(info.value)  # the message a plugin author would read (pytest -s)


def test_check_approximator_lists_every_failure():
    with pytest.raises(AssertionError) as info:
        check_approximator(ColumnOutput)
    message = str(info.value)
    assert message.startswith(f"3 of {len(APPROXIMATOR_CHECKS)} checks failed:")
    assert "check_output_shape failed for approximator 'ridge_poly': smooth_2d: predict returned shape (8, 1) for 8 " \
           "rows, not (8,)" in message
    for name in ("check_fits_smooth_function", "check_empty_batch"):
        assert f"{name} failed for approximator 'ridge_poly'" in message


class SomePricer(Pricer):
    name = "some_pricer"
    supports = {"black_scholes": ("european_call",)}


def test_approximator_checks_refuse_other_kinds():
    with pytest.raises(AssertionError, match="^check_differential failed for pricer 'some_pricer': the check "
                                             "applies to approximators"):
        testing.check_differential(SomePricer)
