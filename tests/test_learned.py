"""The pricer and the root finder ``learned``: a fitted approximator beside the methods it stands in for.

A BS-ANN (price target) and an IV-ANN (implied_vol target, gradient squash) are fitted once per module by
least squares; every check compares with a Black-Scholes formula written here or with the true volatility.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from bs_formula import bs

import bench
from bench import cli, runner, suite
from bench.approximators import FIXED_OTHER, NO_FEATURE, OUTSIDE, SUFFIX, load_approximator
from bench.methods import IVStatus, PriceResult, SettingError
from bench.plugins import get_registry

BOX = {"S": [0.4, 1.6], "T": [0.2, 1.1], "r": [0.02, 0.1], "sigma": [0.05, 1.0]}
INSIDE = {"S": [0.5, 1.5], "T": [0.3, 1.0], "r": [0.03, 0.08], "sigma": [0.1, 0.9]}
# the IV-ANN: K = 1, r = 0.05 fixed (three features: S/K, T, log(time value / K)); tested inside its box
IV_BOX = {"S": [0.5, 1.5], "T": [0.3, 1.0], "sigma": [0.1, 0.9]}
IV_TEST = {"S": [0.6, 1.4], "T": [0.4, 0.9], "sigma": [0.15, 0.8]}
IV_FIXED = {"K": 1.0, "q": 0.0, "r": 0.05}


def uniform_points(domain, n, seed):
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(lo, hi, n) for k, (lo, hi) in domain.items()}


def run(data, out_dir):
    registry = get_registry()
    return runner.run(suite.parse(data, "s.toml", registry), registry, out_dir=out_dir)


def rows_of(result, task, method):
    return [r for r in result.rows if r["task"] == task and r["method"] == method]


def fit_task(name, **over):
    task = {"name": name, "kind": "approximate", "model": "black_scholes", "product": "european_call", "n": 3000,
            "fixed": {"K": 1.0, "q": 0.0}, "domain": dict(BOX), "pricer": "closed_form", "test": 1000,
            "methods": [{"name": "least_squares", "settings": {"degree": 6}}]}
    task.update(over)
    return task


def price_task(name, domain, methods):
    return {"name": name, "kind": "price", "model": "black_scholes", "product": "european_call", "n": 1000,
            "sampler": "uniform", "fixed": {"K": 1.0, "q": 0.0}, "domain": domain, "reference": "closed_form",
            "methods": methods}


def iv_task(methods):
    return {"name": "iv", "kind": "implied_vol", "model": "black_scholes", "product": "european_call", "n": 2000,
            "sampler": "uniform", "fixed": dict(IV_FIXED), "domain": dict(IV_TEST), "methods": methods}


@pytest.fixture(scope="module")
def price_run(tmp_path_factory):
    """A BS-ANN, then price tasks with it beside the closed form: inside its box, and reaching beyond it."""
    learned = {"name": "learned", "settings": {"fitted": "fit/least_squares"}}
    data = {"name": "learned_prices", "seed": 5, "repeats": 3, "tasks": [
        fit_task("fit"),
        price_task("inside", dict(INSIDE), ["closed_form", learned]),
        price_task("beyond", {**INSIDE, "S": [0.2, 1.5]}, ["closed_form", learned]),
    ]}
    result = run(data, tmp_path_factory.mktemp("price_run"))
    assert all(r["status"] == "ok" for r in result.rows), [(r["task"], r["message"]) for r in result.rows]
    return result


@pytest.fixture(scope="module")
def bs_ann(price_run):
    return price_run.directory / "artifacts" / "fit" / f"least_squares.cpu{SUFFIX}"


@pytest.fixture(scope="module")
def iv_run(tmp_path_factory):
    """An IV-ANN, then an implied_vol task with it (two tolerances) beside Brent."""
    data = {"name": "learned_iv", "seed": 7, "repeats": 3, "tasks": [
        fit_task("iv_ann", n=4000, target="implied_vol", squash=True, fixed=dict(IV_FIXED), domain=dict(IV_BOX),
                 methods=[{"name": "least_squares", "settings": {"degree": 8}}]),
        iv_task(["brent", {"name": "learned", "settings": {"fitted": "iv_ann/least_squares",
                                                           "vol_tol": [1e-2, 1e-3]}}]),
    ]}
    result = run(data, tmp_path_factory.mktemp("iv_run"))
    assert all(r["status"] == "ok" for r in result.rows), [(r["task"], r["message"]) for r in result.rows]
    return result


@pytest.fixture(scope="module")
def iv_ann(iv_run):
    return iv_run.directory / "artifacts" / "iv_ann" / f"least_squares.cpu{SUFFIX}"


def iv_sample(n=4000, seed=3):
    p = uniform_points(IV_TEST, n, seed)
    sigma = p.pop("sigma")
    p.update(K=np.ones(n), r=np.full(n, 0.05), q=np.zeros(n))
    return p, sigma, bs(p["S"], p["K"], p["T"], p["r"], sigma)


# --------------------------------------------------------------------------- a learned pricer in a price task


def test_a_learned_pricer_runs_beside_the_closed_form(price_run):
    (exact,) = rows_of(price_run, "inside", "closed_form")
    (learned,) = rows_of(price_run, "inside", "learned")
    assert exact["max_abs_error"] < 1e-12
    assert learned["failures"] == 0 and 0 < learned["max_abs_error"] < 0.03 and learned["mae"] < 3e-3
    # beyond the box (S/K < 0.4) it answers NaN with the reason, counted in its row; inside it still prices
    (beyond,) = rows_of(price_run, "beyond", "learned")
    expected = round(1000 * (0.4 - 0.2) / (1.5 - 0.2))
    assert abs(beyond["failures"] - expected) < 60 and beyond["status"] == "ok"
    assert OUTSIDE in beyond["message"] and str(beyond["failures"]) in beyond["message"]
    assert beyond["max_abs_error"] < 0.03


# --------------------------------------------------------------------------- 8. an IV-ANN in an implied_vol task


def test_an_iv_ann_runs_beside_brent(iv_run, iv_ann):
    (brent,) = rows_of(iv_run, "iv", "brent")
    assert brent["failures"] == 0 and brent["max_abs_error"] < 1e-9
    learned = {r["settings"]: r for r in rows_of(iv_run, "iv", "learned")}
    assert len(learned) == 2
    for row in learned.values():
        tol = 1e-2 if '"vol_tol": 0.01' in row["settings"] else 1e-3
        assert row["status"] == "ok" and row["iterations_max"] == 0
        # scored on its converged answers only, and each of those is within vol_tol of the true sigma
        assert 0 < row["failures"] < 2000 and 0 < row["max_abs_error"] <= tol
        assert "not converged" in row["message"] and "inaccurate" in row["message"]
    loose = next(r for s, r in learned.items() if '"vol_tol": 0.01' in s)
    strict = next(r for s, r in learned.items() if '"vol_tol": 0.001' in s)
    assert loose["failure_rate"] < 0.5 and strict["failures"] > loose["failures"]
    # the fitted function itself: least squares of degree 8 is a rough IV-ANN, with no NaN inside its box
    f = load_approximator(iv_ann)
    p, sigma, price = iv_sample()
    values, codes, _ = f.evaluate(p, price, reasons=True)
    assert (codes == 0).all()
    error = np.abs(values - sigma)
    assert error.mean() < 0.02 and np.quantile(error, 0.99) < 0.08 and error.max() < 0.12


@pytest.mark.parametrize("vol_tol", [1e-2, 1e-3, 1e-4])
def test_converged_means_within_vol_tol(iv_ann, vol_tol):
    """Converged exactly where the answer is within vol_tol of the true sigma, both ways (rounding aside).
    (It was a one-step Newton estimate, which passed answers 0.0128 off with vol_tol = 0.01.)"""
    finder = get_registry().get("root_finder", "learned")(path=str(iv_ann), vol_tol=vol_tol)
    p, sigma, price = iv_sample()
    inputs = {**p, "price": price, "is_call": np.ones(sigma.size, dtype=bool)}
    raw, _, _ = load_approximator(iv_ann).evaluate(p, price)
    res = finder.solve(finder.prepare(inputs)).to_host()
    error = np.abs(raw - sigma)
    assert res.converged.any() and not res.converged.all()
    assert np.all(np.abs(res.sigma[res.converged] - sigma[res.converged]) <= vol_tol)
    assert np.array_equal(res.sigma[res.converged], raw[res.converged])
    clear = np.abs(error - vol_tol) > 1e-6 * vol_tol  # not on the edge, where rounding decides
    assert np.array_equal(res.converged[clear], error[clear] <= vol_tol)
    assert np.isnan(res.sigma[~res.converged]).all()
    assert set(res.status[~res.converged].tolist()) == {IVStatus.INACCURATE}


def test_a_saved_iv_ann_runs_by_path_as_it_did_fitted(iv_run, iv_ann, tmp_path):
    """The same task with the file given by path: the same answers as when it was handed over in the run."""
    methods = ["brent", {"name": "learned", "settings": {"path": str(iv_ann), "vol_tol": [1e-2, 1e-3]}}]
    again = run({"name": "learned_iv", "seed": 7, "repeats": 3, "tasks": [iv_task(methods)]}, tmp_path)
    before = sorted((r["settings"].replace('"fitted": "iv_ann/least_squares"', ""), r["failures"], r["mae"],
                     r["max_abs_error"]) for r in rows_of(iv_run, "iv", "learned"))
    after = sorted((r["settings"].replace(f'"path": "{iv_ann}"', ""), r["failures"], r["mae"], r["max_abs_error"])
                   for r in rows_of(again, "iv", "learned"))
    assert after == before and all(r["status"] == "ok" for r in again.rows)


# --------------------------------------------------------------------------- 9. bench.price and bench.implied_vol


def test_bench_price_with_a_learned_function(bs_ann):
    f = load_approximator(bs_ann)
    p = uniform_points(INSIDE, 3000, seed=1)
    got = bench.price(f, model="black_scholes", product="european_call", K=1.0, q=0.0, **p)
    assert got.shape == (3000,) and np.array_equal(got, f.price(K=1.0, **p))
    assert np.max(np.abs(got - bs(p["S"], 1.0, p["T"], p["r"], p["sigma"]))) < 0.03
    # broadcasting like any pricer
    grid = bench.price(f, model="black_scholes", product="european_call", S=[[0.8], [1.2]], K=1.0, T=0.5,
                       r=0.05, sigma=[0.2, 0.3, 0.4])
    assert grid.shape == (2, 3) and np.isfinite(grid).all()


@pytest.mark.parametrize("point, reason", [
    ({"S": 1.7}, OUTSIDE),  # S/K above 1.6
    ({"T": 1.5}, OUTSIDE),
    ({"sigma": 0.01}, OUTSIDE),
    ({"K": 2.0, "S": 4.0}, OUTSIDE),  # S/K = 2
    ({"q": 0.02}, FIXED_OTHER),
])
def test_a_learned_pricer_does_not_extrapolate(bs_ann, point, reason):
    f = load_approximator(bs_ann)
    base = {"S": 1.0, "K": 1.0, "T": 0.5, "r": 0.05, "q": 0.0, "sigma": 0.3}
    values = bench.price(f, model="black_scholes", product="european_call",
                         **{k: [v, point.get(k, v)] for k, v in base.items()})
    assert np.isfinite(values[0]) and np.isnan(values[1])
    assert values[0] == pytest.approx(bs(1.0, 1.0, 0.5, 0.05, 0.3), abs=0.01)
    pricer = get_registry().get("pricer", "learned").from_function(f)
    model = get_registry().model("black_scholes")
    params = model.validate({k: np.array([v, point.get(k, v)]) for k, v in base.items()})
    out = pricer.price(pricer.prepare(model, "european_call", params))
    assert isinstance(out, PriceResult) and list(out.reason) == ["", reason]
    assert np.isnan(out.price[1]) and out.price[0] == values[0]


def test_homogeneous_features_price_any_strike_by_scaling(bs_ann):
    """Trained at K = 1 on S/K: a point at K = 2 is the same function scaled (V(S, K) = K V(S/K, 1))."""
    f = load_approximator(bs_ann)
    p = uniform_points(INSIDE, 500, seed=2)
    at_one = bench.price(f, model="black_scholes", product="european_call", K=1.0, q=0.0, **p)
    scaled = bench.price(f, model="black_scholes", product="european_call", K=2.0, q=0.0,
                         **{**p, "S": 2.0 * p["S"]})
    assert np.isfinite(scaled).all()
    np.testing.assert_allclose(scaled, 2.0 * at_one, rtol=1e-12, atol=0)
    assert np.max(np.abs(scaled - bs(2.0 * p["S"], 2.0, p["T"], p["r"], p["sigma"]))) < 0.06


def test_bench_implied_vol_with_a_learned_function(iv_ann):
    f = load_approximator(iv_ann)
    p, sigma, price = iv_sample(n=500, seed=8)
    res = bench.implied_vol(f, price=price, S=p["S"], K=1.0, T=p["T"], r=0.05, q=0.0, kind="call")
    assert res.sigma.shape == (500,) and res.converged.any()
    assert np.all(np.abs(res.sigma[res.converged] - sigma[res.converged]) <= 1e-3)  # the default vol_tol
    assert set(res.reasons[res.converged]) == {"converged"}
    # outside the box (T, S/K), another r than in training, a time value too small to invert: NaN, a reason
    S, T, r = np.array([1.0, 1.0, 1.6, 1.0, 0.6]), np.array([0.5, 1.2, 0.5, 0.5, 0.4]), [0.05, 0.05, 0.05, 0.0, 0.05]
    vols = np.array([0.2, 0.2, 0.2, 0.2, 0.15])
    prices = bs(S, 1.0, T, r, vols)
    prices[4] = max(0.6 - np.exp(-0.05 * 0.4), 0.0) + 1e-9  # time value 1e-9 < min_time_value
    res = bench.implied_vol(f, price=prices, S=S, K=1.0, T=T, r=r, q=0.0)
    assert np.isnan(res.sigma[1:]).all() and not res.converged[1:].any()
    _, codes, _ = f.evaluate({"S": S, "K": np.ones(5), "T": T, "r": np.asarray(r), "q": np.zeros(5)}, prices,
                             reasons=True)
    assert [f.reason_text(c) for c in codes[1:]] == [OUTSIDE, OUTSIDE, FIXED_OTHER, NO_FEATURE]
    # a time value of 1e-9 is a price above the bound that this function cannot invert: outside its domain
    assert list(res.status[1:]) == [IVStatus.OUTSIDE_DOMAIN] * 4
    assert "training domain" in res.reasons[1]
    # at the intrinsic value, below it, or no number at all
    floor = max(1.2 - np.exp(-0.05 * 0.5), 0.0)
    res = bench.implied_vol(f, price=[floor, floor - 0.01, np.nan], S=1.2, K=1.0, T=0.5, r=0.05, q=0.0)
    assert list(res.status) == [IVStatus.BELOW_LOWER_BOUND] * 2 + [IVStatus.INVALID_INPUT]
    # a price target is not an implied volatility, and the other way round
    with pytest.raises(ValueError, match="not 'price'"):
        bench.price(f, model="black_scholes", product="european_call", S=1.0, K=1.0, T=0.5, r=0.05, sigma=0.2)
    with pytest.raises(ValueError, match="use implied_vol"):
        f.price(S=1.0, T=0.5, sigma=0.2)


# --------------------------------------------------------------------------- 12. the learned methods


def test_an_empty_batch_gives_an_empty_result(bs_ann, iv_ann):
    empty = np.array([])
    got = bench.price(load_approximator(bs_ann), model="black_scholes", product="european_call", S=empty, K=1.0,
                      T=0.5, r=0.05, sigma=0.2)
    assert got.shape == (0,)
    res = bench.implied_vol(load_approximator(iv_ann), price=empty, S=empty, K=1.0, T=0.5, r=0.05)
    assert res.sigma.shape == res.converged.shape == res.status.shape == (0,)
    finder = get_registry().get("root_finder", "learned")(path=str(iv_ann))
    out = finder.solve(finder.prepare({k: empty for k in ("S", "K", "T", "r", "q", "price")} |
                                      {"is_call": np.array([], dtype=bool)})).to_host()
    assert out.sigma.shape == (0,) and out.iterations.shape == (0,)


@pytest.mark.parametrize("kind", ["pricer", "root_finder"])
@pytest.mark.parametrize("settings, setting", [
    ({}, "path"),
    ({"path": "a.pbapprox", "fitted": "fit/least_squares"}, "fitted"),
    ({"fitted": "fit"}, "fitted"),
    ({"fitted": "fit/least_squares@tpu"}, "fitted"),
])
def test_learned_needs_exactly_one_source(kind, settings, setting):
    cls = get_registry().get(kind, "learned")
    with pytest.raises(SettingError) as info:
        cls(**settings)
    assert info.value.setting == setting
    assert "exactly one of 'path' and 'fitted'" in str(info.value) or "task/stem" in str(info.value)


def test_a_file_of_another_model_or_target_is_rejected(bs_ann, iv_ann):
    registry = get_registry()
    heston = registry.model("heston")
    params = heston.validate({"S": np.array([1.0]), "K": 1.0, "T": 0.5, "r": 0.0, "v0": 0.04, "kappa": 1.5,
                              "theta": 0.04, "xi": 0.3, "rho": -0.7})
    pricer = registry.get("pricer", "learned")(path=str(bs_ann))
    with pytest.raises(ValueError, match="learned european_call under black_scholes, not european_call under heston"):
        pricer.prepare(heston, "european_call", params)
    with pytest.raises(SettingError, match="under black_scholes, not european_put under black_scholes"):
        pricer.check_task("black_scholes", "european_put")
    with pytest.raises(SettingError, match="learned 'implied_vol', not 'price'"):
        registry.get("pricer", "learned")(path=str(iv_ann)).check_task("black_scholes", "european_call")
    finder = registry.get("root_finder", "learned")(path=str(bs_ann))
    with pytest.raises(ValueError, match="learned 'price', not 'implied_vol'"):
        finder.prepare({k: np.ones(1) for k in ("S", "K", "T", "r", "q", "price")} | {"is_call": np.ones(1, bool)})


HESTON = """
    name = "wrong_model"
    seed = 1
    [[tasks]]
    name = "heston_prices"
    kind = "price"
    model = "heston"
    product = "european_call"
    n = 20
    fixed = {{ K = 1.0, r = 0.0, q = 0.0, kappa = 1.5, theta = 0.04, xi = 0.3, rho = -0.7 }}
    domain = {{ S = [0.8, 1.2], T = [0.3, 1.0], v0 = [0.02, 0.08] }}
    reference = "heston_integration"
    methods = [{{ name = "learned", settings = {{ path = "{path}" }} }}]
"""


@pytest.mark.usefixtures("restore_registry")
def test_a_black_scholes_file_in_a_heston_suite_is_one_clear_error(bs_ann, tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(HESTON.format(path=bs_ann)))
    out = tmp_path / "out"
    code = cli.main(["run", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "s.toml" in err and "task 'heston_prices'" in err and "key 'methods[0].settings.path'" in err
    assert "under black_scholes, not european_call under heston" in err
    assert not out.exists()


def test_a_fitted_black_scholes_function_in_a_heston_task_is_one_clear_error(tmp_path):
    """``fitted`` names a task of the same suite: its model and product are checked when the suite is read."""
    heston = {"name": "heston_prices", "kind": "price", "model": "heston", "product": "european_call", "n": 20,
              "fixed": {"K": 1.0, "r": 0.0, "q": 0.0, "kappa": 1.5, "theta": 0.04, "xi": 0.3, "rho": -0.7},
              "domain": {"S": [0.8, 1.2], "T": [0.3, 1.0], "v0": [0.02, 0.08]}, "reference": "heston_integration",
              "methods": ["heston_integration", {"name": "learned", "settings": {"fitted": "fit/least_squares"}}]}
    with pytest.raises(suite.SuiteError) as err:
        run({"name": "wrong_model", "seed": 1, "repeats": 1, "tasks": [fit_task("fit", n=500, test=100), heston]},
            tmp_path)
    text = str(err.value)
    assert "task 'heston_prices'" in text and "methods[1].settings.fitted" in text
    assert "learns european_call under black_scholes; this task prices european_call under heston" in text
    assert not any(tmp_path.iterdir())


@pytest.mark.usefixtures("restore_registry")
def test_a_root_finder_fitted_on_prices_is_one_clear_error(tmp_path, capsys):
    text = textwrap.dedent("""
        name = "wrong_target"
        seed = 1
        [[tasks]]
        name = "fit"
        kind = "approximate"
        model = "black_scholes"
        product = "european_call"
        n = 500
        fixed = { K = 1.0, q = 0.0 }
        domain = { S = [0.5, 1.5], T = [0.3, 1.0], sigma = [0.1, 0.9] }
        pricer = "closed_form"
        methods = ["least_squares"]
        [[tasks]]
        name = "iv"
        kind = "implied_vol"
        model = "black_scholes"
        product = "european_call"
        n = 20
        fixed = { K = 1.0, q = 0.0 }
        domain = { S = [0.6, 1.4], T = [0.4, 0.9], sigma = [0.2, 0.8] }
        methods = ["brent", { name = "learned", settings = { fitted = "fit/least_squares" } }]
    """)
    path = tmp_path / "s.toml"
    path.write_text(text)
    code = cli.main(["run", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "task 'iv'" in err and "key 'methods[1].settings.fitted'" in err
    assert "task 'fit' learns 'price'; the root_finder 'learned' needs 'implied_vol'" in err
    assert not (tmp_path / "out").exists()


def test_bad_inputs_get_the_status_every_root_finder_gives_them(iv_ann):
    """Fed directly (past bench.implied_vol's validation): invalid input is invalid_input, not 'outside'."""
    finder = get_registry().get("root_finder", "learned")(path=str(iv_ann))
    S = np.array([-1.0, 1.0, 1.0, np.nan, 1.0, 1.0, 1.2])
    K = np.array([1.0, 0.0, -1.0, 1.0, 1.0, 1.0, 1.0])
    T = np.array([0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0.5])
    price = np.array([0.1, 0.1, 0.1, 0.1, 0.1, np.nan, 0.0])
    inputs = {"S": S, "K": K, "T": T, "r": np.full(7, 0.05), "q": np.zeros(7), "price": price,
              "is_call": np.ones(7, dtype=bool)}
    res = finder.solve(finder.prepare(inputs, "cpu"))
    assert list(res.status) == [IVStatus.INVALID_INPUT] * 6 + [IVStatus.BELOW_LOWER_BOUND]
    assert np.isnan(res.sigma).all() and not res.converged.any()
