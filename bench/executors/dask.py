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

What dask cannot do: interrupt a running cell. A worker runs cells in a thread, where
no timer can raise; the timeout is checked between timed calls only. A cell that hangs
holds its worker (use ``--executor process`` for hard timeouts). A worker process that
dies is restarted by its nanny and the cell becomes a ``crashed`` row.
"""

from __future__ import annotations

import logging
import os
import secrets
from typing import Any, Iterator, Sequence

from bench import environment
from bench.cells import CellResult, CellSpec, execute_cell
from bench.executors import Executor, ExecutorError
from bench.kinds import TaskData
from bench.plugins import PluginError, PluginSource

RESOURCE = "cell"
CONNECT_TIMEOUT_S = 10


def _run_cell(spec: CellSpec, data: TaskData, source: PluginSource) -> CellResult:
    from bench.plugins import registry_from

    return execute_cell(spec, data, registry_from(source), executor="dask")


class DaskExecutor(Executor):
    name = "dask"

    def __init__(self, registry, *, threads: int = 1, scheduler: str | None = None, workers: int | None = None,
                 **options: Any):
        try:
            registry.source.check_portable()
        except PluginError as exc:
            raise ExecutorError(str(exc)) from None
        from distributed import Client, LocalCluster

        self.source = registry.source
        self.cluster = None
        self.scheduler = scheduler
        if scheduler:
            try:
                self.client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise ExecutorError(f"--scheduler {scheduler}: cannot reach the dask scheduler ({exc})") from None
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

    def close(self) -> None:
        for future, _ in self.pending:
            future.cancel()
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def submit(self, data: TaskData, specs: Sequence[CellSpec]) -> None:
        if not specs:
            return
        shared = self.client.scatter(data, broadcast=True, hash=False)
        for spec in specs:
            future = self.client.submit(_run_cell, spec, shared, self.source, resources={RESOURCE: 1}, pure=False,
                                        key=f"cell-{spec.task.name}-{spec.method}-{spec.key}-{secrets.token_hex(4)}")
            self.pending.append((future, spec))

    def results(self, wait: bool) -> Iterator[CellResult]:
        from distributed import as_completed

        if wait:
            by_future = {future.key: spec for future, spec in self.pending}
            for future in as_completed([f for f, _ in self.pending]):
                self.pending = [(f, s) for f, s in self.pending if f.key != future.key]
                yield self._row(future, by_future[future.key])
            return
        for future, spec in list(self.pending):
            if future.done():
                self.pending = [(f, s) for f, s in self.pending if f.key != future.key]
                yield self._row(future, spec)

    def _row(self, future, spec: CellSpec) -> CellResult:
        try:
            return future.result()
        except Exception as exc:  # noqa: BLE001 - KilledWorker and the like: the worker died under the cell
            return CellResult.for_cell(spec, executor=self.name, status="crashed",
                                       message=f"crashed: {type(exc).__name__}: {exc}")

    def describe(self) -> dict[str, Any]:
        info = self.client.scheduler_info(n_workers=-1)
        return {"name": self.name, "scheduler": self.scheduler or "LocalCluster",
                "workers": len(info.get("workers", {})),
                "hosts": sorted({w.get("host", "?") for w in info.get("workers", {}).values()})}


EXECUTOR = DaskExecutor
