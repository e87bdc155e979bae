"""The plugin system: entry points, loose files, in-memory plugins, errors, filtering.

Most tests limit the entry-point plugins to the built-ins they need (``ONLY``)
so that they do not depend on the root finders, and build in-memory plugins
with :func:`plugin` or write ``*.py`` files for ``--plugins-dir``.
"""

from __future__ import annotations

import inspect
import json
import sys
import textwrap
import types
import warnings
from importlib import metadata

import numpy as np
import pytest

import bench
from bench import cli, hookimpl, hookspecs
from bench import plugins as host
from bench import runner, suite
from bench.methods import Approximator, IVResult, Metric, Model, Param, Pricer, RootFinder, Setting
from bench.commands import Command
from bench.kinds import TaskKind
from bench.plugins import ENV_VAR, PluginError, PluginLoadWarning, load

pytestmark = pytest.mark.usefixtures("restore_registry")

ONLY = "closed_form,black_scholes,metrics,kinds"
METRICS = {"mae", "rmse", "max_abs_error", "mape", "mpe", "r2"}


# --------------------------------------------------------------------------- helpers


class One(Pricer):
    """Prices every option at 1.0."""

    name = "one"
    description = "a constant"
    supports = {"black_scholes": ("european_call", "european_put")}

    def price(self, inputs):
        return np.ones_like(inputs["S"])


def pricer(name: str) -> type:
    """A subclass of :class:`One` called ``name``."""
    return type(f"Pricer_{name}", (One,), {"name": name})


def plugin(**hooks) -> types.SimpleNamespace:
    """An in-memory plugin: each keyword names a hook and gives its implementation."""
    return types.SimpleNamespace(**{name: hookimpl(fn) for name, fn in hooks.items()})


def registering(*classes, hook: str = "register_pricers") -> types.SimpleNamespace:
    def impl(register):
        for cls in classes:
            register(cls)

    return plugin(**{hook: impl})


def quiet_load(**kwargs):
    """``load(**kwargs)`` and the PluginLoadWarnings it emitted."""
    kwargs.setdefault("only", ONLY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = load(**kwargs)
    return registry, [w for w in caught if issubclass(w.category, PluginLoadWarning)]


def by_name(registry) -> dict[str, host.PluginInfo]:
    return {p.name: p for p in registry.plugins}


def builtin_entry_points() -> set[str]:
    return {ep.name for ep in metadata.entry_points(group="pricebench") if ep.dist and ep.dist.name == "pricebench"}


def write(folder, name: str, source: str):
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


LOOSE = """
    import numpy as np
    from bench import hookimpl
    from bench.methods import Pricer

    __version__ = "2.5"

    class Loose(Pricer):
        name = "loose_pricer"
        description = "a loose file"
        supports = {"black_scholes": ("european_call",)}

        def price(self, inputs):
            return np.zeros_like(inputs["S"])

    @hookimpl
    def register_pricers(register):
        register(Loose)
"""
BROKEN = """
    import pricebench_no_such_module_xyz
"""


# --------------------------------------------------------------------------- built-ins


def test_builtins_load_through_entry_points():
    registry, caught = quiet_load()
    assert not caught
    info = by_name(registry)
    assert set(info) == {"closed_form", "black_scholes", "metrics", "kinds"}
    version = metadata.version("pricebench")
    for p in info.values():
        assert p.ok and p.version == version and p.source == "entry point: pricebench"
    assert info["closed_form"].registered == [("pricer", "closed_form")]
    assert info["black_scholes"].registered == [("model", "black_scholes")]
    assert set(registry.names("metric")) == METRICS
    assert {name for kind, name in info["metrics"].registered if kind == "metric"} == METRICS
    for kind, name in [("pricer", "closed_form"), ("model", "black_scholes")] + [("metric", m) for m in METRICS]:
        entry = registry.entry(kind, name)
        assert entry.plugin in info and entry.cls.version and entry.cls.name == name
    assert registry.method_kind("closed_form") == "pricer"


def test_builtin_entry_points_are_declared():
    assert {"closed_form", "black_scholes", "metrics"} <= builtin_entry_points()


# --------------------------------------------------------------------------- broken plugins


def test_plugin_file_that_fails_to_import_is_reported_once(tmp_path):
    folder = tmp_path / "plugins"
    write(folder, "broken.py", BROKEN)
    write(folder, "loose.py", LOOSE)
    registry, caught = quiet_load(plugins_dir=folder)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "'broken'" in message and "ModuleNotFoundError" in message and "pricebench_no_such_module_xyz" in message
    [error] = registry.errors
    assert error.name == "broken" and error.source == f"file: {folder / 'broken.py'}" and not error.registered
    assert "pricebench_local_broken" not in sys.modules
    # everything else loaded
    assert registry.entry("pricer", "loose_pricer").plugin == "loose"
    assert by_name(registry)["loose"].version == "2.5"
    assert "closed_form" in registry.names("pricer") and set(registry.names("metric")) == METRICS


def test_entry_point_that_fails_to_import_is_reported_once(monkeypatch):
    ghost = metadata.EntryPoint("ghost", "pricebench_no_such_module_xyz", "pricebench")
    real = host._entry_points
    monkeypatch.setattr(host, "_entry_points", lambda: [*real(), ghost])
    registry, caught = quiet_load(only=ONLY + ",ghost")
    assert len(caught) == 1 and "'ghost'" in str(caught[0].message)
    [error] = registry.errors
    assert error.name == "ghost" and "failed to import pricebench_no_such_module_xyz" in error.error
    assert "closed_form" in registry.names("pricer")


def test_hook_that_raises_skips_the_whole_plugin():
    Half = type("Half", (Model,), {"name": "half_model", "params": {"x": Param("x")}, "products": ("european_call",)})

    def register_models(register):
        register(Half)

    def register_pricers(register):
        register(pricer("kept_for_a_moment"))
        raise RuntimeError("boom")

    bad = plugin(register_models=register_models, register_pricers=register_pricers)
    registry, caught = quiet_load(extra=[("bad", bad), ("good", registering(pricer("good_one")))])
    assert len(caught) == 1
    assert "'bad'" in str(caught[0].message) and "RuntimeError in a hook: boom" in str(caught[0].message)
    info = by_name(registry)
    assert info["bad"].error == "RuntimeError in a hook: boom" and info["bad"].registered == []
    # all-or-nothing: neither the model nor the pricer registered before the raise is kept
    assert "half_model" not in registry.names("model")
    assert "kept_for_a_moment" not in registry.names("pricer")
    assert info["good"].ok and registry.entry("pricer", "good_one").plugin == "good"


@pytest.mark.parametrize(
    "thing, says",
    [
        (int, "register_pricers expects a subclass of Pricer"),
        (type("Finder", (RootFinder,), {"name": "finder"}), "register_pricers expects a subclass of Pricer"),
        (One(), "register_pricers expects a subclass of Pricer"),  # an instance, not the class
        (pricer("has space"), "must be an identifier-like string"),
        (type("Nameless", (One,), {"name": ""}), "must be an identifier-like string"),
        (type("Shadow", (One,), {"name": "shadow", "settings": {"price": Setting(1.0)}}), "shadows"),
    ],
)
def test_registering_a_wrong_thing_skips_the_plugin(thing, says):
    registry, caught = quiet_load(extra=[("wrong", registering(thing)), ("fine", registering(One))])
    info = by_name(registry)
    assert info["wrong"].error.startswith("TypeError in a hook:") and says in info["wrong"].error
    assert len(caught) == 1 and "'wrong'" in str(caught[0].message)
    assert info["fine"].ok and "one" in registry.names("pricer")


def test_same_method_name_from_two_plugins_names_both():
    with pytest.raises(PluginError) as exc:
        quiet_load(extra=[("first", registering(pricer("twin"))), ("second", registering(pricer("twin")))])
    message = str(exc.value)
    assert "'twin'" in message and "'first'" in message and "'second'" in message and ENV_VAR in message


def test_clash_with_a_builtin_names_both():
    with pytest.raises(PluginError, match="'closed_form'.*'mine'"):
        quiet_load(extra=[("mine", registering(pricer("closed_form")))])


def test_same_name_in_different_kinds_is_fine():
    metric = type("M", (Metric,), {"name": "one", "compute": lambda self, e, r: 0.0})
    registry, caught = quiet_load(extra=[("a", registering(One)), ("b", registering(metric, hook="register_metrics"))])
    assert not caught and registry.get("pricer", "one") is One and registry.get("metric", "one") is metric


def test_misspelt_hook_is_an_error_naming_hook_and_plugin():
    with pytest.raises(PluginError) as exc:
        quiet_load(extra=[("typo", plugin(register_pricer=lambda register: None))])
    assert "register_pricer" in str(exc.value) and "'typo'" in str(exc.value)


def test_plugin_name_already_loaded_is_skipped():
    registry, caught = quiet_load(extra=[("closed_form", registering(One))])
    assert len(caught) == 1 and "already loaded" in str(caught[0].message)
    assert registry.entry("pricer", "closed_form").plugin == "closed_form"
    assert "one" not in registry.names("pricer")


# --------------------------------------------------------------------------- hook signatures


def test_hookimpl_may_omit_register():
    calls = []
    registry, caught = quiet_load(extra=[("lazy", plugin(register_pricers=lambda: calls.append(1)))])
    assert not caught and calls == [1]
    info = by_name(registry)["lazy"]
    assert info.ok and info.registered == []


def test_hookimpl_asking_for_an_unknown_argument_is_skipped():
    registry, caught = quiet_load(extra=[("greedy", plugin(register_pricers=lambda register, device: None))])
    info = by_name(registry)["greedy"]
    assert info.error.startswith("invalid hook implementation") and "device" in info.error
    assert len(caught) == 1 and "closed_form" in registry.names("pricer")


def test_class_instance_plugin_with_self():
    class Plugin:
        __version__ = "3"

        @hookimpl
        def register_pricers(self, register):
            register(One)

    registry, caught = quiet_load(only="", extra=[("obj", Plugin())])
    assert not caught
    info = by_name(registry)["obj"]
    assert (info.version, info.source, info.registered) == ("3", "object", [("pricer", "one")])


# --------------------------------------------------------------------------- PRICEBENCH_PLUGINS


def test_only_empty_loads_no_entry_point_plugin():
    registry, caught = quiet_load(only="", extra=[("x", registering(One))])
    assert not caught and [p.name for p in registry.plugins] == ["x"]
    assert registry.names("model") == [] and registry.names("metric") == [] and registry.names("pricer") == ["one"]


def test_only_named_entry_points():
    registry, caught = quiet_load(only="closed_form,black_scholes")
    assert not caught and set(by_name(registry)) == {"closed_form", "black_scholes"}
    assert registry.names("metric") == [] and registry.names("root_finder") == []


def test_only_a_distribution_name_selects_all_its_entry_points():
    registry, caught = quiet_load(only="pricebench")
    assert not caught, [str(w.message) for w in caught]  # every built-in loads cleanly
    assert set(by_name(registry)) == builtin_entry_points()
    assert {p.name for p in registry.plugins if p.ok} == builtin_entry_points()


@pytest.mark.parametrize(
    "value, expected",
    [("", set()), ("closed_form, black_scholes", {"closed_form", "black_scholes"}), (" metrics ,", {"metrics"})],
)
def test_environment_variable(monkeypatch, value, expected):
    monkeypatch.setenv(ENV_VAR, value)
    registry, caught = quiet_load(only=None)
    assert not caught and set(by_name(registry)) == expected


def test_only_argument_overrides_environment_variable(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "")
    registry, _ = quiet_load(only="closed_form")
    assert set(by_name(registry)) == {"closed_form"}


# --------------------------------------------------------------------------- the process registry and the API


def test_api_uses_the_installed_registry(restore_registry):
    registry, _ = quiet_load(extra=[("x", registering(One))])
    restore_registry(registry)
    assert host.get_registry() is registry
    np.testing.assert_array_equal(
        bench.price("one", model="black_scholes", product="european_put", S=100, K=[90, 110], T=1, sigma=0.2),
        [1.0, 1.0],
    )
    [row] = [m for m in bench.methods() if m["name"] == "one"]
    assert row["plugin"] == "x" and row["kind"] == "pricer"
    restore_registry(None)
    assert host.get_registry() is not registry  # None: reloaded on next use


def test_a_plugin_metric_becomes_a_leaderboard_column(tmp_path):
    class Count(Metric):
        name = "count"
        description = "points scored"

        def compute(self, estimate, reference):
            return float(estimate.size)

    registry, _ = quiet_load(extra=[("counting", registering(Count, hook="register_metrics"))])
    data = {
        "name": "tiny",
        "tasks": [
            {"name": "calls", "kind": "price", "model": "black_scholes", "product": "european_call", "n": 50,
             "fixed": {"S": 100.0, "T": 1.0, "sigma": 0.2}, "domain": {"K": [80.0, 120.0]},
             "reference": "closed_form", "methods": ["closed_form"], "repeats": 1, "min_time": 0.0},
        ],
    }
    result = runner.run(suite.parse(data, "tiny.toml", registry), registry, out_dir=None)
    [row] = result.rows
    assert row["status"] == "ok" and row["count"] == 50.0 and row["max_abs_error"] == 0.0


# --------------------------------------------------------------------------- the command line


@pytest.fixture
def cli_env(monkeypatch):
    """The CLI loads just the built-ins these tests need, on a wide console."""
    monkeypatch.setenv(ENV_VAR, ONLY)
    monkeypatch.setenv("COLUMNS", "300")


@pytest.mark.usefixtures("cli_env")
def test_cli_methods_lists_a_method_from_plugins_dir(tmp_path, capsys):
    folder = tmp_path / "plugins"
    write(folder, "loose.py", LOOSE)
    assert cli.main(["methods", "--json", "--plugins-dir", str(folder)]) == 0
    rows = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert rows["loose_pricer"]["plugin"] == "loose" and rows["loose_pricer"]["kind"] == "pricer"
    assert rows["loose_pricer"]["supports"] == {"black_scholes": ["european_call"]}
    assert "closed_form" in rows
    assert host.get_registry().entry("pricer", "loose_pricer").plugin == "loose"  # the CLI installed it


@pytest.mark.usefixtures("cli_env")
def test_cli_plugins_shows_a_broken_plugin_as_skipped(tmp_path, capsys):
    folder = tmp_path / "plugins"
    write(folder, "broken.py", BROKEN)
    write(folder, "loose.py", LOOSE)
    assert cli.main(["plugins", "--plugins-dir", str(folder)]) == 0
    captured = capsys.readouterr()
    assert "broken" in captured.out and "skipped" in captured.out and "loose_pricer" in captured.out
    assert captured.err.count("warning:") == 1 and "'broken'" in captured.err

    assert cli.main(["plugins", "--json", "--plugins-dir", str(folder)]) == 0
    rows = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert "ModuleNotFoundError" in rows["broken"]["error"] and rows["broken"]["registers"] == []
    assert rows["loose"] == {"name": "loose", "version": "2.5", "source": f"file: {folder / 'loose.py'}",
                             "registers": ["pricer:loose_pricer"], "error": None}
    assert rows["closed_form"]["source"] == "entry point: pricebench"


@pytest.mark.usefixtures("cli_env")
def test_cli_plugin_set_errors_exit_2(tmp_path, capsys):
    assert cli.main(["plugins", "--plugins-dir", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    folder = tmp_path / "plugins"
    write(folder, "typo.py", "from bench import hookimpl\n\n@hookimpl\ndef register_pricer(register):\n    pass\n")
    assert cli.main(["methods", "--plugins-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "register_pricer" in err and "'typo'" in err


# --------------------------------------------------------------------------- every hook (meta)


class MetaModel(Model):
    name = "meta_model"
    params = {"x": Param("x", default=1.0)}
    products = ("european_call",)


class MetaMetric(Metric):
    name = "meta_metric"

    def compute(self, estimate, reference):
        return 0.0


class MetaFinder(RootFinder):
    name = "meta_finder"

    def solve(self, inputs):
        nan = np.full(np.shape(inputs["price"]), np.nan)
        return IVResult(nan, np.zeros(nan.shape, bool), np.zeros(nan.shape, int))


class MetaApproximator(Approximator):
    name = "meta_approximator"


class MetaKind(TaskKind):
    name = "meta_kind"


class MetaCommand(Command):
    name = "meta-command"


THROUGH = {
    "register_models": MetaModel,
    "register_pricers": pricer("meta_pricer"),
    "register_root_finders": MetaFinder,
    "register_approximators": MetaApproximator,
    "register_metrics": MetaMetric,
    "register_task_kinds": MetaKind,
    "register_commands": MetaCommand,
}


def spec_hooks() -> list[str]:
    marker = f"{hookspecs.PROJECT}_spec"
    return sorted(n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, marker))


def test_every_hook_is_documented_and_covered():
    hooks = spec_hooks()
    assert hooks and set(hooks) == set(THROUGH) == set(host.HOOKS)
    for name in hooks:
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and len(doc) > 20, f"hook {name} needs a docstring"
        assert list(inspect.signature(getattr(hookspecs, name)).parameters) == ["register"]


@pytest.mark.parametrize("hook", spec_hooks())
def test_every_hook_registers(hook, restore_registry):
    cls = THROUGH[hook]
    registry, caught = quiet_load(only="", extra=[("meta", registering(cls, hook=hook))])
    assert not caught
    kind = host.HOOKS[hook]
    assert registry.get(kind, cls.name) is cls and registry.entry(kind, cls.name).plugin == "meta"
    assert by_name(registry)["meta"].registered == [(kind, cls.name)]
    if kind in ("pricer", "root_finder", "approximator"):
        restore_registry(registry)
        assert [m["name"] for m in bench.methods(kind)] == [cls.name]
    # registering through the wrong hook is refused
    wrong = "register_metrics" if hook != "register_metrics" else "register_models"
    registry, caught = quiet_load(only="", extra=[("meta", registering(cls, hook=wrong))])
    assert len(caught) == 1 and not registry.names(host.HOOKS[wrong])


def test_register_with_a_default_is_still_passed():
    from bench import hookimpl
    from bench.plugins import load

    from bench.methods import Metric

    class Zero(Metric):
        name = "zero_metric"

        def compute(self, estimate, reference):
            return 0.0

    class Plugin:
        @hookimpl
        def register_metrics(self, register=None):
            register(Zero)

    registry = load(only="", extra=[("defaulted", Plugin())])
    assert registry.names("metric") == ["zero_metric"] and not registry.errors


def test_unknown_name_in_env_var_warns(monkeypatch):
    import pytest as _pytest

    from bench.plugins import PluginLoadWarning, load

    with _pytest.warns(PluginLoadWarning, match="closed_from"):
        load(only="closed_from,black_scholes")
