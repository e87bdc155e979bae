"""What a new user trips over (issue 10): each check as a newcomer makes it.

Narrow consoles (titles wrap, no number is cut, a column left out is named), readable speed-ups, no
cuda rows for CPU-only methods under ``--device all``, names that say what things are (no names from
the project's history), consistent and documented CLI options, ``pricebench suites`` with descriptions,
task counts and measured run times, a closing line naming every file a run wrote, plugin versions and
an absolute suite path in run.json, and "did you mean" for a misspelt hook or suite name.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import bench
from bench import cli, hookimpl, report, runner, suite
from bench.methods import Pricer
from bench.plugins import PluginError, load
from bench.report.console import fmt_speedup, task_table

pytestmark = pytest.mark.usefixtures("restore_registry")

REPO = Path(__file__).resolve().parent.parent
ONLY = "closed_form,black_scholes,metrics,kinds"


# --------------------------------------------------------------------------- narrow consoles


def row(method, *, median, speedup, n=5000, device="cpu", status="ok", message="", settings="{}", **extra):
    return {"task": "calls", "kind": "price", "model": "black_scholes", "product": "european_call", "n": n,
            "method": method, "settings": settings, "label": "", "device": device, "status": status,
            "message": message, "tier": 1e-12, "max_abs_error": 3.3e-16, "stderr_mean": float("nan"),
            "within_3se": float("nan"), "failures": 0, "latency_median_s": median, "latency_iqr_s": median / 50,
            "ns_per_option": median / n * 1e9, "speedup": speedup, "prepare_s": 0.0123} | extra


ROWS = [
    row("closed_form", median=2.56e-4, speedup=1.0, settings='{"backend": "numpy"}'),
    row("closed_form", median=3.91e-4, speedup=0.655, settings='{"backend": "numba"}'),
    row("scipy_brentq", median=3.68, speedup=6.95e-05, message="busy machine: other processes kept 2.0 of 2 "
        "CPUs busy while this cell (1 thread) was timed; load 2.3"),
    row("closed_form", median=float("nan"), speedup=float("nan"), device="cuda", status="skipped",
        message="skipped: no GPU", settings='{"backend": "torch"}'),
]


def rendered(rows, width):
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(task_table("calls", rows, width))
    return console.export_text()


@pytest.mark.parametrize("width", [60, 80])
def test_a_narrow_console_wraps_the_title_and_cuts_no_number(width):
    text = rendered(ROWS, width)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
    assert "n=5000" in text.split()  # the issue: n=5000 came out as n=500 at 60 columns
    assert "…" not in text
    for value in ("256 µs", "391 µs", "3.68 s", "3.30e-16", "1/14,400x", "0.66x", "1x"):
        assert value in text, (width, value)  # every median, error and speed-up whole
    assert "speed-up" in text.split()  # the column is there
    note = " ".join(text.split())
    assert "busy machine: other processes kept 2.0 of 2 CPUs busy while this cell (1 thread) was timed" in note


def test_a_column_left_out_for_want_of_room_is_named():
    text = " ".join(rendered(ROWS, 80).split())
    shown = re.search(r"not shown at 80 columns: ([^(]*) \(every column is in leaderboard\.csv", text)
    assert shown, text
    left_out = shown.group(1).split(", ")
    assert left_out and "speed-up" not in left_out and "median" not in left_out
    for name in left_out:
        assert f" {name} " not in text.split("not shown")[0]  # named because it is not in the table
    assert "not shown" not in rendered(ROWS, 200)  # a wide console shows every column


def test_a_console_too_narrow_for_any_table_folds_each_row():
    text = rendered(ROWS, 36)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 36
    flat = " ".join(text.split())
    for value in ("median 256 µs", "speed-up 1/14,400x", "max err 3.30e-16", "n=5000"):
        assert value in flat, value


@pytest.mark.parametrize("value, shown", [
    (6.95e-05, "1/14,400x"), (0.05, "1/20x"), (0.52, "0.52x"), (1.0, "1x"), (33.21, "33.2x"), (213.4, "213x"),
    (14388.0, "14,400x"), (2.5e6, "2,500,000x"), (float("nan"), "-"), (None, "-"), (0.0, "-"),
])
def test_speed_ups_read_as_numbers_a_reader_understands(value, shown):
    assert fmt_speedup(value) == shown
    assert "e-" not in fmt_speedup(value) and "e+" not in fmt_speedup(value)


def test_cli_run_at_60_columns(tmp_path, capsys, monkeypatch):
    """The issue as a newcomer saw it, end to end: COLUMNS=60, --device all, a suite file by a relative path."""
    shutil.copy(suite.resolve_path("quick"), tmp_path / "quick.toml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "60")
    assert cli.main(["run", "quick.toml", "--task", "iv_small", "--device", "all", "--out", "res"]) == 0
    text = capsys.readouterr().out
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 60
    assert "n=2000" in text.split() and "speed-up" in text.split()
    (directory,) = (tmp_path / "res" / "quick").iterdir()
    flat = "".join(text.split())  # the closing line may wrap anywhere at 60 columns
    for name in ("leaderboard.csv", "targets.csv", "run.json", "rows.jsonl", "samples.jsonl", "iv_small.png"):
        assert (directory / name).is_file() and name in flat, name
    assert "1plot(iv_small.png)" in flat
    rows = [json.loads(line) for line in (directory / "rows.jsonl").read_text().splitlines()]
    devices = {(r["method"], r["device"]) for r in rows}
    assert ("scipy_brentq", "cpu") in devices and ("scipy_brentq", "cuda") not in devices  # no cuda path
    assert ("newton", "cuda") in devices  # a method with a cuda path still gets its row
    meta = json.loads((directory / "run.json").read_text())
    assert meta["suite_path"] == str((tmp_path / "quick.toml").resolve())
    plugins = {p["name"]: p for p in meta["plugins"]}
    assert plugins["scipy_brentq"]["version"] == bench.__version__
    assert plugins["scipy_brentq"]["source"] == "entry point: pricebench"
    assert "root_finder:scipy_brentq" in plugins["scipy_brentq"]["registers"]


# --------------------------------------------------------------------------- devices


class CpuOnly(Pricer):
    name = "cpu_only"
    version = "1"
    description = "closed form, CPU only"
    supports = {"black_scholes": ("european_call",)}

    def price(self, inputs):
        from pricebench_plugins.models import black_scholes as bs

        return bs.price(inputs["S"], inputs["K"], inputs["T"], inputs["r"], inputs["q"], inputs["sigma"], 1.0)


def third_party():
    """An in-memory third-party plugin with a version, registering a CPU-only pricer."""
    return types.SimpleNamespace(__version__="2.7.1", register_pricers=hookimpl(lambda register: register(CpuOnly)))


@pytest.fixture(scope="module")
def registry():
    return load(extra=[("acme_pricers", third_party())], only=ONLY)


def small_suite(registry, methods, **task):
    data = {"name": "small", "seed": 1, "tasks": [{
        "name": "calls", "kind": "price", "model": "black_scholes", "product": "european_call", "n": 50,
        "sampler": "lhs", "fixed": {"S": 100.0}, "domain": {"K": [80.0, 120.0], "T": [0.1, 2.0], "r": [0.0, 0.05],
                                                             "sigma": [0.1, 0.5]},
        "reference": "closed_form", "methods": methods, "repeats": 3, "min_time": 0.0} | task]}
    return suite.parse(data, "small.toml", registry)


def test_device_all_plans_cuda_only_for_methods_with_a_cuda_path(registry):
    s = small_suite(registry, ["closed_form", "cpu_only"])
    (task, cells), = runner.Runner(registry, out_dir=None, device="all").plan(s)
    assert [(spec.name, device) for spec, device in cells] == [
        ("closed_form", "cpu"), ("closed_form", "cuda"), ("cpu_only", "cpu")]


@pytest.mark.parametrize("how", ["--device cuda", "the suite names cuda"])
def test_naming_cuda_for_a_cpu_only_method_says_it_has_no_cuda_path(registry, how):
    if how == "--device cuda":
        s, options = small_suite(registry, ["cpu_only"]), {"device": "cuda"}
    else:
        s, options = small_suite(registry, [{"name": "cpu_only", "devices": ["cpu", "cuda"]}]), {}
    rows = runner.run(s, registry, out_dir=None, **options).rows
    cuda = [r for r in rows if r["device"] == "cuda"]
    assert len(cuda) == 1 and cuda[0]["status"] == "skipped"
    assert cuda[0]["message"] == "skipped: cpu_only has no cuda path"  # not "no GPU", with or without one


def test_run_json_records_every_plugin_with_its_version_and_source(registry, tmp_path):
    s = small_suite(registry, ["closed_form", "cpu_only"])
    result = runner.run(s, registry, out_dir=tmp_path)
    meta = json.loads((result.directory / report.JSON_NAME).read_text())
    plugins = {p["name"]: p for p in meta["plugins"]}
    assert plugins["acme_pricers"] == {"name": "acme_pricers", "version": "2.7.1", "source": "object",
                                       "registers": ["pricer:cpu_only"], "error": None}
    assert set(plugins) == {p.name for p in registry.plugins}  # built-ins too
    assert Path(meta["suite_path"]).is_absolute() and meta["suite_path"] == str(Path("small.toml").resolve())


# --------------------------------------------------------------------------- did you mean


def test_a_misspelt_hook_gets_the_closest_hook_name():
    typo = types.SimpleNamespace(register_pricer=hookimpl(lambda register: None))
    with pytest.raises(PluginError) as exc:
        load(extra=[("typo", typo)], only="")
    message = str(exc.value)
    assert "'typo'" in message and "'register_pricer' (did you mean 'register_pricers'?)" in message
    assert "namespace(" not in message  # names the plugin, not its repr


def test_a_misspelt_suite_name_gets_the_closest_shipped_suite(tmp_path, capsys):
    assert cli.main(["run", "quik", "--out", str(tmp_path / "r")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "did you mean 'quick'?" in err and "pricebench suites" in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(suite.SuiteError, match="no such suite file$"):
        suite.resolve_path(tmp_path / "missing.toml")  # a path is not a misspelt name


# --------------------------------------------------------------------------- names from the project's history

HISTORY = re.compile(r"seed[ _-]?00[0-4]|seeds 00|the seed's|the seed notebook", re.IGNORECASE)


def test_no_name_from_the_projects_history_in_suites_cli_or_readme(capsys):
    texts = {str(p.relative_to(REPO)): p.read_text() for p in sorted((REPO / "suites").glob("*.toml"))}
    texts["README.md"] = (REPO / "README.md").read_text()
    for p in sorted((REPO / "bench").rglob("*.py")) + sorted((REPO / "plugins").rglob("*.py")) + sorted(
            p for p in (REPO / "tests").glob("*.py") if p.name != Path(__file__).name):
        texts[str(p.relative_to(REPO))] = p.read_text()
    with pytest.raises(SystemExit):
        cli.main(["mlmc-test", "-h"])
    texts["pricebench mlmc-test -h"] = capsys.readouterr().out
    found = [f"{where}: {m.group(0)!r}" for where, text in texts.items() for m in HISTORY.finditer(text)]
    assert not found, found
    from pricebench_plugins.approximators.mlp import PRESETS
    from pricebench_plugins.pricers import _mlmc_test

    assert set(PRESETS) == {"lecture_notebook", "liu2019"} and _mlmc_test.MSE_SPLIT_CSV == "mse_split.csv"


# --------------------------------------------------------------------------- the command line


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_subcommand_describes_itself_and_every_option_has_help():
    commands = cli._builtin_commands() | cli._plugin_commands([], Console(file=io.StringIO()))
    for name, sub in subcommands(cli._parser(commands)).items():
        assert sub.description and len(sub.description) > 20, name
        if name in ("run", "show", "plugins", "methods", "suites", "mlmc-test"):
            for action in sub._actions:
                assert action.help, (name, action.option_strings or action.dest)
    run = subcommands(cli._parser({}))["run"]
    device = next(a for a in run._actions if "--device" in a.option_strings)
    assert "default:" in device.help and "all:" in device.help and "cuda path" in device.help
    assert "default" in device.choices
    out = next(a for a in run._actions if "--out" in a.option_strings)
    assert "<DIR>/<suite>/<run-id>/" in out.help


def test_run_and_mlmc_test_take_out_as_the_same_kind_of_root(capsys):
    commands = cli._plugin_commands([], Console(file=io.StringIO()))
    mlmc = subcommands(cli._parser(commands))["mlmc-test"]
    out = next(a for a in mlmc._actions if "--out" in a.option_strings)
    assert out.default == "results" and "<DIR>/mlmc_test/<run-id>/" in out.help
    from pricebench_plugins.pricers._mlmc_test import new_run_folder

    assert new_run_folder.__doc__ and "pricebench run" in new_run_folder.__doc__


def test_run_help_shows_a_description(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Run suites (files, or names of shipped suites; default: quick)" in text


# --------------------------------------------------------------------------- pricebench suites


def test_suites_lists_description_task_count_and_measured_run_time(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per suite
    assert cli.main(["suites"]) == 0
    text = capsys.readouterr().out
    registry = bench.plugins.get_registry()
    for name in suite.shipped_suites():
        s = suite.load(name, registry)
        assert suite.RUNTIME.fullmatch(s.runtime), (name, s.runtime)  # every shipped suite is measured
        time, where = suite.runtime_parts(s.runtime)
        assert where == "2-core AMD EPYC" and time
        line = next(line for line in text.splitlines() if line.startswith(f"{name} "))
        assert re.search(rf"^{name} +{len(s.tasks)} +{re.escape(time)} +{re.escape(s.description)}", line), line
    assert "measured on a 2-core AMD EPYC" in text and "cannot be loaded" not in text
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.main(["suites"]) == 0
    text = capsys.readouterr().out
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80 and "…" not in text
    assert set(suite.shipped_suites()) <= set(text.split())


@pytest.mark.parametrize("value", ["fast", "20 s", "20 sec (a laptop)", "(2-core AMD EPYC) 20 s", 20])
def test_a_malformed_runtime_names_the_file_and_key(value, tmp_path):
    lines = [line for line in suite.resolve_path("quick").read_text().splitlines() if not line.startswith("runtime")]
    text = "\n".join(lines).replace('seed = 20240611', f'runtime = {json.dumps(value)}\nseed = 20240611', 1)
    path = tmp_path / "timed.toml"
    path.write_text(text)
    with pytest.raises(suite.SuiteError) as exc:
        suite.load(path, bench.plugins.get_registry())
    assert str(path) in str(exc.value) and "key 'runtime'" in str(exc.value)


def test_runtime_is_optional_and_not_part_of_the_suite_hash(tmp_path):
    registry = bench.plugins.get_registry()
    timed = suite.load("quick", registry)
    untimed_path = tmp_path / "quick.toml"
    untimed_path.write_text("\n".join(line for line in suite.resolve_path("quick").read_text().splitlines()
                                      if not line.startswith("runtime")))
    untimed = suite.load(untimed_path, registry)
    assert timed.runtime and untimed.runtime == ""
    assert runner.suite_hash(timed) == runner.suite_hash(untimed)  # a re-measured time does not block --resume


def test_the_closing_line_counts_the_files_of_subfolders_by_type(tmp_path):
    from bench.report.files import folder_summary

    for name in ("leaderboard.csv", "targets.csv", "run.json", "rows.jsonl", "samples.jsonl", "a.png", "b.png",
                 ".lock"):
        (tmp_path / name).write_text("x")
    (tmp_path / "artifacts" / "bs").mkdir(parents=True)
    for name in ("mlp.cpu.pbapprox", "gp.cpu.pbapprox", "mlp.cpu.png"):
        (tmp_path / "artifacts" / "bs" / name).write_text("x")
    assert folder_summary(tmp_path) == ("leaderboard.csv, targets.csv, run.json, rows.jsonl, samples.jsonl, "
                                        "2 plots (a.png, b.png), artifacts/ (2 .pbapprox, 1 .png)")
