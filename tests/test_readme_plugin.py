"""The README's complete plugin (a pricer and a root finder) runs as written: the conformance kit passes it,
its prices match the closed form, and a suite loads it with --plugins-dir."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import bench
from bench import cli
from bench.testing import check_pricer, check_root_finder

README = Path(__file__).resolve().parents[1] / "README.md"


def plugin_source() -> str:
    text = README.read_text()
    match = re.search(r"<!-- readme-plugin -->\n```python\n(.*?)```", text, re.S)
    assert match, "the README's plugin block is marked <!-- readme-plugin -->"
    return match.group(1)


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    """The block saved as a module and imported as one (its classes must pickle, as a worker needs)."""
    folder = tmp_path_factory.mktemp("readme_plugin")
    (folder / "readme_plugin.py").write_text(plugin_source())
    sys.path.insert(0, str(folder))
    try:
        mod = importlib.import_module("readme_plugin")
    finally:
        sys.path.remove(str(folder))
    yield folder, vars(mod)
    sys.modules.pop("readme_plugin", None)


def test_the_readme_pricer_and_root_finder_pass_the_conformance_kit(module):
    _, ns = module
    check_pricer(ns["TinyBS"])
    check_root_finder(ns["TinyBisection"])


def test_the_readme_methods_agree_with_the_built_ins(module):
    _, ns = module
    rng = np.random.default_rng(1)
    p = {"S": 100.0, "K": rng.uniform(60, 140, 500), "T": rng.uniform(0.1, 2, 500), "r": 0.03, "q": 0.01,
         "sigma": rng.uniform(0.05, 0.8, 500)}
    model = bench.plugins.get_registry().model("black_scholes")
    for product in ("european_call", "european_put"):
        pricer = ns["TinyBS"]()
        ours = pricer.price(pricer.prepare(model, product, model.validate(p)))
        np.testing.assert_allclose(ours, bench.price("closed_form", model="black_scholes", product=product, **p),
                                   rtol=1e-12, atol=1e-12)
    price = bench.price("closed_form", model="black_scholes", product="european_call", **p)
    finder = ns["TinyBisection"]()
    res = finder.solve(finder.prepare({"price": price, "S": np.full(500, 100.0), "K": p["K"], "T": p["T"],
                                       "r": np.full(500, 0.03), "q": np.full(500, 0.01),
                                       "is_call": np.ones(500, dtype=bool)}))
    ok = res.converged
    assert ok.mean() > 0.95
    again = bench.price("closed_form", model="black_scholes", product="european_call", **{**p, "K": p["K"][ok],
                        "T": p["T"][ok], "sigma": res.sigma[ok]})
    np.testing.assert_allclose(again, price[ok], rtol=0, atol=1e-9)  # reprices to the input
    d1 = (np.log(100 / p["K"]) + (0.02 + 0.5 * p["sigma"] ** 2) * p["T"]) / (p["sigma"] * np.sqrt(p["T"]))
    vega = 100 * np.exp(-0.01 * p["T"]) * np.sqrt(p["T"]) * np.exp(-0.5 * d1**2) / np.sqrt(2 * np.pi)
    sensitive = ok & (vega > 1e-2)  # where the price determines sigma well
    assert sensitive.sum() > 300
    assert np.max(np.abs(res.sigma[sensitive] - p["sigma"][sensitive])) < 1e-8


def test_a_suite_runs_the_readme_plugin(module, tmp_path):
    folder, _ = module
    suite = tmp_path / "s.toml"
    suite.write_text("""
[[tasks]]
name = "iv"
kind = "implied_vol"
model = "black_scholes"
product = "european_call"
n = 500
fixed = { S = 1.0, K = 1.0, T = 0.5, r = 0.0 }
domain = { sigma = [0.05, 0.9] }
methods = ["tiny_bisection", "brent"]
""")
    out = tmp_path / "out"
    assert cli.main(["run", str(suite), "--out", str(out), "--plugins-dir", str(folder)]) == 0
    board = next(out.glob("*/*/leaderboard.csv")).read_text()
    assert "tiny_bisection" in board
