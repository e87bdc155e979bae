"""The ``mlp`` approximator: contract (fit/prepare/predict/to_cpu, pickle, settings), training
(accuracy on smooth functions, early stopping, schedules, determinism) and differential training.

Small networks and few epochs keep the file fast; the BS-ANN accuracy target is measured
outside the test suite (it trains for minutes).
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bench import arrays  # noqa: E402
from bench.methods import SettingError  # noqa: E402
from bench.plugins import get_registry  # noqa: E402
from pricebench_plugins.approximators.mlp import MLP  # noqa: E402

SMALL = dict(depth=2, width=32, epochs=40, batch_size=64, lr=3e-3)


def small(**settings):
    """A small, fast network: SMALL overlaid with ``settings``."""
    return MLP(**{**SMALL, **settings})


def smooth(X):
    return np.sin(1.5 * X[:, 0]) * np.cos(X[:, 1]) + 0.3 * X[:, 0] * X[:, 1]


def data(n, seed, d=2):
    X = np.random.default_rng(seed).uniform(-1.7, 1.7, size=(n, d))
    return X, smooth(X)


def predict(m, X, device="cpu"):
    return arrays.to_numpy(m.predict(m.prepare(X, device))).astype(np.float64)


def rmse(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


@pytest.fixture(scope="module")
def fitted():
    X, y = data(2000, 1)
    Xv, yv = data(500, 2)
    m = MLP(depth=2, width=64, epochs=60, batch_size=64, lr=1e-2, patience=20).fit(X, y, X_val=Xv, y_val=yv)
    return m


def test_registered_as_an_approximator():
    assert get_registry().get("approximator", "mlp") is MLP
    assert MLP.uses_derivatives and not MLP.has_std and MLP.devices == ("cpu", "cuda")
    assert all(spec.doc for spec in MLP.settings.values())


def test_fits_a_smooth_2d_function(fitted):
    Xt, yt = data(2000, 3)
    pred = predict(fitted, Xt)
    assert pred.shape == (2000,)
    assert rmse(pred, yt) < 0.03, rmse(pred, yt)
    info = fitted.fit_info_
    assert set(info) >= {"epochs_run", "best_epoch", "best_val_loss", "stopped_early", "train_loss"}
    assert 1 <= info["best_epoch"] <= info["epochs_run"] <= 60
    assert isinstance(info["stopped_early"], bool)
    assert all(isinstance(v, (int, float, str, bool)) for v in info.values())


def test_predict_gives_a_tensor_of_the_model_dtype_on_the_device(fitted):
    X = data(7, 4)[0]
    Xp = fitted.prepare(X, "cpu")
    assert torch.is_tensor(Xp) and Xp.dtype == torch.float32 and Xp.shape == (7, 2)
    out = fitted.predict(Xp)
    assert torch.is_tensor(out) and out.shape == (7,) and out.device.type == "cpu"
    # NumPy input straight to predict works too
    np.testing.assert_array_equal(arrays.to_numpy(fitted.predict(X)), arrays.to_numpy(out))


def test_empty_batch(fitted):
    out = fitted.predict(fitted.prepare(np.empty((0, 2)), "cpu"))
    assert tuple(out.shape) == (0,)


def test_prepare_checks_columns_and_device(fitted):
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        fitted.prepare(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="unknown device"):
        fitted.prepare(np.zeros((3, 2)), "tpu")


def test_pickle_round_trip_predicts_identically(fitted):
    X = data(300, 5)[0]
    before = predict(fitted, X)
    clone = pickle.loads(pickle.dumps(fitted.to_cpu()))
    np.testing.assert_array_equal(predict(clone, X), before)
    assert clone.fit_info_ == fitted.fit_info_
    assert clone.get_params() == fitted.get_params()


def test_same_seed_same_predictions_and_different_seed_different():
    X, y = data(400, 6)
    Xt = data(100, 7)[0]

    def run(**kw):
        return predict(small(epochs=5, **kw).fit(X, y), Xt)

    a, b = run(seed=3), run(seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(seed=4))
    np.testing.assert_array_equal(run(), run(seed=0))  # seed None means 0
    np.testing.assert_array_equal(run(dtype="float64", seed=1), run(dtype="float64", seed=1))


def test_fit_leaves_the_global_rng_alone():
    X, y = data(100, 8)
    state = torch.get_rng_state()
    small(epochs=2).fit(X, y, X_val=X[:20], y_val=y[:20])
    assert torch.equal(torch.get_rng_state(), state)


def test_early_stopping_restores_the_best_weights():
    # noise targets: a wide network overfits the training set and the validation loss turns up
    rng = np.random.default_rng(9)
    X, y = rng.normal(size=(200, 2)), rng.normal(size=200)
    Xv, yv = rng.normal(size=(200, 2)), rng.normal(size=200)
    m = MLP(depth=2, width=128, epochs=400, batch_size=32, lr=1e-2, schedule="constant", patience=10)
    m.fit(X, y, X_val=Xv, y_val=yv)
    info = m.fit_info_
    assert info["stopped_early"] and info["epochs_run"] < 400
    assert info["best_epoch"] == info["epochs_run"] - 10
    # the kept weights are those of the best epoch: they reproduce its validation loss,
    # which is below the loss of the last epoch's (overfitted) training
    val = float(np.mean((predict(m, Xv) - yv) ** 2))
    assert val == pytest.approx(info["best_val_loss"], rel=1e-5)
    # the same training without a validation set ends on the last epoch's weights (validation draws
    # no random numbers, so the trajectory is the same), which are worse
    last = MLP(**{**m.get_params(), "epochs": info["epochs_run"]}).fit(X, y)
    assert float(np.mean((predict(last, Xv) - yv) ** 2)) > val * 1.01


def test_one_cycle_warm_up_does_not_count_towards_the_patience():
    rng = np.random.default_rng(9)
    X, y = rng.normal(size=(100, 2)), rng.normal(size=100)
    m = MLP(depth=1, width=64, epochs=40, batch_size=100, lr=3e-2, schedule="one_cycle", patience=1)
    m.fit(X, y, X_val=-X, y_val=y)
    info = m.fit_info_
    assert info["epochs_run"] >= 12 + 1  # 30% of 40 epochs warm up
    assert info["stopped_early"]  # noise: the validation loss does not keep improving after the warm-up


def test_without_a_validation_set_all_epochs_run():
    X, y = data(200, 10)
    m = small(epochs=7, patience=1).fit(X, y)
    info = m.fit_info_
    assert info["epochs_run"] == info["best_epoch"] == 7 and not info["stopped_early"]
    assert math.isnan(info["best_val_loss"]) and math.isfinite(info["train_loss"])


@pytest.mark.parametrize("schedule", ["constant", "decay", "one_cycle"])
def test_schedules_train(schedule):
    X, y = data(500, 11)
    m = MLP(depth=2, width=32, epochs=30, batch_size=50, lr=3e-3, schedule=schedule, activation="tanh")
    m.fit(X, y)
    assert rmse(predict(m, X), y) < 0.2


@pytest.mark.parametrize("activation", ["relu", "silu", "swish", "tanh", "softplus", "gelu", "elu", "sigmoid"])
def test_every_activation_runs(activation):
    X, y = data(64, 12)
    m = MLP(depth=1, width=8, epochs=2, activation=activation, init="he").fit(X, y)
    assert np.all(np.isfinite(predict(m, X)))


def test_max_seconds_bounds_training():
    X, y = data(200, 13)
    m = small(epochs=10_000, max_seconds=0.0).fit(X, y)
    assert m.fit_info_["epochs_run"] == 1 and m.fit_info_["timed_out"]
    assert "max_seconds" in m.fit_info_["note"] and "1 of 10000 epochs" in m.fit_info_["note"]
    assert "note" not in small(epochs=2).fit(X, y).fit_info_


def test_a_one_cycle_fit_ended_by_the_clock_has_annealed_its_learning_rate():
    """The cycle follows whichever budget runs out first: stopped by max_seconds, not left at the peak rate."""
    X, y = data(2000, 5)
    m = small(epochs=100_000, max_seconds=0.5, lr=1e-2, schedule="one_cycle").fit(X, y)
    info = m.fit_info_
    assert info["timed_out"] and info["epochs_run"] < 100_000
    assert info["final_lr"] < 1e-2 / 1000  # one-cycle ends at lr / 2.5e5; the peak is lr
    full = small(epochs=3, lr=1e-2, schedule="one_cycle").fit(X, y).fit_info_
    assert full["final_lr"] < 1e-2 / 1000


def test_differential_training_helps_at_small_n():
    # 64 points of a 2-D oscillating function: values alone underdetermine it, derivatives pin it down
    rng = np.random.default_rng(14)

    def f(X):
        return np.sin(2 * X[:, 0]) * np.cos(1.5 * X[:, 1])

    def grad(X):
        return np.column_stack([2 * np.cos(2 * X[:, 0]) * np.cos(1.5 * X[:, 1]),
                                -1.5 * np.sin(2 * X[:, 0]) * np.sin(1.5 * X[:, 1])])

    X = rng.uniform(-1.7, 1.7, size=(64, 2))
    Xt = rng.uniform(-1.7, 1.7, size=(2000, 2))
    settings = dict(depth=2, width=64, epochs=600, batch_size=64, lr=5e-3, activation="silu")
    plain = MLP(**settings).fit(X, f(X))
    diff = MLP(**settings, differential=1.0)
    assert diff.wants_derivatives() and not plain.wants_derivatives()
    diff.fit(X, f(X), dydX=grad(X))
    e_plain, e_diff = rmse(predict(plain, Xt), f(Xt)), rmse(predict(diff, Xt), f(Xt))
    assert e_diff < 0.5 * e_plain, (e_diff, e_plain)


def test_differential_without_dydX_is_refused():
    X, y = data(50, 15)
    with pytest.raises(ValueError, match="dydX"):
        MLP(differential=0.5).fit(X, y)
    with pytest.raises(ValueError, match="dydX"):
        MLP(differential=0.5).fit(X, y, dydX=np.zeros((50, 3)))
    with pytest.raises(ValueError, match="dydX"):
        MLP(differential=0.5).fit(X, y, dydX=np.full((50, 2), np.nan))
    # without differential training dydX is ignored
    small(epochs=1).fit(X, y, dydX=np.zeros((50, 2)))


def test_bad_training_arrays():
    X, y = data(50, 16)
    with pytest.raises(ValueError, match="X"):
        MLP().fit(X[:, 0], y)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MLP().fit(bad, y)
    with pytest.raises(ValueError, match="X_val"):
        MLP().fit(X, y, X_val=X)
    with pytest.raises(ValueError, match="X_val"):
        MLP().fit(X, y, X_val=np.zeros((5, 3)), y_val=np.zeros(5))
    with pytest.raises(RuntimeError, match="fit"):
        MLP().predict(np.zeros((1, 2)))


@pytest.mark.parametrize("bad, setting", [
    (dict(activation="swishy"), "activation"),
    (dict(depth=0), "depth"),
    (dict(width=2.5), "width"),
    (dict(lr=0.0), "lr"),
    (dict(schedule="cosine"), "schedule"),
    (dict(preset="resnet"), "preset"),
    (dict(dtype="float16"), "dtype"),
    (dict(differential=-1.0), "differential"),
    (dict(seed=-1), "seed"),
    (dict(hidden=3), "hidden"),
])
def test_bad_settings(bad, setting):
    with pytest.raises(SettingError) as info:
        MLP(**bad)
    assert info.value.setting == setting


def test_presets_fill_what_is_not_given():
    default = MLP()
    assert (default.depth, default.width, default.activation, default.preset) == (3, 200, "silu", None)
    notebook = MLP(preset="lecture_notebook")
    assert (notebook.depth, notebook.width, notebook.activation) == (3, 200, "relu")
    liu = MLP(preset="liu2019")
    assert (liu.depth, liu.width, liu.activation) == (4, 400, "relu")
    mixed = MLP(preset="liu2019", depth=2, activation="tanh")  # explicit settings win
    assert (mixed.depth, mixed.width, mixed.activation) == (2, 400, "tanh")
    # the resolved settings round-trip
    assert MLP(**mixed.get_params()).get_params() == mixed.get_params()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_fit_predict_and_to_cpu():
    X, y = data(1000, 17)
    m = small().fit(X, y, X_val=X[:200], y_val=y[:200], device="cuda")
    out = m.predict(m.prepare(X, "cuda"))
    assert out.device.type == "cuda" and out.shape == (1000,)
    assert rmse(arrays.to_numpy(out), y) < 0.1
    gpu = arrays.to_numpy(out)
    cpu = predict(pickle.loads(pickle.dumps(m.to_cpu())), X)
    np.testing.assert_allclose(cpu, gpu, atol=1e-5)
    d = small(epochs=3, differential=1.0).fit(X, y, dydX=np.ones_like(X), device="cuda")
    assert d.fit_info_["epochs_run"] == 3
