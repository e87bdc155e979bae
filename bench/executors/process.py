"""The process executor: every cell in a worker process that the runner can kill.

One worker process runs the cells one at a time (so timings do not compete). It is
started from a clean server process (multiprocessing's ``forkserver``; ``spawn`` where
there is none), rebuilds the plugin registry from the run's serialisable
:class:`~bench.plugins.PluginSource`, and receives each task's data once. The runner
waits for each cell's row at most the task's timeout plus a grace period; past that it
kills the worker (a numba loop that never returns to Python, a method that swallows the
timeout) and records ``timeout``. A worker that dies (a segfault, ``os._exit``, the
kernel's out-of-memory killer) becomes a ``crashed`` row with its signal or exit code.
Either way a fresh worker takes the next cell and the run goes on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from collections import deque
from typing import Any, Iterator, Sequence

from bench import environment
from bench.cells import CellResult, CellSpec, execute_cell
from bench.executors import Executor, ExecutorError
from bench.kinds import TaskData
from bench.plugins import PluginError, PluginSource

GRACE_S = 5.0  # beyond 1.5 x the task's timeout before the worker is killed (its own timer fires first)
PRELOAD = ("numpy", "scipy.special", "scipy.stats", "numba", "torch")
STARTUP_S = 120.0  # a fresh worker's imports and plugin loading (not counted against a cell)
KEEP_TASKS = 2  # task data a worker keeps (the current task and the one before)


def _worker_main(conn, source: PluginSource, threads: int, cwd: str) -> None:
    """The worker's loop: ("data", key, TaskData) stores a task's data; ("cell", key, spec) answers a row."""
    # the server started in the package's own folder (see _started_safely); work where the run was
    # started, but never import from there: a folder called `bench` must not shadow the package
    sys.path[:] = [p for p in sys.path if p not in ("", ".")]
    try:
        os.chdir(cwd)
    except OSError:
        pass
    # for pools first started here; numba, if the server preloaded it, is pinned per cell instead (it
    # refuses a changed NUMBA_NUM_THREADS once its threads exist)
    env = environment.thread_env(threads)
    if "numba" in sys.modules:
        env.pop("NUMBA_NUM_THREADS")
    os.environ.update(env)
    from bench.plugins import registry_from

    registry = registry_from(source)
    for module in PRELOAD:  # import once here, not inside the first cell's timeout
        try:
            __import__(module)
        except ImportError:
            pass
    conn.send(("ready", os.getpid()))
    datas: dict[str, TaskData] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "data":
            _, key, data = message
            datas[key] = data
            while len(datas) > KEEP_TASKS:
                datas.pop(next(iter(datas)))
        elif message[0] == "cell":
            _, key, spec = message
            try:
                row = execute_cell(spec, datas[key], registry, executor="process")
            except BaseException as exc:  # noqa: BLE001 - sys.exit in a method, say: still a row
                row = CellResult.for_cell(spec, executor="process", status="error",
                                          message=f"{type(exc).__name__}: {exc}")
            conn.send(row)
        else:
            return


def _context():
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # the server imports the heavy modules once; every worker forks from it with them loaded
        ctx.set_forkserver_preload(["bench.executors.process", *PRELOAD])
        return ctx
    return mp.get_context("spawn")


def _started_safely(proc) -> None:
    """Start ``proc`` from the folder that holds the ``bench`` package: the fork server imports
    with the current folder first on its path (``python -c``), so a folder called ``bench`` where
    the run was started would shadow the package there."""
    import bench

    here = os.getcwd()
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(bench.__file__))))
    try:
        proc.start()
    finally:
        os.chdir(here)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "the worker stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = {"SIGSEGV": "a segmentation fault", "SIGKILL": "killed: the out-of-memory killer or an external kill",
               "SIGABRT": "aborted", "SIGBUS": "a bus error", "SIGFPE": "a floating-point exception"}.get(name, "")
        return f"the worker process died by {name}" + (f" ({why})" if why else "")
    return f"the worker process exited with code {code} (os._exit or a hard exit in the method)"


class ProcessExecutor(Executor):
    name = "process"

    def __init__(self, registry, *, threads: int = 1, **options: Any):
        try:
            registry.source.check_portable()
        except PluginError as exc:
            raise ExecutorError(str(exc)) from None
        self.source = registry.source
        self.threads = threads
        self.ctx = _context()
        self.queue: deque[tuple[str, TaskData, CellSpec]] = deque()
        self.proc = None
        self.conn = None
        self.sent: set[str] = set()
        self.workers_started = 0
        self.tasks_submitted = 0

    # ------------------------------------------------------------------ worker lifecycle
    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker_main, args=(child, self.source, self.threads, os.getcwd()),
                                     daemon=True, name="pricebench-cell-worker")
        _started_safely(self.proc)
        child.close()
        self.conn, self.sent = parent, set()
        self.workers_started += 1
        # wait for the worker's imports and plugins, so that they do not count against a cell's timeout
        if not parent.poll(STARTUP_S):
            self._stop(kill=True)
            raise RuntimeError(f"the worker process did not start within {STARTUP_S:g} s")
        try:
            parent.recv()
        except (EOFError, OSError):
            code = self._stop(kill=True)
            raise RuntimeError(f"the worker process failed to start: {describe_exit(code)}") from None

    def _stop(self, kill: bool) -> int | None:
        proc, conn = self.proc, self.conn
        self.proc = self.conn = None
        if proc is None:
            return None
        if kill and proc.is_alive():
            proc.kill()
        else:
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        conn.close()
        return proc.exitcode

    def close(self) -> None:
        self._stop(kill=False)

    # ------------------------------------------------------------------ cells
    def submit(self, data: TaskData, specs: Sequence[CellSpec]) -> None:
        self.tasks_submitted += 1
        key = f"{self.tasks_submitted}-{specs[0].task.name if specs else ''}"
        self.queue.extend((key, data, spec) for spec in specs)

    def results(self, wait: bool) -> Iterator[CellResult]:
        while self.queue:
            key, data, spec = self.queue.popleft()
            yield self._run(key, data, spec)

    def _run(self, key: str, data: TaskData, spec: CellSpec) -> CellResult:
        if self.proc is None:
            try:
                self._start()
            except RuntimeError as exc:
                return CellResult.for_cell(spec, executor=self.name, status="crashed", message=f"crashed: {exc}")
        started = time.perf_counter()
        try:
            if key not in self.sent:
                self.conn.send(("data", key, data))
                self.sent.add(key)
            self.conn.send(("cell", key, spec))
        except (BrokenPipeError, ConnectionError, OSError):
            return self._crashed(spec, started)
        limit = spec.task.timeout * 1.5 + GRACE_S
        if not self.conn.poll(limit):
            self._stop(kill=True)
            elapsed = time.perf_counter() - started
            return CellResult.for_cell(
                spec, executor=self.name, status="timeout", wall_s=elapsed,
                message=f"exceeded the {spec.task.timeout:g} s per-cell timeout; the worker process was killed "
                        f"after {elapsed:.3g} s")
        try:
            row = self.conn.recv()
        except (EOFError, OSError):
            return self._crashed(spec, started)
        return row

    def _crashed(self, spec: CellSpec, started: float) -> CellResult:
        code = self._stop(kill=True)
        return CellResult.for_cell(spec, executor=self.name, status="crashed", exit_code=code,
                                   wall_s=time.perf_counter() - started, message=f"crashed: {describe_exit(code)}")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "start_method": self.ctx.get_start_method(), "threads": self.threads}


EXECUTOR = ProcessExecutor
