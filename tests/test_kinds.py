"""Task kinds are plugins: a third-party kind with its own key and the ``once`` timing policy runs
through the same suite reader and runner as the built-ins."""

from __future__ import annotations

import copy
import math

import pytest

from bench import hookimpl, runner, suite
from bench import plugins as host
from bench.kinds import ONCE, Scored
from bench.suite import SuiteError
from pricebench_plugins.kinds.price import PriceKind
from test_suite import GOOD


class ScaledPrice(PriceKind):
    """Prices in units of a suite-given notional, timed once (as a fit or a calibration would be)."""

    name = "scaled_price"
    timing = ONCE
    keys = {**PriceKind.keys, "notional": float}

    def parse(self, table, ctx):
        options = super().parse(table, ctx)
        notional = table.get("notional", 1.0)
        if not notional > 0:
            raise ctx.error("must be > 0", "notional")
        return options | {"notional": float(notional)}

    def score(self, task, data, out, metrics):
        scored = super().score(task, data, out, metrics)
        return Scored(scored.columns | {"notional_max_error": scored.columns["max_abs_error"] * task.options["notional"]},
                      scored.notes)


class KindPlugin:
    @staticmethod
    @hookimpl
    def register_task_kinds(register):
        register(ScaledPrice)


@pytest.fixture
def registry():
    return host.load(only="closed_form,black_scholes,metrics,kinds", extra=[("scaled", KindPlugin)])


def scaled_suite(notional=1000.0):
    data = copy.deepcopy(GOOD)
    data["tasks"][0] |= {"kind": "scaled_price", "notional": notional}
    return data


def test_a_plugin_kind_runs_with_its_own_key_and_the_once_policy(registry):
    s = suite.parse(scaled_suite(), "s.toml", registry)
    assert s.tasks[0].options["notional"] == 1000.0
    rows = runner.run(s, registry, out_dir=None).rows
    plain = runner.run(suite.parse(GOOD, "s.toml", registry), registry, out_dir=None).rows
    assert len(rows) == len(plain) == 2
    for row, ref in zip(rows, plain):
        assert row["kind"] == "scaled_price" and row["status"] == "ok"
        assert row["once_s"] > 0 and math.isnan(row["latency_median_s"]) and row["samples"] != row["samples"]
        assert row["max_abs_error"] == ref["max_abs_error"]
        assert row["notional_max_error"] == pytest.approx(1000.0 * ref["max_abs_error"])


def test_a_plugin_kind_validates_its_keys(registry):
    with pytest.raises(SuiteError, match="key 'notional': must be > 0"):
        suite.parse(scaled_suite(-1.0), "s.toml", registry)
    bad = copy.deepcopy(GOOD)
    bad["tasks"][0]["notional"] = 5.0  # not a key of the price kind
    with pytest.raises(SuiteError, match="key 'notional': unknown key"):
        suite.parse(bad, "s.toml", registry)


def test_unknown_kind_lists_the_registered_ones(registry):
    bad = copy.deepcopy(GOOD)
    bad["tasks"][0]["kind"] = "calibrate"
    with pytest.raises(SuiteError, match="unknown task kind 'calibrate'.*approximate, implied_vol, price, scaled_price"):
        suite.parse(bad, "s.toml", registry)


def test_task_kinds_are_listed_as_plugins(registry):
    assert registry.names("task_kind") == ["approximate", "implied_vol", "price", "scaled_price"]
    assert registry.entry("task_kind", "scaled_price").plugin == "scaled"
