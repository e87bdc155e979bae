"""The ``least_squares`` approximator: exact polynomials, smooth fits, the basis cap, pickle, settings."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from bench.methods import SettingError, Unsupported
from bench.plugins import load
from pricebench_plugins.approximators.least_squares import (
    MAX_BASIS,
    LeastSquares,
    chebyshev_basis,
    n_basis,
    total_degree_indices,
)


def f(X):
    return np.sin(X[:, 0]) + 0.5 * X[:, 1] ** 2


def cubic(X):
    x, y = X[:, 0], X[:, 1]
    return 1.0 + 2.0 * x - y + x * y + 0.5 * x**2 * y - 0.3 * y**3 + 0.1 * x**3


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((300, 2))
    return X, rng.uniform(-1.5, 1.5, (500, 2))


def rmse(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_registered_through_entry_point():
    assert load(only="least_squares").get("approximator", "least_squares") is LeastSquares


def test_basis_helpers():
    assert total_degree_indices(2, 2).tolist() == [[1, 0], [0, 1], [2, 0], [1, 1], [0, 2]]
    assert len(total_degree_indices(4, 3)) == n_basis(4, 3) - 1 == math.comb(7, 3) - 1
    z = np.linspace(-1, 1, 7)[:, None]
    T = chebyshev_basis(z, total_degree_indices(1, 4), 4)
    np.testing.assert_allclose(T, np.cos(np.arange(1, 5) * np.arccos(z)), atol=1e-14)


@pytest.mark.parametrize("basis", ["polynomial", "chebyshev"])
@pytest.mark.parametrize("solver", ["svd", "cholesky"])
def test_recovers_exact_cubic_outside_the_training_box(basis, solver, data):
    X, _ = data
    model = LeastSquares(basis=basis, degree=3, alpha=0.0, solver=solver).fit(X, cubic(X))
    far = np.random.default_rng(0).uniform(-5, 5, (200, 2))  # beyond the training box: no clipping
    assert np.max(np.abs(X)) < 5
    np.testing.assert_allclose(model.predict(far), cubic(far), rtol=0, atol=1e-8)
    assert model.fit_info_["train_rmse"] < 1e-10


@pytest.mark.parametrize("basis", ["polynomial", "chebyshev"])
def test_fits_smooth_function(basis, data):
    X, Xt = data
    model = LeastSquares(basis=basis, degree=8).fit(X, f(X), X_val=Xt, y_val=f(Xt))
    assert rmse(model.predict(Xt), f(Xt)) < 1e-4
    info = model.fit_info_
    assert info["n_basis"] == 45 and info["val_rmse"] < 1e-4
    assert all(isinstance(v, (int, float, str)) for v in info.values())


@pytest.mark.parametrize("basis", ["chebyshev", "polynomial"])
def test_predict_in_blocks_equals_the_whole_design(basis):
    """predict works in row blocks; across block boundaries it is the design matrix times the coefficients."""
    from pricebench_plugins.approximators import least_squares

    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, (least_squares.PREDICT_BLOCK * 2 + 37, 3))
    model = LeastSquares(basis=basis, degree=5).fit(X, np.exp(X[:, 0]) * np.cos(X[:, 1]) + X[:, 2])
    design = (model.poly_.transform(X) if basis == "polynomial"
              else least_squares.chebyshev_basis((X - model.center_) * model.scale_, model.indices_, 5))
    np.testing.assert_allclose(model.predict(X), design @ model.coef_ + model.intercept_, rtol=1e-13, atol=1e-13)


def test_chebyshev_maps_with_training_min_max(data):
    X, _ = data
    model = LeastSquares(basis="chebyshev", degree=2).fit(X, f(X))
    lo, hi = X.min(axis=0), X.max(axis=0)
    np.testing.assert_allclose((lo - model.center_) * model.scale_, -1.0)
    np.testing.assert_allclose((hi - model.center_) * model.scale_, 1.0)


def test_constant_column_and_degree_zero(data):
    X, Xt = data
    Xc = np.column_stack([X, np.zeros(len(X))])
    model = LeastSquares(degree=3, alpha=0.0).fit(Xc, cubic(X))
    np.testing.assert_allclose(model.predict(np.column_stack([Xt, np.zeros(len(Xt))])), cubic(Xt), atol=1e-9)
    mean = LeastSquares(degree=0).fit(X, f(X))
    np.testing.assert_allclose(mean.predict(Xt), np.mean(f(X)))


def test_ridge_shrinks(data):
    X, _ = data
    plain = LeastSquares(degree=3, alpha=0.0).fit(X, cubic(X))
    ridge = LeastSquares(degree=3, alpha=100.0).fit(X, cubic(X))
    assert np.linalg.norm(ridge.coef_) < np.linalg.norm(plain.coef_)


def test_basis_cap():
    with pytest.raises(ValueError, match=f"basis functions, more than the cap of {MAX_BASIS}"):
        LeastSquares(degree=30).fit(np.zeros((10, 8)), np.zeros(10))
    with pytest.raises(ValueError, match="design matrix"):
        LeastSquares(degree=8).fit(np.zeros((20_000, 8)), np.zeros(20_000))  # 12,870 functions x 20,000 rows


def test_pickle_empty_and_deterministic(data):
    X, Xt = data
    model = LeastSquares(basis="polynomial", degree=5).fit(X, f(X))
    copy = pickle.loads(pickle.dumps(model))
    assert np.array_equal(copy.predict(Xt), model.predict(Xt))
    again = LeastSquares(basis="polynomial", degree=5).fit(X, f(X))
    assert np.array_equal(again.predict(Xt), model.predict(Xt))
    assert model.predict(model.prepare(np.zeros((0, 2)))).shape == (0,)


def test_cpu_only(data):
    X, _ = data
    model = LeastSquares(degree=2).fit(X, f(X))
    with pytest.raises(Unsupported):
        model.prepare(X, "cuda")


@pytest.mark.parametrize("settings, name", [
    ({"basis": "fourier"}, "basis"),
    ({"degree": -1}, "degree"),
    ({"degree": 2.5}, "degree"),
    ({"alpha": -1.0}, "alpha"),
    ({"solver": "lsqr"}, "solver"),
    ({"seed": 1}, "seed"),
])
def test_bad_setting_names_it(settings, name):
    with pytest.raises(SettingError, match=name) as err:
        LeastSquares(**settings)
    assert err.value.setting == name
