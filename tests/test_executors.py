"""Executors, the results store and resumable runs.

Plugins used by the worker processes are written to a ``--plugins-dir``
folder, as a user would: worker processes rebuild the registry from that
description, not from this process's memory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from bench import cli, report, runner, suite
from bench import plugins as host
from bench.store import ROWS_NAME, SAMPLES_NAME, RunStore, read_jsonl

pytestmark = pytest.mark.usefixtures("restore_registry")

ONLY = "closed_form,black_scholes,metrics,kinds"
ACCURACY = ("mae", "rmse", "max_abs_error", "mape", "mpe", "r2", "failures", "tier", "max_err_s100")

FAULTY = '''
import ctypes, os, time
import numpy as np
import numba
from bench import hookimpl
from bench.methods import Pricer, Setting


class Spin(Pricer):
    """A numba busy loop that never returns to Python (nogil: no signal handler runs)."""
    name = "spin"
    supports = {"black_scholes": ("european_call",)}
    settings = {"seconds": Setting(30.0, float)}

    def price(self, inputs):
        return _spin(np.array(inputs["S"], dtype=np.float64), self.seconds)


@numba.njit(nogil=True, cache=False)
def _spin(s, seconds):
    out = np.empty_like(s)
    x = 0.0
    while x >= 0.0:  # forever
        x += 1.0
        if x > 1e300:
            x = 0.0
    out[:] = x
    return out


_spin.compile((numba.float64[::1], numba.float64))  # at import: compiling is not what the timeout should stop


class Segfault(Pricer):
    name = "segfault"
    supports = {"black_scholes": ("european_call",)}

    def price(self, inputs):
        ctypes.string_at(0)  # reads address 0: SIGSEGV


class HardExit(Pricer):
    name = "hard_exit"
    supports = {"black_scholes": ("european_call",)}

    def price(self, inputs):
        os._exit(3)


class Swallower(Pricer):
    """Catches the timeout and carries on."""
    name = "swallower"
    supports = {"black_scholes": ("european_call",)}

    def price(self, inputs):
        end = time.monotonic() + 4
        while time.monotonic() < end:
            try:
                time.sleep(0.05)
            except BaseException:
                pass
        return np.zeros_like(inputs["S"])


class Sleepy(Pricer):
    """Slow but correct-shaped: a cell of a few tenths of a second."""
    name = "sleepy"
    supports = {"black_scholes": ("european_call",)}

    def price(self, inputs):
        time.sleep(0.1)
        return np.ones_like(inputs["S"])


class Plus(Pricer):
    """Closed-form-like: prices every option at S (a plugin only the plugins folder knows)."""
    name = "plus"
    supports = {"black_scholes": ("european_call",)}

    def price(self, inputs):
        return np.asarray(inputs["S"], dtype=np.float64) * 0 + os.getpid() * 0 + 1.0


@hookimpl
def register_pricers(register):
    for cls in (Spin, Segfault, HardExit, Swallower, Sleepy, Plus):
        register(cls)
'''


@pytest.fixture
def plugin_dir(tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "faulty.py").write_text(FAULTY)
    return folder


def toml_suite(path: Path, methods: list[str], *, name: str = "tiny", timeout: float = 60.0, n: int = 64,
               tasks: int = 1, seed: int = 3) -> Path:
    blocks = []
    for i in range(tasks):
        methods_text = ", ".join(f'"{m}"' if not m.startswith("{") else m for m in methods)
        blocks.append(textwrap.dedent(f"""
            [[tasks]]
            name = "calls{i}"
            kind = "price"
            model = "black_scholes"
            product = "european_call"
            n = {n}
            reference = "closed_form"
            fixed = {{ S = 100.0, r = 0.01, q = 0.0 }}
            domain = {{ K = [80.0, 120.0], T = [0.1, 2.0], sigma = [0.1, 0.5] }}
            timeout = {timeout}
            repeats = 3
            min_time = 0.001
            methods = [{methods_text}]
            """))
    path.write_text(f'name = "{name}"\nseed = {seed}\n' + "".join(blocks))
    return path


def load_registry(plugin_dir=None):
    registry = host.load(plugins_dir=plugin_dir, only=ONLY)
    host.set_registry(registry)
    return registry


def accuracy(rows):
    return sorted((r["task"], r["method"], r["settings"], r["device"], *(r.get(k) for k in ACCURACY)) for r in rows)


# --------------------------------------------------------------------------- process executor


def test_process_executor_kills_a_numba_busy_loop_and_survives_crashes(tmp_path, plugin_dir):
    registry = load_registry(plugin_dir)
    path = toml_suite(tmp_path / "faults.toml", ["spin", "segfault", "hard_exit", "closed_form"], timeout=2.0)
    s = suite.load(path, registry)
    started = time.monotonic()
    result = runner.run(s, registry, out_dir=tmp_path / "out", executor="process")
    elapsed = time.monotonic() - started
    rows = {r["method"]: r for r in result.rows}
    assert rows["spin"]["status"] == "timeout" and "killed" in rows["spin"]["message"]
    assert rows["segfault"]["status"] == "crashed" and "SIGSEGV" in rows["segfault"]["message"]
    assert rows["hard_exit"]["status"] == "crashed" and "exited with code 3" in rows["hard_exit"]["message"]
    assert rows["hard_exit"]["exit_code"] == 3 and rows["segfault"]["exit_code"] == -signal.SIGSEGV
    assert rows["closed_form"]["status"] == "ok" and rows["closed_form"]["max_abs_error"] == 0.0
    assert elapsed < 60, f"the busy loop was not stopped ({elapsed:.0f} s)"
    frame = pd.read_csv(result.directory / report.CSV_NAME)
    assert sorted(frame["status"]) == ["crashed", "crashed", "ok", "timeout"]


def test_serial_executor_says_what_it_cannot_stop(tmp_path, plugin_dir):
    registry = load_registry(plugin_dir)
    path = toml_suite(tmp_path / "s.toml", ["swallower"], timeout=0.5)
    s = suite.load(path, registry)
    (row,) = runner.run(s, registry, out_dir=None).rows
    assert row["status"] == "timeout" and "swallowed" in row["message"] and "--executor process" in row["message"]


def test_process_executor_gives_the_serial_accuracy(tmp_path):
    registry = host.load(only=ONLY + ",cos")
    host.set_registry(registry)
    # cos with few terms: errors that depend on every sampled point, so stale or wrong data would show
    methods = ['{ name = "closed_form", settings = { backend = ["numpy", "numba"] } }',
               '{ name = "cos", settings = { N = [8, 16] } }']
    s = suite.load(toml_suite(tmp_path / "s.toml", methods, tasks=2), registry)
    serial = runner.run(s, registry, out_dir=None).rows
    process = runner.run(s, registry, out_dir=None, executor="process").rows
    assert accuracy(serial) == accuracy(process)
    assert all(r["max_abs_error"] > 1e-9 for r in process if r["method"] == "cos")
    assert {r["executor"] for r in process} == {"process"} and all(r["threads"] == 1 for r in process)


# --------------------------------------------------------------------------- dask


@pytest.mark.slow
def test_dask_local_cluster_equals_serial_and_runs_plugins_dir_plugins(tmp_path, plugin_dir):
    registry = load_registry(plugin_dir)
    methods = ['{ name = "closed_form", settings = { backend = ["numpy", "numba"] } }', "plus"]
    s = suite.load(toml_suite(tmp_path / "s.toml", methods, tasks=2), registry)
    serial = runner.run(s, registry, out_dir=None).rows
    result = runner.run(s, registry, out_dir=tmp_path / "out", executor="dask",
                        executor_options={"workers": 2})
    assert accuracy(serial) == accuracy(result.rows)
    assert {r["executor"] for r in result.rows} == {"dask"}
    plus = [r for r in result.rows if r["method"] == "plus"]
    assert plus and all(r["status"] == "ok" for r in plus)  # a --plugins-dir plugin ran on the workers
    assert result.metadata["executor"]["workers"] == 2
    assert all(r["host"] for r in result.rows)


def test_unknown_executor_and_unreachable_scheduler_are_bad_input(tmp_path, capsys):
    path = toml_suite(tmp_path / "s.toml", ["closed_form"])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", str(path), "--out", str(out), "--executor", "threads"])
    assert exc.value.code == 2
    code = cli.main(["run", str(path), "--out", str(out), "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9"])
    assert code == 2 and "cannot reach the dask scheduler" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------- store and resume


def test_store_keeps_rows_samples_and_stable_cell_keys(tmp_path):
    registry = load_registry()
    methods = ['{ name = "closed_form", settings = { backend = ["numpy", "numba"] } }']
    s = suite.load(toml_suite(tmp_path / "s.toml", methods), registry)
    first = runner.run(s, registry, out_dir=tmp_path / "out", save_outputs=True)
    second = runner.run(s, registry, out_dir=tmp_path / "out")
    assert first.run_id != second.run_id
    keys = [r["cell_key"] for r in first.rows]
    assert len(set(keys)) == 2 and keys == [r["cell_key"] for r in second.rows]
    other_seed = runner.run(s, registry, out_dir=None, seed=11).rows
    assert not set(keys) & {r["cell_key"] for r in other_seed}
    samples = {s_["cell_key"]: s_ for s_ in read_jsonl(first.directory / SAMPLES_NAME)}
    for row in first.rows:
        assert len(samples[row["cell_key"]]["samples"]) == row["samples"] >= 3
    npz = first.directory / "outputs" / f"{keys[0]}.npz"
    import numpy as np

    assert np.load(npz)["value"].shape == (64,)
    meta = json.loads((first.directory / report.JSON_NAME).read_text())
    assert meta["schema_version"] == 2 and meta["status"] == "finished" and meta["cells_planned"] == 2


def wait_for_rows(out: Path, count: int = 2, seconds: float = 120.0) -> Path | None:
    """The rows file of the run writing into ``out`` once it holds ``count`` rows (None if it never does)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = list(out.glob(f"tiny/*/{ROWS_NAME}"))
        if found and len(read_jsonl(found[0])) >= count:
            return found[0]
        time.sleep(0.05)
    return None


def _default_sigint():
    # a shell runs background jobs with SIGINT ignored, and a Python started so never raises KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_cli(args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "bench", *args], env={**os.environ, **(env or {})},
                            preexec_fn=_default_sigint, **kw)


def test_killed_run_resumes_to_the_same_accuracy_without_duplicates(tmp_path, plugin_dir):
    path = toml_suite(tmp_path / "s.toml", ['{ name = "closed_form", settings = { backend = ["numpy", "numba"] } }',
                                            '{ name = "sleepy" }'], tasks=3, timeout=30.0)
    out = tmp_path / "out"
    env = {"PRICEBENCH_PLUGINS": ONLY}
    common = [str(path), "--plugins-dir", str(plugin_dir)]
    proc = _run_cli(["run", *common, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    rows_file = wait_for_rows(out)  # kill it once some, not all, cells are saved
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rows_file is not None
    saved = len(read_jsonl(rows_file))
    assert 2 <= saved < 9
    run_dir = rows_file.parent
    assert json.loads((run_dir / report.JSON_NAME).read_text())["status"] == "running"
    done = subprocess.run([sys.executable, "-m", "bench", "run", *common, "--resume", str(run_dir)],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = RunStore(run_dir).rows()
    raw = read_jsonl(run_dir / ROWS_NAME)
    assert len(rows) == len(raw) == 9  # no duplicate rows
    registry = load_registry(plugin_dir)
    fresh = runner.run(suite.load(path, registry), registry, out_dir=None).rows
    assert accuracy(rows) == accuracy(fresh)
    assert json.loads((run_dir / report.JSON_NAME).read_text())["status"] == "finished"
    frame = pd.read_csv(run_dir / report.CSV_NAME)
    assert len(frame) == 9


def test_resume_refuses_another_suite_or_seed(tmp_path, capsys):
    registry = load_registry()
    path = toml_suite(tmp_path / "a.toml", ["closed_form"])
    result = runner.run(suite.load(path, registry), registry, out_dir=tmp_path / "out")
    before = sorted(p.name for p in result.directory.iterdir())
    other = toml_suite(tmp_path / "b.toml", ["closed_form"], name="other")
    assert cli.main(["run", str(other), "--resume", str(result.directory)]) == 2
    assert "that run is of suite 'tiny'" in capsys.readouterr().err
    assert cli.main(["run", str(path), "--seed", "99", "--resume", str(result.directory)]) == 2
    assert "seed" in capsys.readouterr().err
    assert sorted(p.name for p in result.directory.iterdir()) == before
    assert len(list((tmp_path / "out").rglob(ROWS_NAME))) == 1


def test_two_runs_at_once_into_one_folder_do_not_clobber(tmp_path):
    path = toml_suite(tmp_path / "s.toml", ["closed_form"], tasks=2)
    out = tmp_path / "out"
    env = {"PRICEBENCH_PLUGINS": ONLY}
    procs = [_run_cli(["run", str(path), "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                      stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    runs = sorted((out / "tiny").iterdir())
    assert len(runs) == 2
    for run_dir in runs:
        rows = read_jsonl(run_dir / ROWS_NAME)
        assert len(rows) == 2 and {r["run_id"] for r in rows} == {run_dir.name}
        assert json.loads((run_dir / report.JSON_NAME).read_text())["status"] == "finished"


def test_show_marks_an_unfinished_run(tmp_path, capsys):
    registry = load_registry()
    result = runner.run(suite.load(toml_suite(tmp_path / "s.toml", ["closed_form"]), registry), registry,
                        out_dir=tmp_path / "out")
    meta_path = result.directory / report.JSON_NAME
    meta = json.loads(meta_path.read_text())
    meta.update(status="interrupted", cells_planned=5)
    meta_path.write_text(json.dumps(meta))
    assert cli.main(["show", str(result.directory)]) == 0
    out = capsys.readouterr().out
    assert "did not finish" in out and "1 of 5" in out and "--resume" in out


def test_busy_machine_note_and_pinned_threads(tmp_path):
    registry = load_registry()
    s = suite.load(toml_suite(tmp_path / "s.toml", ["closed_form"]), registry)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.3)
        (row,) = runner.run(s, registry, out_dir=None, threads=os.cpu_count()).rows
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert row["busy"] is True and "busy machine" in row["message"] and row["others_cpu"] > 0.5
    (calm,) = runner.run(s, registry, out_dir=None).rows
    assert calm["threads"] == 1 and calm["load_1m"] >= 0 and calm["cpu_share"] > 0


def test_ctrl_c_says_exactly_what_was_saved(tmp_path, plugin_dir):
    # 40 cells: far more than a busy machine finishes between the second saved row and the signal
    path = toml_suite(tmp_path / "s.toml", ['{ name = "sleepy" }', "closed_form"], tasks=20, timeout=30.0)
    out = tmp_path / "out"
    proc = _run_cli(["run", str(path), "--out", str(out), "--plugins-dir", str(plugin_dir)],
                    env={"PRICEBENCH_PLUGINS": ONLY}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rows_file = wait_for_rows(out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert rows_file is not None and proc.returncode == 130
    saved = len(read_jsonl(rows_file))
    assert f"{saved} of 40 cells are saved in {rows_file.parent}" in " ".join(err.split())
    assert "--resume" in err
    meta = json.loads((rows_file.parent / report.JSON_NAME).read_text())
    assert meta["status"] == "interrupted" and len(pd.read_csv(rows_file.parent / report.CSV_NAME)) == saved


def test_show_reads_schema_1_runs(capsys):
    folder = Path(__file__).parent / "data" / "schema1_run"
    assert json.loads((folder / report.JSON_NAME).read_text())["schema_version"] == 1
    assert cli.main(["show", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "secant" in out and "bs_european_call" in out and "did not finish" not in out


@pytest.mark.slow
def test_dask_crash_and_timeout_are_rows_and_spare_the_other_cells(tmp_path, plugin_dir):
    registry = load_registry(plugin_dir)
    methods = ["segfault", "spin", "closed_form", "plus", '{ name = "closed_form", settings = { backend = "numba" } }']
    s = suite.load(toml_suite(tmp_path / "s.toml", methods, timeout=2.0), registry)
    rows = {(r["method"], r["settings"]): r for r in
            runner.run(s, registry, out_dir=None, executor="dask", executor_options={"workers": 2}).rows}
    by_method = {m: r for (m, _), r in rows.items()}
    assert by_method["segfault"]["status"] == "crashed"
    assert by_method["spin"]["status"] == "timeout" and "worker process was ended" in by_method["spin"]["message"]
    assert [r["status"] for (m, _), r in rows.items() if m in ("closed_form", "plus")] == ["ok", "ok", "ok"]


def test_speedups_use_the_baseline_in_task_order_whatever_finished_first(tmp_path):
    registry = load_registry()
    text = toml_suite(tmp_path / "s.toml", ['{ name = "closed_form", settings = { backend = ["numpy", "torch"] } }'])
    text.write_text(text.read_text().replace("methods =", 'baseline = "closed_form"\nmethods ='))
    s = suite.load(text, registry)
    rows = runner.run(s, registry, out_dir=None).rows
    for order in (rows, rows[::-1]):
        copies = [dict(r, speedup=float("nan")) for r in order]
        runner.speedups(copies, s.tasks[0])
        got = {json.loads(r["settings"])["backend"]: r["speedup"] for r in copies}
        assert got["numpy"] == 1.0 and got["torch"] != 1.0


def test_resume_repairs_a_torn_line_and_refuses_a_held_or_reseeded_run(tmp_path, capsys):
    registry = load_registry()
    path = toml_suite(tmp_path / "s.toml", ['{ name = "closed_form", settings = { backend = ["numpy", "numba"] } }'],
                      tasks=2)
    path.write_text(path.read_text().replace('kind = "price"', 'kind = "price"\nseed = 5'))  # tasks' own seeds
    s = suite.load(path, registry)
    result = runner.run(s, registry, out_dir=tmp_path / "out", seed=3)  # --seed 3: the suite's seed, but
    rows_path = result.directory / ROWS_NAME                             # it overrides the tasks' seeds
    lines = rows_path.read_text().splitlines()
    rows_path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])  # killed mid-line
    held = RunStore(result.directory)
    held.lock()
    assert cli.main(["run", str(path), "--resume", str(result.directory)]) == 2
    assert "another pricebench process" in capsys.readouterr().err
    held.unlock()
    assert cli.main(["run", str(path), "--resume", str(result.directory)]) == 2  # without --seed: other data
    assert "another seed" in capsys.readouterr().err
    assert cli.main(["run", str(path), "--seed", "3", "--resume", str(result.directory)]) == 0
    rows = read_jsonl(rows_path)
    assert len(rows) == 4 and len({r["cell_key"] for r in rows}) == 4
