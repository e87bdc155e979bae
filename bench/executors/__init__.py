"""Executors: where a run's cells execute. One module each; the runner only calls this interface.

- ``serial`` (:mod:`bench.executors.serial`): in the runner's process, one cell after another.
- ``process`` (:mod:`bench.executors.process`): in a worker process; a timeout kills the worker,
  and a worker that dies (segfault, ``os._exit``, out of memory) becomes a ``crashed`` row.
- ``dask`` (:mod:`bench.executors.dask`): on a ``dask.distributed`` cluster (a LocalCluster by
  default), one cell per worker at a time, task data scattered once.

An executor is a context manager with two methods: ``submit(data, specs)`` hands it the cells of
one task with their shared :class:`~bench.kinds.TaskData`, and ``results(wait)`` yields the
:class:`~bench.cells.CellResult` of finished cells (all outstanding ones when ``wait`` is true).
"""

from __future__ import annotations

import importlib
from typing import Any, Iterator, Sequence

from bench.cells import CellResult, CellSpec
from bench.kinds import TaskData

EXECUTORS = {"serial": "bench.executors.serial", "process": "bench.executors.process",
             "dask": "bench.executors.dask"}


class ExecutorError(ValueError):
    """An executor that cannot start as asked (an unreachable scheduler, say): bad input, exit 2."""


class Executor:
    """Base of the executors."""

    name = ""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release workers and clusters."""

    def submit(self, data: TaskData, specs: Sequence[CellSpec]) -> None:  # pragma: no cover - contract
        raise NotImplementedError

    def results(self, wait: bool) -> Iterator[CellResult]:  # pragma: no cover - contract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What run.json records about the executor."""
        return {"name": self.name}


def check_name(name: str) -> None:
    """ExecutorError for a name that is not an executor."""
    if name not in EXECUTORS:
        raise ExecutorError(f"unknown executor {name!r} (executors: {', '.join(EXECUTORS)})")


def create(name: str, registry, **options: Any) -> Executor:
    """The executor called ``name``, started; ExecutorError for an unknown one or one that cannot start."""
    check_name(name)
    module = importlib.import_module(EXECUTORS[name])
    return module.EXECUTOR(registry, **options)
