"""The example third-party plugin, examples/pricebench-example, installed through its entry point.

The fixture ``installed`` installs it as pip would lay it out, without pip:
a ``pricebench_example-0.1.0.dist-info`` folder (METADATA and entry_points.txt
made from the example's pyproject.toml) on ``sys.path`` next to the module,
so ``importlib.metadata.entry_points(group="pricebench")`` finds it and
``bench.plugins.load()`` imports it like any installed plugin. One slow test
installs it for real with pip (``--target``, offline) and runs the CLI in a
subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bench
from bench import cli, report, runner, suite
from bench import plugins as host
from bench.methods import IVStatus, Pricer, RootFinder
from bench.plugins import ENV_VAR, PluginError, PluginLoadWarning

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pricebench-example"
SUITE = EXAMPLE / "example_suite.toml"
PROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
DIST, VERSION = PROJECT["name"], PROJECT["version"]
BUILTINS = "closed_form,black_scholes,metrics,kinds"  # what the example's tests need; not the root finders
MODULE = "pricebench_example"

pytestmark = pytest.mark.usefixtures("restore_registry")


def dist_info(site: Path) -> Path:
    """Write the installed-distribution metadata of the example under ``site``."""
    info = site / f"{DIST.replace('-', '_')}-{VERSION}.dist-info"
    info.mkdir(parents=True)
    requires = "".join(f"Requires-Dist: {d}\n" for d in PROJECT["dependencies"])
    info.joinpath("METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {VERSION}\nSummary: {PROJECT['description']}\n{requires}"
    )
    lines = ["[pricebench]"] + [f"{k} = {v}" for k, v in PROJECT["entry-points"]["pricebench"].items()]
    info.joinpath("entry_points.txt").write_text("\n".join(lines) + "\n")
    return info


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The example installed through its entry point; loads limited to it and the built-ins it needs."""
    site = tmp_path / "site"
    dist_info(site)
    monkeypatch.syspath_prepend(str(EXAMPLE))  # the module, as an editable install would find it
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv(ENV_VAR, f"{DIST},{BUILTINS}")
    monkeypatch.setenv("COLUMNS", "300")
    sys.modules.pop(MODULE, None)
    yield site
    sys.modules.pop(MODULE, None)


@pytest.fixture
def registry(installed, restore_registry):
    """The loaded registry, installed as the process registry (restored afterwards)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        loaded = host.load()
    restore_registry(loaded)
    return loaded


# --------------------------------------------------------------------------- discovery


def test_project_declares_one_entry_point():
    assert (DIST, VERSION) == ("pricebench-example", "0.1.0")
    assert PROJECT["entry-points"] == {"pricebench": {"example": MODULE}}
    assert "pricebench" in PROJECT["dependencies"]


def test_entry_point_is_visible(installed):
    [ep] = [ep for ep in metadata.entry_points(group="pricebench") if ep.name == "example"]
    assert ep.value == MODULE and ep.dist.name == DIST and ep.dist.version == VERSION


def test_plugin_is_listed_with_its_version_and_distribution(registry):
    info = {p.name: p for p in registry.plugins}
    assert set(info) == {"example", *BUILTINS.split(",")}
    example = info["example"]
    assert example.ok and example.version == VERSION and example.source == f"entry point: {DIST}"
    assert example.registered == [("pricer", "gauss_hermite"), ("root_finder", "halley")]
    assert registry.entry("pricer", "gauss_hermite").plugin == "example"
    assert registry.entry("root_finder", "halley").plugin == "example"


def test_methods_declare_what_builtins_declare(registry):
    gh, halley = registry.get("pricer", "gauss_hermite"), registry.get("root_finder", "halley")
    assert issubclass(gh, Pricer) and issubclass(halley, RootFinder)
    closed_form = registry.get("pricer", "closed_form")
    for cls in (gh, halley):
        assert cls.version and cls.description and cls.devices == ("cpu",)
        assert cls.__module__ == MODULE
    assert gh.supports == {"black_scholes": closed_form.supports["black_scholes"]}
    assert {k: s.default for k, s in gh.settings.items()}["nodes"] == 64
    assert {k: s.default for k, s in halley.settings.items()} == {"sigma0": 0.5, "xtol": 1e-12, "maxiter": 50}
    rows = {m["name"]: m for m in bench.methods()}
    assert rows["gauss_hermite"]["plugin"] == "example" and rows["halley"]["kind"] == "root_finder"


def test_distribution_name_selects_the_example(installed):
    registry = host.load(only=DIST)
    assert [p.name for p in registry.plugins] == ["example"]


def test_distribution_name_selection_is_normalised(installed):
    registry = host.load(only=DIST.replace("-", "_"))
    assert [p.name for p in registry.plugins] == ["example"]


def test_loose_file_route_and_clash_with_installed_copy(installed):
    registry = host.load(plugins_dir=EXAMPLE, only=BUILTINS)
    info = {p.name: p for p in registry.plugins}[MODULE]
    assert info.ok and info.version == VERSION and info.source == f"file: {EXAMPLE / (MODULE + '.py')}"
    assert registry.entry("pricer", "gauss_hermite").plugin == MODULE
    # installed and loose at once: the same method names twice is an error naming both
    with pytest.raises(PluginError, match="'example'.*'pricebench_example'"):
        host.load(plugins_dir=EXAMPLE)


# --------------------------------------------------------------------------- accuracy through the API


@pytest.mark.parametrize("product", ["european_call", "european_put"])
@pytest.mark.parametrize("nodes, tol", [(32, 1e-7), (64, 1e-10), (128, 1e-10)])
def test_gauss_hermite_matches_closed_form(registry, product, nodes, tol):
    rng = np.random.default_rng(11)
    n = 3000
    params = dict(S=100.0, K=rng.uniform(50, 160, n), T=rng.uniform(0.02, 3.0, n), r=rng.uniform(-0.01, 0.08, n),
                  q=rng.uniform(0, 0.05, n), sigma=rng.uniform(0.02, 0.9, n))
    want = bench.price("closed_form", model="black_scholes", product=product, **params)
    got = bench.price("gauss_hermite", model="black_scholes", product=product, nodes=nodes, **params)
    assert got.shape == (n,)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def test_gauss_hermite_shapes_chunks_and_limits(registry):
    kw = dict(model="black_scholes", product="european_call", S=100.0, K=[[80.0], [100.0], [120.0]],
              T=[0.25, 0.5, 1.0, 2.0], r=0.03, sigma=0.25)
    want = bench.price("closed_form", **kw)
    got = bench.price("gauss_hermite", **kw)
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-11)
    np.testing.assert_allclose(bench.price("gauss_hermite", chunk=5, **kw), got, rtol=1e-14)  # BLAS blocking
    # a scalar; sigma = 0: the discounted intrinsic value; far out of the money: 0, not NaN
    assert bench.price("gauss_hermite", model="black_scholes", product="european_put", S=100, K=100, T=1,
                       sigma=0.2).shape == ()
    zero = bench.price("gauss_hermite", model="black_scholes", product="european_put", S=100.0, K=[80.0, 120.0],
                       T=1.0, r=0.05, sigma=0.0)
    np.testing.assert_allclose(zero, [0.0, 120.0 * np.exp(-0.05) - 100.0], atol=1e-12)
    far = bench.price("gauss_hermite", model="black_scholes", product="european_call", S=1.0, K=[50.0, 1e6],
                      T=0.01, sigma=0.1)
    np.testing.assert_array_equal(far, [0.0, 0.0])
    with pytest.raises(ValueError, match="nodes"):
        bench.price("gauss_hermite", nodes=1, **kw)


@pytest.mark.parametrize("kind", ["call", "put"])
def test_halley_recovers_sigma(registry, kind):
    rng = np.random.default_rng(3)
    n = 4000
    S, K = 1.0, rng.uniform(0.6, 1.6, n)
    T, r, q = rng.uniform(0.05, 3.0, n), rng.uniform(0, 0.06, n), rng.uniform(0, 0.03, n)
    sigma = rng.uniform(0.05, 1.5, n)
    product = f"european_{kind}"
    price = bench.price("closed_form", model="black_scholes", product=product, S=S, K=K, T=T, r=r, q=q, sigma=sigma)
    res = bench.implied_vol("halley", price=price, S=S, K=K, T=T, r=r, q=q, kind=kind)
    # deep in the money at low sigma the closed-form price can round to the intrinsic value
    theta = 1.0 if kind == "call" else -1.0
    time_value = price - np.exp(-r * T) * np.maximum(theta * (S * np.exp((r - q) * T) - K), 0.0)
    assert res.converged[time_value > 1e-13].all(), res.summary()
    assert (res.status[~res.converged] == IVStatus.BELOW_LOWER_BOUND).all()
    assert res.converged.mean() > 0.99
    assert res.iterations.max() <= 12
    # deep in the money the time value is a few ulps of the price: compare prices there, sigma elsewhere
    ok = res.converged
    back = bench.price("closed_form", model="black_scholes", product=product, S=S, K=K[ok], T=T[ok], r=r[ok],
                       q=q[ok], sigma=res.sigma[ok])
    np.testing.assert_allclose(back, price[ok], rtol=0, atol=1e-14)
    vega = bench.price("closed_form", model="black_scholes", product=product, S=S, K=K, T=T, r=r, q=q,
                       sigma=sigma + 1e-6) - price
    well_posed = ok & (vega > 1e-9)
    assert well_posed.mean() > 0.9
    np.testing.assert_allclose(res.sigma[well_posed], sigma[well_posed], rtol=0, atol=1e-9)


def test_halley_statuses_never_raise(registry):
    S, K, T, r = 100.0, 100.0, 1.0, 0.05
    intrinsic = np.exp(-r * T) * (S * np.exp(r * T) - K)  # 4.877...
    price = [4.0, intrinsic, -1.0, 101.0, 150.0, np.nan, 10.450583572185565]
    res = bench.implied_vol("halley", price=price, S=S, K=K, T=T, r=r, kind="call")
    B, A = IVStatus.BELOW_LOWER_BOUND, IVStatus.ABOVE_UPPER_BOUND
    assert list(res.status) == [B, B, B, A, A, IVStatus.INVALID_INPUT, IVStatus.CONVERGED]
    assert np.isnan(res.sigma[:-1]).all() and not res.converged[:-1].any()
    assert res.sigma[-1] == pytest.approx(0.2, abs=1e-12)
    assert res.reasons[0].startswith("price at or below")
    # an iteration cap that is too small is a status too
    capped = bench.implied_vol("halley", price=[10.450583572185565, 0.5], S=S, K=[100.0, 200.0], T=T, r=r,
                               maxiter=1)
    assert list(capped.status) == [IVStatus.MAX_ITERATIONS] * 2 and list(capped.iterations) == [1, 1]
    with pytest.raises(ValueError, match="sigma0"):
        bench.implied_vol("halley", price=10.0, S=S, K=K, T=T, r=r, sigma0=0.0)


# --------------------------------------------------------------------------- suites: runner and CLI


def test_example_suite_runs(registry, tmp_path):
    loaded = suite.load(SUITE, registry)
    result = runner.run(loaded, registry, out_dir=tmp_path)
    frame = pd.DataFrame(result.rows)
    assert (frame["status"] == "ok").all(), frame[["task", "method", "status", "message"]]
    gh = frame[frame["method"] == "gauss_hermite"]
    assert len(gh) == 4 and (gh["plugin"] == "example").all() and (gh["max_abs_error"] < 1e-7).all()
    assert (gh[gh["settings"] != '{"nodes": 32}']["max_abs_error"] < 1e-10).all()
    [halley] = frame[frame["method"] == "halley"].to_dict("records")
    assert halley["failures"] == 0 and halley["max_abs_error"] < 1e-12 and halley["iterations_max"] <= 12
    assert (result.directory / report.CSV_NAME).is_file()


def test_cli_run_plugins_methods(installed, tmp_path, capsys):
    out = tmp_path / "results"
    assert cli.main(["run", str(SUITE), "--out", str(out), "--task", "halley_iv", "--task", "gh_european_put"]) == 0
    [csv] = out.glob(f"example/*/{report.CSV_NAME}")
    frame = pd.read_csv(csv)
    assert set(frame["method"]) == {"closed_form", "gauss_hermite", "halley"} and (frame["status"] == "ok").all()
    capsys.readouterr()

    assert cli.main(["plugins", "--json"]) == 0
    rows = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert rows["example"] == {"name": "example", "version": VERSION, "source": f"entry point: {DIST}",
                               "registers": ["pricer:gauss_hermite", "root_finder:halley"], "error": None}
    assert cli.main(["methods", "--json"]) == 0
    methods = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert methods["halley"]["plugin"] == "example" and methods["gauss_hermite"]["settings"]["nodes"] == 64


@pytest.mark.slow
def test_pip_install_for_real(tmp_path):
    """pip builds and installs the example (offline, into a folder); a fresh interpreter finds it."""
    src, site = tmp_path / "src", tmp_path / "site"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--target", str(site), str(src)]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 and "setuptools" in done.stderr and "No module named" in done.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert done.returncode == 0, done.stderr
    assert (site / f"{DIST.replace('-', '_')}-{VERSION}.dist-info" / "entry_points.txt").is_file()
    env = {**os.environ, "PYTHONPATH": str(site), ENV_VAR: f"{DIST},{BUILTINS}", "COLUMNS": "300"}
    listing = subprocess.run([sys.executable, "-m", "bench", "plugins", "--json"], capture_output=True, text=True,
                             env=env, timeout=120, check=False)
    assert listing.returncode == 0, listing.stderr
    rows = {p["name"]: p for p in json.loads(listing.stdout)}
    assert rows["example"]["version"] == VERSION and rows["example"]["source"] == f"entry point: {DIST}"
    assert rows["example"]["registers"] == ["pricer:gauss_hermite", "root_finder:halley"]
    assert rows["example"]["error"] is None


# --------------------------------------------------------------------------- conformance kit


def test_example_methods_pass_the_conformance_kit(registry):
    """What examples/pricebench-example/README.md tells plugin authors to run: bench.testing."""
    from bench.testing import check_pricer, check_root_finder

    check_pricer(registry.get("pricer", "gauss_hermite"), settings={"nodes": 32, "chunk": 5},
                 settings_grid=[{"nodes": 2}, {"nodes": 128, "chunk": 1}])
    check_root_finder(registry.get("root_finder", "halley"), settings_grid=[{"maxiter": 1}, {"sigma0": 3.0}])
