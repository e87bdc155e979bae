"""The command line as a new user runs it: run, show, plugins, methods."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from bench import cli, report


def run_dir(out):
    (suite_dir,) = out.iterdir()
    (directory,) = suite_dir.iterdir()
    return directory


def test_run_default_suite_then_show(tmp_path, capsys):
    out = tmp_path / "results"
    assert cli.main(["run", "--out", str(out), "--task", "bs_european_call", "--task", "iv_small"]) == 0
    text = capsys.readouterr().out
    assert "bs_european_call" in text and "iv_small" in text and "wrote" in text
    directory = run_dir(out)
    assert directory.parent.name == "quick"
    frame = pd.read_csv(directory / report.CSV_NAME)
    assert set(frame["task"]) == {"bs_european_call", "iv_small"}
    cpu = frame[frame["device"] == "cpu"]
    assert (cpu["status"] == "ok").all(), cpu[["method", "status", "message"]]
    iv = cpu[cpu["task"] == "iv_small"].set_index("method")
    assert set(iv.index) == {"newton", "brent", "secant", "bisection", "scipy_brentq"}
    assert (iv.loc[["newton", "brent", "bisection"], "max_abs_error"] <= 1e-10).all()
    assert iv.loc["scipy_brentq", "speedup"] == 1.0

    assert cli.main(["show", str(directory)]) == 0
    shown = capsys.readouterr().out
    assert "bs_european_call" in shown and "closed_form" in shown and "newton" in shown
    assert cli.main(["show", str(directory / report.CSV_NAME)]) == 0


def test_run_device_cuda_without_gpu_says_skipped(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "r"
    assert cli.main(["run", "--out", str(out), "--task", "bs_european_put", "--device", "cuda"]) == 0
    frame = pd.read_csv(run_dir(out) / report.CSV_NAME)
    assert (frame["status"] == "skipped").all() and (frame["message"] == "skipped: no GPU").all()


def test_show_missing_path_is_an_error(tmp_path, capsys):
    assert cli.main(["show", str(tmp_path / "nope")]) == 2
    assert "no leaderboard" in capsys.readouterr().err


def test_plugins_and_methods_listings(capsys):
    assert cli.main(["plugins", "--json"]) == 0
    plugins = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert plugins["closed_form"]["registers"] == ["pricer:closed_form"]
    assert plugins["closed_form"]["source"] == "entry point: pricebench"
    assert plugins["closed_form"]["version"] and plugins["closed_form"]["error"] is None
    assert "model:black_scholes" in plugins["black_scholes"]["registers"]
    assert cli.main(["plugins"]) == 0
    assert "closed_form" in capsys.readouterr().out
    assert cli.main(["methods", "--json", "--kind", "root_finder"]) == 0
    finders = {m["name"] for m in json.loads(capsys.readouterr().out)}
    assert {"newton", "brent", "secant", "bisection", "scipy_brentq"} <= finders
    assert cli.main(["methods"]) == 0
    assert cli.main(["suites"]) == 0
    assert {"quick", "iv_rootfinders"} <= set(capsys.readouterr().out.split())


def test_python_dash_m_bench():
    res = subprocess.run([sys.executable, "-m", "bench", "--version"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and res.stdout.startswith("pricebench ")


def test_bad_filters_exit_2(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["run", "--out", str(out), "--task", "no_such_task"]) == 2
    assert "no task" in capsys.readouterr().err
    assert not out.exists()


def test_methods_at_80_columns_show_every_setting_with_its_type_range_and_description(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.main(["methods", "newton", "closed_form"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out  # nothing cut
    for text in ("backend", "sigma0", "maxiter", "auto | numba", "1 .. inf", "iteration cap per option",
                 "black_scholes: european_call, european_put"):
        assert text in out, text
    assert cli.main(["methods", "--json", "secant"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    spec = row["setting_specs"]["maxiter"]
    assert spec["type"] == "int" and spec["min"] == 1 and spec["description"] and spec["default"] == row["settings"]["maxiter"]
    assert row["setting_specs"]["backend"]["choices"] == ["auto", "numba", "numpy", "torch"]
    assert cli.main(["methods", "nwton"]) == 2
    assert "no method named 'nwton'" in capsys.readouterr().err


def test_plugins_at_80_columns_cut_no_name(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "heston_integration" in out and max(len(line) for line in out.splitlines()) <= 80
