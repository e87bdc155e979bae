"""Edge cases of the approximate kind found in review: each test fails on the defect it names.

References: a Black-Scholes delta and vega written here, rows built by hand, and the runner's own files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import ndtr

from bench import cli, runner, suite
from bench.approximators import FIXED_OTHER, load_approximator
from bench.cells import STEM_LENGTH, cell_stems
from bench.datasets import SetSpec, labelled_set
from bench.features import FeatureMap
from bench.plugins import get_registry
from pricebench_plugins.kinds.approximate import ApproximateKind, _fastest_classical

WIDE = {"S": [0.5, 1.5], "T": [0.2, 1.0], "r": [0.02, 0.08], "sigma": [0.1, 0.6]}


def task(name="fit", **over):
    t = {"name": name, "kind": "approximate", "model": "black_scholes", "product": "european_call", "n": 1500,
         "fixed": {"K": 1.0, "q": 0.0}, "domain": dict(WIDE), "pricer": "closed_form", "test": 500,
         "methods": [{"name": "least_squares", "settings": {"degree": 4}}]}
    t.update(over)
    return t


def parse(*tasks):
    registry = get_registry()
    return suite.parse({"name": "edges", "seed": 9, "repeats": 2, "tasks": list(tasks)}, "s.toml", registry), registry


def test_with_s_and_k_both_fixed_only_their_ratio_is_priced():
    """S/K is no feature when S and K are both fixed: another S/K is a fixed value changed, not the same price."""
    model = get_registry().model("black_scholes")
    fmap = FeatureMap.build(model, "european_call", "price", {"T": (0.1, 1.0), "sigma": (0.1, 0.5)},
                            {"S": 1.0, "K": 1.0, "r": 0.0, "q": 0.0}, True)
    assert "S/K" not in fmap.names
    params = {"S": np.array([2.0, 1.0, 2.0]), "K": np.array([1.0, 1.0, 2.0]), "T": np.full(3, 0.5),
              "r": np.zeros(3), "q": np.zeros(3), "sigma": np.full(3, 0.2)}
    assert fmap.fixed_ok(params, np.zeros((3, 2))).tolist() == [False, True, True]


def test_an_atm_only_function_refuses_other_moneyness(tmp_path):
    data, registry = parse(task(fixed={"S": 1.0, "K": 1.0, "q": 0.0, "r": 0.05},
                                domain={"T": [0.2, 1.0], "sigma": [0.1, 0.6]}))
    result = runner.run(data, registry, out_dir=tmp_path)
    f = load_approximator(result.directory / "artifacts" / "fit" / "least_squares.cpu.pbapprox")
    p = {"S": np.array([1.0, 2.0]), "K": np.array([1.0, 1.0]), "T": np.full(2, 0.5), "r": np.full(2, 0.05),
         "q": np.zeros(2), "sigma": np.full(2, 0.3)}
    values, codes, _ = f.evaluate(p, reasons=True)
    assert np.isfinite(values[0]) and np.isnan(values[1]) and f.reason_text(codes[1]) == FIXED_OTHER


def _row(kind, method, ns, tier, device="cpu", model="black_scholes", product="european_call"):
    return {"kind": kind, "method": method, "ns_per_option": ns, "tier": tier, "status": "ok", "device": device,
            "model": model, "product": product}


@pytest.mark.parametrize("target, expected", [("price", "closed_form"), ("implied_vol", "brent")])
def test_the_classical_comparison_is_what_the_approximator_stands_in_for(target, expected):
    """Never a learned method (an approximator against itself); root finders for an IV target."""
    data, _ = parse(task(target=target, squash=target == "implied_vol") if target == "implied_vol" else task())
    t = data.tasks[0]
    rows = [_row("price", "learned", 5.0, 1), _row("price", "closed_form", 50.0, 2),
            _row("price", "mc", 1.0, 5), _row("implied_vol", "learned", 3.0, 1),
            _row("implied_vol", "brent", 400.0, 1), _row("price", "fd", 10.0, 1, device="cuda")]
    me = {"tier": 3, "device": "cpu"}
    assert _fastest_classical(t, me, rows)["method"] == expected


def _labelled(tmp_path, pricer="closed_form", settings=None):
    registry = get_registry()
    model = registry.model("black_scholes")
    cls = registry.get("pricer", pricer)
    settings = {"backend": "torch"} if settings is None else settings
    spec = SetSpec("black_scholes", model.version, "european_call", {"S": (0.6, 1.4), "sigma": (0.1, 0.5)},
                   {"K": 1.0, "T": 0.5, "r": 0.03, "q": 0.0}, "uniform", {}, 400, "3:()", pricer,
                   cls.version, cls.resolve_settings(settings), ("S", "sigma"))
    return labelled_set(spec, np.random.SeedSequence(3), registry, 0, tmp_path)


def test_derivative_labels_come_from_autograd_and_are_timed_apart(tmp_path):
    data = _labelled(tmp_path)
    assert "autograd" in data.derivatives
    S, sigma, T, r = data.params["S"], data.params["sigma"], 0.5, 0.03
    d1 = (np.log(S) + (r + 0.5 * sigma**2) * T) / (sigma * np.sqrt(T))
    np.testing.assert_allclose(data.gradients["S"], ndtr(d1), rtol=1e-10, atol=1e-12)  # delta
    vega = S * np.sqrt(T) * np.exp(-0.5 * d1**2) / np.sqrt(2 * np.pi)
    np.testing.assert_allclose(data.gradients["sigma"], vega, rtol=1e-10, atol=1e-12)
    assert data.label_s > 0 and data.derivative_s > 0
    again = _labelled(tmp_path)  # the cache keeps both times
    assert again.cached and (again.label_s, again.derivative_s) == (data.label_s, data.derivative_s)


def test_without_a_torch_back_end_derivatives_are_finite_differences(tmp_path):
    """binomial has no torch back end: central differences of its prices, close to the exact Greeks."""
    data = _labelled(tmp_path, "binomial", {"steps": 400})
    assert "finite differences" in data.derivatives
    exact = _labelled(tmp_path / "exact")
    for k in ("S", "sigma"):
        np.testing.assert_allclose(data.gradients[k], exact.gradients[k], atol=5e-3)


def test_noise_on_an_implied_vol_target_goes_on_the_volatility(tmp_path):
    data, registry = parse(task(target="implied_vol", squash=True, noise=0.05))
    t = data.tasks[0]
    clean, _ = parse(task(target="implied_vol", squash=True))
    kind = ApproximateKind()
    seeds = runner.Runner(registry).task_seeds(data, t)
    noisy = kind.build(t, seeds, registry)
    plain = kind.build(clean.tasks[0], seeds, registry)
    fmap = noisy.extra["fmap"]
    diff = fmap.unscale_y(noisy.inputs["y"]) - fmap.unscale_y(plain.inputs["y"])
    assert np.array_equal(noisy.inputs["X"], plain.inputs["X"])  # the price, an input, stays clean
    assert 0.04 < np.std(diff) < 0.06  # volatility units


def test_a_bool_key_of_the_wrong_type_is_one_clear_error(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('[[tasks]]\nname = "a"\nkind = "approximate"\nmodel = "black_scholes"\n'
                    'product = "european_call"\nn = 100\nfixed = { K = 1.0, q = 0.0, r = 0.0 }\n'
                    'domain = { S = [0.5, 1.5], T = [0.1, 1.0], sigma = [0.1, 0.5] }\npricer = "closed_form"\n'
                    'homogeneous = "yes"\nmethods = ["least_squares"]\n')
    out = tmp_path / "out"
    assert cli.main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "s.toml" in err and "task 'a'" in err and "'homogeneous'" in err and "true or false" in err
    assert not out.exists()


def test_differential_training_of_an_implied_vol_target_is_refused_when_read():
    with pytest.raises(suite.SuiteError, match=r"methods\[0\].*price target"):
        parse(task(target="implied_vol", squash=True,
                   methods=[{"name": "mlp", "settings": {"differential": 1.0, "epochs": 1}}]))


def test_artifact_stems_never_collide():
    data, _ = parse(task(methods=[
        {"name": "least_squares", "label": "a/b", "settings": {"degree": 2}},
        {"name": "least_squares", "label": "a_b", "settings": {"degree": 3}},
        {"name": "least_squares", "label": "x" * 200, "settings": {"degree": 4}},
        {"name": "least_squares", "label": "sweep", "settings": {"degree": [5, 6]}},
        {"name": "smt", "settings": {"surrogate": "LS"}},
    ]))
    stems = cell_stems(data.tasks[0])
    assert len(set(stems.values())) == len(stems) == 6
    assert all(len(s) <= STEM_LENGTH and "/" not in s for s in stems.values())
    assert stems[5] == "smt"  # a unique name stays itself


def test_resume_labels_into_the_run_s_cache(tmp_path):
    data, registry = parse(task(), task("second"))
    cache = tmp_path / "elsewhere"
    first = runner.run(data, registry, out_dir=tmp_path / "out", cache_dir=cache, tasks=["fit"])
    meta = json.loads((first.directory / "run.json").read_text())
    assert meta["cache_dir"] == str(cache.resolve())
    entries = sorted(p.name for p in cache.iterdir())
    resumed = runner.run(data, registry, out_dir=tmp_path / "out", resume=first.directory)
    second = [r for r in resumed.rows if r["task"] == "second"]
    assert second and all(r["status"] == "ok" for r in second)
    assert not (tmp_path / "out" / "cache").exists()  # not the default <out>/cache
    assert len(list(cache.iterdir())) > len(entries)


@pytest.mark.parametrize("name", ["mlp", "gp", "least_squares", "smt"])
def test_what_a_fit_imports_is_declared_so_it_is_not_timed(name):
    import importlib
    import inspect

    cls = get_registry().get("approximator", name)
    assert cls.imports, "imports the approximator's library before fit is timed"
    for module in cls.imports:
        importlib.import_module(module)
    source = inspect.getsource(inspect.getmodule(cls))
    assert all(m.split(".")[0] in source for m in cls.imports)


# --------------------------------------------------------------------------- Heston-ANN -> IV-ANN pipeline

HESTON_FIXED = {"K": 1.0, "q": 0.0, "r": 0.02, "kappa": 1.5, "theta": 0.04, "xi": 0.3, "rho": -0.7}


def heston_iv_task(name, pricer, methods, **over):
    t = {"name": name, "kind": "implied_vol", "model": "heston", "product": "european_call", "n": 400,
         "sampler": "uniform", "fixed": dict(HESTON_FIXED),
         "domain": {"S": [0.85, 1.15], "T": [0.3, 0.9], "v0": [0.03, 0.07]}, "pricer": pricer,
         "reference_pricer": "cos", "reference": "brent", "methods": methods}
    t.update(over)
    return t


def test_the_heston_ann_to_iv_ann_pipeline_is_scored_against_cos_to_brent(tmp_path):
    heston = task("heston", model="heston", n=3000, test=300, fixed=dict(HESTON_FIXED), pricer="heston_integration",
                  domain={"S": [0.8, 1.2], "T": [0.2, 1.0], "v0": [0.02, 0.08]},
                  methods=[{"name": "least_squares", "settings": {"degree": 6}}])
    iv = task("iv", target="implied_vol", squash=True, n=5000, test=300, fixed={"K": 1.0, "q": 0.0, "r": 0.02},
              domain={"S": [0.7, 1.3], "T": [0.1, 1.1], "sigma": [0.05, 0.5]},
              methods=[{"name": "least_squares", "settings": {"degree": 8}}])
    iv_ann = {"name": "learned", "settings": {"fitted": "iv/least_squares", "vol_tol": 0.02}}
    data, registry = parse(
        heston, iv,
        heston_iv_task("pipeline", {"name": "learned", "settings": {"fitted": "heston/least_squares"}},
                       ["brent", iv_ann]),
        heston_iv_task("exact", "cos", ["brent", iv_ann]))
    result = runner.run(data, registry, out_dir=tmp_path)
    rows = {(r["task"], r["method"]): r for r in result.rows}
    assert all(r["status"] == "ok" for r in rows.values()), [(k, r["message"]) for k, r in rows.items()]
    # COS -> Brent is the reference itself; the IV-ANN alone, and the Heston-ANN's price error, add up
    assert rows["exact", "brent"]["max_abs_error"] < 1e-10
    heston_ann_error = rows["pipeline", "brent"]["max_abs_error"]
    assert 1e-5 < heston_ann_error < 0.01
    assert rows["exact", "learned"]["max_abs_error"] < 0.02 and rows["pipeline", "learned"]["max_abs_error"] < 0.03


@pytest.mark.parametrize("over, key, words", [
    ({"reference": None}, "reference", "no true sigma"),
    ({"reference": "true_sigma"}, "reference", "black_scholes only"),
    ({"model": "black_scholes", "reference": "true_sigma", "fixed": {"K": 1.0, "q": 0.0, "r": 0.0, "sigma": 0.2},
      "domain": {"S": [0.9, 1.1], "T": [0.3, 0.9]}}, "reference_pricer", "no prices"),
])
def test_an_implied_vol_task_under_another_model_needs_a_root_finder_reference(over, key, words):
    t = heston_iv_task("iv", "cos", ["brent"])
    t.update(over)
    if t["reference"] is None:
        del t["reference"]
    with pytest.raises(suite.SuiteError, match=f"'{key}'.*{words}"):
        parse(t)


@pytest.mark.parametrize("model", ["cev", "sinh_lv"])
def test_homogeneous_features_are_refused_where_prices_do_not_scale(model):
    """CEV's and sinh_lv's parameters are in price units: V(a S, a K) != a V(S, K), so no S/K features."""
    registry = get_registry()
    cls = type(registry.model(model))
    assert cls.homogeneous is False and type(registry.model("heston")).homogeneous is True
    domain = {"K": [80.0, 120.0], "T": [0.2, 1.0]}
    fixed = {"S": 100.0, "r": 0.05, "q": 0.0,
             **({"sigma": 2.0, "beta": 0.5} if model == "cev" else {"lam": 0.25})}
    data, _ = parse(task(model=model, fixed=fixed, domain=domain, pricer="fd",
                         methods=[{"name": "least_squares", "settings": {"degree": 2}}]))
    assert data.tasks[0].options["homogeneous"] is False  # the default follows the model
    with pytest.raises(suite.SuiteError, match="'homogeneous'.*not"):
        parse(task(model=model, fixed=fixed, domain=domain, pricer="fd", homogeneous=True))


def test_a_plugin_with_the_old_check_requirements_signature_still_loads():
    from bench.methods import Pricer

    seen = []

    class Old(Pricer):
        name = "old_style"

        @classmethod
        def check_requirements(cls, settings, tasks):  # written before model= and product= were passed
            seen.append((dict(settings), dict(tasks)))

    suite.check_requirements(Old, {"a": 1}, {}, "black_scholes", "european_call")
    assert seen == [({"a": 1}, {})]
