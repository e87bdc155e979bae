"""The runner: determinism, failing cells recorded (not raised), CSV schema, metadata."""

import json
import time

import numpy as np
import pandas as pd
import pytest

from bench import hookimpl, report, runner, suite
from bench.methods import Metric, Pricer, Setting
from bench.plugins import load


class _Base(Pricer):
    version = "1"
    supports = {"black_scholes": ("european_call",)}

    def price(self, inputs):
        from pricebench_plugins.models import black_scholes as bs

        return bs.price(inputs["S"], inputs["K"], inputs["T"], inputs["r"], inputs["q"], inputs["sigma"], 1.0)


class Raiser(_Base):
    name = "raiser"

    def price(self, inputs):
        raise RuntimeError("boom")


class Sleeper(_Base):
    name = "sleeper"

    def price(self, inputs):
        time.sleep(5)


class WrongShape(_Base):
    name = "wrong_shape"

    def price(self, inputs):
        return super().price(inputs)[:-1]


class HalfNaN(_Base):
    name = "half_nan"

    def price(self, inputs):
        out = super().price(inputs).copy()
        out[::2] = np.nan
        return out


class AllNaN(_Base):
    name = "all_nan"

    def price(self, inputs):
        return np.full_like(inputs["S"], np.nan)


class Biased(_Base):
    name = "biased"
    settings = {"bias": Setting(1e-3, float, "added to every price")}

    def price(self, inputs):
        return super().price(inputs) + self.bias


class Mutator(_Base):
    """Writes into its inputs: must not change what later cells see."""

    name = "mutator"

    def price(self, inputs):
        inputs["S"] *= 1.01
        return super().price(inputs)


class Swallower(_Base):
    """Catches every Exception: the timeout must still end it."""

    name = "swallower"

    def price(self, inputs):
        try:
            time.sleep(5)
        except Exception:  # noqa: BLE001
            pass
        return super().price(inputs)


class BrokenMetric(Metric):
    name = "broken_metric"

    def compute(self, estimate, reference):
        raise ZeroDivisionError("metric bug")


class Explained(_Base):
    """NaN with a reason where K > 110."""

    name = "explained"

    def price(self, inputs):
        from bench.methods import PriceResult

        far = inputs["K"] > 110.0
        value = np.where(far, np.nan, super().price(inputs))
        return PriceResult(value, reason=np.where(far, "strike beyond 110", ""))


class Noisy(_Base):
    """A fake Monte Carlo pricer: the exact price plus seeded normal noise of size ``se``."""

    name = "noisy"
    settings = {"se": Setting(1e-2, float, "standard error"), "bias": Setting(0.0, float, "added"),
                "seed": Setting(None, int, "random seed; None: the task's", min=0)}

    def price(self, inputs):
        from bench.methods import PriceResult

        exact = super().price(inputs)
        rng = np.random.default_rng(0 if self.seed is None else self.seed)
        se = np.full_like(exact, self.se)
        return PriceResult(exact + self.bias + se * rng.standard_normal(exact.shape), stderr=se)


class FaultyPlugin:
    @hookimpl
    def register_pricers(self, register):
        for cls in (Raiser, Sleeper, WrongShape, HalfNaN, AllNaN, Biased, Mutator, Swallower, Explained, Noisy):
            register(cls)


@pytest.fixture(scope="module")
def registry():
    return load(extra=[("faulty", FaultyPlugin())])


def make_suite(registry, methods, n=200, seed=5, sampler="lhs", **task):
    data = {
        "name": "unit",
        "seed": seed,
        "tasks": [
            {
                "name": "calls",
                "kind": "price",
                "model": "black_scholes",
                "product": "european_call",
                "n": n,
                "sampler": sampler,
                "fixed": {"S": 100.0},
                "domain": {"K": [80.0, 120.0], "T": [0.1, 2.0], "r": [0.0, 0.05], "sigma": [0.1, 0.5]},
                "reference": "closed_form",
                "methods": methods,
                "repeats": 3,
                "timeout": 60.0,  # JIT compilation on a loaded machine can take seconds
                "min_time": 0.0,
            }
            | task
        ],
    }
    return suite.parse(data, "unit.toml", registry)


def by_method(rows):
    return {(r["method"], r["settings"]): r for r in rows}


def test_failing_cells_are_recorded_and_the_run_goes_on(registry, tmp_path):
    s = make_suite(registry, ["raiser", "sleeper", "wrong_shape", "half_nan", "all_nan", "closed_form"],
                   baseline="closed_form", timeout=1.0)
    result = runner.run(s, registry, out_dir=tmp_path)
    rows = {r["method"]: r for r in result.rows}
    assert rows["raiser"]["status"] == "error" and "RuntimeError: boom" in rows["raiser"]["message"]
    assert rows["sleeper"]["status"] == "timeout" and "timeout" in rows["sleeper"]["message"]
    assert rows["wrong_shape"]["status"] == "error" and "shape" in rows["wrong_shape"]["message"]
    assert rows["half_nan"]["status"] == "ok" and rows["half_nan"]["failures"] == 100
    assert "100 of 200 points not priced" in rows["half_nan"]["message"]
    assert rows["half_nan"]["max_abs_error"] < 1e-12
    assert rows["all_nan"]["status"] == "failed" and rows["all_nan"]["failures"] == 200
    assert rows["closed_form"]["status"] == "ok" and rows["closed_form"]["speedup"] == 1.0
    frame = pd.read_csv(result.directory / report.CSV_NAME)
    assert len(frame) == 6 and set(frame["status"]) == {"ok", "error", "timeout", "failed"}


def test_accuracy_scores_against_reference(registry):
    s = make_suite(registry, [{"name": "biased", "settings": {"bias": [1e-3, 1e-6]}}])
    rows = runner.run(s, registry, out_dir=None).rows
    big, small = rows
    assert big["mae"] == pytest.approx(1e-3, rel=1e-9) and big["max_abs_error"] == pytest.approx(1e-3, rel=1e-9)
    assert big["rmse"] == pytest.approx(1e-3, rel=1e-9) and big["mpe"] > 0
    assert big["tier"] == 1e-2 and small["tier"] == 1e-4
    assert small["mae"] == pytest.approx(1e-6, rel=1e-6)
    assert 0.999 < big["r2"] <= 1.0
    for row in rows:
        assert row["latency_median_s"] > 0 and row["samples"] >= 3
        assert row["throughput_per_s"] == pytest.approx(200 / row["latency_median_s"])


def accuracy(rows):
    return [(r["method"], r["settings"], r["mae"], r["max_abs_error"], r["mape"]) for r in rows]


@pytest.mark.parametrize("sampler", ["lhs", "sobol", "uniform", "grid"])
def test_same_seed_same_points_and_accuracy(registry, sampler):
    methods = [{"name": "closed_form", "settings": {"backend": ["torch", "numba"]}}]
    n = 5 if sampler == "grid" else 300
    s = make_suite(registry, methods, n=n, sampler=sampler)
    first = runner.Runner(registry, out_dir=None).prepare_task(s, s.tasks[0])
    second = runner.Runner(registry, out_dir=None).prepare_task(s, s.tasks[0])
    for key in first.params:
        np.testing.assert_array_equal(first.params[key], second.params[key])
    assert accuracy(runner.run(s, registry, out_dir=None).rows) == accuracy(runner.run(s, registry, out_dir=None).rows)
    if sampler != "grid":  # a grid has no randomness
        other = runner.Runner(registry, out_dir=None, seed=99).prepare_task(s, s.tasks[0])
        assert not np.array_equal(first.params["K"], other.params["K"])


def test_csv_schema_and_metadata(registry, tmp_path):
    s = make_suite(registry, ["closed_form", "biased"], baseline="closed_form")
    result = runner.run(s, registry, out_dir=tmp_path)
    directory = result.directory
    assert directory.parent.name == "unit" and directory.parent.parent == tmp_path
    frame = pd.read_csv(directory / report.CSV_NAME)
    metrics = sorted(registry.names("metric"))
    assert list(frame.columns) == report.columns(metrics)
    assert {"mae", "rmse", "max_abs_error", "mape", "mpe", "r2"} <= set(metrics)
    assert (frame["run_id"] == result.run_id).all() and (frame["suite"] == "unit").all()
    assert json.loads(frame.loc[0, "settings"]) == {}
    meta = json.loads((directory / report.JSON_NAME).read_text())
    assert meta["schema_version"] == runner.SCHEMA_VERSION
    assert meta["seed"] == 5 and meta["finished"] is not None
    machine = meta["machine"]
    assert machine["packages"]["numpy"] and machine["packages"]["pricebench"]
    assert machine["cpu"] and "torch_threads" in machine["threads"] and "git_commit" in machine
    assert meta["tasks"]["calls"]["n"] == 200
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_cuda_cells_skip_without_gpu(registry):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    s = make_suite(registry, ["closed_form"])
    rows = runner.run(s, registry, out_dir=None, device="all").rows
    assert [(r["device"], r["status"]) for r in rows] == [("cpu", "ok"), ("cuda", "skipped")]
    assert rows[1]["message"] == "skipped: no GPU"


def test_filters(registry):
    s = make_suite(registry, ["closed_form", "biased", "half_nan"], baseline="closed_form")
    rows = runner.run(s, registry, out_dir=None, methods=["bia*"]).rows
    assert sorted(r["method"] for r in rows) == ["biased", "closed_form"]  # the baseline always runs
    with pytest.raises(ValueError, match="no task"):
        runner.run(s, registry, out_dir=None, tasks=["nothing*"])


def test_leaderboard_sorted_by_tier_then_speed():
    rows = [
        {"method": "slow_exact", "status": "ok", "tier": 1e-12, "failures": 0, "latency_median_s": 2.0},
        {"method": "broken", "status": "error"},
        {"method": "fast_rough", "status": "ok", "tier": 1e-4, "failures": 0, "latency_median_s": 0.1},
        {"method": "fast_exact", "status": "ok", "tier": 1e-12, "failures": 0, "latency_median_s": 1.0},
    ]
    assert [r["method"] for r in report.sort_rows(rows)] == ["fast_exact", "slow_exact", "fast_rough", "broken"]


def test_a_method_writing_into_its_inputs_cannot_corrupt_other_cells(registry):
    s = make_suite(registry, ["mutator", "closed_form"])
    rows = {r["method"]: r for r in runner.run(s, registry, out_dir=None).rows}
    assert rows["mutator"]["status"] == "error" and "read-only" in rows["mutator"]["message"]
    assert rows["closed_form"]["max_abs_error"] < 1e-12


def test_timeout_is_not_swallowed_by_a_method(registry):
    rows = runner.run(make_suite(registry, ["swallower"], timeout=1.0), registry, out_dir=None).rows
    assert rows[0]["status"] == "timeout"


class BrokenMetricPlugin:
    @hookimpl
    def register_metrics(self, register):
        register(BrokenMetric)


def test_a_broken_metric_fails_the_cell_not_the_run(tmp_path):
    reg = load(extra=[("broken_metric", BrokenMetricPlugin())])
    result = runner.run(make_suite(reg, ["closed_form"]), reg, out_dir=tmp_path)
    (row,) = result.rows
    assert row["status"] == "error" and "metric bug" in row["message"]
    assert (result.directory / report.CSV_NAME).is_file()


def test_result_files_are_ordinary_files(registry, tmp_path):
    import os
    import stat

    directory = runner.run(make_suite(registry, ["closed_form"]), registry, out_dir=tmp_path).directory
    umask = os.umask(0)
    os.umask(umask)
    for name in (report.CSV_NAME, report.JSON_NAME):
        mode = stat.S_IMODE((directory / name).stat().st_mode)
        assert mode == 0o666 & ~umask


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA GPU")
def test_cuda_cells_run_and_agree_with_the_reference(registry):
    s = make_suite(registry, ["closed_form"], devices=["cpu", "cuda"])
    rows = {r["device"]: r for r in runner.run(s, registry, out_dir=None).rows}
    assert rows["cuda"]["status"] == "ok" and rows["cuda"]["max_abs_error"] < 1e-10


def test_work_precision_outputs(registry, tmp_path):
    s = make_suite(registry, [{"name": "biased", "settings": {"bias": [1e-2, 1e-4, 1e-6, 1e-9]}}, "closed_form"])
    result = runner.run(s, registry, out_dir=tmp_path)
    png = result.directory / "calls.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((result.directory / report.JSON_NAME).read_text())
    assert meta["tasks"]["calls"]["plot"] == "calls.png"
    targets = pd.read_csv(result.directory / report.TARGETS_NAME)
    assert list(targets.columns) == report.TARGET_COLUMNS
    biased = targets[targets["method"] == "biased"].set_index("target")
    # prices are scaled to S = 100 and S = 100 here: the error of bias b is b
    assert json.loads(biased.loc[1e-3, "settings"]) in ({"bias": 1e-4}, {"bias": 1e-6}, {"bias": 1e-9})
    assert json.loads(biased.loc[1e-7, "settings"]) == {"bias": 1e-9}
    assert biased.loc[1e-7, "error"] == pytest.approx(1e-9, rel=1e-3)
    rows = {json.loads(r["settings"]).get("bias"): r for r in result.rows if r["method"] == "biased"}
    assert rows[1e-4]["max_err_s100"] == pytest.approx(1e-4, rel=1e-6) and rows[1e-4]["tier"] in (1e-4, 1e-2)


def test_baseline_can_name_one_configuration_of_a_sweep(registry):
    s = make_suite(registry, [{"name": "biased", "settings": {"bias": [1e-2, 1e-4]}}],
                   baseline={"name": "biased", "settings": {"bias": 1e-4}})
    rows = {json.loads(r["settings"])["bias"]: r for r in runner.run(s, registry, out_dir=None).rows}
    assert rows[1e-4]["speedup"] == 1.0 and rows[1e-2]["speedup"] != 1.0
    with pytest.raises(suite.SuiteError, match="not among"):
        make_suite(registry, ["biased"], baseline={"name": "biased", "settings": {"bias": 0.5}})


def test_errors_are_scaled_to_s_100():
    from bench import scoring

    params = {"S": np.array([50.0, 200.0])}
    scale = scoring.price_scale(params, 2)
    np.testing.assert_allclose(scale, [2.0, 0.5])
    np.testing.assert_allclose(scoring.price_scale({"r0": np.ones(3)}, 3), 100.0)  # bonds: face value 100
    metrics = {n: registry_metric for n, registry_metric in load(only="metrics").entries["metric"].items()}
    metrics = {n: e.cls() for n, e in metrics.items()}
    out = scoring.score(np.array([1.001, 1.0]), np.array([1.0, 1.004]), metrics, 1e-8, scale=scale)
    assert out["max_err_s100"] == pytest.approx(2e-3) and out["max_abs_error"] == pytest.approx(4e-3)
    assert out["tier"] == 1e-2


def test_the_reason_a_point_is_not_priced_is_recorded(registry):
    data = runner.Runner(registry, out_dir=None).prepare_task(make_suite(registry, ["explained"]),
                                                             make_suite(registry, ["explained"]).tasks[0])
    far = int(np.sum(data.params["K"] > 110.0))
    (row,) = runner.run(make_suite(registry, ["explained"]), registry, out_dir=None).rows
    assert row["status"] == "ok" and row["failures"] == far > 0
    assert row["message"].startswith(f"not priced: strike beyond 110 {far}")


def test_standard_errors_are_scored(registry):
    s = make_suite(registry, [{"name": "noisy", "settings": {"bias": [0.0, 0.1]}}], n=400)
    unbiased, biased = runner.run(s, registry, out_dir=None).rows
    assert unbiased["stderr_mean"] == pytest.approx(1e-2) and unbiased["stderr_max"] == pytest.approx(1e-2)
    assert unbiased["within_3se"] > 0.98 and 2.0 < unbiased["z_max"] < 5.0
    assert biased["within_3se"] < 0.01 and biased["z_max"] > 6.0  # a 10-sigma bias shows


def test_random_methods_get_the_task_seed_unless_the_suite_sets_one(registry):
    def noise(seed=None, settings=None):
        method = {"name": "noisy", "settings": settings or {}}
        rows = runner.run(make_suite(registry, [method]), registry, out_dir=None, seed=seed).rows
        return rows[0]["mae"], rows[0]["settings"]

    assert noise() == noise()  # same suite seed, same estimates
    assert noise(seed=1)[0] != noise(seed=2)[0]  # --seed reaches the method
    draws = np.abs(1e-2 * np.random.default_rng(3).standard_normal(200))
    assert noise(seed=1, settings={"seed": 3})[0] == pytest.approx(draws.mean(), rel=1e-9)  # the suite's seed wins
    assert noise()[1] == "{}"  # the injected seed is not shown as a setting


def test_a_random_reference_does_not_share_the_candidates_draws(registry):
    (row,) = runner.run(make_suite(registry, ["noisy"], reference="noisy"), registry, out_dir=None).rows
    # the same seed would reproduce the reference's noise exactly (error 0); independent draws
    # leave two noises of 1e-2: mean |difference| about 1e-2 * sqrt(2) * sqrt(2 / pi) = 1.1e-2
    assert 0.8e-2 < row["mae"] < 1.5e-2
