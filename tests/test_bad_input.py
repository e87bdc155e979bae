"""Bad input found by fuzzing: each gives one clear error (exit 2) and writes nothing,
and no name in a suite can make pricebench write outside the output folder."""

from __future__ import annotations

import copy
import json
import sys

import pytest

from bench import cli, runner, suite
from bench import plugins as host
from bench.suite import SuiteError
from test_suite import GOOD

pytestmark = pytest.mark.usefixtures("restore_registry")


def write_suite(tmp_path, data: dict, name: str = "s.toml"):
    """A TOML file from a suite dict (tables of the simple kind GOOD uses)."""
    def value(v):
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(v)

    lines = [f"{k} = {value(v)}" for k, v in data.items() if k != "tasks"]
    for task in data["tasks"]:
        lines.append("[[tasks]]")
        lines += [f"{k} = {value(v)}" for k, v in task.items()]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(tmp_path, path, capsys, *extra):
    out = tmp_path / "out"
    code = cli.main(["run", str(path), "--out", str(out), *extra])
    return code, capsys.readouterr().err, out


@pytest.mark.parametrize("content, needle", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a UTF-8 text file"),
    ("name = \"caf\xe9\"".encode("latin-1"), "not a UTF-8 text file"),
    (b"name = \"x\"\x00\n", "NUL"),
    (("a = " + "[" * 5000 + "]" * 5000 + "\n").encode(), "nested too deeply"),
])
def test_unreadable_suites_are_one_line_errors(tmp_path, capsys, content, needle):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    code, err, out = run_cli(tmp_path, path, capsys)
    assert code == 2 and needle in err and "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("mutation, key", [
    ((["tasks", 0, "n"], 10**12), "'n'"),
    ((["tasks", 0, "sampler"], "grid"), "'n'"),  # 64^4 points
    ((["tasks", 0, "methods"], [{"name": "closed_form", "settings": {"backend": []}}]),
     "methods[0].settings.backend"),
])
def test_too_large_or_empty_sweeps_name_the_key(tmp_path, capsys, mutation, key):
    data = copy.deepcopy(GOOD)
    node = data
    path, value = mutation
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    code, err, out = run_cli(tmp_path, write_suite(tmp_path, data), capsys)
    assert code == 2 and key in err and not out.exists(), err


@pytest.mark.parametrize("name", ["../escaped", "a/b", "", ".", "..", "x" * 300, "-rf", "tab\tname"])
def test_task_names_that_would_leave_the_folder_are_refused(tmp_path, capsys, name):
    data = copy.deepcopy(GOOD)
    data["tasks"][0]["name"] = name
    code, err, out = run_cli(tmp_path, write_suite(tmp_path, data), capsys)
    assert code == 2 and "'name'" in err and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_nothing_is_written_outside_the_output_folder(tmp_path):
    """Even a task built in code with a hostile name (past the suite reader) stays inside --out."""
    registry = host.get_registry()
    s = suite.parse(GOOD, "s.toml", registry)
    s.tasks[0].name = "../../escaped"
    out = tmp_path / "deep" / "out"
    result = runner.run(s, registry, out_dir=out)
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert written and all(str(p).startswith("deep/out/") for p in written), written
    assert result.directory.is_relative_to(out)


def test_a_plugin_that_exits_at_import_is_reported_and_skipped(tmp_path, capsys):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "exits.py").write_text("import sys\nsys.exit(3)\n")
    path = write_suite(tmp_path, GOOD)
    code = cli.main(["run", str(path), "--out", str(tmp_path / "out"), "--plugins-dir", str(folder)])
    err = capsys.readouterr().err
    assert code == 0 and "exits" in err and "sys.exit(3)" in err


def test_a_method_calling_sys_exit_is_a_row(tmp_path):
    from bench.methods import Pricer

    class Exiter(Pricer):
        name = "exiter"
        supports = {"black_scholes": ("european_call",)}

        def price(self, inputs):
            sys.exit(4)

    class Plugin:
        @staticmethod
        @host.hookspecs.hookimpl
        def register_pricers(register):
            register(Exiter)

    registry = host.load(only="closed_form,black_scholes,metrics,kinds", extra=[("exiter", Plugin)])
    data = copy.deepcopy(GOOD)
    data["tasks"][0]["methods"] = ["exiter", "closed_form"]
    rows = {r["method"]: r for r in runner.run(suite.parse(data, "s.toml", registry), registry,
                                               out_dir=None).rows}
    assert rows["exiter"]["status"] == "error" and "sys.exit(4)" in rows["exiter"]["message"]
    assert rows["closed_form"]["status"] == "ok"


def test_the_same_experiment_twice_is_refused():
    data = copy.deepcopy(GOOD)
    default = host.get_registry().get("pricer", "closed_form").settings["backend"].default
    data["tasks"][0]["methods"] = [{"name": "closed_form", "label": "A"},  # the default backend, named or not
                                   {"name": "closed_form", "settings": {"backend": default}, "label": "B"}]
    with pytest.raises(SuiteError, match=r"methods\[1\]'.*already methods\[0\]"):
        suite.parse(data, "s.toml", host.get_registry())
