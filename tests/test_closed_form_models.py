"""The closed-form pricer beyond Black-Scholes: Merton, Kou, CEV and the
hyperbolic-sine local-volatility model against the published values in
/work/shared/REFERENCES.md, put-call parity, limits that reduce to other
closed forms, and its back-end and NaN contracts."""

import math

import numpy as np
import pytest
from scipy import special

import bench
from bench.methods import Unsupported
from pricebench_plugins.models import cev, kou, merton, sinh_lv
from pricebench_plugins.pricers.closed_form import FORMULAS, ClosedForm

NEW_MODELS = ("merton", "kou", "cev", "sinh_lv")


def price(model, product, **kw):
    return bench.price("closed_form", model=model, product=product, **kw)


def bs(product, **kw):
    return price("black_scholes", product, **kw)


# --------------------------------------------------------------------------- published values (REFERENCES.md)
# Tolerances are a little wider than each value's own uncertainty: its last printed digit.


def test_merton_benchop():
    got = price("merton", "european_call", S=[90, 100, 110], K=100, T=1, r=0.03, sigma=0.15, lam=0.4, mu_j=-0.5,
                sigma_j=0.4)
    np.testing.assert_allclose(got, [7.542526012669795, 14.336250885310660, 22.359969565189871], rtol=0,
                               atol=1e-12)


def test_merton_dhalluin_forsyth_vetzal():
    kw = dict(S=100, K=100, T=0.25, r=0.05, sigma=0.15, lam=0.1, mu_j=-0.9, sigma_j=0.45)
    assert price("merton", "european_call", **kw) == pytest.approx(4.3912456892, abs=1e-10)
    assert price("merton", "european_put", **kw) == pytest.approx(3.14902573859, abs=1e-11)


def test_merton_andersen_andreasen():
    put = price("merton", "european_put", S=100, K=100, T=10, r=0.05, q=0.02, sigma=0.15, lam=0.1, mu_j=-1.08,
                sigma_j=0.4)
    assert put == pytest.approx(18.0036289358, abs=1e-10)


def test_kou_toivanen():
    got = price("kou", "european_put", S=[90, 100, 110], K=100, T=0.25, r=0.05, sigma=0.15, lam=0.1, p=0.3445,
                eta1=3.0465, eta2=3.0775)
    np.testing.assert_allclose(got, [9.43045738102, 2.73125889907, 0.552363039643], rtol=0, atol=1e-11)


def test_kou_2002_example():
    kw = dict(S=100, K=98, T=0.5, r=0.05, sigma=0.16, lam=1, p=0.4, eta1=10, eta2=5)
    assert price("kou", "european_call", **kw) == pytest.approx(9.14731730, abs=1e-8)
    assert price("kou", "european_put", **kw) == pytest.approx(4.72768868, abs=1e-8)


def test_cev_references_r0_and_r5():
    K = [90, 100, 110]
    got = price("cev", "european_call", S=100, K=K, T=1, r=0.0, sigma=2, beta=0.5)
    np.testing.assert_allclose(got, [13.766863466706, 7.968853232423, 4.119623472923], rtol=0, atol=1e-11)
    got = price("cev", "european_call", S=100, K=K, T=1, r=0.05, sigma=2, beta=0.5)
    np.testing.assert_allclose(got, [16.846905671583, 10.453885328718, 5.857095928850], rtol=0, atol=1e-11)
    # not the formula with the growth factor on S (REFERENCES.md: 10.2685)
    assert abs(got[1] - 10.2685) > 0.1


@pytest.mark.parametrize(
    "kw, want",
    [
        (dict(S=100, K=100, T=1, r=0.05, lam=20), 17.1204856228),
        (dict(S=100, K=110, T=0.5, r=0.03, lam=10), 4.2446426339),
        (dict(S=100, K=90, T=2, r=0.05, lam=30), 33.3763584046),
        (dict(S=50, K=50, T=1, r=0.05, lam=0.25), 7.4242990203),  # Shorokhov's (2021) case
    ],
)
def test_sinh_lv_references(kw, want):
    assert price("sinh_lv", "european_call", **kw) == pytest.approx(want, abs=1e-10)


# --------------------------------------------------------------------------- parity


def random_params(model, n, seed):
    rng = np.random.default_rng(seed)
    p = {"S": rng.uniform(50, 150, n), "K": rng.uniform(50, 150, n), "T": rng.uniform(0.02, 5.0, n),
         "r": rng.uniform(-0.01, 0.1, n), "q": rng.uniform(0.0, 0.06, n)}
    if model == "merton":
        p |= {"sigma": rng.uniform(0.0, 0.6, n), "lam": rng.uniform(0.0, 5.0, n), "mu_j": rng.uniform(-1.0, 0.5, n),
              "sigma_j": rng.uniform(0.0, 0.6, n)}
    elif model == "kou":
        p |= {"sigma": rng.uniform(0.02, 0.6, n), "lam": rng.uniform(0.0, 5.0, n), "p": rng.uniform(0, 1, n),
              "eta1": rng.uniform(1.05, 50.0, n), "eta2": rng.uniform(0.2, 50.0, n)}
    elif model == "cev":
        beta = rng.uniform(0.0, 0.999, n)
        p |= {"beta": beta, "sigma": rng.uniform(0.05, 0.8, n) * p["S"] ** (1.0 - beta)}
    elif model == "sinh_lv":
        del p["q"]
        p |= {"r": rng.uniform(1e-3, 0.1, n), "lam": rng.uniform(0.05, 60.0, n)}
    return p


@pytest.mark.parametrize("model", NEW_MODELS)
def test_put_call_parity(model):
    p = random_params(model, 2000, seed=11)
    call = price(model, "european_call", **p)
    put = price(model, "european_put", **p)
    assert np.isfinite(call).all() and np.isfinite(put).all()
    q = p.get("q", 0.0)
    fwd = p["S"] * np.exp(-q * p["T"]) - p["K"] * np.exp(-p["r"] * p["T"])
    # (Kou's closed form integrates the out-of-the-money option and gets the other by parity, so
    # for Kou this checks the routing; test_kou_matches_lewis_inversion checks the values)
    np.testing.assert_allclose(call - put, fwd, rtol=0, atol=1e-10)
    # no-arbitrage bounds: non-negative, below the discounted spot (call) and strike (put),
    # except in sinh_lv where S_T can be negative (its put is not bounded by the strike)
    assert (call >= 0).all() and (put >= 0).all()
    assert (call <= p["S"] * np.exp(-q * p["T"]) + 1e-12).all()
    if model != "sinh_lv":
        assert (put <= p["K"] * np.exp(-p["r"] * p["T"]) + 1e-12).all()


# --------------------------------------------------------------------------- limits


def test_merton_without_jumps_is_black_scholes():
    K = np.linspace(40, 250, 43)
    kw = dict(S=100, K=K, T=[[0.02], [1.0], [7.0]], r=0.04, q=0.015, sigma=0.25)
    for product in ("european_call", "european_put"):
        want = bs(product, **kw)
        # no jumps at all, and jumps of size zero (kbar = 0); the same formula up to rounding
        np.testing.assert_allclose(price("merton", product, lam=0.0, mu_j=-0.3, sigma_j=0.2, **kw), want,
                                   rtol=1e-12, atol=0)
        np.testing.assert_allclose(price("merton", product, lam=3.0, mu_j=0.0, sigma_j=0.0, **kw), want,
                                   rtol=1e-12, atol=0)


def test_merton_is_a_poisson_mixture_of_black_scholes():
    # independent of the adaptive summation: 60 terms of Merton's series written out
    S, K, T, r, q, sigma, lam, mu, sj = 100.0, 95.0, 2.0, 0.03, 0.01, 0.2, 1.5, -0.2, 0.25
    kbar = math.exp(mu + sj**2 / 2) - 1
    want = 0.0
    for n in range(60):
        w = math.exp(-lam * T) * (lam * T) ** n / math.factorial(n)
        sig_n = math.sqrt(sigma**2 + n * sj**2 / T)
        r_n = r - lam * kbar + n * math.log(1 + kbar) / T
        want += w * float(bs("european_call", S=S, K=K, T=T, r=r_n, q=q, sigma=sig_n)) * math.exp((r_n - r) * T)
    got = price("merton", "european_call", S=S, K=K, T=T, r=r, q=q, sigma=sigma, lam=lam, mu_j=mu, sigma_j=sj)
    assert got == pytest.approx(want, rel=1e-13)


def test_merton_huge_intensity_and_zero_diffusion():
    # lam T = 2,000: the Poisson weights underflow at n = 0 and the sum still converges
    kw = dict(S=100, K=100, T=10, r=0.05, sigma=0.1, lam=200, mu_j=0.0, sigma_j=0.015)
    call = price("merton", "european_call", **kw)
    put = price("merton", "european_put", **kw)
    assert np.isfinite(call) and call - put == pytest.approx(100 - 100 * math.exp(-0.5), abs=1e-10)
    # ~ Black-Scholes with the total variance sigma^2 + lam sigma_j^2 (central limit)
    approx = bs("european_call", S=100, K=100, T=10, r=0.05, sigma=math.sqrt(0.01 + 200 * 0.015**2))
    assert call == pytest.approx(approx, rel=2e-3)
    # sigma = 0 and sigma_j = 0: deterministic jumps, the n = 0 term is the intrinsic value
    got = price("merton", "european_call", S=100, K=[90, 110], T=1, r=0.0, sigma=0.0, lam=1.0, mu_j=0.1,
                sigma_j=0.0)
    kb = math.exp(0.1) - 1
    want = [sum(math.exp(-1) / math.factorial(n) * max(100 * math.exp(-kb + 0.1 * n) - k, 0) for n in range(40))
            for k in (90, 110)]
    np.testing.assert_allclose(got, want, rtol=1e-13)


def test_kou_without_jumps_is_black_scholes():
    K = np.linspace(40, 250, 43)
    kw = dict(S=100, K=K, T=[[0.02], [1.0], [7.0]], r=0.04, q=0.015, sigma=0.25)
    for product in ("european_call", "european_put"):
        want = bs(product, **kw)
        got = price("kou", product, lam=0.0, p=0.4, eta1=10, eta2=5, **kw)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


def test_kou_with_one_sided_jumps_and_small_volatility():
    # p = 0 and p = 1 (one pole only), a small sigma (long integration range) and eta1 close to 1
    kw = dict(S=100, K=[70, 100, 130], T=0.5, r=0.03, q=0.01)
    for extra in (dict(sigma=0.2, lam=1.0, p=0.0, eta1=3.0, eta2=4.0),
                  dict(sigma=0.2, lam=1.0, p=1.0, eta1=3.0, eta2=4.0),
                  dict(sigma=0.01, lam=2.0, p=0.5, eta1=8.0, eta2=6.0),
                  dict(sigma=0.2, lam=0.5, p=0.5, eta1=1.02, eta2=6.0)):
        call = price("kou", "european_call", **kw, **extra)
        put = price("kou", "european_put", **kw, **extra)
        assert np.isfinite(call).all() and (call > 0).all() and (put > 0).all()
        np.testing.assert_allclose(call - put, 100 * math.exp(-0.005) - np.array([70, 100, 130]) * math.exp(-0.015),
                                   atol=1e-11)


def test_kou_matches_lewis_inversion():
    # Lewis (2001): C = S e^{-qT} - sqrt(S K) e^{-rT} / pi int_0^inf Re[e^{i u ln(S/K)} phi(u - i/2)] / (u^2 + 1/4) du,
    # with the model's characteristic function and scipy's quad: a different contour, a different
    # quadrature and no parity, on random calls and puts in and out of the money
    from scipy import integrate

    from bench.plugins import get_registry

    mdl = get_registry().model("kou")
    p = random_params("kou", 12, seed=21)
    p["sigma"] = np.maximum(p["sigma"], 0.1)  # keeps quad quick
    params = mdl.validate(p)
    call = price("kou", "european_call", **p)
    put = price("kou", "european_put", **p)
    for i in range(12):
        one = {k: v[i] for k, v in params.items()}
        S, K, T, r, q = (float(one[k]) for k in ("S", "K", "T", "r", "q"))
        x = math.log(S / K)

        def f(u):
            return (np.exp(1j * u * x) * complex(mdl.characteristic_function(u - 0.5j, one))).real / (u * u + 0.25)

        integral = integrate.quad(f, 0, np.inf, limit=400, epsabs=1e-14, epsrel=1e-13)[0]
        want_call = S * math.exp(-q * T) - math.sqrt(S * K) * math.exp(-r * T) / math.pi * integral
        want_put = want_call - S * math.exp(-q * T) + K * math.exp(-r * T)
        assert call[i] == pytest.approx(want_call, abs=1e-10)
        assert put[i] == pytest.approx(want_put, abs=1e-10)


def bachelier_absorbed(S, K, T, vol):
    """Normal model with volatility vol stopped at 0 (reflection principle), r = q = 0."""
    sd = vol * math.sqrt(T)

    def call(m):
        d = (m - K) / sd
        return (m - K) * special.ndtr(d) + sd * np.exp(-d * d / 2) / math.sqrt(2 * math.pi)

    return call(S) - call(-S)


def test_cev_beta_zero_is_absorbed_bachelier():
    K = np.array([40.0, 80.0, 100.0, 120.0, 160.0])
    for vol, T in ((30.0, 1.0), (60.0, 2.0)):
        got = price("cev", "european_call", S=100, K=K, T=T, r=0.0, sigma=vol, beta=0.0)
        np.testing.assert_allclose(got, bachelier_absorbed(100.0, K, T, vol), rtol=1e-11, atol=1e-11)


def test_cev_beta_one_is_black_scholes_and_beta_near_one_converges():
    K = np.array([70.0, 90.0, 100.0, 110.0, 140.0])
    kw = dict(S=100, K=K, T=1.0, r=0.05, q=0.01)
    for product in ("european_call", "european_put"):
        want = bs(product, sigma=0.2, **kw)
        np.testing.assert_array_equal(price("cev", product, sigma=0.2, beta=1.0, **kw), want)
        # same local volatility at the spot: sigma S^(beta - 1) = 0.2; the error is O(1 - beta)
        errs = [np.max(np.abs(price("cev", product, sigma=0.2 * 100 ** (1 - b), beta=b, **kw) - want))
                for b in (0.99, 0.999, 0.9999)]
        assert errs[1] < 1e-3 and errs[2] < 1e-4
        assert 8 < errs[0] / errs[1] < 12 and 8 < errs[1] / errs[2] < 12


def test_sinh_lv_limits():
    K = np.array([60.0, 90.0, 100.0, 110.0, 150.0])
    # lam -> 0: dS = r S dt + sqrt(2r) S dW, Black-Scholes with sigma = sqrt(2r), q = 0
    got = price("sinh_lv", "european_call", S=100, K=K, T=1.5, r=0.04, lam=1e-6)
    want = bs("european_call", S=100, K=K, T=1.5, r=0.04, sigma=math.sqrt(0.08))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    # r -> 0: dS = lam dW, Bachelier with normal volatility lam (no boundary)
    lam, T = 20.0, 1.0
    got = price("sinh_lv", "european_put", S=100, K=K, T=T, r=1e-9, lam=lam)
    d = (100 - K) / (lam * math.sqrt(T))
    want = (K - 100) * special.ndtr(-d) + lam * math.sqrt(T) * np.exp(-d * d / 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_sinh_lv_against_quadrature_of_the_terminal_law():
    # S_T = (lam/c) sinh(a + b Z): integrate the payoff against the normal density directly
    from scipy import integrate

    S, K, T, r, lam = 80.0, 95.0, 0.7, 0.06, 12.0
    c = math.sqrt(2 * r)
    a, b = math.asinh(c * S / lam), math.sqrt(2 * r * T)

    def payoff(z):
        return max((lam / c) * math.sinh(a + b * z) - K, 0.0) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)

    zstar = (math.asinh(c * K / lam) - a) / b
    want = math.exp(-r * T) * integrate.quad(payoff, zstar, 40, epsabs=1e-14, epsrel=1e-13)[0]
    assert price("sinh_lv", "european_call", S=S, K=K, T=T, r=r, lam=lam) == pytest.approx(want, abs=1e-11)


# --------------------------------------------------------------------------- contracts


def test_supports_every_model_european_only():
    for model in ("black_scholes",) + NEW_MODELS:
        assert ClosedForm.can_price(model, "european_call") and ClosedForm.can_price(model, "european_put")
        assert not ClosedForm.can_price(model, "american_put")
    assert set(FORMULAS) == set(ClosedForm.supports)


@pytest.mark.parametrize(
    "model, backend",
    [("merton", "numba"), ("merton", "torch"), ("kou", "numpy"), ("kou", "torch"), ("cev", "numba"),
     ("sinh_lv", "torch")],
)
def test_back_end_a_model_lacks_is_unsupported(model, backend):
    p = {k: v[:3] for k, v in random_params(model, 3, seed=1).items()}
    with pytest.raises(Unsupported, match=model):
        price(model, "european_call", backend=backend, **p)


@pytest.mark.parametrize("model", NEW_MODELS)
def test_auto_back_end_and_broadcasting(model):
    p = random_params(model, 6, seed=5)
    p = {k: v.reshape(2, 3) for k, v in p.items()}
    got = price(model, "european_put", **p)
    assert got.shape == (2, 3)
    explicit = price(model, "european_put", backend=FORMULAS[model].backends[0], **p)
    np.testing.assert_array_equal(got, explicit)


def test_unpriceable_points_give_nan_not_an_exception():
    # called directly (the formulas do not validate): one bad point does not spoil the batch
    good = dict(S=100.0, K=100.0, T=1.0, r=0.05, q=0.0)
    bad_sigma = np.array([0.2, np.nan, -1.0])
    m = merton.price(**good, sigma=bad_sigma, lam=0.5, mu_j=-0.1, sigma_j=0.2, theta=1.0)
    assert np.isfinite(m[0]) and np.isnan(m[1])
    k = kou.price(**good, sigma=bad_sigma, lam=0.5, p=0.4, eta1=[10.0, 10.0, 0.5], eta2=5.0, theta=-1.0)
    assert np.isfinite(k[0]) and np.isnan(k[1:]).all()
    s = sinh_lv.price(S=100.0, K=100.0, T=1.0, r=np.array([0.05, 0.0, -0.01]), lam=10.0, theta=1.0)
    assert np.isfinite(s[0]) and np.isnan(s[1:]).all()
    # CEV within ~1e-5 of beta = 1 at a short maturity: Boost's chi-square series gives up (documented)
    c = price("cev", "european_call", S=100, K=100, T=0.01, r=0.05, sigma=[0.2 * 100**0.3, 0.2 * 100**1e-5],
              beta=[0.7, 1 - 1e-5])
    assert np.isfinite(c[0]) and np.isnan(c[1])
    assert np.isnan(cev.price(100.0, 100.0, 1.0, 0.0, 0.0, np.nan, 0.5, 1.0))
