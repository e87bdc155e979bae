"""Multilevel Monte Carlo: the level estimators, Giles' adaptive algorithm,
the ``mlmc`` pricer against reference prices, its work budget, and
``pricebench mlmc-test`` (a command the mlmc plugin registers)."""

import json
import math
import time
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import bench
from bench import cli, suite
from bench.methods import SettingError
from bench.plugins import get_registry
from bench.suite import SuiteError
from pricebench_plugins.pricers import _mlmc_driver as driver
from pricebench_plugins.pricers import _mlmc_test as mlmc_test_cmd

GBM = dict(S=100.0, K=100.0, T=1.0, r=0.05, sigma=0.2)
GBM_EXACT = 10.450583572185567


def pricer(**settings):
    return get_registry().get("pricer", "mlmc")(**settings)


def levels(model="black_scholes", product="european_call", params=GBM, seed=0, **settings):
    return pricer(**settings).level_function(model, product, params, seed=seed)


def run_pricer(model, product, params, **settings):
    """(prices, stderrs, MLMCResult) of the mlmc pricer on a batch."""
    p = pricer(**settings)
    mdl = get_registry().model(model)
    inputs = p.prepare(mdl, product, mdl.validate(params))
    res = p.price(inputs)
    return np.asarray(res.price), np.asarray(res.stderr), p.result_


@pytest.fixture
def threads():
    """Set numba's thread count inside a test, restored afterwards."""
    before = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(before)


# --------------------------------------------------------------------------- level estimators


def test_level_sums_bit_identical_with_1_and_2_threads(threads):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here")
    cases = [
        ("black_scholes", "european_call", GBM, "milstein"),
        ("heston", "european_put", dict(S=100, K=100, T=1, r=0.01, v0=0.04, kappa=1.5, theta=0.04, xi=0.5,
                                        rho=-0.7), "euler"),
        ("cev", "european_call", dict(S=100, K=100, T=1, r=0.05, sigma=2.0, beta=0.5), "euler"),
        ("sinh_lv", "european_put", dict(S=100, K=100, T=1, r=0.05, lam=20.0), "euler"),
        ("black_karasinski", "zero_coupon_bond", dict(r0=1.0, alpha=1.0, sigma=0.5, mu=0.0, mu_sin=1.0, T=1.0),
         "euler"),
    ]
    for model, product, params, scheme in cases:
        out = []
        for n in (1, 2):
            threads(n)
            fn = levels(model, product, params, seed=7, scheme=scheme)
            # a batch of 3 replicas, several blocks each, two calls (the second from fresh streams)
            runs = [fn(l, np.array([5000, 0, 3000])) for l in (0, 2, 2)]
            out.append(np.concatenate([s.ravel() for s, _ in runs]))
        assert np.array_equal(out[0], out[1]), model


def test_exact_coupling_bit_identical_with_1_and_2_threads(threads):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here")
    out = []
    for n in (1, 2):
        threads(n)
        fn = levels(seed=7, scheme="euler")
        runs = [fn.exact_coupling(l, np.array([3000, 0, 2000]))[0] for l in (0, 2, 2)]
        out.append(np.concatenate([s.ravel() for s in runs]))
    assert np.array_equal(out[0], out[1])


def test_exact_coupling_gbm_only_fresh_and_unbiased():
    """D = P_h - P_exact on the same path: P_exact averages to the Black-Scholes price, later
    calls draw fresh paths, and only black_scholes (exact path solution) offers the coupling."""
    fn = levels(seed=4, scheme="milstein", M=2)
    N = 200_000
    s1, c1 = fn.exact_coupling(3, np.array([N]))
    assert c1[0] == N * 2 ** 3  # fine path only
    mean_ex = s1[0, 2] / N
    assert abs(mean_ex - GBM_EXACT) < 4 * math.sqrt((s1[0, 3] / N - mean_ex ** 2) / N)
    var_d = s1[0, 1] / N - (s1[0, 0] / N) ** 2
    assert var_d < 0.05 * (s1[0, 3] / N - mean_ex ** 2)  # the coupling is tight: V[D] << V[P]
    s2, _ = fn.exact_coupling(3, np.array([N]))
    assert not np.array_equal(s1, s2)
    assert np.array_equal(levels(seed=4, scheme="milstein", M=2).exact_coupling(3, np.array([N]))[0], s1)
    cev = levels("cev", "european_call", dict(S=100.0, K=100.0, T=1.0, r=0.05, sigma=2.0, beta=0.5))
    assert not hasattr(cev, "exact_coupling")


def test_mlmc_price_bit_identical_with_1_and_2_threads(threads):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here")
    got = []
    for n in (1, 2):
        threads(n)
        got.append(run_pricer("black_scholes", "european_put", dict(GBM, K=[90.0, 100.0, 110.0]), eps=0.05,
                              N0=2000, seed=3)[:2])
    assert np.array_equal(got[0][0], got[1][0]) and np.array_equal(got[0][1], got[1][1])


def test_seed_reproduces_and_new_samples_are_fresh():
    a = levels(seed=1)
    s1, c1 = a(3, np.array([4000]))
    s2, _ = a(3, np.array([4000]))  # later samples on the same level: fresh streams
    assert not np.array_equal(s1, s2)
    b = levels(seed=1)
    assert np.array_equal(b(3, np.array([4000]))[0], s1)  # same seed, same first draws
    assert not np.array_equal(levels(seed=2)(3, np.array([4000]))[0], s1)
    assert c1[0] == 4000 * (4 ** 3 + 4 ** 2)  # cost: fine + coarse path steps
    # batch entries are independent replicas
    s, _ = levels(seed=1)(3, np.array([4000, 4000]))
    assert np.array_equal(s[0], s1[0]) and not np.array_equal(s[1], s1[0])


def test_level_0_euler_matches_one_step_closed_form():
    """Level 0 with Euler is one step: S_T = S (1 + r T + sigma sqrt(T) Z), a normal law."""
    N = 400_000
    sums, _ = levels(scheme="euler", M=4)(0, np.array([N]))
    mean = sums[0, 4] / N
    se = math.sqrt((sums[0, 5] / N - mean ** 2) / N)
    m, s = 100.0 * 1.05, 100.0 * 0.2
    d = (m - 100.0) / s
    exact = math.exp(-0.05) * ((m - 100.0) * stats.norm.cdf(d) + s * stats.norm.pdf(d))
    assert abs(mean - exact) < 4 * se
    assert sums[0, 0] == sums[0, 4]  # Y = P_f on level 0


@pytest.mark.parametrize("scheme", ["euler", "milstein"])
def test_telescoping_consistency(scheme):
    """E[P_l^f] - E[P_{l-1}^f] agrees with E[Y_l] (each from independent samples)."""
    fn = levels(scheme=scheme, M=2)
    N = 100_000
    for l in (1, 3):
        prev, _ = fn(l - 1, np.array([N]))
        cur, _ = fn(l, np.array([N]))
        a, b, c = prev[0, 4] / N, cur[0, 4] / N, cur[0, 0] / N
        va = prev[0, 5] / N - a * a
        vb = cur[0, 5] / N - b * b
        vc = cur[0, 1] / N - c * c
        assert abs(a - b + c) < 4 * math.sqrt((va + vb + vc) / N)


def test_variance_rates_milstein_2_euler_1():
    """beta (h units) fitted over levels 1..5 with M = 2: about 2 for Milstein, 1 for Euler."""
    for scheme, target in (("milstein", 2.0), ("euler", 1.0)):
        fn = levels(scheme=scheme, M=2)
        var = []
        for l in range(1, 6):
            s, _ = fn(l, np.array([20_000]))
            var.append(s[0, 1] / 20_000 - (s[0, 0] / 20_000) ** 2)
        slope, _ = driver.fit_rate(var, 2, range(1, 6))
        assert abs(-slope - target) < (0.4 if scheme == "milstein" else 0.25), (scheme, -slope)


# --------------------------------------------------------------------------- the adaptive algorithm


def synthetic(c=2.0, M=2, sd=1.0, seed=0):
    """P_l = 1 + c M^-l + noise: E[Y_l] = c M^-l (1 - M) for l >= 1, exact value 1, weak order 1."""
    rng = np.random.default_rng(seed)

    def fn(l, N):
        mean = 1.0 + c if l == 0 else c * (M ** -l - M ** -(l - 1))
        sdev = sd if l == 0 else sd * M ** -l
        y = mean + sdev * rng.standard_normal(N)
        pf = y if l == 0 else 1.0 + c * M ** -l + y - mean
        return [y.sum(), (y ** 2).sum(), (y ** 3).sum(), (y ** 4).sum(), pf.sum(), (pf ** 2).sum()], N * M ** l

    return driver.scalar_level(fn)


def test_adaptive_levels_follow_the_bias_estimate():
    eps = 0.01
    res = driver.mlmc(synthetic(), eps, M=2, N0=500, Lmin=2, Lmax=12)
    L = int(res.L[0])
    # remaining bias c M^-L; Giles' estimate |E Y_L| / (M^alpha - 1) equals it for alpha = 1
    assert 2.0 * 2.0 ** -L <= eps / math.sqrt(2) < 2.0 * 2.0 ** -(L - 1)
    assert res.bias[0] == pytest.approx(2.0 * 2.0 ** -L, rel=0.2)
    assert res.alpha[0] == pytest.approx(1.0, abs=0.1)
    assert res.stderr[0] <= eps / math.sqrt(2) * 1.02
    assert abs(res.price[0] - 1.0) < 2 * eps
    assert res.converged[0] and not res.lmax_hit[0]
    assert res.cost[0] == pytest.approx(np.nansum(res.Nl[0] * res.Cl[0]))


def test_lmax_hit_is_flagged_and_warned():
    with pytest.warns(driver.MLMCWarning, match="Lmax"):
        res = driver.mlmc(synthetic(sd=0.05), 0.001, M=2, N0=200, Lmin=2, Lmax=3)
    assert res.lmax_hit[0] and not res.converged[0] and int(res.L[0]) == 3
    assert np.isfinite(res.price[0])


def test_batch_runs_entries_independently_with_per_entry_eps():
    """Streams are keyed by the entry's index, and the driver's decisions per entry use only that
    entry's sums: entry 0 of a batch is bit-identical to the same problem run alone."""
    alone = driver.mlmc(levels(scheme="euler"), 0.2, M=4, N0=500)
    res = driver.mlmc(levels(scheme="euler"), [0.2, 0.05], M=4, N0=500)
    assert res.price.shape == (2,) and res.L[0] <= res.L[1]
    assert res.cost[0] < res.cost[1]
    assert np.all(np.abs(res.price - GBM_EXACT) < 3 * np.array([0.2, 0.05]))
    assert res.L[0] == alone.L[0] and np.array_equal(res.Nl[0], alone.Nl[0])
    assert res.price[0].tobytes() == alone.price[0].tobytes()
    assert res.stderr[0].tobytes() == alone.stderr[0].tobytes()
    # the pricer, a second option with other parameters (and so another level count) beside it
    p1, s1, _ = run_pricer("black_scholes", "european_call", GBM, eps=0.2, N0=500, M=4, scheme="euler")
    p2, s2, _ = run_pricer("black_scholes", "european_call", dict(GBM, S=[100.0, 130.0], sigma=[0.2, 0.4]),
                            eps=0.2, N0=500, M=4, scheme="euler")
    assert p2[0].tobytes() == p1.tobytes() and s2[0].tobytes() == s1.tobytes()
    assert p2[1] != p2[0]


def test_driver_rejects_bad_arguments():
    fn = synthetic()
    for kwargs, word in ((dict(eps=0.0), "eps"), (dict(eps=0.1, M=1), "M"), (dict(eps=0.1, Lmin=1), "Lmin"),
                         (dict(eps=0.1, Lmax=1), "Lmax"), (dict(eps=0.1, alpha=-1.0), "alpha"),
                         (dict(eps=0.1, theta=1.0), "theta")):
        with pytest.raises(ValueError, match=word):
            driver.mlmc(fn, **kwargs)


def test_gbm_call_meets_eps_against_exact_price():
    eps = 0.05
    res = driver.mlmc(levels(M=4, seed=11), eps, M=4, N0=1000, batch=6)  # 6 independent runs
    err = res.price - GBM_EXACT
    assert math.sqrt(np.mean(err ** 2)) <= 1.5 * eps
    assert np.all(np.abs(err) <= 2.5 * eps)
    assert np.all(res.stderr <= eps / math.sqrt(2) * 1.02)
    assert np.all(res.bias <= eps / math.sqrt(2))


def test_non_finite_samples_give_nan_with_a_reason():
    def fn(l, N):
        return [math.nan] * 6, float(N)

    with pytest.warns(driver.MLMCWarning):
        res = driver.mlmc(driver.scalar_level(fn), 0.1, M=2, N0=10)
    assert math.isnan(res.price[0]) and "non-finite" in res.reason[0]


# --------------------------------------------------------------------------- the pricer


@pytest.mark.parametrize("model,product,params,ref,eps", [
    ("black_scholes", "european_put", dict(GBM, K=[90.0, 110.0], q=0.02), "closed_form", 0.05),
    ("heston", "european_call", dict(S=100.0, K=[90.0, 110.0], T=1.0, r=0.02, v0=0.04, kappa=1.5, theta=0.04,
                                      xi=0.5, rho=-0.7), "heston_integration", 0.08),
    ("cev", "european_call", dict(S=100.0, K=[100.0], T=1.0, r=0.05, sigma=2.0, beta=0.5), "closed_form", 0.05),
    ("cev", "european_put", dict(S=100.0, K=[100.0], T=1.0, r=0.05, sigma=30.0, beta=0.0), "closed_form", 0.05),
    ("sinh_lv", "european_call", dict(S=100.0, K=[95.0, 105.0], T=1.0, r=0.05, lam=20.0), "closed_form", 0.05),
    ("black_karasinski", "zero_coupon_bond", dict(r0=[0.05, 0.03], alpha=[1.0, 0.1], sigma=[0.2, 0.5], mu=0.05,
                                                  T=1.0), "fd", 5e-4),
    ("black_karasinski", "zero_coupon_bond", dict(r0=1.0, alpha=1.0, sigma=0.5, mu=0.0, mu_sin=1.0, T=1.0), "fd",
     5e-4),
])
def test_pricer_matches_reference(model, product, params, ref, eps):
    price, se, res = run_pricer(model, product, params, eps=eps, N0=2000, seed=5)
    expect = bench.price(ref, model=model, product=product, **params)
    assert np.all(np.abs(price - expect) <= 4 * se + eps), (price, expect, se)
    assert res.converged.all()


def test_bench_price_api_and_seed():
    a = bench.price("mlmc", model="black_scholes", product="european_call", eps=0.1, N0=1000, **GBM)
    b = bench.price("mlmc", model="black_scholes", product="european_call", eps=0.1, N0=1000, seed=0, **GBM)
    c = bench.price("mlmc", model="black_scholes", product="european_call", eps=0.1, N0=1000, seed=1, **GBM)
    assert a.shape == () and a == b and a != c
    assert abs(a - GBM_EXACT) < 0.3


def test_pricer_settings_are_checked():
    mdl = get_registry().model("heston")
    params = mdl.validate(dict(S=100, K=100, T=1, v0=0.04, kappa=1, theta=0.04, xi=0.3, rho=-0.5))
    with pytest.raises(ValueError, match="scheme"):
        pricer(scheme="milstein").prepare(mdl, "european_call", params)
    with pytest.raises(ValueError, match="eps"):
        pricer(eps=0.0)
    with pytest.raises(ValueError, match="scheme"):
        pricer(scheme="rk4")
    assert pricer().resolved_scheme("black_scholes") == "milstein"
    assert pricer().resolved_scheme("cev") == "euler"


@pytest.mark.parametrize("settings", [dict(Lmin=5, Lmax=3), dict(M=16, Lmax=8), dict(M=4, Lmax=16)])
def test_cross_settings_are_rejected_in_init(settings):
    """Lmax < Lmin, or M^Lmax > 2^31 steps per path: SettingError naming Lmax from the constructor."""
    with pytest.raises(SettingError, match="Lmax") as info:
        pricer(**settings)
    assert info.value.setting == "Lmax"
    pricer(M=2, Lmax=30)  # 2^30 steps: allowed


@pytest.mark.parametrize("settings", [{"Lmin": 5, "Lmax": 3}, {"M": 16, "Lmax": 8}])
def test_suite_with_bad_cross_settings_names_the_setting(settings):
    data = {"name": "t", "seed": 1, "tasks": [{
        "name": "calls", "kind": "price", "model": "black_scholes", "product": "european_call", "n": 2,
        "sampler": "lhs", "fixed": {"S": 100.0, "T": 1.0, "r": 0.05, "sigma": 0.2}, "domain": {"K": [90.0, 110.0]},
        "reference": "closed_form", "methods": [{"name": "mlmc", "settings": settings}]}]}
    with pytest.raises(SuiteError, match=r"task 'calls': key 'methods\[0\]\.settings\.Lmax'"):
        suite.parse(data, "s.toml", get_registry())


def test_empty_batch_gives_an_empty_result():
    mdl = get_registry().model("heston")
    p = pricer()
    params = mdl.validate(dict(S=100.0, K=np.zeros(0), T=1.0, v0=0.04, kappa=1.5, theta=0.04, xi=0.5, rho=-0.7))
    res = p.price(p.prepare(mdl, "european_call", params))
    assert res.price.shape == res.stderr.shape == res.reason.shape == (0,)
    out = bench.price("mlmc", model="black_scholes", product="european_put", S=100.0, K=np.zeros((0, 3)), T=1.0,
                      sigma=0.2)
    assert out.shape == (0, 3)
    empty = driver.mlmc(synthetic(), 0.1, M=2, batch=0)
    assert empty.price.shape == (0,) and empty.Nl.shape == (0, 11)


# --------------------------------------------------------------------------- the work budget


@pytest.mark.parametrize("model,params", [
    ("heston", dict(S=100.0, K=100.0, T=30.0, r=0.0, v0=1.0, kappa=1.5, theta=0.04, xi=0.5, rho=-0.7)),
    ("heston", dict(S=100.0, K=100.0, T=30.0, r=0.0, v0=0.04, kappa=1.5, theta=0.04, xi=0.5, rho=-0.7)),
    ("cev", dict(S=100.0, K=100.0, T=1.0, r=0.05, sigma=300.0, beta=0.5)),
    ("cev", dict(S=100.0, K=100.0, T=30.0, r=0.05, sigma=300.0, beta=1.0)),
    ("black_scholes", dict(S=100.0, K=100.0, T=1.0, r=0.05, sigma=5.0)),
])
def test_edge_points_are_nan_with_a_reason_within_the_budget(model, params):
    """Points whose eps needs 10^10 to 10^20 path steps (they ran for minutes or raised MemoryError)
    end at once with the default budget: NaN, the reason, and no more work than max_cost."""
    p = pricer()
    mdl = get_registry().model(model)
    inputs = p.prepare(mdl, "european_call", mdl.validate(params))
    t0 = time.perf_counter()
    with pytest.warns(driver.MLMCWarning, match="work budget"):
        res = p.price(inputs)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10.0
    assert np.isnan(res.price).all() and np.isnan(res.stderr).all()
    assert all("mlmc: over the work budget" in r and "max_cost" in r for r in np.ravel(res.reason))
    assert (p.result_.cost <= p.max_cost).all()


def test_budget_bounds_the_work_and_spares_the_rest_of_the_batch():
    """Beside an ordinary option, one that needs more than max_cost: only that one is NaN, and
    neither spends more than max_cost (checked before every draw, so never exceeded)."""
    params = dict(GBM, sigma=[0.2, 1.5])
    with pytest.warns(driver.MLMCWarning, match="1 of 2 estimates failed: over the work budget"):
        price, se, res = run_pricer("black_scholes", "european_call", params, eps=0.05, N0=1000, seed=1,
                                    max_cost=5e6)
    assert np.isfinite(price[0]) and np.isnan(price[1])
    assert abs(price[0] - GBM_EXACT) < 4 * se[0] + 0.05
    assert res.reason[0] == "" and "work budget" in res.reason[1]
    assert (res.cost <= 5e6).all() and res.cost[1] > 0
    # the same ordinary option alone: the budget does not change what it draws
    alone, _, _ = run_pricer("black_scholes", "european_call", GBM, eps=0.05, N0=1000, seed=1, max_cost=5e6)
    assert alone.tobytes() == price[:1].tobytes()
    with pytest.raises(SettingError, match="max_cost"):
        pricer(max_cost=0.0)


def test_driver_budget_without_cost_per_sample():
    """A level function without cost_per_sample: the budget uses the measured costs per sample."""
    with pytest.warns(driver.MLMCWarning, match="work budget"):
        res = driver.mlmc(synthetic(), 1e-4, M=2, N0=500, Lmax=12, max_cost=1e5)
    assert math.isnan(res.price[0]) and "work budget" in res.reason[0] and res.cost[0] <= 1e5
    assert math.isfinite(driver.mlmc(synthetic(), 0.05, M=2, N0=500, max_cost=1e7).price[0])
    with pytest.raises(ValueError, match="max_cost"):
        driver.mlmc(synthetic(), 0.1, max_cost=0.0)


def test_a_call_larger_than_one_pass_sums_as_one_pass():
    """Kernels run a call's blocks in passes of CHUNK blocks, so their memory stays bounded however
    many samples are asked for; an entry whose blocks straddle two passes sums exactly as alone."""
    from pricebench_plugins.pricers import _mlmc_kernels as k

    n = 20 * k.BLOCK + 17
    both, _ = levels(seed=9, scheme="euler")(0, np.array([(k.CHUNK - 5) * k.BLOCK, n]))
    alone, _ = levels(seed=9, scheme="euler")(0, np.array([0, n]))
    assert both[1].tobytes() == alone[1].tobytes()


# --------------------------------------------------------------------------- mlmc_test and the CLI


def test_mlmc_test_report_gbm():
    res = driver.mlmc_test(levels(scheme="euler", M=2), 2, 20_000, 5, 500, [0.2, 0.1, 0.05], exact=GBM_EXACT,
                               repeats=2)
    conv = res.convergence
    assert list(conv.l) == list(range(6)) and (conv.check < 1.5).all()
    assert abs(res.rates["beta"] - 1.0) < 0.3 and res.rates["gamma"] == pytest.approx(1.0)
    comp = res.complexity
    assert (comp.savings > 1).all() and {"rms_error", "N_0", "mc_cost"} <= set(comp.columns)
    assert res.cost_slopes["mc"] < res.cost_slopes["mlmc"] < -1.5
    sd = res.mse_split
    assert len(sd) == 5 and {"bias_est", "bias_exact", "mse_est", "mse_exact"} <= set(sd.columns)
    text = mlmc_test_cmd.report_text(res)
    assert "alpha" in text and "savings" in text and "MSE split (Spence, Brolly & Xue)" in text


def test_mse_split_exact_bias_gbm_euler_is_precise():
    """The MSE split with the same-path exact solution: for GBM Euler (M = 2) the exact bias on
    levels 1..3 is resolved (> 3 se), agrees with the h-vs-h/M estimate within 30% and about
    halves per halving of h; the optimal-h plain-MC cost with alpha = 1 has slope -3."""
    res = driver.mlmc_test(levels(scheme="euler", M=2, seed=2), 2, 1_000_000, 4, 500, [0.1, 0.05, 0.02, 0.01],
                               exact=GBM_EXACT, alpha=1.0, exact_paths=2_000_000)
    sd = res.mse_split.set_index("l")
    assert res.mse_split_info["bias_exact"] == driver.BIAS_SAME_PATH
    for l in (1, 2, 3):
        bias, se, est = sd.bias_exact[l], sd.bias_exact_stderr[l], sd.bias_est[l]
        assert abs(bias) > 3 * se, (l, bias, se)
        assert abs(est / abs(bias) - 1) < 0.3, (l, est, bias)
        assert sd.mse_exact[l] == pytest.approx(sd.var_over_paths[l] + bias ** 2)
    for l in (2, 3):
        assert 1.5 < sd.bias_ratio[l] < 3.0, (l, sd.bias_ratio[l])  # Euler: weak order 1, M = 2
    assert 0.7 < res.mse_split_info["alpha_exact"] < 1.5
    # plain MC at the optimal step, alpha fixed at 1: cost ~ eps^-3
    comp = res.complexity
    assert res.mc_optimal["alpha"] == 1.0 and res.mc_optimal["alpha_source"] == "given"
    assert abs(res.cost_slopes["mc_opt"] + 3.0) < 0.3, res.cost_slopes
    assert res.cost_slopes["mc_opt_theory"] == pytest.approx(-3.0, abs=0.01)
    assert (comp.n_opt.diff().iloc[1:] > 0).all() and (comp.savings_opt > 0).all()
    assert res.settings["alpha_used"] == 1.0
    text = mlmc_test_cmd.report_text(res)
    assert "MC cost (level L)" in text and "MC cost (optimal h)" in text and "same Brownian path" in text


def test_optimal_h_mc_cost_on_a_synthetic_weak_error():
    """P_l = 1 + 2 h_l + noise: |E Y_l| = c h (M - 1) with c = 2, so n = ceil(c sqrt(2) / eps)."""
    res = driver.mlmc_test(synthetic(c=2.0, M=2), 2, 20_000, 4, 500, [0.1, 0.02], exact=1.0)
    w = res.mc_optimal
    assert w["c"] == pytest.approx(2.0, rel=0.05) and w["c_levels"] == [1, 2, 3, 4]
    assert w["alpha"] == pytest.approx(1.0, abs=0.05) and w["alpha_source"] == "fitted"
    comp = res.complexity
    for r in comp.itertuples():
        n = math.ceil(2.0 * math.sqrt(2.0) / r.eps)
        assert abs(r.n_opt - n) <= 0.06 * n
        assert r.mc_cost_opt == pytest.approx(w["var_P"] * w["C0"] * r.n_opt ** w["gamma"] / (r.eps ** 2 / 2))
    # no exact path solution: the exact bias is E[P_h] - exact from independent samples, and says so
    assert res.mse_split_info["bias_exact"] == driver.BIAS_INDEPENDENT
    assert "bias_ratio" not in res.mse_split and "no exact path solution" in mlmc_test_cmd.report_text(res)


def mlmc_test_folder(root):
    """The one run folder under ``root``: ``--out`` is a results root, as for ``pricebench run``."""
    (folder,) = (root / "mlmc_test").iterdir()
    return folder


def test_cli_mlmc_test_writes_files(tmp_path, capsys, restore_registry):
    root = tmp_path / "mt"
    code = cli.main(["mlmc-test", "--N", "2000", "--L", "3", "--N0", "200", "--eps", "0.2,0.1", "--repeats", "2",
                     "--alpha", "1", "--gamma", "1", "--exact-paths", "5000", "--out", str(root), "--threads", "1"])
    assert code == 0
    out = mlmc_test_folder(root)
    text = capsys.readouterr().out
    assert "convergence" in text and "complexity" in text and "wrote" in text
    for name in ("mse_split.csv", "report.txt", "summary.json", "cost_vs_eps.png", "levels.png"):
        assert name in " ".join(text.split()), name  # the closing line names every file it wrote
    assert "MC cost (level L)" in text and "MC cost (optimal h)" in text and "same Brownian path" in text
    for name in ("convergence.csv", "complexity.csv", "mse_split.csv", "report.txt", "summary.json",
                 "cost_vs_eps.png", "levels.png"):
        assert (out / name).is_file(), name
    comp = pd.read_csv(out / "complexity.csv")
    assert list(comp.eps) == [0.2, 0.1] and {"rms_error", "mc_cost", "mc_cost_opt", "savings_opt", "n_opt"} <= set(comp)
    seed = pd.read_csv(out / "mse_split.csv")
    assert {"bias_exact", "bias_exact_stderr", "bias_est", "mse_est", "mse_exact", "bias_ratio"} <= set(seed)
    summary = json.loads((out / "summary.json").read_text())
    settings = summary["settings"]
    assert settings["scheme"] == "milstein" and settings["exact"] == pytest.approx(GBM_EXACT)
    assert settings["alpha"] == 1.0 and settings["alpha_used"] == 1.0 and settings["beta"] is None
    assert settings["gamma_used"] == 1.0 and settings["exact_paths"] == 5000 and settings["weak_order"] == 1.0
    assert summary["mc_optimal_h"]["alpha_source"] == "given" and "mc_opt" in summary["cost_slopes"]
    assert summary["mse_split"]["bias_exact"] == driver.BIAS_SAME_PATH
    report_txt = (out / "report.txt").read_text()
    assert "MC cost (optimal h)" in report_txt and "MC cost (level L)" in report_txt
    assert (out / "cost_vs_eps.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_mlmc_test_other_model(tmp_path, capsys, restore_registry):
    root = tmp_path / "bk"
    code = cli.main(["mlmc-test", "--model", "black_karasinski", "--param", "sigma=0.3", "--N", "2000", "--L", "2",
                     "--N0", "200", "--eps", "0.002", "--refit", "--out", str(root)])
    assert code == 0
    out = mlmc_test_folder(root)
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["params"]["sigma"] == 0.3 and settings["exact_source"] == "fd" and settings["scheme"] == "euler"
    assert settings["refit"] and settings["alpha_used"] is None
    assert settings["exact_bias_method"] == driver.BIAS_INDEPENDENT  # no exact path solution for BK
    assert "no exact path solution" in (out / "report.txt").read_text()


@pytest.mark.parametrize("args,word", [
    (["--param", "S=abc"], "S"),
    (["--param", "S"], "NAME=VALUE"),
    (["--param", "nope=1"], "nope"),
    (["--param", "sigma=-1"], "sigma"),
    (["--eps", "0.1,-1"], "eps"),
    (["--model", "nope"], "nope"),
    (["--model", "heston", "--scheme", "milstein"], "scheme"),
    (["--product", "american_put"], "american_put"),
    (["--Lmin", "5", "--Lmax", "3"], "Lmax"),
])
def test_cli_mlmc_test_bad_input_exits_2(tmp_path, capsys, restore_registry, args, word):
    out = tmp_path / "x"
    assert cli.main(["mlmc-test", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert "error" in err and word in err
    assert not out.exists()


@pytest.mark.parametrize("args", [["--M", "1"], ["--alpha", "-1"], ["--beta", "0"], ["--gamma", "x"],
                                  ["--exact-paths", "1"]])
def test_cli_mlmc_test_bad_option_value_exits_2(capsys, args):
    with pytest.raises(SystemExit) as exc:
        cli.main(["mlmc-test", *args])
    assert exc.value.code == 2


# --------------------------------------------------------------------------- mlmc-test is the plugin's command


PLUGIN_COMMAND = '''
from bench import hookimpl
from bench.commands import Command


class Hello(Command):
    name = "{name}"
    help = "say hello"

    def add_arguments(self, parser):
        parser.add_argument("--who", default="world")

    def run(self, args, out, err):
        out.print(f"hello {{args.who}}")
        return 0


@hookimpl
def register_commands(register):
    register(Hello)
'''


def test_mlmc_test_is_registered_by_the_mlmc_plugin(capsys, restore_registry, monkeypatch):
    assert cli.main(["plugins", "--json"]) == 0
    plugins = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert plugins["mlmc"]["registers"] == ["pricer:mlmc", "command:mlmc-test"]
    assert "mlmc" not in Path(cli.__file__).read_text()  # nothing of it is left in the framework's CLI
    # without the mlmc plugin there is no such command
    monkeypatch.setenv("PRICEBENCH_PLUGINS", "black_scholes,closed_form")
    with pytest.raises(SystemExit) as exc:
        cli.main(["mlmc-test", "--N", "100"])
    assert exc.value.code == 2 and "invalid choice: 'mlmc-test'" in capsys.readouterr().err


def test_a_plugins_dir_command_is_parsed_and_run(tmp_path, capsys, restore_registry):
    (tmp_path / "hello.py").write_text(PLUGIN_COMMAND.format(name="hello"))
    assert cli.main(["hello", "--plugins-dir", str(tmp_path), "--who", "MLMC"]) == 0
    assert "hello MLMC" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["run", "plugins", "compare", "report"])
def test_a_plugin_command_named_like_a_built_in_one_exits_2(tmp_path, capsys, restore_registry, name):
    (tmp_path / "clash.py").write_text(PLUGIN_COMMAND.format(name=name))
    assert cli.main(["plugins", "--plugins-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "plugin 'clash'" in err and f"command '{name}'" in err
