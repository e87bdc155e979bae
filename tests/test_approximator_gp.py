"""The ``gp`` approximator (gpytorch): accuracy, predictive std coverage, variational path, pickle, seeds, settings."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from bench import arrays
from bench.methods import SettingError
from bench.plugins import load

torch = pytest.importorskip("torch")
pytest.importorskip("gpytorch")

from pricebench_plugins.approximators.gp import EXACT_HARD_CAP, GaussianProcess  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: small GP problems are many times faster without OpenMP spinning on a busy 2-core box."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def f(X):
    return np.sin(X[:, 0]) + 0.5 * X[:, 1] ** 2


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((200, 2))
    Xt = rng.uniform(-1.5, 1.5, (300, 2))
    return X, f(X), Xt


@pytest.fixture(scope="module")
def fitted(data):
    X, y, Xt = data
    return GaussianProcess(iterations=100, seed=0).fit(X, y, X_val=Xt, y_val=f(Xt))


def rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def test_registered_through_entry_point():
    assert load(only="gp").get("approximator", "gp") is GaussianProcess


def test_exact_gp_fits_smooth_function(fitted, data):
    _, _, Xt = data
    pred = fitted.predict(fitted.prepare(Xt))
    assert isinstance(pred, np.ndarray) and pred.shape == (300,) and pred.dtype == np.float64
    assert rmse(pred, f(Xt)) < 1e-2
    info = fitted.fit_info_
    assert info["method"] == "exact" and info["iterations"] == 100 and info["n_train"] == 200
    assert info["val_rmse"] == pytest.approx(rmse(pred, f(Xt)), rel=1e-6)
    assert all(isinstance(v, (int, float, str)) for v in info.values())


def test_predict_accepts_numpy_and_prepared_tensor(fitted, data):
    _, _, Xt = data
    prepared = fitted.prepare(Xt)
    assert isinstance(prepared, torch.Tensor)
    assert np.array_equal(fitted.predict(prepared), fitted.predict(Xt))


def test_exact_mean_equals_gpytorchs_posterior_mean(fitted, data, monkeypatch):
    """The exact GP's mean is computed in row blocks from gpytorch's mean cache; gpytorch's own call agrees."""
    import gpytorch

    from pricebench_plugins.approximators import gp

    _, _, Xt = data
    x = fitted.prepare(Xt)
    monkeypatch.setattr(gp, "MEAN_BLOCK_ENTRIES", 200 * 7)  # blocks of 7 rows: the concatenation is tested
    ours = fitted.predict(x)
    with torch.no_grad(), gpytorch.settings.max_cholesky_size(10**6):
        theirs = fitted.model_(x).mean.double().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10)


def test_predict_std_in_row_blocks_is_the_same(fitted, data, monkeypatch):
    """predict_std runs in row blocks (gpytorch builds a joint kernel per call): bounded memory, same values."""
    from pricebench_plugins.approximators import gp

    _, _, Xt = data
    whole = fitted.predict_std(Xt)
    monkeypatch.setattr(gp, "STD_BLOCK", 7)
    np.testing.assert_allclose(fitted.predict_std(Xt), whole, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-9), ("float32", 1e-4)])
def test_variational_mean_equals_gpytorchs_predictive_mean(data, dtype, tol):
    """The variational mean K(x, Z) L^-T m + mean(x) from cached weights; gpytorch's own call agrees."""
    X, y, Xt = data
    gp = GaussianProcess(method="variational", inducing=50, epochs=5, seed=0, dtype=dtype).fit(X, y)
    x = gp.prepare(Xt)
    ours = gp.predict(x)
    with torch.no_grad():
        theirs = gp.model_(x).mean.double().numpy()
    assert np.max(np.abs(ours - theirs)) <= tol * np.max(np.abs(theirs))
    # after a pickle round trip (the cached weights are not pickled) and a second fit, still the model's mean
    again = pickle.loads(pickle.dumps(gp))
    np.testing.assert_array_equal(again.predict(Xt), gp.predict(Xt))
    gp.fit(X, -y)
    assert np.max(np.abs(gp.predict(Xt) + ours)) < 0.5 * np.max(np.abs(ours))


def test_matern_kernel(data):
    X, y, Xt = data
    gp = GaussianProcess(kernel="matern", nu=1.5, iterations=60).fit(X, y)
    assert rmse(gp.predict(Xt), f(Xt)) < 0.1


def test_predictive_std_covers_noisy_targets():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 2))
    Xt = rng.uniform(-1.5, 1.5, (400, 2))
    noise = 0.1
    y = f(X) + noise * rng.standard_normal(300)
    yt = f(Xt) + noise * rng.standard_normal(400)
    gp = GaussianProcess(iterations=100).fit(X, y)
    pred, std = gp.predict(Xt), gp.predict_std(Xt)
    assert std.shape == (400,) and np.all(std > 0)
    assert gp.fit_info_["noise"] == pytest.approx(noise**2, rel=0.5)
    share = np.mean(np.abs(yt - pred) <= 2 * std)
    assert 0.85 <= share <= 1.0, share


def test_variational_above_max_exact():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((600, 2))
    Xt = rng.uniform(-1.5, 1.5, (300, 2))
    settings = dict(max_exact=200, inducing=64, epochs=15, batch_size=128, lr=0.05, seed=4)
    gp = GaussianProcess(**settings).fit(X, f(X))
    info = gp.fit_info_
    assert info["method"] == "variational" and info["inducing"] == 64 and info["steps"] == 15 * 5
    pred = gp.predict(gp.prepare(Xt))
    assert rmse(pred, f(Xt)) < 0.15
    assert np.all(gp.predict_std(Xt) > 0)
    # same seed, same model; the pickled copy predicts the same
    again = GaussianProcess(**settings).fit(X, f(X))
    assert np.array_equal(again.predict(Xt), pred)
    copy = pickle.loads(pickle.dumps(gp))
    assert np.array_equal(copy.predict(Xt), pred)
    assert np.array_equal(copy.predict_std(Xt), gp.predict_std(Xt))


def test_pickle_round_trip_predicts_identically(fitted, data):
    _, _, Xt = data
    copy = pickle.loads(pickle.dumps(fitted))
    assert np.array_equal(copy.predict(Xt), fitted.predict(Xt))
    assert np.array_equal(copy.predict_std(Xt), fitted.predict_std(Xt))
    assert copy.fit_info_ == fitted.fit_info_
    assert copy.to_cpu() is copy


def test_same_seed_same_predictions(data):
    X, y, Xt = data
    a = GaussianProcess(iterations=30, seed=7).fit(X, y)
    b = GaussianProcess(iterations=30, seed=7).fit(X, y)
    assert np.array_equal(a.predict(Xt), b.predict(Xt))


def test_empty_batch(fitted):
    empty = np.zeros((0, 2))
    assert fitted.predict(empty).shape == (0,)
    assert fitted.predict_std(empty).shape == (0,)
    assert fitted.predict(fitted.prepare(empty)).shape == (0,)


def test_exact_refuses_more_than_the_hard_cap():
    X = np.zeros((EXACT_HARD_CAP + 1, 2))
    with pytest.raises(ValueError, match="exceeds the cap"):
        GaussianProcess(method="exact").fit(X, np.zeros(EXACT_HARD_CAP + 1))


@pytest.mark.parametrize("settings, name", [
    ({"kernel": "periodic"}, "kernel"),
    ({"nu": 2.0}, "nu"),
    ({"method": "sparse"}, "method"),
    ({"iterations": 0}, "iterations"),
    ({"dtype": "float16"}, "dtype"),
    ({"noise_init": 1e-7, "noise_floor": 1e-6}, "noise_init"),
    ({"no_such_setting": 1}, "no_such_setting"),
])
def test_bad_setting_names_it(settings, name):
    with pytest.raises(SettingError, match=name) as err:
        GaussianProcess(**settings)
    assert err.value.setting == name


def test_bad_arrays_raise():
    gp = GaussianProcess(iterations=1)
    with pytest.raises(ValueError, match="NaN"):
        gp.fit(np.array([[0.0, np.nan]]), np.array([1.0]))
    with pytest.raises(ValueError, match="X_val"):
        gp.fit(np.zeros((4, 2)), np.zeros(4), X_val=np.zeros((2, 3)), y_val=np.zeros(2))


@pytest.mark.gpu
@pytest.mark.skipif(not arrays.cuda_available(), reason="no CUDA GPU")
def test_cuda_matches_cpu(fitted, data):
    X, y, Xt = data
    gp = GaussianProcess(iterations=100, seed=0).fit(X, y, device="cuda")
    pred = gp.predict(gp.prepare(Xt, "cuda"))
    assert isinstance(pred, torch.Tensor) and pred.device.type == "cuda"
    np.testing.assert_allclose(pred.cpu().numpy(), fitted.predict(Xt), atol=1e-5)
    copy = pickle.loads(pickle.dumps(gp))
    np.testing.assert_allclose(copy.predict(Xt), pred.cpu().numpy(), atol=1e-10)
    # a CPU-fitted model moves to the GPU in prepare
    moved = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_allclose(moved.predict(moved.prepare(Xt, "cuda")).cpu().numpy(), fitted.predict(Xt),
                               atol=1e-8)
