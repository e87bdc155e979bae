"""Task kind ``approximate``: cached labelled sets, training-only scaling, narrow and wide test sets,
the no-arbitrage audit, break-even counts, reproducibility, save and load of fitted approximators,
and one clear error for bad input.

References are independent of the code under test: a Black-Scholes formula written here, numbers
worked out by hand, and arrays recomputed from the cached training data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pandas as pd
import pytest
from bs_formula import bs

from bench import cli, datasets, hookimpl, runner, suite
from bench import plugins as host
from bench.approximators import SUFFIX, from_bytes, load_approximator, save_approximator
from bench.datasets import SetSpec, labelled_set
from bench.features import FeatureMap
from bench.methods import Approximator
from bench.plugins import get_registry
from pricebench_plugins.kinds.approximate import _break_even, arbitrage_audit

# the BS-ANN domain of Liu, Oosterlee & Bohte 2019 (K = 1) and its narrow test domain
WIDE = {"S": [0.4, 1.6], "T": [0.2, 1.1], "r": [0.02, 0.1], "sigma": [0.01, 1.0]}
NARROW = {"S": [0.5, 1.5], "T": [0.3, 0.95], "r": [0.03, 0.08], "sigma": [0.02, 0.9]}
ACCURACY = ("mae", "rmse", "max_abs_error", "r2", "max_err_s100", "failures",
            "narrow_mae", "narrow_rmse", "narrow_max_abs_error")


def bs_ann(name="bs_ann", **over):
    """An approximate task on Liu et al.'s (2019) Black-Scholes call domain (least squares: fast and deterministic)."""
    task = {"name": name, "kind": "approximate", "model": "black_scholes", "product": "european_call", "n": 4000,
            "sampler": "lhs", "fixed": {"K": 1.0, "q": 0.0}, "domain": dict(WIDE), "pricer": "closed_form",
            "test": 4000, "methods": [{"name": "least_squares", "settings": {"degree": 6}}]}
    task.update(over)
    return task


def suite_of(*tasks, seed=3):
    return {"name": "approx", "seed": seed, "repeats": 3, "tasks": list(tasks)}


def run(data, out_dir, registry=None, **options):
    registry = registry or get_registry()
    return runner.run(suite.parse(data, "s.toml", registry), registry, out_dir=out_dir, **options)


def row_of(result, task, method):
    (row,) = [r for r in result.rows if r["task"] == task and r["method"] == method]
    return row


def uniform_points(domain, n, seed):
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(lo, hi, n) for k, (lo, hi) in domain.items()}


# --------------------------------------------------------------------------- one run, shared


@pytest.fixture(scope="module")
def bs_run(tmp_path_factory):
    """One run: a price task (classical methods), the BS-ANN with a narrow set, and a BS-ANN labelled by a
    slow pricer (binomial trees) so its break-even is finite."""
    out = tmp_path_factory.mktemp("bs_run")
    data = suite_of(
        {"name": "classical", "kind": "price", "model": "black_scholes", "product": "european_call", "n": 1000,
         "fixed": {"K": 1.0, "q": 0.0}, "domain": dict(NARROW), "reference": "closed_form",
         "methods": [{"name": "closed_form", "settings": {"backend": "numpy"}}, "binomial"]},
        bs_ann(narrow=dict(NARROW)),
        bs_ann("slow_labels", n=2000, test=1000, pricer="binomial", reference="closed_form",
               methods=[{"name": "least_squares", "settings": {"degree": 4}}]),
    )
    result = run(data, out)
    assert all(r["status"] == "ok" for r in result.rows), [(r["task"], r["message"]) for r in result.rows]
    return result


def artifact(result, task, method="least_squares"):
    path = result.directory / "artifacts" / task / f"{method}.cpu{SUFFIX}"
    assert path.is_file(), sorted(p.name for p in (result.directory / "artifacts" / task).iterdir())
    return path


# --------------------------------------------------------------------------- 1. the cache does not relabel


def small_spec(**over) -> SetSpec:
    registry = get_registry()
    cls = registry.get("pricer", "closed_form")
    spec = SetSpec("black_scholes", registry.model("black_scholes").version, "european_call",
                   {"S": (0.5, 1.5), "T": (0.2, 1.0), "sigma": (0.1, 0.6)}, {"K": 1.0, "r": 0.03, "q": 0.0},
                   "lhs", {}, 300, "11:(101,)", "closed_form", cls.version, cls.resolve_settings({}))
    return dataclasses.replace(spec, **over)


def label_again(spec, cache):
    return labelled_set(spec, np.random.SeedSequence(11, spawn_key=(101,)), get_registry(), 7, cache)


@pytest.fixture
def label_calls(monkeypatch):
    """Counts calls of the labelling step (bench.datasets.label)."""
    calls = []
    real = datasets.label

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "label", counting)
    return calls


def assert_correct(data, spec):
    """Labels are the Black-Scholes prices of the set's own points, which lie in the spec's domain."""
    p = data.params
    assert data.size == spec.n
    for k, (lo, hi) in spec.domain.items():
        assert np.all((p[k] >= lo) & (p[k] <= hi)), k
    np.testing.assert_allclose(data.labels, bs(p["S"], p["K"], p["T"], p["r"], p["sigma"]), rtol=1e-12, atol=1e-14)


def test_a_cached_set_is_read_not_relabelled(tmp_path, label_calls):
    spec = small_spec()
    first = label_again(spec, tmp_path)
    assert len(label_calls) == 1 and not first.cached
    assert_correct(first, spec)
    assert (tmp_path / f"{spec.key()}.npz").is_file()
    second = label_again(spec, tmp_path)
    assert len(label_calls) == 1, "the second call relabelled"
    assert second.cached and second.key == first.key == spec.key()
    assert second.label_s == first.label_s  # the time the labelling took, as stored
    assert second.params.keys() == first.params.keys()
    for k in first.params:
        assert np.array_equal(second.params[k], first.params[k]), k
    assert np.array_equal(second.labels, first.labels)
    # without a cache every call labels
    label_again(spec, None)
    assert len(label_calls) == 2


def test_everything_that_determines_the_data_changes_the_key():
    base = small_spec()
    changes = {
        "n": {"n": 301},
        "seed": {"seed": "12:(101,)"},
        "role": {"seed": "11:(102,)"},
        "pricer settings": {"pricer_settings": {**base.pricer_settings, "backend": "torch"}},
        "pricer": {"pricer": "binomial"},
        "pricer version": {"pricer_version": base.pricer_version + "x"},
        "model version": {"model_version": base.model_version + "x"},
        "domain bound": {"domain": {**base.domain, "sigma": (0.1, 0.61)}},
        "domain order": {"domain": {"sigma": (0.1, 0.6), "S": (0.5, 1.5), "T": (0.2, 1.0)}},
        "fixed": {"fixed": {**base.fixed, "r": 0.031}},
        "sampler": {"sampler": "sobol"},
        "sampler options": {"sampler_options": {"criterion": "maximin"}},
        "product": {"product": "european_put"},
        "derivatives": {"derivatives": ("S",)},
    }
    keys = {name: dataclasses.replace(base, **over).key() for name, over in changes.items()}
    assert base.key() not in keys.values()
    assert len(set(keys.values())) == len(keys), keys
    # and nothing else: an equal spec built anew has the same key
    assert small_spec().key() == base.key()


def test_domain_order_matters_to_the_points(tmp_path):
    """The sampler draws its columns in the domain's order: two orders are two data sets, two cache entries."""
    a = small_spec()
    b = small_spec(domain={"sigma": (0.1, 0.6), "S": (0.5, 1.5), "T": (0.2, 1.0)})
    set_a, set_b = label_again(a, tmp_path), label_again(b, tmp_path)
    assert not set_b.cached
    assert not np.array_equal(set_a.params["S"], set_b.params["S"])
    assert_correct(set_b, b)


def test_a_second_run_reads_the_cache_and_scores_the_same(tmp_path, label_calls):
    data = suite_of(bs_ann(n=1000, test=500, methods=[{"name": "least_squares", "settings": {"degree": 4}}]))
    cache = tmp_path / "cache"
    first = run(data, None, cache_dir=cache)
    labelled = len(label_calls)
    assert labelled == 3  # training, validation and test sets
    second = run(data, None, cache_dir=cache)
    assert len(label_calls) == labelled, "the second run relabelled"
    (a,), (b,) = first.rows, second.rows
    assert a["cached"] is False and b["cached"] is True
    assert b["label_s"] == a["label_s"] and "training data from the cache" in b["message"]
    for col in ACCURACY[:6]:
        assert b[col] == a[col], col
    # the same pricer with its default setting spelt out is the same data; another back end is not
    default = get_registry().get("pricer", "closed_form").settings["backend"].default
    spelt = json.loads(json.dumps(data))
    spelt["tasks"][0]["pricer"] = {"name": "closed_form", "settings": {"backend": default}}
    assert run(spelt, None, cache_dir=cache).rows[0]["cached"] is True
    assert len(label_calls) == labelled
    other = "torch" if default != "torch" else "numpy"
    spelt["tasks"][0]["pricer"]["settings"]["backend"] = other
    third = run(spelt, None, cache_dir=cache).rows[0]
    # all three sets anew: the test set too, its reference being the labelling pricer
    assert third["cached"] is False and len(label_calls) == 2 * labelled
    assert third["mae"] == pytest.approx(a["mae"], rel=1e-6)  # the same prices from another back end


# --------------------------------------------------------------------------- 2. the cache survives a killed write


KILLED_WRITER = """
import os, signal, sys
import numpy as np
from bench import datasets
from bench.datasets import SetSpec
from bench.plugins import get_registry

def dying_savez(fh, **arrays):
    fh.write(b"PK\\x03\\x04" + bytes(2000))  # the first bytes of a zip archive ...
    fh.flush()
    os.fsync(fh.fileno())
    os.kill(os.getpid(), signal.SIGKILL)  # ... and the writer is killed

np.savez = dying_savez
spec = SetSpec(**{spec!r})
datasets.labelled_set(spec, np.random.SeedSequence(11, spawn_key=(101,)), get_registry(), 7, sys.argv[1])
"""


def test_a_writer_killed_mid_write_leaves_no_entry(tmp_path, label_calls):
    spec = small_spec()
    script = KILLED_WRITER.format(spec=dataclasses.asdict(spec))
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert f"{spec.key()}.npz" not in left
    assert len(left) == 1 and left[0].startswith(f".{spec.key()}.npz.") and left[0].endswith(".tmp.npz"), left
    # the next call does not read the half-written temporary file: it labels afresh, and correctly
    fresh = label_again(spec, tmp_path)
    assert not fresh.cached and len(label_calls) == 1
    assert_correct(fresh, spec)
    again = label_again(spec, tmp_path)
    assert again.cached and np.array_equal(again.labels, fresh.labels) and len(label_calls) == 1


def test_a_write_that_fails_midway_leaves_nothing(tmp_path, monkeypatch, label_calls):
    spec = small_spec()
    real_savez = np.savez

    def failing_savez(fh, **arrays):
        fh.write(b"PK\x03\x04" + bytes(500))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="No space left"):
        label_again(spec, tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither an entry nor a temporary file
    monkeypatch.setattr(np, "savez", real_savez)
    fresh = label_again(spec, tmp_path)
    assert not fresh.cached and len(label_calls) == 2
    assert_correct(fresh, spec)
    assert label_again(spec, tmp_path).cached


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "another key"])
def test_a_damaged_entry_is_relabelled_and_replaced(tmp_path, label_calls, damage):
    spec = small_spec()
    good = label_again(spec, tmp_path)
    path = tmp_path / f"{spec.key()}.npz"
    blob = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(len(blob)))
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a readable entry of another set under this key's name
        other = small_spec(n=50)
        label_again(other, tmp_path)
        path.write_bytes((tmp_path / f"{other.key()}.npz").read_bytes())
    assert len(label_calls) == (2 if damage == "another key" else 1)
    calls = len(label_calls)
    fresh = label_again(spec, tmp_path)
    assert not fresh.cached and len(label_calls) == calls + 1
    assert "unreadable" in fresh.note and path.name in fresh.note
    assert_correct(fresh, spec)
    assert np.array_equal(fresh.labels, good.labels)
    replaced = label_again(spec, tmp_path)  # the entry was rewritten and reads back
    assert replaced.cached and len(label_calls) == calls + 1 and np.array_equal(replaced.labels, good.labels)


# --------------------------------------------------------------------------- 3. narrow scores better than wide


def test_the_narrow_test_set_scores_better_than_the_wide_one(bs_run):
    board = pd.read_csv(bs_run.directory / "leaderboard.csv")
    (row,) = board[board.task == "bs_ann"].to_dict("records")
    assert row["n_test"] == 4000 and row["n_narrow"] == 4000 and row["failures"] == 0 and row["narrow_failures"] == 0
    assert row["narrow_mae"] < row["mae"]
    assert row["narrow_rmse"] < row["rmse"]
    assert row["narrow_max_abs_error"] < row["max_abs_error"]
    # the figures are the fitted function's: recompute them on fresh uniform points with the formula here
    f = load_approximator(artifact(bs_run, "bs_ann"))
    errors = {}
    for name, domain in (("wide", WIDE), ("narrow", NARROW)):
        p = uniform_points(domain, 20_000, seed=len(name))
        p.update(K=np.ones(20_000), q=np.zeros(20_000))
        values, _, _ = f.evaluate(p)
        errors[name] = np.abs(values - bs(p["S"], 1.0, p["T"], p["r"], p["sigma"]))
        assert np.isfinite(errors[name]).all()
    assert errors["narrow"].mean() < errors["wide"].mean()
    assert errors["wide"].mean() == pytest.approx(row["mae"], rel=0.25)
    assert errors["narrow"].mean() == pytest.approx(row["narrow_mae"], rel=0.25)


# --------------------------------------------------------------------------- 4. the no-arbitrage audit


def audit_grid(r=0.05, q=0.0, sigma=0.3):
    """11 maturities x 41 ascending strikes, S = 1."""
    maturities, strikes = np.linspace(0.2, 1.1, 11), np.linspace(0.6, 1.6, 41)
    TT, KK = np.meshgrid(maturities, strikes, indexing="ij")
    size = TT.size
    params = {"S": np.ones(size), "K": KK.ravel(), "T": TT.ravel(), "r": np.full(size, r), "q": np.full(size, q),
              "sigma": np.full(size, sigma)}
    return params, TT.shape


@pytest.mark.parametrize("product, r, q", [
    ("european_call", 0.05, 0.0), ("european_call", 0.05, 0.03), ("european_put", 0.05, 0.0),
    ("european_put", 0.0, 0.02), ("european_put", 0.08, 0.0),
])
@pytest.mark.parametrize("sigma", [0.1, 0.5])
def test_the_closed_form_has_no_arbitrage(product, r, q, sigma):
    params, shape = audit_grid(r, q, sigma)
    prices = bs(params["S"], params["K"], params["T"], r, sigma, q, call=product == "european_call")
    audit = arbitrage_audit(product, params, prices, shape)
    assert audit["count"] == 0 and audit["max"] == 0.0, audit


def test_a_european_put_that_loses_value_with_maturity_is_no_arbitrage():
    """Deep in the money with r > 0 a European put is worth less at a longer maturity (K e^{-rT} - S falls):
    the audit must not call that arbitrage (it did: 'calendar' violations for the exact prices)."""
    params, shape = audit_grid(r=0.08, sigma=0.1)
    prices = bs(params["S"], params["K"], params["T"], 0.08, 0.1, call=False).reshape(shape)
    assert (np.diff(prices, axis=0) < -1e-3).any()  # the effect is real in these prices
    assert arbitrage_audit("european_put", params, prices.ravel(), shape)["by_kind"].get("calendar", 0) == 0


@pytest.mark.parametrize("product, r, q", [("european_call", 0.05, 0.0), ("european_put", 0.0, 0.0)])
def test_a_spike_is_found_and_measured(product, r, q):
    """A bump of height h on one price breaks strike monotonicity, convexity and the calendar order once each;
    the largest violation is the convexity one, 2h less the price's own second difference there."""
    call = product == "european_call"
    params, shape = audit_grid(r, q)
    prices = bs(params["S"], params["K"], params["T"], r, 0.3, q, call=call).reshape(shape)
    i, j, h = 5, 20, 0.04
    bad = prices.copy()
    bad[i, j] += h
    audit = arbitrage_audit(product, params, bad.ravel(), shape)
    second = prices[i, j + 1] - 2 * prices[i, j] + prices[i, j - 1]
    assert 0 < second < h  # the closed form is convex, and the bump is larger than its curvature
    assert audit["by_kind"] == {"strike monotonicity": 1, "strike convexity": 1, "calendar": 1, "bounds": 0}
    assert audit["count"] == 3
    assert audit["max"] == pytest.approx(2 * h - second, rel=1e-9)


def test_a_price_above_its_bound_is_found():
    params, shape = audit_grid()
    prices = bs(params["S"], params["K"], params["T"], 0.05, 0.3)
    # every price 1e-3 too low: shape unchanged, but where the time value is below 1e-3 the price falls under
    # the lower bound max(S - K e^{-rT}, 0), by 1e-3 less the time value
    delta = 1e-3
    time_value = prices - np.maximum(params["S"] - params["K"] * np.exp(-0.05 * params["T"]), 0.0)
    audit = arbitrage_audit("european_call", params, prices - delta, shape)
    expected = int(np.sum(delta - time_value > 1e-10 * (params["S"] + params["K"])))
    assert 0 < expected < time_value.size
    assert audit["by_kind"] == {"strike monotonicity": 0, "strike convexity": 0, "calendar": 0, "bounds": expected}
    assert audit["max"] == pytest.approx(delta - time_value.min(), rel=1e-9)
    above = prices.copy()
    above[-1] = 1.0 + delta  # the longest maturity's highest strike worth more than the stock (S = 1, q = 0)
    assert arbitrage_audit("european_call", params, above, shape)["by_kind"]["bounds"] >= 1
    nan = prices.copy()
    nan[::7] = np.nan  # points an approximator did not price are not audited
    assert arbitrage_audit("european_call", params, nan, shape)["count"] == 0


class Constant(Approximator):
    """Deliberately bad: predicts the training mean of V/K everywhere, so V = c K rises with the strike."""

    name = "constant"
    version = "1"
    settings = {}

    def fit(self, X, y, *, X_val=None, y_val=None, dydX=None, device="cpu"):
        self.c_ = float(np.mean(y))
        self.fit_info_ = {}
        return self

    def predict(self, X):
        return np.full(np.shape(X)[0], self.c_)


class ConstantPlugin:
    @staticmethod
    @hookimpl
    def register_approximators(register):
        register(Constant)


def documented_audit_grid():
    """The audit grid of a BS-ANN task on WIDE with K = 1: 41 strikes for S0 = 1 (mid-range) over the declared
    range of S/K, 11 maturities over T's range, r and sigma at mid-range."""
    strikes = np.sort(1.0 / np.linspace(0.4, 1.6, 41))
    TT, KK = np.meshgrid(np.linspace(0.2, 1.1, 11), strikes, indexing="ij")
    size = TT.size
    params = {"S": np.ones(size), "K": KK.ravel(), "T": TT.ravel(), "r": np.full(size, 0.06),
              "q": np.zeros(size), "sigma": np.full(size, 0.505)}
    return params, TT.shape


def test_the_audit_of_a_run_finds_a_bad_approximator(tmp_path):
    """The audit of a run audits the fitted function, also when it was trained at one strike (K = 1, as in
    Liu et al. 2019): it priced every grid point at K != 1 as NaN and reported no arbitrage at all."""
    registry = host.load(only="closed_form,black_scholes,least_squares,metrics,kinds",
                         extra=[("constant", ConstantPlugin)])
    methods = ["constant", {"name": "least_squares", "settings": {"degree": 4}}]
    data = suite_of(bs_ann(n=1000, test=500, methods=methods))
    result = run(data, tmp_path, registry)
    params, shape = documented_audit_grid()
    S, K, T, r = params["S"], params["K"], params["T"], params["r"]
    # the constant approximator: V = c K rises with the strike at each of the 40 x 11 strike steps, and leaves
    # the price bounds max(S - K e^{-rT}, 0) <= V <= S where c K is too small or too large
    bad = row_of(result, "bs_ann", "constant")
    assert bad["status"] == "ok"
    f = load_approximator(result.directory / "artifacts" / "bs_ann" / f"constant.cpu{SUFFIX}")
    c = f.approximator.c_ * f.features.y_std + f.features.y_mean
    V = (c * K).reshape(shape)
    steps = np.diff(V, axis=1)
    bounds = np.maximum(np.maximum(S - K * np.exp(-r * T), 0.0) - c * K, c * K - S)
    out_of_bounds = bounds > 1e-10 * (S + K)
    assert np.all(steps > 0) and 0 < out_of_bounds.sum() < bounds.size
    assert bad["arb_violations"] == steps.size + out_of_bounds.sum() == 440 + out_of_bounds.sum()
    assert bad["arb_max"] == pytest.approx(max(steps.max(), bounds.max()), rel=1e-9)
    assert f"strike monotonicity 440, bounds {out_of_bounds.sum()}" in bad["message"]
    # the least-squares fit: its row is the audit of its own prices on that grid, V(1, K) = K V(1/K, 1)
    fit = row_of(result, "bs_ann", "least_squares")
    g = load_approximator(result.directory / "artifacts" / "bs_ann" / f"least_squares.cpu{SUFFIX}")
    values, _, _ = g.evaluate(dict(params, S=1.0 / K, K=np.ones_like(K)))
    assert np.isfinite(values).all()
    mine = arbitrage_audit("european_call", params, values * K, shape)
    assert (fit["arb_violations"], fit["arb_max"]) == (mine["count"], pytest.approx(mine["max"], rel=1e-9))


# --------------------------------------------------------------------------- 5. break-even


@pytest.mark.parametrize("cost, pricer, approx, expected", [
    (10.0, 1e-3, 1e-4, 11112),  # 10 / 9e-4 = 11111.1...: the 11112th price pays it back
    (1.0, 2e-6, 1e-6, 1_000_000),
    (0.5, 1e-5, 1e-5, math.inf),  # no saving per price: never paid back
    (0.5, 1e-6, 2e-6, math.inf),  # slower than the pricer: never
    (0.0, 1e-3, 1e-4, 0),
])
def test_break_even_by_hand(cost, pricer, approx, expected):
    assert _break_even(cost, pricer, approx) == expected


def test_break_even_of_an_unknown_time_is_nan():
    assert math.isnan(_break_even(1.0, math.nan, 1e-6)) and math.isnan(_break_even(1.0, 1e-3, math.nan))


def hand_break_even(cost, pricer_per_price, approx_per_price):
    saving = pricer_per_price - approx_per_price
    return math.ceil(cost / saving) if saving > 0 else math.inf


def test_break_even_in_a_run_matches_the_hand_computation(bs_run):
    slow = row_of(bs_run, "slow_labels", "least_squares")
    n_labelled = slow["n_train"] + slow["n_val"]
    assert n_labelled == 2200
    assert slow["label_price_s"] == pytest.approx(slow["label_s"] / n_labelled, rel=1e-12)
    cost = slow["label_s"] + slow["fit_s"]
    predict = slow["ns_per_option"] * 1e-9
    assert slow["label_price_s"] > predict  # binomial trees label slower than the fit predicts
    expected = hand_break_even(cost, slow["label_price_s"], predict)
    assert math.isfinite(expected) and slow["break_even"] == expected
    # against the fastest classical pricer of the run (closed form: faster than the fit, so never)
    prices = [r for r in bs_run.rows if r["task"] == "classical"]
    fastest = min(prices, key=lambda r: r["ns_per_option"])
    assert slow["classical"] == fastest["method"] == "closed_form"
    assert slow["break_even_classical"] == hand_break_even(cost, fastest["ns_per_option"] * 1e-9, predict)
    # closed-form labels are faster than any fit: never paid back
    fast = row_of(bs_run, "bs_ann", "least_squares")
    assert fast["break_even"] == hand_break_even(fast["label_s"] + fast["fit_s"], fast["label_price_s"],
                                                 fast["ns_per_option"] * 1e-9) == math.inf
    # the leaderboard file carries the same figures (to its 9 significant digits)
    board = pd.read_csv(bs_run.directory / "leaderboard.csv").set_index("task")
    csv = board.loc["slow_labels"]
    assert csv["break_even"] == pytest.approx(
        hand_break_even(csv["label_s"] + csv["fit_s"], csv["label_price_s"], csv["ns_per_option"] * 1e-9), rel=1e-6)
    assert board.loc["bs_ann", "break_even"] == math.inf


# --------------------------------------------------------------------------- 6. same seed, same fit


def test_the_mlp_fits_the_same_twice_with_one_seed():
    cls = get_registry().get("approximator", "mlp")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 3))
    y = np.sin(X).sum(axis=1)
    settings = {"depth": 1, "width": 8, "epochs": 4, "batch_size": 64}
    a, b, c = (cls(**settings, seed=s).fit(X, y) for s in (5, 5, 6))
    pa, pb, pc = (np.asarray(m.predict(m.prepare(X))) for m in (a, b, c))
    assert np.array_equal(pa, pb)
    assert not np.array_equal(pa, pc)  # the seed matters, so the equality above is not vacuous


def test_two_runs_with_one_seed_give_identical_fits(tmp_path):
    import torch

    tiny = {"name": "mlp", "settings": {"depth": 1, "width": 8, "epochs": 4, "batch_size": 128}}
    data = suite_of(bs_ann(n=1000, test=500, validation=100,
                           methods=[{"name": "least_squares", "settings": {"degree": 4}}, tiny]))
    runs = [run(data, tmp_path / name, **opts) for name, opts in (("a", {}), ("b", {}), ("c", {"seed": 4}))]
    boards = [pd.read_csv(r.directory / "leaderboard.csv").set_index("method") for r in runs]
    for method in ("least_squares", "mlp"):
        for col in ACCURACY[:6]:
            assert boards[0].loc[method, col] == boards[1].loc[method, col], (method, col)
        fits = [load_approximator(artifact(r, "bs_ann", method)) for r in runs]
        volatile = ("saved", "fit_s")
        same = [{k: v for k, v in f.meta.items() if k not in volatile} for f in fits]
        assert same[0] == same[1]
        assert fits[0].features == fits[1].features
        p = uniform_points(WIDE, 2000, seed=9)
        p.update(K=np.ones(2000), q=np.zeros(2000))
        values = [np.asarray(f.evaluate(p)[0]) for f in fits]
        assert np.array_equal(values[0], values[1]), method
        assert not np.array_equal(values[0], values[2]), method  # another seed: other data, another fit
    mlp = [load_approximator(artifact(r, "bs_ann", "mlp")).approximator for r in runs[:2]]
    sa, sb = (m.model_.state_dict() for m in mlp)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert boards[0].loc["mlp", "mae"] != boards[2].loc["mlp", "mae"]


# --------------------------------------------------------------------------- 7. save and load


def test_save_and_load_give_identical_predictions(bs_run, tmp_path):
    source = artifact(bs_run, "bs_ann")
    f = load_approximator(source)
    saved = save_approximator(f, tmp_path / "copy")  # the suffix is added
    assert saved == tmp_path / f"copy{SUFFIX}" and saved.is_file()
    g = load_approximator(saved)
    p = uniform_points(NARROW, 5000, seed=4)
    p.update(K=np.ones(5000), q=np.zeros(5000))
    vf, _, _ = f.evaluate(p)
    vg, _, _ = g.evaluate(p)
    assert np.isfinite(vf).all() and np.array_equal(vf, vg)
    assert np.array_equal(f.price(**p), g.price(**p)) and np.array_equal(f.price(**p), vf)
    assert np.array_equal(from_bytes(saved.read_bytes()).evaluate(p)[0], vf)
    # what the metadata records
    meta = g.meta
    assert meta == f.meta
    row = row_of(bs_run, "bs_ann", "least_squares")
    resolved = get_registry().get("approximator", "least_squares").resolve_settings({"degree": 6})
    assert meta["approximator"] == "least_squares" and meta["settings"] == resolved
    assert meta["task"] == "bs_ann" and meta["model"] == "black_scholes" and meta["product"] == "european_call"
    assert meta["target"] == "price" and meta["n_train"] == row["n_train"] == 4000
    assert meta["labelling_pricer"]["name"] == "closed_form" and meta["format"] == 1
    assert meta["packages"]["numpy"] == np.__version__ and "torch" in meta["packages"]
    # the data hash is the training set's cache key: its cache entry holds the training points
    entry = bs_run.directory.parent.parent / "cache" / f"{meta['data_hash']}.npz"
    with np.load(entry) as npz:
        stored = json.loads(str(npz["meta"]))
        train_S = npz["param:S"]
    assert stored["spec"]["n"] == 4000 and stored["spec"]["domain"] == {k: list(v) for k, v in WIDE.items()}
    # the feature transform travels with the file: names, and the training set's scaling
    assert g.features.names == ["S/K", "T", "r", "sigma"] and g.features.homogeneous
    assert g.features.x_mean[0] == pytest.approx(train_S.mean(), rel=1e-12)  # K = 1: S/K is S
    with zipfile.ZipFile(saved) as zf:
        plain = json.loads(zf.read("meta.json"))
    assert plain["features"]["x_mean"] == g.features.x_mean and plain["features"]["fixed"] == {"K": 1.0, "q": 0.0}


def test_a_file_that_is_not_an_approximator_is_a_clear_error(tmp_path):
    bad = tmp_path / f"bad{SUFFIX}"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a pricebench approximator file"):
        load_approximator(bad)
    with pytest.raises(ValueError, match="cannot read approximator file"):
        load_approximator(tmp_path / f"missing{SUFFIX}")


# --------------------------------------------------------------------------- 10. bad input


def write_toml(tmp_path, text: str):
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(text))
    return path


FIT = """
    name = "bad"
    seed = 1
    [[tasks]]
    name = "fit"
    kind = "approximate"
    model = "{model}"
    product = "european_call"
    n = 500
    fixed = {fixed}
    domain = {domain}
    pricer = "{pricer}"
    test = 100
    {extra}
    methods = [{methods}]
"""
BS = {"model": "black_scholes", "fixed": "{ K = 1.0, q = 0.0 }", "pricer": "closed_form",
      "domain": "{ S = [0.4, 1.6], T = [0.2, 1.1], sigma = [0.05, 1.0] }", "extra": "",
      "methods": '"least_squares"'}
PRICE_TASK = """
    [[tasks]]
    name = "px"
    kind = "price"
    model = "black_scholes"
    product = "european_call"
    n = 50
    fixed = {{ K = 1.0, q = 0.0 }}
    domain = {{ S = [0.5, 1.5], T = [0.3, 1.0], sigma = [0.1, 0.9] }}
    reference = "closed_form"
    methods = [{{ name = "learned", settings = {{ fitted = "{fitted}" }} }}]
"""


@pytest.mark.usefixtures("restore_registry")
@pytest.mark.parametrize("case, task, key, needle", [
    ({"methods": '"nosuch"'}, "fit", "methods[0].name", "unknown method 'nosuch'"),
    ({"methods": '"closed_form"'}, "fit", "methods[0].name", "is a pricer"),
    ({"extra": "narrow = { S = [0.3, 1.5] }"}, "fit", "narrow.S", "leaves the training domain"),
    ({"extra": "narrow = { sigma = [0.05, 1.2] }"}, "fit", "narrow.sigma", "leaves the training domain"),
    ({"extra": "narrow = { r = [0.01, 0.02] }"}, "fit", "narrow.r", "not a ranged parameter"),
    ({"pricer": "heston_integration"}, "fit", "pricer", "does not price 'european_call' under 'black_scholes'"),
    ({"model": "heston", "pricer": "binomial", "fixed": "{ K = 1.0, q = 0.0, r = 0.0 }",
      "domain": "{ S = [0.5, 1.5], T = [0.2, 1.0], v0 = [0.01, 0.2], kappa = [1.0, 3.0], theta = [0.01, 0.2], "
                "xi = [0.1, 0.5], rho = [-0.9, 0.0] }"},
     "fit", "pricer", "does not price 'european_call' under 'heston'"),
    ({"extra": 'reference = "cos"', "model": "cev", "pricer": "closed_form",
      "fixed": "{ K = 1.0, q = 0.0, r = 0.02, beta = 0.5 }",
      "domain": "{ S = [0.5, 1.5], T = [0.2, 1.0], sigma = [0.1, 0.5] }"},
     "fit", "reference", "does not price 'european_call' under 'cev'"),
    ({"extra": 'target = "implied_vol"\nsquash = false\naudit = true'}, "fit", "audit", "option prices"),
    ({"extra": 'target = "volatility"'}, "fit", "target", "unknown target"),
    ({"fitted": "nosuch/least_squares"}, "px", "methods[0].settings.fitted", "no approximate task 'nosuch'"),
    ({"fitted": "later/least_squares"}, "px", "methods[0].settings.fitted", "no approximate task 'later'"),
    ({"fitted": "fit/mlp"}, "px", "methods[0].settings.fitted", "has no method 'mlp'"),
    ({"fitted": "px/least_squares"}, "px", "methods[0].settings.fitted", "no approximate task 'px'"),
    ({"fitted": "fit"}, "px", "methods[0].settings.fitted", "must read 'task/stem'"),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, capsys, case, task, key, needle):
    fields = {**BS, **{k: v for k, v in case.items() if k != "fitted"}}
    text = FIT.format(**fields)
    if "fitted" in case:  # a price task after the fit, then an approximate task after it
        text += PRICE_TASK.format(fitted=case["fitted"]) + FIT.format(**BS).split("seed = 1", 1)[1].replace(
            'name = "fit"', 'name = "later"')
    path = write_toml(tmp_path, text)
    out = tmp_path / "out"
    code = cli.main(["run", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert "s.toml" in err and f"task '{task}'" in err and f"key '{key}'" in err and needle in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


# --------------------------------------------------------------------------- 11. training-only scaling


def test_the_feature_map_scales_with_the_training_set_only():
    model = get_registry().model("black_scholes")
    domain = {"S": (0.4, 1.6), "T": (0.2, 1.1), "sigma": (0.05, 1.0)}
    fmap = FeatureMap.build(model, "european_call", "price", domain, {"K": 1.0, "r": 0.05, "q": 0.0}, True)
    assert fmap.names == ["S/K", "T", "sigma"]
    rng = np.random.default_rng(1)
    Xtr = np.column_stack([rng.uniform(0.4, 1.6, 3000), rng.uniform(0.2, 1.1, 3000), rng.uniform(0.05, 1.0, 3000)])
    ytr = rng.uniform(0.0, 0.8, 3000)
    fmap.fit(Xtr, ytr)
    assert np.allclose(fmap.x_mean, Xtr.mean(axis=0), rtol=1e-14) and np.allclose(fmap.x_std, Xtr.std(axis=0))
    assert fmap.y_mean == pytest.approx(ytr.mean(), rel=1e-14) and fmap.y_std == pytest.approx(ytr.std())
    before = json.dumps(fmap.as_dict())
    # a test set from another distribution (a corner of the domain) changes nothing
    Xte = np.column_stack([rng.uniform(1.2, 1.6, 500), rng.uniform(0.9, 1.1, 500), rng.uniform(0.8, 1.0, 500)])
    scaled = fmap.scale_x(Xte)
    assert json.dumps(fmap.as_dict()) == before
    np.testing.assert_allclose(scaled, (Xte - Xtr.mean(axis=0)) / Xtr.std(axis=0), rtol=1e-12)
    assert np.all(scaled.mean(axis=0) > 0.5)  # scaled with the training statistics, not its own
    train_scaled = fmap.scale_x(Xtr)
    np.testing.assert_allclose(train_scaled.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(train_scaled.std(axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(fmap.unscale_y(fmap.scale_y(ytr)), ytr, rtol=1e-14, atol=1e-15)
    # the box is the declared domain (S/K from S over the fixed K), not the test set's range
    assert fmap.x_low == [0.4, 0.2, 0.05] and fmap.x_high == [1.6, 1.1, 1.0]
    corners = np.array([[1.6, 1.1, 1.0], [1.61, 0.5, 0.5], [1.0, 0.19, 0.5]])
    assert fmap.inside(corners).tolist() == [True, False, False]


def test_a_task_scales_with_its_training_set_only(tmp_path):
    registry = get_registry()
    s = suite.parse(suite_of(bs_ann(n=2000, test=3000, narrow=dict(NARROW), sampler="uniform")), "s.toml", registry)
    (task,) = s.tasks
    data = runner.Runner(registry, out_dir=None, cache_dir=tmp_path).prepare_task(s, task)
    fmap = data.extra["fmap"]
    with np.load(tmp_path / f"{data.extra['data_hash']}.npz") as npz:
        train = {k.split(":", 1)[1]: npz[k] for k in npz.files if k.startswith("param:")}
        labels = npz["labels"]
        assert json.loads(str(npz["meta"]))["spec"]["n"] == 2000
    X = np.column_stack([train["S"] / train["K"], train["T"], train["r"], train["sigma"]])
    np.testing.assert_allclose(fmap.x_mean, X.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(fmap.x_std, X.std(axis=0), rtol=1e-13)
    assert fmap.y_mean == pytest.approx((labels / train["K"]).mean(), rel=1e-13)
    np.testing.assert_allclose(data.inputs["X"].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(data.inputs["X"].std(axis=0), 1.0, rtol=1e-12)
    # the validation and test sets were scaled with the training statistics, not their own
    val = data.inputs["X_val"]
    assert val.shape == (200, 4) and not np.allclose(val.mean(axis=0), 0.0, atol=1e-6)
    tests = np.column_stack([data.params["S"] / data.params["K"], data.params["T"], data.params["r"],
                             data.params["sigma"]])
    assert tests.shape[0] == 6000
    assert not np.allclose(tests.mean(axis=0), fmap.x_mean, rtol=1e-6)
    everything = np.vstack([X, tests])
    assert not np.allclose(everything.mean(axis=0), fmap.x_mean, rtol=1e-6)
