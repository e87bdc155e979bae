"""The ``smt`` approximator: KRG, RBF, LS and QP behind one adapter; max_points, std, silence, pickle, settings."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from bench.methods import SettingError, Unsupported
from bench.plugins import load

pytest.importorskip("smt")

from pricebench_plugins.approximators.smt_surrogate import SMTSurrogate  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """One BLAS thread: smt's small dense solves are much faster without contention on a busy 2-core box."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def f(X):
    return np.sin(X[:, 0]) + 0.5 * X[:, 1] ** 2


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((200, 2))
    return X, rng.uniform(-1.5, 1.5, (300, 2))


@pytest.fixture(scope="module")
def krg(data):
    X, Xt = data
    return SMTSurrogate(seed=0).fit(X, f(X), X_val=Xt, y_val=f(Xt))


def rmse(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_registered_through_entry_point():
    assert load(only="smt").get("approximator", "smt") is SMTSurrogate


def test_krg_fits_and_gives_std(krg, data):
    _, Xt = data
    pred = krg.predict(krg.prepare(Xt))
    assert pred.shape == (300,) and pred.dtype == np.float64
    assert rmse(pred, f(Xt)) < 1e-4
    assert krg.has_std is True
    std = krg.predict_std(Xt)
    assert std.shape == (300,) and np.all(np.isfinite(std)) and np.all(std >= 0)
    info = krg.fit_info_
    assert info["surrogate"] == "KRG" and info["n_train"] == 200 and "note" not in info
    assert info["val_rmse"] < 1e-4
    assert all(isinstance(v, (int, float, str)) for v in info.values())


def test_krg_is_silent(data, capsys):
    X, _ = data
    model = SMTSurrogate(corr="matern52", max_points=80).fit(X, f(X))
    model.predict(X[:5])
    model.predict_std(X[:5])
    assert capsys.readouterr().out == ""


def test_rbf(data):
    X, Xt = data
    model = SMTSurrogate(surrogate="RBF", d0=1.0).fit(X, f(X))
    assert rmse(model.predict(Xt), f(Xt)) < 1e-3
    assert model.has_std is False
    with pytest.raises(NotImplementedError, match="only KRG"):
        model.predict_std(Xt)


def test_ls_and_qp_recover_their_polynomials(data):
    X, Xt = data
    affine = lambda Z: 1.0 + 2.0 * Z[:, 0] - 0.5 * Z[:, 1]  # noqa: E731
    quad = lambda Z: affine(Z) + Z[:, 0] * Z[:, 1] - 0.3 * Z[:, 1] ** 2  # noqa: E731
    np.testing.assert_allclose(SMTSurrogate(surrogate="LS").fit(X, affine(X)).predict(Xt), affine(Xt), atol=1e-10)
    np.testing.assert_allclose(SMTSurrogate(surrogate="QP").fit(X, quad(X)).predict(Xt), quad(Xt), atol=1e-8)
    with pytest.raises(ValueError, match="at least 6 points"):
        SMTSurrogate(surrogate="QP").fit(X[:5], quad(X[:5]))


def test_max_points_subsamples_with_seed(data):
    X, Xt = data
    a = SMTSurrogate(surrogate="RBF", max_points=100, seed=1).fit(X, f(X))
    assert a.fit_info_["note"] == "trained on 100 of 200 points (max_points)"
    assert a.fit_info_["n_train"] == 100 and a.fit_info_["n_given"] == 200
    b = SMTSurrogate(surrogate="RBF", max_points=100, seed=1).fit(X, f(X))
    c = SMTSurrogate(surrogate="RBF", max_points=100, seed=2).fit(X, f(X))
    assert np.array_equal(a.predict(Xt), b.predict(Xt))
    assert not np.array_equal(a.predict(Xt), c.predict(Xt))
    assert "note" not in SMTSurrogate(surrogate="LS", max_points=100).fit(X, f(X)).fit_info_  # LS uses every point


def test_krg_same_seed_same_predictions(data):
    X, Xt = data
    a = SMTSurrogate(max_points=60, seed=3).fit(X, f(X))
    b = SMTSurrogate(max_points=60, seed=3).fit(X, f(X))
    assert np.array_equal(a.predict(Xt), b.predict(Xt))


def test_pickle_round_trip(krg, data):
    _, Xt = data
    copy = pickle.loads(pickle.dumps(krg))
    assert np.array_equal(copy.predict(Xt), krg.predict(Xt))
    assert np.array_equal(copy.predict_std(Xt), krg.predict_std(Xt))
    assert copy.has_std is True


def test_empty_batch_and_cpu_only(krg):
    empty = np.zeros((0, 2))
    assert krg.predict(empty).shape == (0,)
    assert krg.predict_std(empty).shape == (0,)
    with pytest.raises(Unsupported):
        krg.prepare(empty, "cuda")


@pytest.mark.parametrize("settings, name", [
    ({"surrogate": "GP"}, "surrogate"),
    ({"corr": "gaussian"}, "corr"),
    ({"max_points": 0}, "max_points"),
    ({"theta0": -1.0}, "theta0"),
    ({"poly_degree": 2}, "poly_degree"),
    ({"hyper_opt": "BFGS"}, "hyper_opt"),
    ({"random_state": 1}, "random_state"),
])
def test_bad_setting_names_it(settings, name):
    with pytest.raises(SettingError, match=name) as err:
        SMTSurrogate(**settings)
    assert err.value.setting == name
