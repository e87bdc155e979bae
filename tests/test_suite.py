"""Suite validation: one clear error naming file, task and key; nothing is written."""

import copy
import tomllib
from pathlib import Path

import pytest

from bench import cli, suite
from bench.plugins import get_registry
from bench.suite import SuiteError

GOOD = {
    "name": "t",
    "seed": 1,
    "tasks": [
        {
            "name": "calls",
            "kind": "price",
            "model": "black_scholes",
            "product": "european_call",
            "n": 64,
            "sampler": "lhs",
            "fixed": {"S": 100.0},
            "domain": {"K": [80.0, 120.0], "T": [0.1, 2.0], "r": [0.0, 0.05], "sigma": [0.1, 0.5]},
            "reference": "closed_form",
            "methods": [{"name": "closed_form", "settings": {"backend": ["numpy", "torch"]}}],
        }
    ],
}


def parse(data):
    return suite.parse(data, "s.toml", get_registry())


def mutated(path, value=None, delete=False):
    data = copy.deepcopy(GOOD)
    node = data
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


def test_good_suite_parses_and_sweeps():
    s = parse(GOOD)
    (task,) = s.tasks
    assert [m.settings for m in task.methods] == [{"backend": "numpy"}, {"backend": "torch"}]
    assert task.domain["K"] == (80.0, 120.0) and task.fixed == {"S": 100.0}
    assert task.reference.name == "closed_form" and task.devices == ("cpu",)


def test_sweeps_combine_as_cartesian_product():
    cls = get_registry().get("root_finder", "brent")
    combos = suite._expand_settings(cls, {"xtol": [1e-8, 1e-12], "maxiter": [50, 100], "backend": "numpy"})
    assert combos == [
        {"xtol": 1e-8, "maxiter": 50, "backend": "numpy"},
        {"xtol": 1e-8, "maxiter": 100, "backend": "numpy"},
        {"xtol": 1e-12, "maxiter": 50, "backend": "numpy"},
        {"xtol": 1e-12, "maxiter": 100, "backend": "numpy"},
    ]


@pytest.mark.parametrize(
    "path, value, task, key, words",
    [
        (("tasks", 0, "nn"), 5, "calls", "nn", "unknown key"),
        (("tasks", 0, "model"), "hestonn", "calls", "model", "unknown model"),
        (("tasks", 0, "product"), "asian_call", "calls", "product", "unknown product"),
        (("tasks", 0, "product"), "zero_coupon_bond", "calls", "product", "no product"),
        (("tasks", 0, "n"), "many", "calls", "n", "must be an integer"),
        (("tasks", 0, "n"), 0, "calls", "n", ">= 1"),
        (("tasks", 0, "domain", "K"), [120.0, 80.0], "calls", "domain.K", "bad range"),
        (("tasks", 0, "domain", "K"), [80.0], "calls", "domain.K", "range"),
        (("tasks", 0, "domain", "sigma"), [-0.1, 0.5], "calls", "domain.sigma", "range"),
        (("tasks", 0, "domain", "vol"), [0.1, 0.2], "calls", "domain.vol", "no parameter 'vol'"),
        (("tasks", 0, "sampler"), "halton", "calls", "sampler", "unknown sampler"),
        (("tasks", 0, "methods"), [{"name": "closed_fom"}], "calls", "methods[0].name", "did you mean"),
        (("tasks", 0, "methods"), [{"name": "closed_form", "settings": {"backnd": "numpy"}}], "calls",
         "methods[0].settings.backnd", "no setting 'backnd'"),
        (("tasks", 0, "methods"), [{"name": "closed_form", "settings": {"backend": 3}}], "calls",
         "methods[0].settings.backend", "must be a string"),
        (("tasks", 0, "methods"), [{"name": "closed_form", "devices": ["tpu"]}], "calls",
         "methods[0].devices", "unknown device"),
        (("tasks", 0, "reference"), "closed", "calls", "reference.name", "unknown method"),
        (("tasks", 0, "baseline"), "newton", "calls", "baseline", "must be one of the task's methods"),
        (("tasks", 0, "repeats"), 0, "calls", "repeats", ">= 1"),
        (("tasks", 0, "timeout"), -1, "calls", "timeout", "> 0"),
        (("tasks", 0, "kind"), "calibrate", "calls", "kind", "unknown task kind"),
        (("seed",), "one", None, "seed", "must be an integer"),
        (("seed",), -1, None, "seed", ">= 0"),
        (("name",), "../escape", None, "name", "results folder"),
        (("repeats",), 0, None, "repeats", ">= 1"),
        (("tasks", 0, "timeout"), float("nan"), "calls", "timeout", "> 0"),
        (("tasks", 0, "floor"), float("nan"), "calls", "floor", ">= 0"),
        (("tasks", 0, "sampler"), {"name": "lhs", "criterion": "bogus"}, "calls", "sampler.criterion",
         "unknown value"),
        (("tasks", 0, "methods"), [{"name": "closed_form", "settings": {"backend": "numpy", "backnd": "x"}}],
         "calls", "methods[0].settings.backnd", "no setting 'backnd'"),
        (("tasks", 0, "reference"), {"name": "closed_form", "settings": {"backend": ["numpy", "torch"]}},
         "calls", "reference.settings", "one configuration"),
        (("colour",), "red", None, "colour", "unknown key"),
    ],
)
def test_malformed_suite_names_file_task_and_key(path, value, task, key, words):
    with pytest.raises(SuiteError) as info:
        parse(mutated(path, value))
    err = info.value
    message = str(err)
    assert message.startswith("s.toml: ")
    if task is not None:
        assert f"task {task!r}" in message
    assert f"key {key!r}" in message
    assert words in message
    assert err.task == task and err.key == key


def test_missing_required_keys():
    for key in ("model", "methods", "n", "reference"):
        with pytest.raises(SuiteError, match=f"key '{key}': required key is missing"):
            parse(mutated(("tasks", 0, key), delete=True))
    with pytest.raises(SuiteError, match="neither fixed nor in the domain"):
        parse(mutated(("tasks", 0, "domain", "sigma"), delete=True))


def test_duplicate_task_names_and_empty_suite():
    data = copy.deepcopy(GOOD)
    data["tasks"].append(copy.deepcopy(GOOD["tasks"][0]))
    with pytest.raises(SuiteError, match="two tasks"):
        parse(data)
    with pytest.raises(SuiteError, match="at least one"):
        parse({"name": "empty"})


def test_bad_toml_names_the_file(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("name = 'x'\n[[tasks]\n")
    with pytest.raises(SuiteError, match="broken.toml: not valid TOML"):
        suite.load(bad, get_registry())
    with pytest.raises(SuiteError, match="no such suite"):
        suite.load(tmp_path / "missing.toml", get_registry())


def test_cli_rejects_malformed_suite_with_exit_2_and_writes_nothing(tmp_path, capsys):
    text = (Path(suite.default_suite_path()).read_text()
            .replace('sampler = "sobol"', 'sampler = "sobol"\nwidth = 3', 1))
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    out = tmp_path / "out"
    assert cli.main(["run", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "task 'bs_european_put'" in err and "key 'width'" in err
    assert err.count("error:") == 1
    assert not out.exists()


@pytest.mark.parametrize("name", suite.shipped_suites())
def test_shipped_suites_are_valid(name):
    s = suite.load(name, get_registry())
    assert s.tasks
    with open(suite.resolve_path(name), "rb") as fh:
        assert tomllib.load(fh)["name"] == s.name


IV_TASK = {
    "name": "iv",
    "kind": "implied_vol",
    "model": "black_scholes",
    "product": "european_call",
    "n": 16,
    "fixed": {"S": 1.0, "K": 1.0, "T": 0.5, "r": 0.0},
    "domain": {"sigma": [0.1, 0.5]},
    "methods": ["newton"],
}


@pytest.mark.parametrize(
    "method, key",
    [
        ({"name": "bisection", "settings": {"lower": 2.0, "upper": 1.0}}, "methods[0].settings"),
        ({"name": "secant", "settings": {"sigma0": 0.6}}, "methods[0].settings"),
        ({"name": "newton", "settings": {"maxiter": 0}}, "methods[0].settings.maxiter"),
    ],
)
def test_cross_setting_checks_run_at_validation(method, key):
    data = {"name": "t", "tasks": [IV_TASK | {"methods": [method]}]}
    with pytest.raises(SuiteError) as info:
        parse(data)
    assert info.value.task == "iv" and info.value.key == key


def test_cli_rejects_bad_numbers_before_running(tmp_path, capsys):
    out = tmp_path / "out"
    for argv in (["--threads", "0"], ["--seed", "-1"]):
        with pytest.raises(SystemExit) as info:
            cli.main(["run", "--out", str(out), *argv])
        assert info.value.code == 2
    afile = tmp_path / "file"
    afile.write_text("")
    assert cli.main(["run", "--out", str(afile)]) == 2
    assert "--out" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("method", [{"name": "mc", "settings": {"scheme": ["exact", "qe"]}},
                                    {"name": "mlmc", "settings": {"scheme": "milstein"}}])
def test_a_setting_the_task_s_model_cannot_use_is_caught_before_anything_runs(method):
    data = mutated(["tasks", 0, "methods"], [{"name": "closed_form"}, method])
    if method["name"] == "mlmc":  # milstein exists for black_scholes only
        data["tasks"][0]["model"] = "cev"
        data["tasks"][0]["fixed"] = {"S": 100.0, "beta": 0.5}
    with pytest.raises(SuiteError, match=r"task 'calls': key 'methods\[1\]\.settings\.scheme'"):
        parse(data)
