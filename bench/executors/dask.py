"""The dask executor: cells on a ``dask.distributed`` cluster.

By default a LocalCluster of worker processes on this machine (``--workers N``, default
the CPUs divided by the cells' threads); ``--scheduler ADDRESS`` uses a running cluster
instead. One cell per worker at a time: local workers have one thread each and every cell
asks for the worker resource ``cell = 1`` (start the workers of a cluster with
``dask worker ADDRESS --nthreads 1 --resources cell=1``). Local workers start with
``NUMBA_NUM_THREADS``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and
``OPENBLAS_NUM_THREADS`` set to the cells' thread count (dask does not set numba's), and
every cell pins its thread pools again wherever it runs.

A task's data (points, inputs, reference) is computed once by the runner and scattered
to every worker; plugins reach the workers as a serialisable
:class:`~bench.plugins.PluginSource` (entry-point selection, the source of
``--plugins-dir`` modules, in-memory plugins pickled by value) from which each worker
process rebuilds the registry once. Rows record the host they ran on, and speed-ups
compare cells of one host.

Timeouts and crashes: a worker runs cells in a thread, where no timer can raise, so a
watchdog ends the worker process when a cell outlives 1.5 x its timeout + 5 s, after
logging the cell with the scheduler; the cell becomes a ``timeout`` row and the nanny
restarts the worker. A worker that dies otherwise (a segfault, ``os._exit``) makes a
``crashed`` row of the cell it was running (each cell logs its start with the scheduler);
cells that only waited on that worker run again, up to twice. dask's own retries are off
(``allowed-failures`` = 0), so one bad cell cannot take the cluster down.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from typing import Any, Iterator, Sequence

from bench import environment
from bench.cells import CellResult, CellSpec, execute_cell
from bench.executors import Executor, ExecutorError
from bench.kinds import TaskData
from bench.plugins import PluginError, PluginSource

RESOURCE = "cell"
MAX_RETRIES = 2  # resubmissions of a cell whose worker died under it (dask's own retries are off)
CONNECT_TIMEOUT_S = 10


TIMEOUT_EVENT = "pricebench-timeout"
START_EVENT = "pricebench-start"
FLUSH_S = 0.02  # lets the start event leave the worker before the cell could crash it


def _run_cell(spec: CellSpec, data: TaskData, source: PluginSource, attempt: int = 0) -> CellResult:
    """On a worker: run the cell; a watchdog ends the worker process if the cell outlives its
    timeout (a worker thread cannot be interrupted), after telling the scheduler why."""
    import threading

    from distributed import get_worker

    from bench.executors.process import GRACE_S
    from bench.plugins import registry_from

    worker = get_worker()  # here, in the task's thread: the watchdog's own thread has no worker context
    worker.log_event(START_EVENT, {"cell": spec.key, "attempt": attempt})  # a worker dying now died under it
    time.sleep(FLUSH_S)

    def overdue() -> None:
        try:
            worker.log_event(TIMEOUT_EVENT, {"cell": spec.key, "timeout": spec.task.timeout})
            time.sleep(1.0)  # let the event reach the scheduler
        finally:
            os._exit(124)

    watchdog = threading.Timer(spec.task.timeout * 1.5 + GRACE_S, overdue)
    watchdog.daemon = True
    watchdog.start()
    try:
        return execute_cell(spec, data, registry_from(source), executor="dask")
    finally:
        watchdog.cancel()


class DaskExecutor(Executor):
    name = "dask"

    def __init__(self, registry, *, threads: int = 1, scheduler: str | None = None, workers: int | None = None,
                 **options: Any):
        try:
            registry.source.check_portable()
        except PluginError as exc:
            raise ExecutorError(str(exc)) from None
        import dask
        from distributed import Client, LocalCluster

        # a cell that kills its worker is not retried on the others (dask's default is 3 tries)
        self._config = dask.config.set({"distributed.scheduler.allowed-failures": 0})
        self._config.__enter__()
        self.source = registry.source
        self.cluster = None
        self.scheduler = scheduler
        if scheduler:
            try:
                self.client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
            except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, a bad address or security set-up
                raise ExecutorError(f"--scheduler {scheduler}: cannot reach the dask scheduler "
                                    f"({type(exc).__name__}: {exc})") from None
            offered = [w for w in self.client.scheduler_info(n_workers=-1).get("workers", {}).values()
                       if w.get("resources", {}).get(RESOURCE, 0) >= 1]
            if not offered:
                self.client.close()
                raise ExecutorError(f"--scheduler {scheduler}: no worker offers the resource {RESOURCE}=1; start "
                                    f"workers with: dask worker {scheduler} --nthreads 1 --resources {RESOURCE}=1")
        else:
            n = workers or max(1, (os.cpu_count() or 1) // max(1, threads))
            self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                        resources={RESOURCE: 1}, env=environment.thread_env(threads),
                                        dashboard_address=None, silence_logs=logging.ERROR)
            self.client = Client(self.cluster)
        self.pending: list[tuple[Any, CellSpec]] = []
        self.data: dict[str, TaskData] = {}  # task name -> its data (kept to scatter again if workers die)
        self.shared: dict[str, Any] = {}  # task name -> its scattered data
        self.tries: dict[str, int] = {}  # cell key -> times resubmitted

    def close(self) -> None:
        for future, _ in self.pending:
            future.cancel()
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self._config.__exit__(None, None, None)

    def submit(self, data: TaskData, specs: Sequence[CellSpec]) -> None:
        if not specs:
            return
        self.data[specs[0].task.name] = data
        self.shared[specs[0].task.name] = self.client.scatter(data, broadcast=True, hash=False)
        for spec in specs:
            self._submit(spec)

    def _submit(self, spec: CellSpec) -> None:
        name = spec.task.name
        if self.shared[name].status != "finished":  # every worker holding a copy died: send it again
            self.shared[name] = self.client.scatter(self.data[name], broadcast=True, hash=False)
        future = self.client.submit(_run_cell, spec, self.shared[name], self.source, self.tries.get(spec.key, 0),
                                    resources={RESOURCE: 1},
                                    pure=False,
                                    key=f"cell-{spec.task.name}-{spec.method}-{spec.key}-{secrets.token_hex(4)}")
        self.pending.append((future, spec))

    def results(self, wait: bool) -> Iterator[CellResult]:
        from distributed import as_completed

        while True:
            done = [(f, s) for f, s in self.pending if f.done()]
            if not done and wait and self.pending:
                next(iter(as_completed([f for f, _ in self.pending])))
                continue
            if not done:
                return
            for future, spec in done:
                self.pending = [(f, s) for f, s in self.pending if f.key != future.key]
                row = self._row(future, spec)
                if row is not None:
                    yield row

    def _row(self, future, spec: CellSpec) -> CellResult | None:
        """The cell's row; None when it was resubmitted (it waited on a worker that another cell killed)."""
        from distributed.scheduler import KilledWorker

        try:
            return future.result()
        except KilledWorker as exc:
            timed_out = [e for _, e in self.client.get_events(TIMEOUT_EVENT) if e.get("cell") == spec.key]
            if timed_out:
                return CellResult.for_cell(spec, executor=self.name, status="timeout",
                                           message=f"exceeded the {spec.task.timeout:g} s per-cell timeout; its "
                                                   "worker process was ended")
            attempt = self.tries.get(spec.key, 0)
            started = any(e.get("cell") == spec.key and e.get("attempt") == attempt
                          for _, e in self.client.get_events(START_EVENT))
            if not started and self._retry(spec):  # it only waited on the worker that died
                return None
            return CellResult.for_cell(spec, executor=self.name, status="crashed",
                                       message=f"crashed: the worker process died while running the cell ({exc})")
        except Exception as exc:  # noqa: BLE001 - lost data, a cancelled future: not the method's fault
            if self._retry(spec):
                return None
            return CellResult.for_cell(spec, executor=self.name, status="error",
                                       message=f"dask: {type(exc).__name__}: {exc}")

    def _retry(self, spec: CellSpec) -> bool:
        """Cells queued on a worker die with it, and lose its data: run them again (a few times); the
        cell that was running when its worker died (its start event says so) is the crash."""
        tries = self.tries.get(spec.key, 0)
        if tries >= MAX_RETRIES:
            return False
        self.tries[spec.key] = tries + 1
        self._submit(spec)
        return True

    def describe(self) -> dict[str, Any]:
        info = self.client.scheduler_info(n_workers=-1)
        return {"name": self.name, "scheduler": self.scheduler or "LocalCluster",
                "workers": len(info.get("workers", {})),
                "hosts": sorted({w.get("host", "?") for w in info.get("workers", {}).values()})}


EXECUTOR = DaskExecutor
